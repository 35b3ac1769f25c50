"""The store on SQLAlchemy Core: :class:`SqlStore`, a SQLite file or a PostgreSQL database.

It implements :class:`~officeray.store.api.TaskStore` and nothing else: there is no synchronous
API. Every caller in production is async (the orchestrator actor, the gateway), so reads run in a
worker thread (``asyncio.to_thread``) and writes either go through the group-commit writer thread
(:class:`~officeray.store.writer.GroupCommitter`: the hot writes of a task's run, the lease changes
of a submission or a retry, idempotency claims) or, for the rare writes of several statements or of
no task in particular (claiming unfinished tasks, renewing leases, the dead-letter queue, approvals),
run in their own transaction in a worker thread. An event loop is never blocked by the database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import date, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy.engine import Connection

from officeray.auth import ApiKeyRecord
from officeray.contracts import (
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
from officeray.store.approvals import ApprovalRepository
from officeray.store.dlq import DlqRepository, dlq_row
from officeray.store.engine import (
    POSTGRES_CONNECT_TIMEOUT_S,
    SQLITE_BUSY_TIMEOUT_MS,
    make_engine,
    normalized_url,
    read_connection,
    write_transaction,
)
from officeray.store.feedback import FeedbackRepository, feedback_row
from officeray.store.idempotency import IdempotencyRepository
from officeray.store.keys import ApiKeyRepository, api_key_row
from officeray.store.leases import LeaseRepository, lease_row
from officeray.store.memory import MemoryRepository, memory_row
from officeray.store.outbox import OutboxRepository, WebhookDue, check_outcome, webhook_due
from officeray.store.reviews import ReviewDecisionRepository
from officeray.store.schema import applied_versions, migrate, tasks_table
from officeray.store.spans import SpanRepository, span_rows
from officeray.store.steps import StepResultRepository, step_row
from officeray.store.tasks import TaskRepository, event_row, new_task_row, task_row
from officeray.store.usage import TenantUsageRepository
from officeray.store.workspace import WorkspaceRepository
from officeray.store.writer import GroupCommitter, Job, LeaseChange, Rows, Work, fenced
from officeray.telemetry import SpanRecord
from officeray.webhooks import DeliveryStatus, WebhookAttempt, WebhookDelivery
from officeray.workspaces import WorkspaceCaps, WorkspaceChanges, WorkspaceFile

P = ParamSpec("P")
T = TypeVar("T")


class SqlStore:
    """The store behind every process of a deployment; safe to open from several processes.

    ``url``: ``sqlite:///PATH`` (the folder is created) or ``postgresql+psycopg://...`` (plain
    ``postgresql://`` means the same). Opening applies missing
    :data:`~officeray.store.schema.MIGRATIONS`. Every method raises
    :class:`~officeray.errors.StoreUnavailableError` when the database cannot be reached and
    :class:`~officeray.errors.StoreError` on other database failures.
    """

    def __init__(
        self,
        url: str,
        *,
        sqlite_busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS,
        connect_timeout_s: int = POSTGRES_CONNECT_TIMEOUT_S,
    ) -> None:
        self.url = url
        self._engine = make_engine(normalized_url(url), sqlite_busy_timeout_ms, connect_timeout_s)
        try:
            migrate(self._engine)
        except BaseException:
            self._engine.dispose()
            raise
        dialect = self._engine.dialect.name
        self._tasks = TaskRepository(dialect)
        self._steps = StepResultRepository(dialect)
        self._usage = TenantUsageRepository(dialect)
        self._leases = LeaseRepository(dialect)
        self._dlq = DlqRepository(dialect)
        self._idempotency = IdempotencyRepository(dialect)
        self._approvals = ApprovalRepository(dialect)
        self._reviews = ReviewDecisionRepository(dialect)
        self._api_keys = ApiKeyRepository(dialect)
        self._memory = MemoryRepository(dialect)
        self._workspace = WorkspaceRepository(dialect)
        self._writer = GroupCommitter(self._engine, self._leases.holders)

    # -- how work reaches the database ---------------------------------------------------------------

    def _read_now(
        self, read: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        with read_connection(self._engine) as conn:
            return read(conn, *args, **kwargs)

    async def _read(
        self, read: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``read(conn, ...)`` on a connection of its own, in a worker thread."""
        return await asyncio.to_thread(partial(self._read_now, read, *args, **kwargs))

    def _write_now(self, write: Callable[[Connection], T]) -> T:
        with write_transaction(self._engine) as conn:
            return write(conn)

    async def _write_alone(self, write: Callable[[Connection], T]) -> T:
        """``write(conn)`` in a transaction of its own, in a worker thread (not group-committed)."""
        return await asyncio.to_thread(self._write_now, write)

    def _submit(self, job: Job) -> asyncio.Future[Any]:
        """``job`` through the group-commit writer."""
        return self._writer.submit(job)

    # -- tasks and events ----------------------------------------------------------------------------
    # The hot writes serialize their rows when called, on the caller's thread, and return the
    # awaitable of the write: serializing costs less than a deep copy of the record.

    def create_task(self, record: TaskRecord, request: TaskRequest) -> Awaitable[bool]:
        return self._submit(partial(self._tasks.create_on, row=new_task_row(record, request)))

    async def create_leased_task(
        self, record: TaskRecord, request: TaskRequest, owner: str, ttl_s: float
    ) -> bool:
        now = utcnow()
        lease = lease_row(record.task_id, owner, ttl_s, now)
        work = partial(self._create_leased_on, lease=lease, now=now, row=new_task_row(record, request))
        created: bool = await self._submit(LeaseChange(record.task_id, work))
        return created

    def _create_leased_on(
        self, conn: Connection, lease: dict[str, Any], now: datetime, row: dict[str, Any]
    ) -> bool:
        # The task first: when it exists already (a repeated submission reaches the same owner), its
        # lease, which the run in progress may hold, is left exactly as it is.
        if not self._tasks.create_on(conn, row):
            return False
        if self._leases.acquire_on(conn, lease, now):
            return True
        # another owner holds a lease on an id that had no task (a leftover): create nothing
        conn.execute(tasks_table.delete().where(tasks_table.c.task_id == row["task_id"]))
        return False

    def save_task(self, record: TaskRecord) -> Awaitable[None]:
        return self._submit(partial(self._tasks.save_on, row=task_row(record)))

    def save_transition(
        self, record: TaskRecord, kind: str, data: dict[str, Any], *, owner: str | None = None
    ) -> Awaitable[bool]:
        row, event = task_row(record), event_row(record.task_id, kind, data)
        webhook = webhook_due(record, kind, data)
        work: Work
        if webhook is None:  # most transitions: the hot path, written with its neighbours
            work = Rows("transition", (row, event), self._tasks.transitions_on, result=True)
        else:
            work = partial(self._transition_on, row=row, event=event, webhook=webhook)
        return self._submit(fenced(work, record.task_id, owner))

    def _transition_on(
        self, conn: Connection, row: dict[str, Any], event: dict[str, Any], webhook: WebhookDue | None
    ) -> bool:
        """The record, its event and the webhook delivery it causes (if the task has a webhook URL)."""
        self._tasks.save_on(conn, row)
        event_id = self._tasks.event_on(conn, event)
        if webhook is not None:
            OutboxRepository.put_on(conn, webhook, event_id)
        return True

    def finish_task(
        self, record: TaskRecord, kind: str, data: dict[str, Any], *, owner: str | None = None
    ) -> Awaitable[bool]:
        require_final(record)
        failed = record.status == TaskStatus.FAILED
        work = partial(
            self._finish_on,
            row=task_row(record),
            event=event_row(record.task_id, kind, data),
            webhook=webhook_due(record, kind, data),
            dead_letter=dlq_row(record, record.error or "failed") if failed else None,
            usage=record.usage.model_dump() if record.usage.calls else None,
            tenant=record.tenant,
            day=as_utc(record.finished_at).date(),
        )
        return self._submit(fenced(work, record.task_id, owner))

    def _finish_on(
        self,
        conn: Connection,
        row: dict[str, Any],
        event: dict[str, Any],
        webhook: WebhookDue | None,
        dead_letter: dict[str, Any] | None,
        usage: dict[str, Any] | None,
        tenant: str,
        day: date,
    ) -> bool:
        self._transition_on(conn, row, event, webhook)
        if dead_letter is not None:
            self._dlq.put_on(conn, dead_letter)
        if usage is not None:
            self._usage.add_on(conn, tenant, usage, day)
        return True

    async def get_task(self, task_id: str) -> TaskRecord | None:
        return await self._read(self._tasks.get, task_id)

    async def get_request(self, task_id: str) -> TaskRequest | None:
        return await self._read(self._tasks.get_request, task_id)

    async def list_tasks(
        self,
        status: TaskStatus | None = None,
        limit: int = TASK_LIST_LIMIT,
        *,
        tenant: str | None = None,
        created_after: datetime | None = None,
        cursor: TaskCursor | None = None,
    ) -> list[TaskRecord]:
        return await self._read(self._tasks.list_records, status, limit, tenant, created_after, cursor)

    async def unfinished(self) -> list[ResumableTask]:
        return await self._read(self._tasks.unfinished)

    def append_event(self, task_id: str, kind: str, data: dict[str, Any]) -> Awaitable[None]:
        return self._submit(partial(self._tasks.event_on, event=event_row(task_id, kind, data)))

    async def events(self, task_id: str, after_id: int | None = None) -> list[TaskEvent]:
        return await self._read(self._tasks.events, task_id, after_id)

    async def event_feed(
        self, after_id: int | None = None, *, tenant: str | None = None, limit: int = EVENT_FEED_LIMIT
    ) -> list[FeedEvent]:
        check_feed_limit(limit)
        return await self._read(self._tasks.event_feed, after_id, tenant, limit)

    # -- feedback ------------------------------------------------------------------------------------

    async def add_feedback(self, feedback: TaskFeedback) -> TaskFeedback:
        return await self._write_alone(partial(FeedbackRepository.add_on, row=feedback_row(feedback)))

    async def feedback(self, task_id: str) -> list[TaskFeedback]:
        return await self._read(FeedbackRepository.of_task, task_id)

    # -- step results and usage ----------------------------------------------------------------------

    def save_step_result(self, task_id: str, result: StepResult) -> Awaitable[None]:
        return self._submit(Rows("step_result", (step_row(task_id, result),), self._steps.save_many_on))

    async def get_step_result(self, idempotency_key: str) -> StepResult | None:
        return await self._read(self._steps.get, idempotency_key)

    def add_tenant_usage(self, tenant: str, usage: ModelUsage, day: date | None = None) -> Awaitable[None]:
        day = day or as_utc(None).date()
        return self._submit(partial(self._usage.add_on, tenant=tenant, usage=usage.model_dump(), day=day))

    async def tenant_usage(self, tenant: str) -> ModelUsage:
        return await self._read(self._usage.get, tenant)

    async def tenant_usage_on(self, tenant: str, day: date) -> ModelUsage:
        return await self._read(self._usage.get_on, tenant, day)

    # -- leases --------------------------------------------------------------------------------------

    async def acquire_lease(
        self, task_id: str, owner: str, ttl_s: float, now: datetime | None = None
    ) -> bool:
        moment = as_utc(now)
        work = partial(self._leases.acquire_on, row=lease_row(task_id, owner, ttl_s, moment), now=moment)
        acquired: bool = await self._submit(LeaseChange(task_id, work))
        return acquired

    async def renew_leases(self, owner: str, ttl_s: float, now: datetime | None = None) -> int:
        expires_at = as_utc(now) + positive_ttl(ttl_s)
        return await self._write_alone(partial(self._leases.renew_on, owner=owner, expires_at=expires_at))

    async def release_lease(self, task_id: str, owner: str) -> bool:
        work = partial(self._leases.release_on, task_id=task_id, owner=owner)
        released: bool = await self._submit(LeaseChange(task_id, work))
        return released

    async def lease_owner(self, task_id: str, now: datetime | None = None) -> str | None:
        return await self._read(self._leases.owner, task_id, as_utc(now))

    async def claimable_unfinished(
        self, owner: str, ttl_s: float, now: datetime | None = None, limit: int = CLAIM_LIMIT
    ) -> list[ResumableTask]:
        moment = as_utc(now)
        claim = partial(
            self._leases.claim_on,
            owner=owner,
            expires_at=moment + positive_ttl(ttl_s),
            now=moment,
            limit=limit,
        )
        return await self._write_alone(claim)

    # -- dead-letter queue ---------------------------------------------------------------------------

    async def dead_letter(self, record: TaskRecord, reason: str) -> None:
        await self._write_alone(partial(self._dlq.put_on, row=dlq_row(record, reason)))

    async def dlq_list(self, tenant: str | None = None, limit: int = DLQ_LIST_LIMIT) -> list[DlqEntry]:
        return await self._read(self._dlq.entries, tenant, limit)

    async def dlq_get(self, task_id: str) -> DlqDetail | None:
        return await self._read(self._dlq.get, task_id)

    async def dlq_remove(self, task_id: str) -> bool:
        return await self._write_alone(partial(self._dlq.remove_on, task_id=task_id))

    async def dlq_size(self) -> int:
        return await self._read(self._dlq.size)

    # -- idempotency keys and approvals --------------------------------------------------------------

    async def claim_idempotency_key(
        self, tenant: str, key: str, body_sha256: str, task_id: str
    ) -> IdempotencyClaim:
        work = partial(
            self._idempotency.claim_on, tenant=tenant, key=key, body_sha256=body_sha256, task_id=task_id
        )
        claimed: IdempotencyClaim = await self._submit(work)
        return claimed

    async def decide_approval(
        self,
        task_id: str,
        step_id: str,
        decision: ApprovalVerdict,
        decided_by: str,
        reason: str | None = None,
    ) -> bool:
        check_verdict(decision)
        work = partial(
            self._approvals.decide_on,
            task_id=task_id,
            step_id=step_id,
            decision=decision,
            decided_by=decided_by,
            reason=reason,
        )
        return await self._write_alone(work)

    async def get_approval(self, task_id: str, step_id: str) -> ApprovalDecision | None:
        return await self._read(self._approvals.get, task_id, step_id)

    async def decide_review(
        self, task_id: str, iteration: int, decision: ReviewDecisionKind, decided_by: str, feedback: str = ""
    ) -> bool:
        check_review_decision(decision)
        work = partial(
            self._reviews.decide_on,
            task_id=task_id,
            iteration=iteration,
            decision=decision,
            decided_by=decided_by,
            feedback=feedback,
        )
        return await self._write_alone(work)

    async def get_review_decision(self, task_id: str, iteration: int) -> ReviewDecision | None:
        return await self._read(self._reviews.get, task_id, iteration)

    async def clear_review_decisions(self, task_id: str) -> int:
        return await self._write_alone(partial(self._reviews.clear_on, task_id=task_id))

    # -- API keys ------------------------------------------------------------------------------------

    async def create_api_key(self, record: ApiKeyRecord) -> bool:
        return await self._write_alone(partial(self._api_keys.create_on, row=api_key_row(record)))

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        return await self._read(self._api_keys.get, key_id)

    async def list_api_keys(self, tenant: str | None = None) -> list[ApiKeyRecord]:
        return await self._read(self._api_keys.records, tenant)

    async def revoke_api_key(self, key_id: str, now: datetime | None = None) -> bool:
        return await self._write_alone(partial(self._api_keys.revoke_on, key_id=key_id, now=as_utc(now)))

    async def count_api_keys(self) -> int:
        return await self._read(self._api_keys.count_active)

    # -- webhook outbox ------------------------------------------------------------------------------

    async def claim_webhooks(
        self, owner: str, lease_s: float, now: datetime | None = None, limit: int = WEBHOOK_CLAIM_LIMIT
    ) -> list[WebhookDelivery]:
        moment = as_utc(now)
        claim = partial(
            OutboxRepository.claim_on,
            owner=owner,
            expires_at=moment + positive_ttl(lease_s),
            now=moment,
            limit=limit,
        )
        return await self._write_alone(claim)

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
        work = partial(
            OutboxRepository.record_on,
            delivery_id=delivery_id,
            owner=owner,
            attempt=attempt,
            status=status,
            next_attempt_at=next_attempt_at,
            reason=reason,
        )
        return await self._write_alone(work)

    async def webhook_deliveries(self, task_id: str) -> list[WebhookDelivery]:
        return await self._read(OutboxRepository.deliveries, task_id)

    async def webhook_backlog(self) -> int:
        return await self._read(OutboxRepository.pending_count)

    # -- the trace store -----------------------------------------------------------------------------

    async def add_spans(self, spans: Sequence[SpanRecord], now: datetime | None = None) -> int:
        return await self._write_alone(partial(SpanRepository.add_on, rows=span_rows(spans, now)))

    async def task_spans(
        self, task_id: str, trace_id: str | None = None, limit: int = TASK_SPANS_LIMIT
    ) -> list[SpanRecord]:
        return await self._read(SpanRepository.of_task, task_id, trace_id, limit)

    async def recent_spans(self, since: datetime, limit: int = RECENT_SPANS_LIMIT) -> list[SpanRecord]:
        return await self._read(SpanRepository.since, since, limit)

    async def prune_spans(self, older_than: datetime, max_spans: int) -> int:
        return await self._write_alone(
            partial(SpanRepository.prune_on, older_than=older_than, max_spans=max_spans)
        )

    # -- the memory ----------------------------------------------------------------------------------

    async def add_memory_entry(self, entry: MemoryEntry) -> MemoryEntry:
        return await self._write_alone(partial(self._memory.add_on, row=memory_row(entry)))

    async def memory_entry(self, entry_id: str) -> MemoryEntry | None:
        return await self._read(MemoryRepository.get, entry_id)

    async def memory_entries_by_seq(self, seqs: Sequence[int]) -> list[MemoryEntry]:
        return await self._read(MemoryRepository.by_seq, list(seqs))

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
        return await self._read(
            MemoryRepository.page, tenant, after_seq, limit, with_vectors, missing_encoder
        )

    async def task_memory(self, task_id: str) -> list[MemoryEntry]:
        return await self._read(MemoryRepository.of_task, task_id)

    async def rate_memory(self, task_id: str, delta: int) -> list[MemoryEntry]:
        return await self._write_alone(
            partial(MemoryRepository.rate_on, task_id=task_id, delta=delta, now=utcnow())
        )

    async def set_memory_vectors(self, vectors: Mapping[str, tuple[bytes, str]]) -> int:
        if not vectors:
            return 0
        work = partial(MemoryRepository.set_vectors_on, vectors=dict(vectors), now=utcnow())
        return await self._write_alone(work)

    async def delete_memory(
        self, *, entry_id: str | None = None, task_id: str | None = None, tenant: str | None = None
    ) -> list[MemoryEntry]:
        check_memory_selector(entry_id, task_id, tenant)
        work = partial(MemoryRepository.delete_on, entry_id=entry_id, task_id=task_id, tenant=tenant)
        return await self._write_alone(work)

    async def memory_state(self) -> dict[str, MemoryTenantState]:
        return await self._read(MemoryRepository.state)

    # -- task workspaces -----------------------------------------------------------------------------

    async def workspace_files(self, task_id: str) -> list[WorkspaceFile]:
        return await self._read(WorkspaceRepository.files, task_id)

    async def workspace_file(self, task_id: str, path: str) -> tuple[WorkspaceFile, bytes] | None:
        return await self._read(WorkspaceRepository.file, task_id, path)

    async def workspace_contents(self, task_id: str) -> dict[str, bytes]:
        return await self._read(WorkspaceRepository.contents, task_id)

    async def apply_workspace_changes(
        self,
        task_id: str,
        tenant: str,
        step_id: str,
        changes: WorkspaceChanges,
        caps: WorkspaceCaps,
        now: datetime | None = None,
    ) -> list[WorkspaceFile]:
        work = partial(
            self._workspace.apply_on,
            task_id=task_id,
            tenant=tenant,
            step_id=step_id,
            changes=changes,
            caps=caps,
            now=as_utc(now),
        )
        return await self._write_alone(work)

    async def workspace_tenant_bytes(self, tenant: str) -> int:
        return await self._read(WorkspaceRepository.tenant_bytes, tenant)

    async def delete_expired_workspaces(self, finished_before: datetime) -> int:
        work = partial(WorkspaceRepository.delete_expired_on, finished_before=as_utc(finished_before))
        return await self._write_alone(work)

    # -- the database --------------------------------------------------------------------------------

    async def schema_version(self) -> int:
        """The newest migration this database has had."""
        return await self._read(lambda conn: max(applied_versions(conn), default=0))

    def close(self) -> None:
        self._writer.close()
        self._engine.dispose()


if TYPE_CHECKING:  # mypy checks that SqlStore implements the store's whole API
    _implements: TaskStore = SqlStore("sqlite://")
