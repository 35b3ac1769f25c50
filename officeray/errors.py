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
