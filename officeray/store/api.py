"""The store's one API, async, with typed results: :class:`TaskStore`.

:class:`~officeray.store.SqlStore` (SQLite or PostgreSQL) and
:class:`~officeray.testing.InMemoryStore` implement it and pass one conformance suite
(``tests/store/test_store_conformance.py``). The workflow's ``Store`` port
(:class:`officeray.workflow.Store`) is the part of it a task's run uses.

The hot writes (``save_task``, ``save_transition``, ``finish_task``, ``create_task``,
``append_event``, ``save_step_result``, ``add_tenant_usage``) take their snapshot of what they write
**when called**, before the first ``await`` (the caller may change its record while the write is
pending), and return an awaitable that is done once the write is durable. Time-dependent methods
(leases) take ``now`` so tests control the clock; it defaults to :func:`~officeray.contracts.utcnow`
(a naive ``now`` is taken as UTC).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Awaitable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from officeray.auth import ApiKeyRecord
from officeray.contracts import (
    APPROVAL_VERDICTS,
    REVIEW_DECISIONS,
    ApprovalDecision,
    ApprovalVerdict,
    DlqDetail,
    DlqEntry,
    FeedEvent,
    ModelUsage,
    ReviewDecision,
    ReviewDecisionKind,
    StepResult,
    TaskEvent,
    TaskRecord,
    TaskRequest,
    TaskStatus,
    utcnow,
)
from officeray.feedback import TaskFeedback
from officeray.telemetry import SpanRecord
from officeray.webhooks import DeliveryStatus, WebhookAttempt, WebhookDelivery

if TYPE_CHECKING:  # only annotations here: officeray.memory may import this module
    from officeray.memory.entries import MemoryEntry, MemoryTenantState
    from officeray.workspaces import WorkspaceCaps, WorkspaceChanges, WorkspaceFile

DLQ_LIST_LIMIT = 100
"""Entries :meth:`TaskStore.dlq_list` answers unless told otherwise."""

TASK_LIST_LIMIT = 100
"""Records :meth:`TaskStore.list_tasks` answers unless told otherwise."""

WEBHOOK_CLAIM_LIMIT = 32
"""Deliveries :meth:`TaskStore.claim_webhooks` leases per call unless told otherwise."""

CLAIM_LIMIT = 1000
"""Tasks :meth:`TaskStore.claimable_unfinished` leases per call unless told otherwise."""

EVENT_FEED_LIMIT = 500
"""Events :meth:`TaskStore.event_feed` answers per call unless told otherwise."""


TASK_SPANS_LIMIT = 10_000
"""Most spans :meth:`TaskStore.task_spans` answers unless told otherwise."""

RECENT_SPANS_LIMIT = 5_000
"""Most spans :meth:`TaskStore.recent_spans` answers unless told otherwise."""

MEMORY_PAGE_LIMIT = 1_000
"""Most memory entries :meth:`TaskStore.memory_entries` answers per call unless told otherwise."""


class ResumableTask(NamedTuple):
    """An unfinished task with the request it was created with (what an orchestrator resumes)."""

    record: TaskRecord
    request: TaskRequest


MAX_CURSOR_CHARS = 512
"""Longest list cursor :meth:`TaskCursor.decode` reads (a real one is under 200 characters)."""

_CURSOR_TASK_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


class TaskCursor(NamedTuple):
    """Where a page of :meth:`TaskStore.list_tasks` ended: its last task's ``created_at`` (as first
    stored) and id. The next page holds the tasks after it in the list's order (newest first; ties:
    greater id first). Clients see it as an opaque string (:meth:`encode`)."""

    created_at: datetime
    task_id: str

    def encode(self) -> str:
        """The opaque string a client sends back (URL-safe base64 of JSON)."""
        raw = json.dumps([as_utc(self.created_at).isoformat(), self.task_id], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> TaskCursor:
        """The cursor :meth:`encode` wrote; ValueError for anything else (a forged or cut cursor)."""
        if not isinstance(text, str) or not 0 < len(text) <= MAX_CURSOR_CHARS:
            raise ValueError("invalid cursor")
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            created_at, task_id = json.loads(raw)
            # OverflowError: a moment whose offset takes it before year 1 or after 9999 in UTC
            moment = as_utc(datetime.fromisoformat(created_at))
        except (ValueError, TypeError, OverflowError, binascii.Error):
            raise ValueError("invalid cursor") from None
        if not isinstance(task_id, str) or not _CURSOR_TASK_ID.match(task_id):
            raise ValueError("invalid cursor")
        return cls(moment, task_id)


class IdempotencyClaim(NamedTuple):
    """Who owns an ``Idempotency-Key``: the task it is bound to, and whether the claiming request's
    body hash matched the first one's (a caller's claim created the binding when ``task_id`` is the
    one it offered)."""

    task_id: str
    same_body: bool


class TaskStore(Protocol):
    """Tasks, their events and step results, leases, the dead-letter queue, idempotency keys,
    approvals, tenant usage, the trace store and the memory (see the module docstring for the
    snapshot and clock rules)."""

    # -- tasks and events ---------------------------------------------------------------------------

    def create_task(self, record: TaskRecord, request: TaskRequest) -> Awaitable[bool]:
        """Insert a new task atomically; False when a task with that id already exists."""
        ...

    async def create_leased_task(
        self, record: TaskRecord, request: TaskRequest, owner: str, ttl_s: float
    ) -> bool:
        """Take the lease on the new task and insert it, at once: True when both happened; False (and
        nothing changed) when another owner holds the lease or the task exists."""
        ...

    def save_task(self, record: TaskRecord) -> Awaitable[None]:
        """Insert or replace the task's record (its ``created_at`` and request are kept)."""
        ...

    def save_transition(
        self, record: TaskRecord, kind: str, data: dict[str, Any], *, owner: str | None = None
    ) -> Awaitable[bool]:
        """The record and its transition event at once: both are stored or neither.

        With ``owner`` the write is *fenced*: it happens only while ``owner`` holds the task's lease,
        checked atomically with it; False (nothing written) when another owner took the lease or
        nobody holds it. A lease that expired but that nobody took is still ``owner``'s."""
        ...

    def finish_task(
        self, record: TaskRecord, kind: str, data: dict[str, Any], *, owner: str | None = None
    ) -> Awaitable[bool]:
        """The end of a task's run at once: its final record and event (as :meth:`save_transition`,
        fenced on ``owner``'s lease when given), the dead-letter entry of a failed task (its error as
        the reason) and its model usage added to its tenant's totals and to the tenant's usage of the
        UTC day of its ``finished_at``. All of it is stored or none. Raises ValueError (when called)
        for a record that is not final."""
        ...

    async def get_task(self, task_id: str) -> TaskRecord | None: ...

    async def get_request(self, task_id: str) -> TaskRequest | None:
        """The request the task was created with (None for an unknown task or one saved without)."""
        ...

    async def list_tasks(
        self,
        status: TaskStatus | None = None,
        limit: int = TASK_LIST_LIMIT,
        *,
        tenant: str | None = None,
        created_after: datetime | None = None,
        cursor: TaskCursor | None = None,
    ) -> list[TaskRecord]:
        """Records, newest first (by when they were first stored; ties: greater id first), at most
        ``limit``: only ``tenant``'s, only those created after ``created_after``, only those after
        ``cursor`` in this order, when given."""
        ...

    async def unfinished(self) -> list[ResumableTask]:
        """Tasks not in a final state that have a request, oldest first. Takes no lease: orchestrators
        that share a store use :meth:`claimable_unfinished`."""
        ...

    def append_event(self, task_id: str, kind: str, data: dict[str, Any]) -> Awaitable[None]: ...

    async def events(self, task_id: str, after_id: int | None = None) -> list[TaskEvent]:
        """The task's events in the order written, each with its ``id`` (increasing in write order,
        across all tasks); with ``after_id``, only those written after the event of that id."""
        ...

    async def event_feed(
        self, after_id: int | None = None, *, tenant: str | None = None, limit: int = EVENT_FEED_LIMIT
    ) -> list[FeedEvent]:
        """The events of every task (only of ``tenant``'s tasks when given), in id order, each with
        its task id and tenant: the first ``limit`` written after the event ``after_id``; without
        ``after_id``, the last ``limit`` written (the feed's tail). Events of a task that has no
        record are left out. ValueError for ``limit < 1``."""
        ...

    # -- feedback -----------------------------------------------------------------------------------

    async def add_feedback(self, feedback: TaskFeedback) -> TaskFeedback:
        """Store a user's feedback on a task; the stored one (its ``id`` filled, increasing)."""
        ...

    async def feedback(self, task_id: str) -> list[TaskFeedback]:
        """The task's feedback, oldest first."""
        ...

    # -- step results and usage ---------------------------------------------------------------------

    def save_step_result(self, task_id: str, result: StepResult) -> Awaitable[None]:
        """Insert or replace the result stored under ``result.idempotency_key``; a recorded success is
        final (a stale run's later result never replaces it)."""
        ...

    async def get_step_result(self, idempotency_key: str) -> StepResult | None: ...

    def add_tenant_usage(self, tenant: str, usage: ModelUsage, day: date | None = None) -> Awaitable[None]:
        """Add ``usage`` to the tenant's totals and to its usage of ``day`` (UTC; default: today), in
        one transaction."""
        ...

    async def tenant_usage(self, tenant: str) -> ModelUsage:
        """The tenant's totals (zero for a tenant never charged)."""
        ...

    async def tenant_usage_on(self, tenant: str, day: date) -> ModelUsage:
        """The tenant's usage of one UTC day (zero for a day it was not charged): the tasks that
        finished that day, and :meth:`add_tenant_usage` calls for it."""
        ...

    # -- leases: one runner per task among many orchestrators ---------------------------------------

    async def acquire_lease(
        self, task_id: str, owner: str, ttl_s: float, now: datetime | None = None
    ) -> bool:
        """Take or extend the lease on ``task_id`` until ``now + ttl_s``: True when it is ``owner``'s
        now (it was absent, expired, or already ``owner``'s), False when another owner holds it.
        ValueError for ``ttl_s <= 0``."""
        ...

    async def renew_leases(self, owner: str, ttl_s: float, now: datetime | None = None) -> int:
        """Extend every lease held by ``owner`` to ``now + ttl_s``; return how many. A lease that
        expired but that no one else took is still ``owner``'s and is renewed too."""
        ...

    async def release_lease(self, task_id: str, owner: str) -> bool:
        """Give the lease up; False when ``owner`` did not hold it (another's lease is left alone)."""
        ...

    async def lease_owner(self, task_id: str, now: datetime | None = None) -> str | None:
        """Who holds the lease on ``task_id``; None when absent or expired at ``now``."""
        ...

    async def claimable_unfinished(
        self, owner: str, ttl_s: float, now: datetime | None = None, limit: int = CLAIM_LIMIT
    ) -> list[ResumableTask]:
        """Unfinished tasks (with a request) whose lease is absent or expired, oldest first, each
        leased to ``owner`` until ``now + ttl_s`` before it is returned: orchestrators that call this
        at once get disjoint tasks."""
        ...

    # -- dead-letter queue --------------------------------------------------------------------------

    async def dead_letter(self, record: TaskRecord, reason: str) -> None:
        """Put the task in the dead-letter queue (again: its entry is replaced, ``created_at`` too)."""
        ...

    async def dlq_list(self, tenant: str | None = None, limit: int = DLQ_LIST_LIMIT) -> list[DlqEntry]:
        """Dead-lettered tasks, newest first (ties: by task id)."""
        ...

    async def dlq_get(self, task_id: str) -> DlqDetail | None: ...

    async def dlq_remove(self, task_id: str) -> bool:
        """Take the task out of the dead-letter queue; False when it was not there."""
        ...

    async def dlq_size(self) -> int:
        """How many tasks the dead-letter queue holds (one ``COUNT``: the metrics poll it)."""
        ...

    # -- idempotency keys and approvals -------------------------------------------------------------

    async def claim_idempotency_key(
        self, tenant: str, key: str, body_sha256: str, task_id: str
    ) -> IdempotencyClaim:
        """Bind ``(tenant, key)`` to ``task_id`` unless it is bound already, atomically."""
        ...

    async def decide_approval(
        self,
        task_id: str,
        step_id: str,
        decision: ApprovalVerdict,
        decided_by: str,
        reason: str | None = None,
    ) -> bool:
        """Record the decision on a step that waits for approval; False when one was recorded before
        (the first decision wins). ValueError for a decision that is not one of
        :data:`~officeray.contracts.APPROVAL_VERDICTS`."""
        ...

    async def get_approval(self, task_id: str, step_id: str) -> ApprovalDecision | None: ...

    async def decide_review(
        self, task_id: str, iteration: int, decision: ReviewDecisionKind, decided_by: str, feedback: str = ""
    ) -> bool:
        """Record a person's decision on the escalated results of round ``iteration``; False when that
        round was decided before (the first decision wins). ValueError for a decision that is not one
        of :data:`~officeray.contracts.REVIEW_DECISIONS`."""
        ...

    async def get_review_decision(self, task_id: str, iteration: int) -> ReviewDecision | None: ...

    async def clear_review_decisions(self, task_id: str) -> int:
        """Delete every review decision on ``task_id`` (a DLQ retry: its rounds wait for new
        decisions); how many there were."""
        ...

    # -- API keys -------------------------------------------------------------------------------------

    async def create_api_key(self, record: ApiKeyRecord) -> bool:
        """Store a new key (:func:`~officeray.auth.mint_key`'s record); False (nothing changed) when a
        key with its id exists."""
        ...

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        """The key's record, revoked or not (None for an unknown id)."""
        ...

    async def list_api_keys(self, tenant: str | None = None) -> list[ApiKeyRecord]:
        """Every key, revoked ones too, oldest first (ties: by id); only ``tenant``'s when given."""
        ...

    async def revoke_api_key(self, key_id: str, now: datetime | None = None) -> bool:
        """Revoke the key at ``now``: it authenticates nothing from then on. False for an unknown or
        already revoked key (its ``revoked_at`` is kept)."""
        ...

    async def count_api_keys(self) -> int:
        """How many keys are active (not revoked)."""
        ...

    # -- webhook outbox (written with the transitions it announces: officeray.store.outbox) ------------

    async def claim_webhooks(
        self, owner: str, lease_s: float, now: datetime | None = None, limit: int = WEBHOOK_CLAIM_LIMIT
    ) -> list[WebhookDelivery]:
        """Pending deliveries due at ``now`` that nobody holds (or whose lease expired), soonest due
        first, each leased to ``owner`` until ``now + lease_s`` before it is returned: claimers that
        call this at once get disjoint deliveries. ValueError for ``lease_s <= 0``."""
        ...

    async def record_webhook_attempt(
        self,
        delivery_id: str,
        owner: str,
        attempt: WebhookAttempt,
        status: DeliveryStatus,
        next_attempt_at: datetime | None = None,
        reason: str | None = None,
    ) -> bool:
        """Record one attempt and the delivery's new state at once, and give its lease up: ``pending``
        (tried again at ``next_attempt_at``), ``delivered``, ``given_up`` or ``not_sent`` (with
        ``reason``). False (nothing recorded) when ``owner`` does not hold the delivery's lease any
        more, or it is final. ValueError for a pending outcome without ``next_attempt_at``, or a final
        one with it."""
        ...

    async def webhook_deliveries(self, task_id: str) -> list[WebhookDelivery]:
        """The task's webhook deliveries, oldest first, with their attempts in order."""
        ...

    async def webhook_backlog(self) -> int:
        """How many deliveries are ``pending`` (due or waiting for their next attempt): one ``COUNT``
        on the outbox's status index, which the metrics poll."""
        ...

    # -- the trace store -----------------------------------------------------------------------------

    async def add_spans(self, spans: Sequence[SpanRecord], now: datetime | None = None) -> int:
        """Store a batch of finished spans in one transaction (written at ``now``); how many."""
        ...

    async def task_spans(
        self, task_id: str, trace_id: str | None = None, limit: int = TASK_SPANS_LIMIT
    ) -> list[SpanRecord]:
        """The spans of a task (those recording its id, and with ``trace_id`` those of that trace that
        record no task), ordered by start; at most ``limit``."""
        ...

    async def recent_spans(self, since: datetime, limit: int = RECENT_SPANS_LIMIT) -> list[SpanRecord]:
        """Spans written at or after ``since``, newest written first; at most ``limit``."""
        ...

    async def prune_spans(self, older_than: datetime, max_spans: int) -> int:
        """Delete the spans written before ``older_than``, then the oldest beyond ``max_spans``; how
        many were deleted."""
        ...

    # -- the memory (officeray.store.memory) -----------------------------------------------------------
    # The columns ``rating``, ``encoder`` and ``vector`` are the truth about an entry; answers marked
    # "no vectors" carry ``vector=None`` (their ``encoder`` is still the stored one).

    async def add_memory_entry(self, entry: MemoryEntry) -> MemoryEntry:
        """Store a new entry; the stored one, with its ``seq`` (increasing, never reused; ``entry.seq``
        is ignored). An entry whose ``entry_id`` is stored already is not stored again: the stored
        one is returned as it is."""
        ...

    async def memory_entry(self, entry_id: str) -> MemoryEntry | None:
        """One entry, with its vector (None for an unknown id)."""
        ...

    async def memory_entries_by_seq(self, seqs: Sequence[int]) -> list[MemoryEntry]:
        """The entries of ``seqs``, in that order, without vectors; unknown ones are left out."""
        ...

    async def memory_entries(
        self,
        *,
        tenant: str | None = None,
        after_seq: int = 0,
        limit: int = MEMORY_PAGE_LIMIT,
        with_vectors: bool = True,
        missing_encoder: str | None = None,
    ) -> list[MemoryEntry]:
        """A page of entries in ascending ``seq`` after ``after_seq``, at most ``limit``: only
        ``tenant``'s when given; with ``missing_encoder``, only those with no vector or a vector of
        another encoder (what must be embedded again). ValueError for ``limit < 1``."""
        ...

    async def task_memory(self, task_id: str) -> list[MemoryEntry]:
        """The task's entries in ``seq`` order, without vectors."""
        ...

    async def rate_memory(self, task_id: str, delta: int) -> list[MemoryEntry]:
        """Add ``delta`` to the rating of each of the task's entries, at once; the changed entries in
        ``seq`` order, without vectors (none for a task without entries)."""
        ...

    async def set_memory_vectors(self, vectors: Mapping[str, tuple[bytes, str]]) -> int:
        """Store ``entry_id -> (vector bytes, encoder)`` in one transaction; how many entries were
        updated (unknown ids are left out)."""
        ...

    async def delete_memory(
        self, *, entry_id: str | None = None, task_id: str | None = None, tenant: str | None = None
    ) -> list[MemoryEntry]:
        """Delete one entry (``entry_id``), a task's entries (``task_id``) or a tenant's
        (``tenant`` alone), at once; with ``entry_id`` or ``task_id``, ``tenant`` is a guard: only
        the tenant's entries are deleted. The deleted entries in ``seq`` order, without vectors.
        ValueError unless exactly one of ``entry_id``, ``task_id``, ``tenant`` selects."""
        ...

    async def memory_state(self) -> dict[str, MemoryTenantState]:
        """Per tenant that has entries: how many, and the greatest ``seq``."""
        ...

    # -- task workspaces (officeray.store.workspace) ---------------------------------------------------

    async def workspace_files(self, task_id: str) -> list[WorkspaceFile]:
        """The files of the task's workspace, without contents, by path."""
        ...

    async def workspace_file(self, task_id: str, path: str) -> tuple[WorkspaceFile, bytes] | None:
        """One file of the task's workspace with its content (None when there is no such file)."""
        ...

    async def workspace_contents(self, task_id: str) -> dict[str, bytes]:
        """Every file of the task's workspace: path -> content."""
        ...

    async def apply_workspace_changes(
        self,
        task_id: str,
        tenant: str,
        step_id: str,
        changes: WorkspaceChanges,
        caps: WorkspaceCaps,
        now: datetime | None = None,
    ) -> list[WorkspaceFile]:
        """Write one step's changes to the task's workspace in one transaction, after checking
        ``caps`` (the task's files and bytes, the tenant's bytes over all its tasks): over a cap
        raises :class:`~officeray.workspaces.WorkspaceLimitError` and nothing is written. Answers
        the task's files afterwards."""
        ...

    async def workspace_tenant_bytes(self, tenant: str) -> int:
        """The bytes the workspaces of the tenant's tasks hold together."""
        ...

    async def delete_expired_workspaces(self, finished_before: datetime) -> int:
        """Delete the workspaces of tasks final and last updated before ``finished_before`` (and of
        tasks the store does not have); how many files were deleted."""
        ...

    def close(self) -> None: ...


def as_utc(moment: datetime | None) -> datetime:
    """An aware UTC datetime (``utcnow()`` for None; a naive one is taken as UTC). SQLite stores
    datetimes without their offset, so every value bound for comparison is UTC."""
    if moment is None:
        return utcnow()
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def positive_ttl(ttl_s: float) -> timedelta:
    """``ttl_s`` as a duration; ValueError unless it is positive."""
    if ttl_s <= 0:
        raise ValueError(f"ttl_s must be positive, not {ttl_s}")
    return timedelta(seconds=ttl_s)


def check_feed_limit(limit: int) -> None:
    """ValueError unless ``limit`` (of :meth:`TaskStore.event_feed`) is at least 1."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")


def check_memory_page(limit: int) -> None:
    """ValueError unless ``limit`` (of :meth:`TaskStore.memory_entries`) is at least 1."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")


def check_memory_selector(entry_id: str | None, task_id: str | None, tenant: str | None) -> None:
    """ValueError unless :meth:`TaskStore.delete_memory`'s selectors name exactly one entry, one task
    or one tenant (``tenant`` may guard ``entry_id`` or ``task_id``)."""
    chosen = [name for name, value in (("entry_id", entry_id), ("task_id", task_id)) if value is not None]
    if len(chosen) > 1 or (not chosen and tenant is None):
        raise ValueError(
            "delete_memory takes exactly one of entry_id, task_id or tenant (tenant may guard the "
            f"others), not {chosen or 'none'}"
        )


def check_verdict(decision: str) -> None:
    """ValueError unless ``decision`` is one of :data:`~officeray.contracts.APPROVAL_VERDICTS`."""
    if decision not in APPROVAL_VERDICTS:
        raise ValueError(f"decision must be one of {APPROVAL_VERDICTS}, not {decision!r}")


def check_review_decision(decision: str) -> None:
    """ValueError unless ``decision`` is one of :data:`~officeray.contracts.REVIEW_DECISIONS`."""
    if decision not in REVIEW_DECISIONS:
        raise ValueError(f"decision must be one of {REVIEW_DECISIONS}, not {decision!r}")


def require_final(record: TaskRecord) -> None:
    """ValueError unless ``record`` is final (what the end of a run writes)."""
    if not record.status.is_final:
        raise ValueError(f"the end of a run needs a final record, not a {record.status.value} one")
