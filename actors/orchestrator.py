"""The orchestrator: an async Ray actor that runs many task workflows at once, durably.

It owns the tool-runner pool and calls the planner and reviewer deployments through their handles;
the store is its memory and its queue:

* ``submit`` writes the task (atomically: one ``task_id`` never runs twice), takes a *lease* on it
  and starts its workflow in the background, bounded by ``workflow.max_concurrent_tasks``;
* a lease is renewed every third of ``workflow.lease_ttl_s`` while the task runs; a task whose lease
  expired (its orchestrator died) is claimed by the next orchestrator that looks
  (``workflow.claim_interval_s``), and resumed from its last checkpoint: its stored plan, and the
  recorded results of steps that already succeeded (they are not run again);
* Ray restarts a crashed orchestrator (``max_restarts=-1``); the new one starts looking at once;
* a task that ends ``failed`` goes to the dead-letter queue; ``retry`` re-queues it from there;
* a step that needs approval waits in the workflow (no runner held) for a decision in the store;
  ``notify_approval`` wakes it at once, and a poll catches decisions written elsewhere.

One orchestrator per cluster by default, found by name (:data:`ORCHESTRATOR_NAME`); more may run
against the same store (leases keep each task on one of them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import zlib
from typing import Any

import ray

from actors.tool_runner import RunnerPool
from officeray.config import Settings
from officeray.contracts import LogLine, ModelUsage, TaskRecord, TaskRequest, TaskStatus, new_id, utcnow
from officeray.errors import StoreUnavailableError, TaskNotFoundError
from officeray.store import SqlStore
from officeray.telemetry import setup_tracing
from officeray.workflow import RunSupersededError, Workflow
from serving.models import ServePlanner, ServeReviewer
from tools_sandbox.catalog import all_tools, input_models
from tools_sandbox.plugins import load_plugins

logger = logging.getLogger(__name__)

ORCHESTRATOR_NAME = "officeray-orchestrator"

ORCHESTRATOR_MAX_CONCURRENCY = 100_000
"""Concurrent actor calls (submit, wait, run) the orchestrator accepts; task workflows themselves
are bounded by ``workflow.max_concurrent_tasks``."""

APPROVAL_POLL_S = 2.0
"""How often a waiting step re-reads the store for a decision made without ``notify_approval``."""

WAIT_POLL_S = 0.2
"""How often ``wait`` re-reads a task that another orchestrator runs."""


class StoreApprovals:
    """The workflow's Approvals port: decisions live in the store; ``notify`` wakes a waiter early."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self._events: dict[tuple[str, str], asyncio.Event] = {}

    def notify(self, task_id: str, step_id: str) -> None:
        event = self._events.get((task_id, step_id))
        if event is not None:
            event.set()

    async def wait(self, task_id: str, step_id: str, timeout_s: float) -> dict[str, Any] | None:
        key = (task_id, step_id)
        event = self._events.setdefault(key, asyncio.Event())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            while True:
                decision = await self.store.get_approval(task_id, step_id)
                if decision is not None:
                    return decision
                remaining = deadline - loop.time()
                if remaining <= 0:
                    # one last look: a decision stored just as the time ran out still counts
                    return await self.store.get_approval(task_id, step_id)
                event.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(remaining, APPROVAL_POLL_S))
        finally:
            self._events.pop(key, None)


class Orchestrator:
    def __init__(
        self,
        settings: Settings,
        planner_handle: Any,
        reviewer_handle: Any,
        ai_tool_handle: Any = None,
        shard: int = 0,
    ) -> None:
        self.settings = settings
        self.owner = f"{orchestrator_name(shard)}@{os.getpid()}/{new_id('life')}"
        """Who holds this actor life's leases (shard name, process, a fresh id per restart)."""
        load_plugins(settings.plugins)
        self.store = SqlStore(settings.store.url)
        self.pool = RunnerPool(settings, ai_tool_handle)
        self.approvals = StoreApprovals(self.store)
        self._tenants: dict[str, str] = {}
        tools = all_tools()
        needs_review = set(settings.workflow.approvals.required_risk_levels)
        self.workflow = Workflow(
            planner=ServePlanner(planner_handle, self._tenant_of),
            reviewer=ServeReviewer(reviewer_handle, self._tenant_of),
            executor=self.pool,
            store=self.store,
            tracer=setup_tracing(settings.telemetry.trace_file, settings.telemetry.service_name),
            tools=input_models(),
            settings=settings.workflow,
            token_budget=settings.models.task_token_budget,
            needs_approval=lambda action: action in tools and tools[action].risk.value in needs_review,
            approvals=self.approvals,
            owner=self.owner,  # every transition is written only while this life holds the task
        )
        self._slots = asyncio.Semaphore(settings.workflow.max_concurrent_tasks)
        self._running: dict[str, asyncio.Task[TaskRecord]] = {}
        self._reserved: dict[str, asyncio.Future[None]] = {}
        self._to_release: set[str] = set()
        self._background: list[asyncio.Future[None]] = []

    # -- life ------------------------------------------------------------------------------------

    def _tenant_of(self, task_id: str) -> str:
        return self._tenants.get(task_id, "default")

    async def ready(self) -> bool:
        """True once the runners are warm (and the lease and claim loops run)."""
        self._ensure_started()
        await self.pool.wait_ready()
        return True

    async def pid(self) -> int:
        """This actor's process id (fault-injection tests kill it)."""
        self._ensure_started()
        return os.getpid()

    async def pool_stats(self) -> dict[str, Any]:
        """The tool-runner pool now (runners, idle, starting, waiting steps, autoscaling totals, and
        why runners cannot be placed, if so)."""
        self._ensure_started()
        return self.pool.stats()

    async def busy_runner_pids(self) -> list[int]:
        """Process ids of the tool runners running a step now (fault-injection tests kill them)."""
        return self.pool.busy_pids()

    def _ensure_started(self) -> None:
        """Start the background loops on the first call of this actor's life."""
        if not self._background:
            self._background = [
                asyncio.ensure_future(self._renew_leases()),
                asyncio.ensure_future(self._claim_unfinished()),
                asyncio.ensure_future(self.pool.wait_ready()),
                asyncio.ensure_future(self.pool.autoscale()),
            ]

    async def _renew_leases(self) -> None:
        """Keep our leases; stop any run whose lease another orchestrator took (we were too slow)."""
        ttl = self.settings.workflow.lease_ttl_s
        while True:
            await asyncio.sleep(ttl / 3)
            try:
                for task_id in list(self._to_release):  # releases that failed while the store was down
                    await self.store.release_lease(task_id, self.owner)
                    self._to_release.discard(task_id)
                await self.store.renew_leases(self.owner, ttl)
                for task_id, running in list(self._running.items()):
                    owner = await self.store.lease_owner(task_id)
                    if owner != self.owner:  # taken (or taken, finished and released) by another
                        logger.warning("task %s: lease held by %s; stopping this run", task_id, owner)
                        running.cancel()
            except Exception:
                logger.exception("could not renew the task leases")

    async def _claim_unfinished(self) -> None:
        """Resume unfinished tasks nobody holds: after a restart, a dead peer, or a DLQ retry."""
        ttl = self.settings.workflow.lease_ttl_s
        while True:
            try:
                for record, request in await self.store.claimable_unfinished(self.owner, ttl):
                    if record.task_id in self._running:
                        continue
                    record.logs.append(LogLine(level="warning", message=f"claimed by {self.owner}"))
                    self._start(request, record)
            except Exception:
                logger.exception("could not claim unfinished tasks")
            await asyncio.sleep(self.settings.workflow.claim_interval_s)

    # -- tasks -----------------------------------------------------------------------------------

    def _start(self, request: TaskRequest, record: TaskRecord) -> bool:
        """Run ``record`` here unless it already runs here or is final; True when started."""
        if record.task_id in self._running or record.status.is_final:
            return False
        self._tenants[record.task_id] = request.tenant
        self._running[record.task_id] = asyncio.ensure_future(self._run(request, record))
        return True

    async def submit(self, request: TaskRequest) -> tuple[TaskRecord, bool]:
        """Persist the task and start it; returns ``(record, created)``.

        The same ``task_id`` submitted twice (even at the same moment, from several gateways) runs
        once: the id is reserved here before any ``await`` and the store's insert is atomic; the
        later submissions get the existing record and ``created=False``.
        """
        self._ensure_started()
        task_id = request.task_id or new_id("task")
        pending = self._reserved.get(task_id)
        if pending is not None:  # the same id is being submitted right now: answer with its outcome
            await asyncio.shield(pending)
            return await self._existing(task_id), False
        self._reserved[task_id] = asyncio.get_running_loop().create_future()
        try:
            record = TaskRecord(task_id=task_id, description=request.description, tenant=request.tenant)
            record.logs.append(LogLine(message=f"accepted by {self.owner}"))
            # Lease and row in one transaction: another orchestrator's claim loop only sees the new
            # task once it exists, and by then it is already held.
            ttl = self.settings.workflow.lease_ttl_s
            if not await self.store.create_leased_task(record, request, self.owner, ttl):
                return await self._existing(task_id), False
            self._start(request, record)
            return record, True
        finally:
            self._reserved.pop(task_id).set_result(None)

    async def _existing(self, task_id: str) -> TaskRecord:
        """The stored task of a duplicate submission; retryable when it is not written yet."""
        existing = await self.store.get_task(task_id)
        if existing is None:
            raise StoreUnavailableError(f"task {task_id!r} is being created by another request; retry")
        return existing

    async def _run(self, request: TaskRequest, record: TaskRecord) -> TaskRecord:
        """Run the task to its end. The workflow writes the end in one transaction (final record,
        dead-letter entry of a failed task, the tenant's usage: ``finish_task``), fenced on our lease."""
        try:
            try:
                async with self._slots:
                    return await self.workflow.run(request, record.task_id, record)
            except RunSupersededError:
                logger.warning("task %s: another orchestrator took it over; this run stops", record.task_id)
                return record
            except Exception as exc:  # the workflow does not raise; this is a last line of defence
                logger.exception("task %s crashed", record.task_id)
                final = record
                final.status = TaskStatus.FAILED
                final.error = f"internal error: {type(exc).__name__}: {exc}"
                final.current_step = None
                final.finished_at = utcnow()
                event = {"status": TaskStatus.FAILED.value, "error": final.error}
                if not await self.store.finish_task(final, "failed", event, owner=self.owner):
                    logger.warning(
                        "task %s: another orchestrator holds it; its crash is not recorded", final.task_id
                    )
                return final
        finally:
            self._running.pop(record.task_id, None)
            self._tenants.pop(record.task_id, None)
            try:
                await self.store.release_lease(record.task_id, self.owner)
            except Exception:
                self._to_release.add(record.task_id)  # released by the renew loop once the store is back

    async def retry(self, task_id: str) -> TaskRecord:
        """Re-run a dead-lettered task from its last good checkpoint (its plan, its succeeded steps)."""
        self._ensure_started()
        entry = await self.store.dlq_get(task_id)
        if entry is None:
            raise TaskNotFoundError(f"task {task_id!r} is not in the dead-letter queue")
        record = await self.store.get_task(task_id)
        request = await self.store.get_request(task_id)
        if record is None or request is None:
            raise TaskNotFoundError(task_id)
        if task_id in self._running or not record.status.is_final:
            return record
        if not await self.store.acquire_lease(task_id, self.owner, self.settings.workflow.lease_ttl_s):
            return record  # another orchestrator holds it
        try:
            # back to the state it failed in: the workflow resumes from there (a task that failed
            # before executing plans again; one that failed in a round re-runs that round's plan)
            record.status = TaskStatus.EXECUTING if record.plan is not None else TaskStatus.QUEUED
            record.error = None
            record.finished_at = None
            record.iterations = max(1, record.iterations)
            record.run_started_at = utcnow()  # the duration cap counts from this run
            record.counters = record.counters.model_copy(update={"step_attempts": 0, "model_calls": 0})
            record.usage = ModelUsage()  # usage already billed to the tenant is not billed again
            record.logs.append(LogLine(level="warning", message="re-queued from the dead-letter queue"))
            await self.store.save_task(record)  # not final any more: then out of the queue
            if not await self.store.dlq_remove(task_id):
                raise TaskNotFoundError(f"task {task_id!r} is not in the dead-letter queue")
            await self.store.append_event(task_id, "retried_from_dlq", {"status": record.status.value})
        except BaseException:
            await self.store.release_lease(task_id, self.owner)
            raise
        self._start(request, record)
        return record

    async def claim_idempotency_key(
        self, tenant: str, key: str, body_sha256: str, task_id: str
    ) -> tuple[str, bool]:
        """:meth:`SqlStore.claim_idempotency_key`, written by this orchestrator's store writer: on
        SQLite one process writing (with group commit) beats several contending for the file lock."""
        return await self.store.claim_idempotency_key(tenant, key, body_sha256, task_id)

    async def notify_approval(self, task_id: str, step_id: str) -> None:
        """A decision for ``task_id``/``step_id`` was stored: wake the step waiting for it."""
        self.approvals.notify(task_id, step_id)

    async def wait(self, task_id: str, timeout_s: float | None = None) -> TaskRecord:
        """The final record of ``task_id`` (waits for it while it runs here)."""
        self._ensure_started()
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        running = self._running.get(task_id)
        if running is not None:
            with contextlib.suppress(asyncio.CancelledError):  # our run stopped: another holds it
                await asyncio.wait_for(asyncio.shield(running), timeout_s)
        while True:
            record = await self.store.get_task(task_id)
            if record is None:
                raise TaskNotFoundError(task_id)
            if record.status.is_final or task_id in self._running:
                return record if record.status.is_final else await self.wait(task_id, timeout_s)
            if deadline is not None and loop.time() > deadline:
                raise TimeoutError(f"task {task_id} did not finish in {timeout_s}s")
            await asyncio.sleep(WAIT_POLL_S)  # run by another orchestrator (or about to be claimed)

    async def run(self, request: TaskRequest, timeout_s: float | None = None) -> TaskRecord:
        record, _created = await self.submit(request)
        return await self.wait(record.task_id, timeout_s)

    async def in_flight(self) -> int:
        self._ensure_started()
        return len(self._running)


def orchestrator_name(shard: int) -> str:
    """The actor name of orchestrator shard ``shard`` (shard 0 keeps the plain name)."""
    return ORCHESTRATOR_NAME if shard == 0 else f"{ORCHESTRATOR_NAME}-{shard}"


def shard_of(task_id: str, shards: int) -> int:
    """The orchestrator shard that starts ``task_id`` (stable across processes and restarts)."""
    return zlib.crc32(task_id.encode()) % shards


def get_or_create_orchestrator(
    settings: Settings, planner_handle: Any, reviewer_handle: Any, ai_tool_handle: Any = None, shard: int = 0
) -> Any:
    """Orchestrator shard ``shard`` of the cluster, created (detached) on first use."""
    actor_cls = ray.remote(Orchestrator).options(
        name=orchestrator_name(shard),
        namespace=settings.ray_namespace,
        get_if_exists=True,
        lifetime="detached",
        num_cpus=settings.serve.orchestrator_num_cpus,
        max_concurrency=ORCHESTRATOR_MAX_CONCURRENCY,
        max_restarts=-1,  # a crashed orchestrator comes back and resumes unfinished tasks
    )
    return actor_cls.remote(settings, planner_handle, reviewer_handle, ai_tool_handle, shard)
