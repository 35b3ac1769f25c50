"""Fakes for the workflow's ports, shipped with the package so users test their own code with them.

* :class:`ScriptedPlanner` / :class:`ScriptedReviewer` answer from a script (plans, reviews, or
  exceptions to raise) and record every request; :meth:`assert_consumed` fails a test that ended
  with answers left over.
* :class:`InMemoryStore` is the store's async API in dicts (records, events, step results, leases,
  the dead-letter queue, idempotency keys, approvals, tenant usage); it passes the store's
  conformance suite.
* :class:`InMemoryApprovals` is the approvals port: a test decides steps with ``decide``.
* :class:`InMemoryReviews` is the reviews port: a test decides an escalated result.
* :class:`FunctionExecutor` runs steps by calling a Python function per action.
* :func:`in_memory_tracer` gives an OpenTelemetry tracer whose finished spans can be inspected.

Why one file of this length: the fakes are one public module users import from
(``officeray.testing``), and the in-memory store is most of it because it implements every store
method the conformance suite checks; split, users would chase each fake through several modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from officeray.auth import ApiKeyRecord
from officeray.contracts import (
    ApprovalDecision,
    ApprovalVerdict,
    DlqDetail,
    DlqEntry,
    ErrorType,
    FeedEvent,
    ModelUsage,
    Plan,
    PlanMetadata,
    PlanRequest,
    PlanStep,
    Review,
    ReviewDecision,
    ReviewDecisionKind,
    ReviewRequest,
    StepError,
    StepOutcome,
    StepResult,
    StepStatus,
    TaskEvent,
    TaskRecord,
    TaskRequest,
    TaskStatus,
    utcnow,
)
from officeray.feedback import TaskFeedback
from officeray.memory.entries import MemoryEntry, MemoryTenantState
from officeray.store.api import (
    CLAIM_LIMIT,
    DLQ_LIST_LIMIT,
    EVENT_FEED_LIMIT,
    MEMORY_PAGE_LIMIT,
    RECENT_SPANS_LIMIT,
    TASK_LIST_LIMIT,
    TASK_SPANS_LIMIT,
    WEBHOOK_CLAIM_LIMIT,
    IdempotencyClaim,
    ResumableTask,
    TaskCursor,
    TaskStore,
    as_utc,
    check_feed_limit,
    check_memory_page,
    check_memory_selector,
    check_review_decision,
    check_verdict,
    positive_ttl,
    require_final,
)
from officeray.store.outbox import WebhookDue, check_outcome, webhook_due, webhook_target
from officeray.telemetry import SpanRecord
from officeray.webhooks import DeliveryStatus, WebhookAttempt, WebhookDelivery
from officeray.workspaces import (
    WorkspaceCaps,
    WorkspaceChanges,
    WorkspaceFile,
    WorkspaceLimitError,
    check_caps,
    merged_sizes,
    sha256_hex,
)

Scripted = Any  # an answer, an exception to raise, or a callable(request) -> answer


class _Script:
    def __init__(self, kind: str, answers: Iterable[Scripted]) -> None:
        self.kind = kind
        self.answers = list(answers)
        self.requests: list[Any] = []

    def next(self, request: Any) -> Any:
        self.requests.append(request)
        if not self.answers:
            raise AssertionError(
                f"{self.kind} called {len(self.requests)} time(s) but the script has no more answers"
            )
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        if callable(answer):
            answer = answer(request)
        return answer

    def assert_consumed(self) -> None:
        if self.answers:
            raise AssertionError(f"{self.kind} script ended with {len(self.answers)} unused answer(s)")


class ScriptedPlanner:
    """Answers ``plan`` calls from ``answers`` in order: a Plan, an exception, or ``f(request) -> Plan``."""

    def __init__(self, answers: Iterable[Scripted]) -> None:
        self._script = _Script("planner", answers)

    @property
    def requests(self) -> list[PlanRequest]:
        return self._script.requests

    async def plan(self, request: PlanRequest) -> Plan:
        return self._script.next(request)

    def assert_consumed(self) -> None:
        self._script.assert_consumed()


class ScriptedReviewer:
    """Answers ``review`` calls from ``answers`` in order: a Review, an exception, or ``f(request)``."""

    def __init__(self, answers: Iterable[Scripted]) -> None:
        self._script = _Script("reviewer", answers)

    @property
    def requests(self) -> list[ReviewRequest]:
        return self._script.requests

    async def review(self, request: ReviewRequest) -> Review:
        return self._script.next(request)

    def assert_consumed(self) -> None:
        self._script.assert_consumed()


class InMemoryStore:
    """The store's async API (:class:`~officeray.store.TaskStore`) in dicts; it passes the same
    conformance suite as :class:`~officeray.store.SqlStore` (``tests/store``).

    What a test inspects or sets directly:

    * ``tasks[task_id]``: the stored record; ``requests[task_id]``: the request it was created with;
    * ``event_log[task_id]``: ``(kind, data)`` of each event in order (:meth:`kinds`: the kinds); the
      events :meth:`events` answers have ids from one counter for all tasks, as SQL's;
    * ``step_results[idempotency_key]``;
    * ``leases[task_id]``: the owner holding the task. A test may set it: a lease set so (without
      :meth:`acquire_lease`) never expires. A fenced write of another owner is refused;
    * ``dead_letters``: ``{task_id: reason}`` of the dead-letter queue; ``usage[tenant]``: the model
      usage of the tenant's finished tasks; ``daily_usage[(tenant, day)]``: the same per UTC day;
    * ``memory[seq]``: the memory's entries (with their vectors), in ``seq`` order.

    Like SqlStore, the writes take their snapshot of the record when called, before any await.
    """

    def __init__(self) -> None:
        self.tasks: dict[str, TaskRecord] = {}
        self.requests: dict[str, TaskRequest] = {}
        self.event_log: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        self.step_results: dict[str, StepResult] = {}
        self.leases: dict[str, str] = {}
        self.usage: dict[str, ModelUsage] = {}
        self.daily_usage: dict[tuple[str, date], ModelUsage] = {}
        self._first_stored: dict[str, datetime] = {}
        """Each task's ``created_at`` when it was first stored (SQL: the ``created_at`` column)."""
        self._events: dict[str, list[TaskEvent]] = {}
        self._lease_expiry: dict[str, datetime] = {}
        self._dlq: dict[str, tuple[DlqEntry, TaskRecord]] = {}
        self._idempotency: dict[tuple[str, str], tuple[str, str]] = {}
        self._approvals: dict[tuple[str, str], ApprovalDecision] = {}
        self._review_decisions: dict[tuple[str, int], ReviewDecision] = {}
        self._api_keys: dict[str, ApiKeyRecord] = {}
        self._event_ids = itertools.count(1)
        self._outbox: dict[str, WebhookDelivery] = {}
        self._outbox_leases: dict[str, tuple[str, datetime]] = {}
        """``delivery_id -> (owner, expires_at)`` of the claimed webhook deliveries."""
        self._feedback: list[TaskFeedback] = []
        self._workspaces: dict[str, dict[str, tuple[WorkspaceFile, bytes, str]]] = {}
        """``task_id -> path -> (file, content, tenant)``: the task workspaces."""
        self._spans: list[tuple[datetime, SpanRecord]] = []
        """The trace store: each span with when it was written, in the order written."""
        self.memory: dict[int, MemoryEntry] = {}
        """The memory: ``seq -> entry`` (with its vector), in ``seq`` order."""
        self._memory_seqs = itertools.count(1)

    @property
    def dead_letters(self) -> dict[str, str]:
        return {task_id: entry.reason for task_id, (entry, _) in self._dlq.items()}

    def kinds(self, task_id: str) -> list[str]:
        return [kind for kind, _ in self.event_log.get(task_id, [])]

    # -- tasks and events ----------------------------------------------------------------------------

    def create_task(self, record: TaskRecord, request: TaskRequest) -> Coroutine[Any, Any, bool]:
        return self._create(record.model_copy(deep=True), request.model_copy(deep=True))

    async def _create(self, snapshot: TaskRecord, request: TaskRequest) -> bool:
        if snapshot.task_id in self.tasks:
            return False
        self._first_stored[snapshot.task_id] = as_utc(snapshot.created_at)
        self.tasks[snapshot.task_id] = snapshot
        self.requests[snapshot.task_id] = request
        return True

    async def create_leased_task(
        self, record: TaskRecord, request: TaskRequest, owner: str, ttl_s: float
    ) -> bool:
        snapshot, request = record.model_copy(deep=True), request.model_copy(deep=True)
        if snapshot.task_id in self.tasks:
            return False  # it exists: its lease (the run in progress may hold it) is left alone
        if not self._may_lease(snapshot.task_id, owner, utcnow()):
            return False
        await self._create(snapshot, request)
        return await self.acquire_lease(snapshot.task_id, owner, ttl_s)

    def save_task(self, record: TaskRecord) -> Coroutine[Any, Any, None]:
        return self._put_task(self._stored(record))

    async def _put_task(self, snapshot: TaskRecord) -> None:
        self._first_stored.setdefault(snapshot.task_id, as_utc(snapshot.created_at))
        self.tasks[snapshot.task_id] = snapshot

    @staticmethod
    def _stored(record: TaskRecord) -> TaskRecord:
        """The snapshot of ``record`` as stored now (``updated_at``)."""
        return record.model_copy(deep=True, update={"updated_at": utcnow()})

    def save_transition(
        self, record: TaskRecord, kind: str, data: dict[str, Any], *, owner: str | None = None
    ) -> Coroutine[Any, Any, bool]:
        webhook = webhook_due(record, kind, data)
        return self._put_transition(self._stored(record), self._event(kind, data), owner, webhook)

    @staticmethod
    def _event(kind: str, data: dict[str, Any]) -> tuple[str, dict[str, Any], TaskEvent]:
        """The raw ``(kind, data)`` and the stored event (its data as JSON data, as SQL keeps it)."""
        stored = json.loads(json.dumps(data, default=str))
        return kind, dict(data), TaskEvent(kind=kind, data=stored, at=utcnow())

    async def _put_transition(
        self,
        snapshot: TaskRecord,
        event: tuple[str, dict[str, Any], TaskEvent],
        owner: str | None,
        webhook: WebhookDue | None = None,
    ) -> bool:
        if owner is not None and self.leases.get(snapshot.task_id) != owner:
            return False
        await self._put_task(snapshot)
        event_id = self._put_event(snapshot.task_id, event)
        if webhook is not None:
            self._put_webhook(webhook, event_id)
        return True

    def _put_event(self, task_id: str, event: tuple[str, dict[str, Any], TaskEvent]) -> int:
        """Store the event with the next id (one sequence for all tasks, as SQL's); its id."""
        kind, data, stored = event
        event_id = next(self._event_ids)
        self.event_log.setdefault(task_id, []).append((kind, data))
        self._events.setdefault(task_id, []).append(stored.model_copy(update={"id": event_id}))
        return event_id

    def finish_task(
        self, record: TaskRecord, kind: str, data: dict[str, Any], *, owner: str | None = None
    ) -> Coroutine[Any, Any, bool]:
        require_final(record)
        webhook = webhook_due(record, kind, data)
        return self._put_end(self._stored(record), self._event(kind, data), owner, webhook)

    async def _put_end(
        self,
        snapshot: TaskRecord,
        event: tuple[str, dict[str, Any], TaskEvent],
        owner: str | None,
        webhook: WebhookDue | None,
    ) -> bool:
        if not await self._put_transition(snapshot, event, owner, webhook):
            return False
        if snapshot.status == TaskStatus.FAILED:
            self._put_dead_letter(snapshot, snapshot.error or "failed")
        if snapshot.usage.calls:
            self._add_usage(snapshot.tenant, snapshot.usage, as_utc(snapshot.finished_at).date())
        return True

    async def get_task(self, task_id: str) -> TaskRecord | None:
        found = self.tasks.get(task_id)
        return None if found is None else found.model_copy(deep=True)

    async def get_request(self, task_id: str) -> TaskRequest | None:
        found = self.requests.get(task_id)
        return None if found is None else found.model_copy(deep=True)

    async def list_tasks(
        self,
        status: TaskStatus | None = None,
        limit: int = TASK_LIST_LIMIT,
        *,
        tenant: str | None = None,
        created_after: datetime | None = None,
        cursor: TaskCursor | None = None,
    ) -> list[TaskRecord]:
        after = None if created_after is None else as_utc(created_after)
        end = None if cursor is None else (as_utc(cursor.created_at), cursor.task_id)

        def chosen(task_id: str) -> bool:
            record, first = self.tasks[task_id], self._first_stored[task_id]
            return (
                (status is None or record.status == status)
                and (tenant is None or record.tenant == tenant)
                and (after is None or first > after)
                and (end is None or (first, task_id) < end)
            )

        newest = sorted(self.tasks, key=lambda t: (self._first_stored[t], t), reverse=True)
        return [self.tasks[t].model_copy(deep=True) for t in newest if chosen(t)][:limit]

    # -- feedback ------------------------------------------------------------------------------------

    async def add_feedback(self, feedback: TaskFeedback) -> TaskFeedback:
        stored = feedback.model_copy(
            deep=True, update={"id": len(self._feedback) + 1, "created_at": as_utc(feedback.created_at)}
        )
        self._feedback.append(stored)
        return stored.model_copy(deep=True)

    async def feedback(self, task_id: str) -> list[TaskFeedback]:
        return [f.model_copy(deep=True) for f in self._feedback if f.task_id == task_id]

    def _resumable(self, task_ids: Iterable[str]) -> list[ResumableTask]:
        return [
            ResumableTask(self.tasks[t].model_copy(deep=True), self.requests[t].model_copy(deep=True))
            for t in task_ids
        ]

    def _unfinished_ids(self) -> list[str]:
        """Unfinished tasks that have a request, oldest first."""
        ids = [t for t, r in self.tasks.items() if not r.status.is_final and t in self.requests]
        return sorted(ids, key=lambda t: (self._first_stored[t], t))

    async def unfinished(self) -> list[ResumableTask]:
        return self._resumable(self._unfinished_ids())

    def append_event(self, task_id: str, kind: str, data: dict[str, Any]) -> Coroutine[Any, Any, None]:
        return self._append(task_id, self._event(kind, data))

    async def _append(self, task_id: str, event: tuple[str, dict[str, Any], TaskEvent]) -> None:
        self._put_event(task_id, event)

    async def events(self, task_id: str, after_id: int | None = None) -> list[TaskEvent]:
        return [
            event.model_copy(deep=True)
            for event in self._events.get(task_id, [])
            if after_id is None or (event.id is not None and event.id > after_id)
        ]

    async def event_feed(
        self, after_id: int | None = None, *, tenant: str | None = None, limit: int = EVENT_FEED_LIMIT
    ) -> list[FeedEvent]:
        check_feed_limit(limit)
        feed = sorted(
            (
                FeedEvent(**event.model_dump(), task_id=task_id, tenant=self.tasks[task_id].tenant)
                for task_id, events in self._events.items()
                if task_id in self.tasks and tenant in (None, self.tasks[task_id].tenant)
                for event in events
                if after_id is None or (event.id is not None and event.id > after_id)
            ),
            key=lambda event: event.id or 0,
        )
        return feed[:limit] if after_id is not None else feed[-limit:]

    # -- step results and usage ----------------------------------------------------------------------

    def save_step_result(self, task_id: str, result: StepResult) -> Coroutine[Any, Any, None]:
        return self._put_step_result(result.model_copy(deep=True))

    async def _put_step_result(self, snapshot: StepResult) -> None:
        recorded = self.step_results.get(snapshot.idempotency_key)
        if recorded is None or recorded.status != StepStatus.SUCCEEDED:  # a recorded success is final
            self.step_results[snapshot.idempotency_key] = snapshot

    async def get_step_result(self, idempotency_key: str) -> StepResult | None:
        found = self.step_results.get(idempotency_key)
        return None if found is None else found.model_copy(deep=True)

    def add_tenant_usage(
        self, tenant: str, usage: ModelUsage, day: date | None = None
    ) -> Coroutine[Any, Any, None]:
        return self._add_usage_later(tenant, usage.model_copy(), day or as_utc(None).date())

    async def _add_usage_later(self, tenant: str, usage: ModelUsage, day: date) -> None:
        self._add_usage(tenant, usage, day)

    def _add_usage(self, tenant: str, usage: ModelUsage, day: date) -> None:
        self.usage[tenant] = self.usage.get(tenant, ModelUsage()) + usage
        self.daily_usage[(tenant, day)] = self.daily_usage.get((tenant, day), ModelUsage()) + usage

    async def tenant_usage(self, tenant: str) -> ModelUsage:
        return self.usage.get(tenant, ModelUsage()).model_copy()

    async def tenant_usage_on(self, tenant: str, day: date) -> ModelUsage:
        return self.daily_usage.get((tenant, day), ModelUsage()).model_copy()

    # -- leases --------------------------------------------------------------------------------------

    def _held_at(self, task_id: str, now: datetime) -> str | None:
        """Who holds the lease at ``now`` (a lease a test set without expiry never expires)."""
        owner = self.leases.get(task_id)
        expires = self._lease_expiry.get(task_id)
        return owner if owner is not None and (expires is None or expires > now) else None

    def _may_lease(self, task_id: str, owner: str, now: datetime | None = None) -> bool:
        held = self._held_at(task_id, as_utc(now))
        return held is None or held == owner

    async def acquire_lease(
        self, task_id: str, owner: str, ttl_s: float, now: datetime | None = None
    ) -> bool:
        moment = as_utc(now)
        expires = moment + positive_ttl(ttl_s)
        if not self._may_lease(task_id, owner, moment):
            return False
        self.leases[task_id], self._lease_expiry[task_id] = owner, expires
        return True

    async def renew_leases(self, owner: str, ttl_s: float, now: datetime | None = None) -> int:
        expires = as_utc(now) + positive_ttl(ttl_s)
        mine = [task_id for task_id, holder in self.leases.items() if holder == owner]
        for task_id in mine:
            self._lease_expiry[task_id] = expires
        return len(mine)

    async def release_lease(self, task_id: str, owner: str) -> bool:
        if self.leases.get(task_id) != owner:
            return False
        del self.leases[task_id]
        self._lease_expiry.pop(task_id, None)
        return True

    async def lease_owner(self, task_id: str, now: datetime | None = None) -> str | None:
        return self._held_at(task_id, as_utc(now))

    async def claimable_unfinished(
        self, owner: str, ttl_s: float, now: datetime | None = None, limit: int = CLAIM_LIMIT
    ) -> list[ResumableTask]:
        moment = as_utc(now)
        expires = moment + positive_ttl(ttl_s)
        claimed = [t for t in self._unfinished_ids() if self._held_at(t, moment) is None][:limit]
        for task_id in claimed:
            self.leases[task_id], self._lease_expiry[task_id] = owner, expires
        return self._resumable(claimed)

    # -- dead-letter queue ---------------------------------------------------------------------------

    async def dead_letter(self, record: TaskRecord, reason: str) -> None:
        self._put_dead_letter(record.model_copy(deep=True), reason)

    def _put_dead_letter(self, snapshot: TaskRecord, reason: str) -> None:
        entry = DlqEntry(
            task_id=snapshot.task_id,
            tenant=snapshot.tenant,
            reason=reason,
            trace_id=snapshot.trace_id,
            created_at=utcnow(),
            description=snapshot.description,
        )
        self._dlq[snapshot.task_id] = (entry, snapshot)

    async def dlq_list(self, tenant: str | None = None, limit: int = DLQ_LIST_LIMIT) -> list[DlqEntry]:
        entries = [entry for entry, _ in self._dlq.values() if tenant is None or entry.tenant == tenant]
        entries.sort(key=lambda entry: entry.task_id)
        entries.sort(key=lambda entry: entry.created_at, reverse=True)  # newest first, ties by task id
        return [entry.model_copy() for entry in entries[:limit]]

    async def dlq_get(self, task_id: str) -> DlqDetail | None:
        found = self._dlq.get(task_id)
        return None if found is None else DlqDetail.of(found[0], found[1].model_copy(deep=True))

    async def dlq_remove(self, task_id: str) -> bool:
        return self._dlq.pop(task_id, None) is not None

    async def dlq_size(self) -> int:
        return len(self._dlq)

    # -- idempotency keys and approvals --------------------------------------------------------------

    async def claim_idempotency_key(
        self, tenant: str, key: str, body_sha256: str, task_id: str
    ) -> IdempotencyClaim:
        bound_sha, bound_task = self._idempotency.setdefault((tenant, key), (body_sha256, task_id))
        return IdempotencyClaim(bound_task, bound_sha == body_sha256)

    async def decide_approval(
        self,
        task_id: str,
        step_id: str,
        decision: ApprovalVerdict,
        decided_by: str,
        reason: str | None = None,
    ) -> bool:
        check_verdict(decision)
        if (task_id, step_id) in self._approvals:
            return False
        self._approvals[(task_id, step_id)] = ApprovalDecision(
            task_id=task_id,
            step_id=step_id,
            decision=decision,
            decided_by=decided_by,
            reason=reason,
            decided_at=utcnow(),
        )
        return True

    async def get_approval(self, task_id: str, step_id: str) -> ApprovalDecision | None:
        found = self._approvals.get((task_id, step_id))
        return None if found is None else found.model_copy()

    async def decide_review(
        self, task_id: str, iteration: int, decision: ReviewDecisionKind, decided_by: str, feedback: str = ""
    ) -> bool:
        check_review_decision(decision)
        if (task_id, iteration) in self._review_decisions:
            return False
        self._review_decisions[(task_id, iteration)] = ReviewDecision(
            task_id=task_id,
            iteration=iteration,
            decision=decision,
            feedback=feedback,
            decided_by=decided_by,
            decided_at=utcnow(),
        )
        return True

    async def get_review_decision(self, task_id: str, iteration: int) -> ReviewDecision | None:
        found = self._review_decisions.get((task_id, iteration))
        return None if found is None else found.model_copy()

    async def clear_review_decisions(self, task_id: str) -> int:
        keys = [key for key in self._review_decisions if key[0] == task_id]
        for key in keys:
            del self._review_decisions[key]
        return len(keys)

    # -- API keys ------------------------------------------------------------------------------------

    async def create_api_key(self, record: ApiKeyRecord) -> bool:
        if record.key_id in self._api_keys:
            return False
        self._api_keys[record.key_id] = record.model_copy(update={"created_at": as_utc(record.created_at)})
        return True

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        return self._api_keys.get(key_id)

    async def list_api_keys(self, tenant: str | None = None) -> list[ApiKeyRecord]:
        found = [r for r in self._api_keys.values() if tenant is None or r.tenant == tenant]
        return sorted(found, key=lambda r: (as_utc(r.created_at), r.key_id))

    async def revoke_api_key(self, key_id: str, now: datetime | None = None) -> bool:
        found = self._api_keys.get(key_id)
        if found is None or not found.active:
            return False
        self._api_keys[key_id] = found.model_copy(update={"revoked_at": as_utc(now)})
        return True

    async def count_api_keys(self) -> int:
        return sum(1 for r in self._api_keys.values() if r.active)

    # -- webhook outbox ------------------------------------------------------------------------------

    def _put_webhook(self, due: WebhookDue, event_id: int) -> None:
        request = self.requests.get(due.task_id)
        url, key_id = webhook_target(None if request is None else request.model_dump(mode="json"))
        if url is not None:
            self._outbox[due.delivery_id] = due.delivery(url, key_id, event_id)

    async def claim_webhooks(
        self, owner: str, lease_s: float, now: datetime | None = None, limit: int = WEBHOOK_CLAIM_LIMIT
    ) -> list[WebhookDelivery]:
        moment = as_utc(now)
        expires = moment + positive_ttl(lease_s)

        def claimable(d: WebhookDelivery) -> bool:
            lease = self._outbox_leases.get(d.delivery_id)
            due = d.next_attempt_at is not None and as_utc(d.next_attempt_at) <= moment
            return d.status == DeliveryStatus.PENDING and due and (lease is None or lease[1] <= moment)

        chosen = sorted(
            (d for d in self._outbox.values() if claimable(d)),
            key=lambda d: (as_utc(d.next_attempt_at or d.created_at), d.delivery_id),
        )[:limit]
        for delivery in chosen:
            self._outbox_leases[delivery.delivery_id] = (owner, expires)
        return [d.model_copy(deep=True) for d in chosen]

    async def record_webhook_attempt(
        self,
        delivery_id: str,
        owner: str,
        attempt: WebhookAttempt,
        status: DeliveryStatus,
        next_attempt_at: datetime | None = None,
        reason: str | None = None,
    ) -> bool:
        check_outcome(status, next_attempt_at)
        found = self._outbox.get(delivery_id)
        lease = self._outbox_leases.get(delivery_id)
        if found is None or found.status != DeliveryStatus.PENDING or lease is None or lease[0] != owner:
            return False
        del self._outbox_leases[delivery_id]
        final = DeliveryStatus(status).is_final
        self._outbox[delivery_id] = found.model_copy(
            update={
                "status": DeliveryStatus(status),
                "next_attempt_at": None if next_attempt_at is None else as_utc(next_attempt_at),
                "finished_at": as_utc(attempt.at) if final else None,
                "reason": reason,
                "attempts": [*found.attempts, attempt.model_copy(update={"at": as_utc(attempt.at)})],
            }
        )
        return True

    async def webhook_deliveries(self, task_id: str) -> list[WebhookDelivery]:
        mine = [d for d in self._outbox.values() if d.task_id == task_id]
        return [d.model_copy(deep=True) for d in sorted(mine, key=lambda d: (d.created_at, d.delivery_id))]

    async def webhook_backlog(self) -> int:
        return sum(1 for d in self._outbox.values() if d.status == DeliveryStatus.PENDING)

    # -- the trace store -----------------------------------------------------------------------------

    async def add_spans(self, spans: Sequence[SpanRecord], now: datetime | None = None) -> int:
        at = as_utc(now)
        self._spans.extend((at, span.model_copy(deep=True)) for span in spans)
        return len(spans)

    async def task_spans(
        self, task_id: str, trace_id: str | None = None, limit: int = TASK_SPANS_LIMIT
    ) -> list[SpanRecord]:
        found = [
            (span.start_ns, i, span)
            for i, (_, span) in enumerate(self._spans)
            if span.task_id == task_id or (trace_id and span.trace_id == trace_id and span.task_id is None)
        ]
        return [span.model_copy(deep=True) for _, _, span in sorted(found, key=lambda t: t[:2])[:limit]]

    async def recent_spans(self, since: datetime, limit: int = RECENT_SPANS_LIMIT) -> list[SpanRecord]:
        moment = as_utc(since)
        found = [span for at, span in reversed(self._spans) if at >= moment]
        return [span.model_copy(deep=True) for span in found[:limit]]

    async def prune_spans(self, older_than: datetime, max_spans: int) -> int:
        before = len(self._spans)
        cut = as_utc(older_than)
        kept = [(at, span) for at, span in self._spans if at >= cut]
        self._spans = kept[max(0, len(kept) - max_spans) :]
        return before - len(self._spans)

    def close(self) -> None:
        """Nothing to release (the API's ``close``)."""

    # -- task workspaces -----------------------------------------------------------------------------

    async def workspace_files(self, task_id: str) -> list[WorkspaceFile]:
        files = self._workspaces.get(task_id, {})
        return [files[path][0] for path in sorted(files)]

    async def workspace_file(self, task_id: str, path: str) -> tuple[WorkspaceFile, bytes] | None:
        found = self._workspaces.get(task_id, {}).get(path)
        return None if found is None else (found[0], found[1])

    async def workspace_contents(self, task_id: str) -> dict[str, bytes]:
        return {path: entry[1] for path, entry in self._workspaces.get(task_id, {}).items()}

    async def apply_workspace_changes(
        self,
        task_id: str,
        tenant: str,
        step_id: str,
        changes: WorkspaceChanges,
        caps: WorkspaceCaps,
        now: datetime | None = None,
    ) -> list[WorkspaceFile]:
        moment = as_utc(now)
        files = self._workspaces.get(task_id, {})
        current = {path: entry[0].size for path, entry in files.items()}
        others = sum(
            entry[0].size
            for other, entries in self._workspaces.items()
            if other != task_id
            for entry in entries.values()
            if entry[2] == tenant
        )
        problem = check_caps(merged_sizes(current, changes), others, caps)
        if problem is not None:
            raise WorkspaceLimitError(problem)
        updated = {path: entry for path, entry in files.items() if path not in changes.deleted}
        for path, data in changes.written.items():
            meta = WorkspaceFile(
                path=path, size=len(data), sha256=sha256_hex(data), step_id=step_id, updated_at=moment
            )
            updated[path] = (meta, bytes(data), tenant)
        if updated:
            self._workspaces[task_id] = updated
        else:
            self._workspaces.pop(task_id, None)
        return await self.workspace_files(task_id)

    async def workspace_tenant_bytes(self, tenant: str) -> int:
        entries = [entry for files in self._workspaces.values() for entry in files.values()]
        return sum(entry[0].size for entry in entries if entry[2] == tenant)

    async def delete_expired_workspaces(self, finished_before: datetime) -> int:
        cut = as_utc(finished_before)
        deleted = 0
        for task_id in list(self._workspaces):
            record = self.tasks.get(task_id)
            if record is None or (record.status.is_final and as_utc(record.updated_at) < cut):
                deleted += len(self._workspaces.pop(task_id))
        return deleted

    # -- the memory ----------------------------------------------------------------------------------

    @staticmethod
    def _memory_copy(entry: MemoryEntry, with_vector: bool = False) -> MemoryEntry:
        copy = entry.model_copy(deep=True)
        return copy if with_vector else copy.model_copy(update={"vector": None})

    def _memory_of(self, entry_id: str) -> MemoryEntry | None:
        return next((e for e in self.memory.values() if e.entry_id == entry_id), None)

    async def add_memory_entry(self, entry: MemoryEntry) -> MemoryEntry:
        stored = self._memory_of(entry.entry_id)
        if stored is None:
            seq = next(self._memory_seqs)
            stored = self.memory[seq] = entry.model_copy(deep=True, update={"seq": seq})
        return self._memory_copy(stored, with_vector=True)

    async def memory_entry(self, entry_id: str) -> MemoryEntry | None:
        stored = self._memory_of(entry_id)
        return None if stored is None else self._memory_copy(stored, with_vector=True)

    async def memory_entries_by_seq(self, seqs: Sequence[int]) -> list[MemoryEntry]:
        return [self._memory_copy(self.memory[seq]) for seq in seqs if seq in self.memory]

    async def memory_entries(
        self,
        *,
        tenant: str | None = None,
        after_seq: int = 0,
        limit: int = MEMORY_PAGE_LIMIT,
        with_vectors: bool = True,
        missing_encoder: str | None = None,
    ) -> list[MemoryEntry]:
        check_memory_page(limit)
        found = [
            e
            for seq, e in sorted(self.memory.items())
            if seq > after_seq
            and (tenant is None or e.tenant == tenant)
            and (missing_encoder is None or e.vector is None or e.encoder != missing_encoder)
        ]
        return [self._memory_copy(e, with_vectors) for e in found[:limit]]

    async def task_memory(self, task_id: str) -> list[MemoryEntry]:
        return [self._memory_copy(e) for e in self.memory.values() if e.task_id == task_id]

    async def rate_memory(self, task_id: str, delta: int) -> list[MemoryEntry]:
        now = utcnow()
        for seq, e in self.memory.items():
            if e.task_id == task_id:
                self.memory[seq] = e.model_copy(update={"rating": e.rating + delta, "updated_at": now})
        return await self.task_memory(task_id)

    async def set_memory_vectors(self, vectors: Mapping[str, tuple[bytes, str]]) -> int:
        now = utcnow()
        updated = 0
        for seq, e in self.memory.items():
            if e.entry_id in vectors:
                vector, encoder = vectors[e.entry_id]
                self.memory[seq] = e.model_copy(
                    update={"vector": vector, "encoder": encoder, "updated_at": now}
                )
                updated += 1
        return updated

    async def delete_memory(
        self, *, entry_id: str | None = None, task_id: str | None = None, tenant: str | None = None
    ) -> list[MemoryEntry]:
        check_memory_selector(entry_id, task_id, tenant)
        doomed = [
            seq
            for seq, e in self.memory.items()
            if (entry_id is None or e.entry_id == entry_id)
            and (task_id is None or e.task_id == task_id)
            and (tenant is None or e.tenant == tenant)
        ]
        return [self._memory_copy(self.memory.pop(seq)) for seq in doomed]

    async def memory_state(self) -> dict[str, MemoryTenantState]:
        state: dict[str, MemoryTenantState] = {}
        for seq, e in self.memory.items():
            count, _ = state.get(e.tenant, (0, 0))
            state[e.tenant] = MemoryTenantState(count + 1, seq)  # seq order: the last is the greatest
        return state


if TYPE_CHECKING:  # mypy checks that the fake implements the store's whole API
    _implements: TaskStore = InMemoryStore()


class InMemoryApprovals:
    """The workflow's Approvals port: a test decides with :meth:`decide`; ``requested`` lists waits."""

    def __init__(self) -> None:
        self.decisions: dict[tuple[str, str], dict[str, Any]] = {}
        self.requested: list[tuple[str, str]] = []
        self._changed = asyncio.Event()

    def decide(self, task_id: str, step_id: str, decision: str, by: str = "tester", reason: str = "") -> None:
        self.decisions[(task_id, step_id)] = {
            "decision": decision,
            "decided_by": by,
            "reason": reason,
            "decided_at": "2026-01-01T00:00:00+00:00",
        }
        self._changed.set()

    async def wait(self, task_id: str, step_id: str, timeout_s: float) -> dict[str, Any] | None:
        self.requested.append((task_id, step_id))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (task_id, step_id) not in self.decisions:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return None
        return self.decisions[(task_id, step_id)]


class InMemoryReviews:
    """The workflow's Reviews port (:mod:`officeray.review`): a test decides with :meth:`decide`
    (before or during the wait); ``requested`` lists the waits as ``(task_id, iteration, timeout_s)``.
    ``wait`` answers None at once when its timeout is 0 (a test of the timeout waits for nothing)."""

    def __init__(self) -> None:
        self.decisions: dict[tuple[str, int], dict[str, Any]] = {}
        self.requested: list[tuple[str, int, float]] = []
        self._changed = asyncio.Event()

    def decide(
        self, task_id: str, iteration: int, decision: str, by: str = "tester", feedback: str = ""
    ) -> None:
        self.decisions[(task_id, iteration)] = {
            "decision": decision,
            "decided_by": by,
            "feedback": feedback,
            "decided_at": "2026-01-01T00:00:00+00:00",
        }
        self._changed.set()

    def idle(self, tenant: str, priority: int) -> contextlib.AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()  # no task slots here

    async def wait(self, task_id: str, iteration: int, timeout_s: float) -> dict[str, Any] | None:
        self.requested.append((task_id, iteration, timeout_s))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (task_id, iteration) not in self.decisions:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return None
        return self.decisions[(task_id, iteration)]


StepFunction = Callable[[dict[str, Any]], Any | Awaitable[Any]]


class ToolFailed(Exception):
    """Raise from a :class:`FunctionExecutor` function to fail the step with a given error type."""

    def __init__(self, error_type: ErrorType, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


class FunctionExecutor:
    """Runs a step by calling ``functions[action](inputs)`` (sync or async).

    A :class:`ToolFailed` raised by the function fails the attempt with its type; any other
    exception fails it as ``tool_error``. ``calls`` records ``(step_id, inputs)`` in call order and
    ``max_parallel`` the most steps seen running at once.
    """

    def __init__(self, functions: Mapping[str, StepFunction]) -> None:
        self.functions = dict(functions)
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.running = 0
        self.max_parallel = 0

    async def execute(
        self, task_id: str, step: PlanStep, inputs: dict[str, Any], trace_carrier: dict[str, str]
    ) -> StepOutcome:
        self.calls.append((step.step_id, inputs))
        self.running += 1
        self.max_parallel = max(self.max_parallel, self.running)
        try:
            value = self.functions[step.action](inputs)
            if asyncio.iscoroutine(value):
                value = await value
            return StepOutcome(output=value)
        except ToolFailed as exc:
            return StepOutcome(error=StepError(type=exc.error_type, message=str(exc)))
        except Exception as exc:
            return StepOutcome(error=StepError(type=ErrorType.TOOL_ERROR, message=str(exc)))
        finally:
            self.running -= 1


def in_memory_tracer() -> tuple[trace.Tracer, InMemorySpanExporter]:
    """A tracer on a private provider, and the exporter that holds its finished spans."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("officeray.testing"), exporter


def make_plan(task_id: str, steps: list[dict[str, Any]], iteration: int = 1) -> Plan:
    """A plan from short step dicts (``step_id`` and ``action`` required), for tests."""
    full = []
    for raw in steps:
        step = {"inputs": {}, "idempotency_key": f"{task_id}:{iteration}:{raw['step_id']}", **raw}
        full.append(PlanStep.model_validate(step))
    return Plan(
        plan_id=f"{task_id}-plan-{iteration}",
        task_id=task_id,
        confidence=1.0,
        metadata=PlanMetadata(required_tools=sorted({s.action for s in full})),
        steps=full,
    )


HASHING_DIM = 256
"""Dimensions of :class:`HashingEncoder`'s vectors."""


class HashingEncoder:
    """A deterministic stand-in for the memory's encoder (:class:`officeray.memory.Encoder`): words and
    character trigrams hashed into :data:`HASHING_DIM` buckets, L2-normalised. Texts that share words
    score high, others near 0; no model, no download. ``fail`` makes it answer
    :class:`~officeray.memory.EncoderUnavailableError` (as a model that cannot load); ``calls`` counts
    the texts it encoded."""

    def __init__(self, model: str = "hashing", dim: int = HASHING_DIM, *, fail: str | None = None) -> None:
        self.model = model
        self.dim = dim
        self.fail = fail
        self.calls = 0

    def vector(self, text: str) -> Any:
        import hashlib

        import numpy as np

        out = np.zeros(self.dim, dtype=np.float32)
        words = [w.strip(".,;:!?\"'()") for w in text.casefold().split()]
        grams = [w[i : i + 3] for w in words for i in range(max(1, len(w) - 2))]
        for token, weight in [*((w, 1.0) for w in words if w), *((g, 0.3) for g in grams if g)]:
            digest = hashlib.blake2b(token.encode(), digest_size=8).digest()
            out[int.from_bytes(digest[:4], "little") % self.dim] += weight if digest[4] & 1 else -weight
        norm = float(np.linalg.norm(out))
        return out / norm if norm else out

    async def encode(self, texts: Sequence[str]) -> Any:
        import numpy as np

        from officeray.memory.entries import Encoded, EncoderUnavailableError

        if self.fail is not None:
            raise EncoderUnavailableError(self.fail)
        self.calls += len(texts)
        return Encoded(
            np.stack([self.vector(t) for t in texts]) if texts else np.zeros((0, self.dim)), self.model
        )
