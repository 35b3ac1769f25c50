"""Typed errors of the core. Adapters translate their own failures into these."""

from __future__ import annotations


class OfficerayError(Exception):
    """Base class of officeray's errors."""


class ConfigError(OfficerayError):
    """The configuration is invalid; the message names the bad key."""


class PlanningError(OfficerayError):
    """The planner cannot produce a plan for this task. Not retried: the task fails with the message."""


class ModelUnavailableError(OfficerayError):
    """A model tier could not answer (down, overloaded, timed out). The workflow may retry."""


class TaskNotFoundError(OfficerayError):
    """No task with that id."""


class StoreError(OfficerayError):
    """The durable store refused an operation: a database newer than this code, a failed statement."""


class StoreUnavailableError(StoreError):
    """The store cannot be reached now (server down, connection refused, pool exhausted, SQLite locked
    past its busy timeout). Transient: HTTP callers answer 503 with ``Retry-After`` and retry later."""


class OrchestratorUnavailableError(OfficerayError):
    """An orchestrator shard cannot be reached now: it did not answer within the client's call
    timeout (restarting, overloaded) or is down even after looking for its restarted incarnation.
    Transient: HTTP callers answer 503 with ``Retry-After`` and retry later."""


class IdempotencyConflictError(OfficerayError):
    """An idempotency key already names a task created from a different request (HTTP 409)."""


class ApprovalConflictError(OfficerayError):
    """A step cannot be decided: it does not wait for approval, or it was decided already (HTTP 409)."""


class ReviewConflictError(OfficerayError):
    """Escalated results cannot be decided (HTTP 409): the task does not wait for a review
    (``code`` ``not_waiting_review``) or its round was decided already (``review_already_decided``)."""

    def __init__(self, message: str, code: str = "not_waiting_review") -> None:
        super().__init__(message, code)  # both in ``args``: the error crosses Ray calls by pickle
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return self.message


class LimitExceededError(OfficerayError):
    """A request goes past a limit the operator set for its tenant (``tenants.<name>``), e.g. a DLQ
    retry beyond ``max_dlq_retries``; the message names the limit (HTTP 422)."""


class TaskFinalError(OfficerayError):
    """The task already ended (completed, failed or cancelled), so it cannot be cancelled (HTTP 409);
    ``status`` is its final status."""

    def __init__(self, message: str, status: str = "") -> None:
        super().__init__(message, status)  # both in ``args``: the error crosses Ray calls by pickle
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return self.message
