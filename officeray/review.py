"""Escalation to a person: results the reviewer will not approve alone wait for a human decision.

The reviewer answers ``ESCALATE`` (an LLM tier that doubts its verdict; the embedded tier when the
task asks for a person's sign-off), or an ``APPROVED`` review comes with a ``confidence`` below
``workflow.escalation.confidence_threshold`` (:func:`escalation_reason`). The task then waits in
``waiting_review`` (no tool runner held) with its proposed output on the record
(:class:`~officeray.contracts.PendingReview`), until a person with the approver role decides
(``POST /v1/tasks/{id}/review``, ``officeray review``):

* ``accept``: the task completes with the proposed output;
* ``reject``: the task fails (``rejected by <who>: <feedback>``);
* ``revise``: the feedback goes to the next round's planner (within ``max_iterations``).

No decision within ``workflow.escalation.timeout_s`` fails the task; the wait holds no task slot and
does not count against the task's wall-clock cap (``maximum_duration_s``). Decisions live in the store
(``review_decisions``, the first per task and round wins), so a task resumed after a restart goes
straight back to waiting and finds a decision made meanwhile; a DLQ retry clears the task's decisions,
so its next wait needs a new one.

This module holds the pure rules (:func:`escalation_reason`, :func:`asks_for_sign_off`), the
workflow's ``Reviews`` port over the store (:class:`StoreReviews`) and the check-and-store of a
decision (:func:`record_review_decision`) that the orchestrator runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from officeray.contracts import (
    REVIEW_DECISIONS,
    Review,
    ReviewDecision,
    ReviewDecisionKind,
    ReviewVerdict,
    TaskRecord,
    TaskStatus,
)
from officeray.errors import ReviewConflictError, TaskNotFoundError

REVIEW_POLL_S = 2.0
"""How often a waiting task re-reads the store for a decision made without a notify (another shard)."""

MAX_REVIEW_FEEDBACK_CHARS = 2000
"""Longest feedback a person's decision carries."""

SIGN_OFF_PHRASES: tuple[str, ...] = (
    "human sign-off",
    "human sign off",
    "human signoff",
    "human review",
    "human approval",
    "sign off",
    "sign-off",
    "signoff",
    "signed off",
    "person review",
    "a person to review",
    "manual review",
)
"""Phrases of a task description that ask for a person's sign-off on the result (matched whole-word,
case-insensitively; :func:`asks_for_sign_off`)."""

_SIGN_OFF_ALTERNATIVES = "|".join(re.escape(p).replace(r"\ ", r"\s+") for p in SIGN_OFF_PHRASES)
_SIGN_OFF_RE = re.compile(rf"(?<![\w-])(?:{_SIGN_OFF_ALTERNATIVES})(?![\w-])", re.IGNORECASE)


def asks_for_sign_off(description: str) -> bool:
    """Whether a task description asks for a person's sign-off (one of :data:`SIGN_OFF_PHRASES`)."""
    return _SIGN_OFF_RE.search(description) is not None


def escalation_reason(review: Review, confidence_threshold: float | None) -> str | None:
    """Why ``review`` goes to a person, or None when it does not: an ``ESCALATE`` verdict (its
    feedback), or an ``APPROVED`` one whose confidence is below ``confidence_threshold``."""
    if review.verdict == ReviewVerdict.ESCALATE:
        return review.feedback or "the reviewer escalated the results to a person"
    if (
        review.verdict == ReviewVerdict.APPROVED
        and confidence_threshold is not None
        and review.confidence is not None
        and review.confidence < confidence_threshold
    ):
        return (
            f"the reviewer's confidence {review.confidence:.2f} is below the threshold "
            f"{confidence_threshold:.2f}"
        )
    return None


class Reviews(Protocol):
    """Where a person's decision on escalated results comes from (the workflow's port)."""

    async def wait(self, task_id: str, iteration: int, timeout_s: float) -> dict[str, Any] | None:
        """The decision (``{"decision": "accept"|"reject"|"revise", "decided_by", "feedback",
        "decided_at"}``) on round ``iteration``'s results, or None when ``timeout_s`` passed without."""
        ...

    def idle(self, tenant: str, priority: int) -> AbstractAsyncContextManager[None]:
        """A block in which the waiting task's run holds no task slot (it only waits for a person)."""
        ...


class TaskSlots(Protocol):
    """The task slots a waiting run gives back (:class:`~officeray.scheduling.FairScheduler`)."""

    def released(self, tenant: str, priority: int = 0) -> AbstractAsyncContextManager[None]: ...


class ReviewDecisionStore(Protocol):
    """What :class:`StoreReviews` and :func:`record_review_decision` need of the store."""

    async def get_task(self, task_id: str) -> TaskRecord | None: ...

    async def decide_review(
        self, task_id: str, iteration: int, decision: ReviewDecisionKind, decided_by: str, feedback: str = ""
    ) -> bool: ...

    async def get_review_decision(self, task_id: str, iteration: int) -> ReviewDecision | None: ...


class StoreReviews:
    """The workflow's Reviews port: decisions live in the store; :meth:`notify` wakes a waiter early,
    and a poll every :data:`REVIEW_POLL_S` finds decisions stored elsewhere. With ``slots`` (the
    orchestrator's scheduler), a waiting task gives back its task slot (:meth:`idle`)."""

    def __init__(
        self, store: ReviewDecisionStore, poll_s: float = REVIEW_POLL_S, slots: TaskSlots | None = None
    ) -> None:
        self.store = store
        self.poll_s = poll_s
        self.slots = slots
        self._events: dict[tuple[str, int], asyncio.Event] = {}

    def idle(self, tenant: str, priority: int) -> AbstractAsyncContextManager[None]:
        if self.slots is None:
            return contextlib.nullcontext()
        return self.slots.released(tenant, priority)

    def notify(self, task_id: str, iteration: int) -> bool:
        """Wake the task waiting here for this decision; False when none waits here."""
        event = self._events.get((task_id, iteration))
        if event is not None:
            event.set()
        return event is not None

    async def wait(self, task_id: str, iteration: int, timeout_s: float) -> dict[str, Any] | None:
        key = (task_id, iteration)
        event = self._events.setdefault(key, asyncio.Event())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            while True:
                decision = await self.store.get_review_decision(task_id, iteration)
                if decision is not None:
                    return decision.model_dump(mode="json")
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                event.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(remaining, self.poll_s))
        finally:
            self._events.pop(key, None)


def check_review_request(decision: str, feedback: str) -> str | None:
    """Why a decision cannot be recorded as given (pure), or None: an unknown decision, a ``revise``
    without feedback, feedback over :data:`MAX_REVIEW_FEEDBACK_CHARS`."""
    if decision not in REVIEW_DECISIONS:
        return f"decision must be one of {', '.join(REVIEW_DECISIONS)}, not {decision!r}"
    if decision == "revise" and not feedback.strip():
        return "a revise decision needs feedback: what the next round should change"
    if len(feedback) > MAX_REVIEW_FEEDBACK_CHARS:
        return f"feedback is longer than {MAX_REVIEW_FEEDBACK_CHARS} characters"
    return None


async def record_review_decision(
    store: ReviewDecisionStore, task_id: str, decision: ReviewDecisionKind, by: str, feedback: str = ""
) -> ReviewDecision:
    """Store a person's decision on ``task_id``'s escalated results (the round that waits now).

    Raises :class:`TaskNotFoundError`; :class:`ReviewConflictError` with code ``not_waiting_review``
    (the task does not wait for a review) or ``review_already_decided`` (its round was decided: the
    first decision wins); ValueError for a decision :func:`check_review_request` refuses."""
    problem = check_review_request(decision, feedback)
    if problem is not None:
        raise ValueError(problem)
    record = await store.get_task(task_id)
    if record is None:
        raise TaskNotFoundError(f"task {task_id!r} not found")
    pending = record.review_pending
    if record.status != TaskStatus.WAITING_REVIEW or pending is None:
        why = f"task {task_id!r} is not waiting for a review (it is {record.status.value})"
        raise ReviewConflictError(why, "not_waiting_review")
    if not await store.decide_review(task_id, pending.iteration, decision, by, feedback):
        previous = await store.get_review_decision(task_id, pending.iteration)
        raise ReviewConflictError(_already_decided(task_id, previous), "review_already_decided")
    stored = await store.get_review_decision(task_id, pending.iteration)
    if stored is None:  # decided, then gone: the store was reset under us
        why = f"the review decision on task {task_id!r} was not kept"
        raise ReviewConflictError(why, "not_waiting_review")
    return stored


def _already_decided(task_id: str, previous: ReviewDecision | None) -> str:
    decided = f"the review of task {task_id!r} was already decided"
    if previous is None:
        return decided
    return f"{decided}: {previous.decision} by {previous.decided_by} at {previous.decided_at.isoformat()}"
