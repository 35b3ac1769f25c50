"""The orchestrator: an async Ray actor that runs many task workflows at once, durably.

It owns the tool-runner pool and calls the planner and reviewer through the ports it is given
(:class:`ModelPorts`: the composition root wraps the Serve deployments' handles; this module never
imports :mod:`serving`); the store is its memory and its queue:

* ``submit`` claims the request's idempotency key (if any), writes the task (atomically: one
  ``task_id`` never runs twice), takes a *lease* on it and starts its workflow in the background,
  all in one call; at most ``workflow.max_concurrent_tasks`` run at once, and at most the tenant's
  ``max_concurrent_tasks`` (divided between the shards, rounded up): the others wait, ``queued``,
  and tenants take turns at the freed slots (:class:`~officeray.scheduling.FairScheduler`);
* a lease is renewed every third of ``workflow.lease_ttl_s`` while the task runs; a task whose lease
  expired (its orchestrator died) is claimed by the next orchestrator that looks
  (``workflow.claim_interval_s``), and resumed from its last checkpoint: its stored plan, and the
  recorded results of steps that already succeeded (they are not run again);
* Ray restarts a crashed orchestrator (``max_restarts=-1``); the new one starts looking at once;
* a task that ends ``failed`` goes to the dead-letter queue; ``retry`` re-queues it from there (up to
  the tenant's ``max_dlq_retries`` times);
* a step that needs approval waits in the workflow (no runner held) for a decision in the store;
  ``decide_approval`` writes the decision and wakes it at once (``notify_approval`` wakes a step
  that waits on another shard), and a poll catches decisions written elsewhere;
* results escalated to a person wait the same way (``decide_review``, ``notify_review``;
  :mod:`officeray.review`).

One orchestrator per cluster by default, found by name (:data:`ORCHESTRATOR_NAME`); more may run
against the same store (leases keep each task on one of them). Callers talk to them only through
:class:`actors.client.OrchestratorClient`, which routes each call to its shard (:func:`shard_of`).

Why one file of this length: the actor's parts (submit, leases and claims, cancel, DLQ retry,
approvals, reviews and the subtask port) share its state (the running tasks, the scheduler, the
owner id); the ports it hands the workflow are small classes over that same state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Literal

import ray

from actors.collector import tracer_for
from actors.metrics import metrics_for
from actors.tool_runner import RunnerActors, RunnerPool
from actors.webhooks import WebhookDeliverer
from officeray.config import Settings
from officeray.contracts import (
    ApprovalDecision,
    LogLine,
    ModelUsage,
    ReviewDecision,
    ReviewDecisionKind,
    StepStatus,
    TaskRecord,
    TaskRequest,
    TaskStatus,
    new_id,
    new_task_id,
    utcnow,
)
from officeray.errors import (
    ApprovalConflictError,
    IdempotencyConflictError,
    LimitExceededError,
    ReviewConflictError,
    StoreUnavailableError,
    TaskFinalError,
    TaskNotFoundError,
)
from officeray.gatekeeper import RuleGatekeeper, UnattendedApprovals
from officeray.memory.entries import MemoryService
from officeray.metrics import NO_METRICS, Metrics, task_latency_s
from officeray.quotas import dlq_retry_problem, shard_tenant_cap
from officeray.review import StoreReviews, record_review_decision
from officeray.scheduling import FairScheduler
from officeray.store import SqlStore
from officeray.subtasks import REVISE_NOT_SUPPORTED, SubtaskStartError, revise_refusal
from officeray.tools.catalog import build_catalog
from officeray.workflow import Planner, Reviewer, RunSupersededError, Workflow

logger = logging.getLogger(__name__)

ORCHESTRATOR_NAME = "officeray-orchestrator"

ORCHESTRATOR_MAX_CONCURRENCY = 100_000
"""Concurrent actor calls (submit, wait, run) the orchestrator accepts; task workflows themselves
are bounded by ``workflow.max_concurrent_tasks``."""

CANCEL_REQUESTED_EVENT = "cancel_requested"
"""The event that keeps a cancel request (``{"by": ...}``) until a run of the task takes it."""

APPROVAL_POLL_S = 2.0
"""How often a waiting step re-reads the store for a decision made without ``notify_approval``."""

WAIT_POLL_S = 0.2

METRICS_POLL_S = 5.0
"""How often shard 0 counts the dead-letter queue and the webhook backlog in the store for the
metrics (two ``COUNT`` queries)."""
"""How often ``wait`` re-reads a task that another orchestrator runs."""


class StoreApprovals:
    """The workflow's Approvals port: decisions live in the store; ``notify`` wakes a waiter early.

    The port answers a decision as JSON data (the workflow records it in the task's events): the
    store's :class:`~officeray.contracts.ApprovalDecision`, dumped."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self._events: dict[tuple[str, str], asyncio.Event] = {}

    def notify(self, task_id: str, step_id: str) -> bool:
        """Wake the step waiting here for this decision; False when none waits here."""
        event = self._events.get((task_id, step_id))
        if event is not None:
            event.set()
        return event is not None

    async def wait(self, task_id: str, step_id: str, timeout_s: float) -> dict[str, Any] | None:
        key = (task_id, step_id)
        event = self._events.setdefault(key, asyncio.Event())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            while True:
                decision = await self.store.get_approval(task_id, step_id)
                if decision is not None:
                    return decision.model_dump(mode="json")
                remaining = deadline - loop.time()
                if remaining <= 0:
                    # one last look: a decision stored just as the time ran out still counts
                    last = await self.store.get_approval(task_id, step_id)
                    return None if last is None else last.model_dump(mode="json")
                event.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(remaining, APPROVAL_POLL_S))
        finally:
            self._events.pop(key, None)


SUBTASK_POLL_S = 0.25
"""How often a parent task re-reads the records of its running children in the store."""


class ShardSubtasks:
    """The workflow's Subtasks port on an orchestrator shard (:mod:`officeray.subtasks`): child
    tasks are submitted through an :class:`actors.client.OrchestratorClient` (made on first use by
    ``connect``), so each runs on the shard its id routes to; they are followed in the shared store,
    cancelled and retried through their shard; and a parent gives back its task slot while it waits."""

    def __init__(self, store: SqlStore, scheduler: FairScheduler, connect: Any) -> None:
        self.store = store
        self.scheduler = scheduler
        self._connect = connect
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            self._client = self._connect()
        return self._client

    async def start(self, request: TaskRequest) -> None:
        """Submit the child by its task id: an existing one is answered, not created, and is kept
        only when it is this parent's child of the same tenant; :class:`SubtaskStartError` for a task
        of that id that is not (another tenant's, or one submitted by hand)."""
        record, _created = await self.client().submit(request)
        problem = foreign_child_problem(record, request)
        if problem is not None:
            raise SubtaskStartError(problem)

    async def wait(self, task_id: str, timeout_s: float) -> TaskRecord | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        first = await self.store.get_task(task_id)
        while first is not None and not first.status.is_final and loop.time() < deadline:
            await asyncio.sleep(SUBTASK_POLL_S)
            record = await self.store.get_task(task_id)
            if record is not None and record.status != first.status:
                return record
        return first

    async def cancel(self, task_id: str, by: str) -> None:
        with contextlib.suppress(TaskFinalError, TaskNotFoundError):
            await self.client().cancel(task_id, by)

    async def retry(self, task_id: str) -> bool:
        try:
            await self.client().retry(task_id)
        except TaskNotFoundError:
            return False
        return True

    def idle(self, tenant: str, priority: int) -> contextlib.AbstractAsyncContextManager[None]:
        return self.scheduler.released(tenant, priority)

    async def cancel_all(self, record: TaskRecord, by: str) -> None:
        """Cancel the unfinished children of ``record`` (a parent cancelled while no run of it goes on
        here: the run that resumes it ends it ``cancelled`` without waiting for them)."""
        for view in record.subtasks:
            if view.status not in ("completed", "failed", "cancelled", "pending"):
                try:
                    await self.cancel(view.task_id, by)
                except Exception as exc:
                    logger.warning("task %s: cancelling %s failed: %s", record.task_id, view.task_id, exc)


def foreign_child_problem(record: TaskRecord, request: TaskRequest) -> str | None:
    """Why the task ``record`` that a child's submission answered is not that child (its id names a
    task of another parent or tenant), or None."""
    if record.parent_id == request.parent_id and record.tenant == request.tenant:
        return None
    return (
        f"task {record.task_id!r} exists and is not a subtask of {request.parent_id!r} "
        f"(tenant {request.tenant!r})"
    )


MEMORY_WARM_TIMEOUT_S = 60.0
"""How long :meth:`Orchestrator.ready` waits for the memory to start (the encoder may still load)."""


@dataclass(frozen=True)
class ModelPorts:
    """The models an orchestrator calls, built by the composition root (``serving.app.build_app``:
    ``ServePlanner``/``ServeReviewer`` over the Serve deployments' handles) and handed to every
    shard. Picklable: it crosses into the actor."""

    planner: Planner
    """The workflow's Planner port."""
    reviewer: Reviewer
    """The workflow's Reviewer port."""
    ai_tool: Any = None
    """The ai_tool deployment's handle, which the tool runners' ``ai_tool`` service calls (None: the
    ``ai_tool`` tool answers that no model is configured)."""
    memory: Any = None
    """The memory (:class:`actors.memory.MemoryClient`, an :class:`~officeray.memory.MemoryService`):
    recalled before planning, fed every finished task. None: no memory."""
    decomposer: Any = None
    """The workflow's Decomposer port (:mod:`officeray.subtasks`): the embedded rules in process
    (:class:`~officeray.decompose.EmbeddedDecomposer`), or ``serving.models.ServeDecomposer`` when
    ``models.decomposer`` names model tiers. None: tasks are never decomposed."""
    gatekeeper: Any = None
    """The workflow's Gatekeeper port when ``models.gatekeeper`` names model tiers
    (``serving.models.ServeGatekeeper``: the rules, then the model). None: the rules alone, in the
    orchestrator's process (:class:`~officeray.gatekeeper.RuleGatekeeper`, no Serve hop)."""


class Orchestrator:
    def __init__(
        self,
        settings: Settings,
        ports: ModelPorts,
        shard: int = 0,
        *,
        runner_actors: RunnerActors | None = None,
        metrics: Metrics = NO_METRICS,
        metrics_poll_s: float = METRICS_POLL_S,
    ) -> None:
        """``runner_actors``: how tool runners start (default: Ray actors; tests pass
        :class:`actors.fake_runners.LocalRunnerActors` to run an orchestrator in process).
        ``metrics``: where finished tasks, queue depths, the pool's runners and steps, webhook attempts
        and (shard 0, every ``metrics_poll_s``) the DLQ depth and webhook backlog are reported."""
        self.settings = settings
        self.metrics = metrics
        self.metrics_poll_s = metrics_poll_s
        self.shard = shard
        self.shards = settings.workflow.orchestrators
        self.owner = f"{orchestrator_name(shard)}@{os.getpid()}/{new_id('life')}"
        """Who holds this actor life's leases (shard name, process, a fresh id per restart)."""
        tools = build_catalog(settings)  # this process's catalog: built-ins + plugins
        self.store = SqlStore(settings.store.url)
        self.pool = RunnerPool(
            settings, ports.ai_tool, catalog=tools, actors=runner_actors, metrics=metrics, store=self.store
        )
        self._webhooks = WebhookDeliverer(
            self.store,
            settings.webhooks,
            self.owner,
            metrics=metrics,
            tracer=tracer_for(settings, "webhooks", instance=str(shard)),
        )
        self.approvals = StoreApprovals(self.store)
        self.reviews = StoreReviews(self.store)
        """Where tasks whose results were escalated to a person wait for the decision."""
        self.memory: MemoryService | None = ports.memory
        unattended = settings.workflow.approvals.unattended
        self.workflow = Workflow(
            planner=ports.planner,
            reviewer=ports.reviewer,
            executor=self.pool,
            store=self.store,
            tracer=tracer_for(settings, "orchestrator", instance=str(shard)),
            tools=tools.input_models(),
            settings=settings.workflow,
            token_budget=settings.models.task_token_budget,
            tenant_limits=settings.tenant_limits,
            usage_on=self.store.tenant_usage_on,
            gatekeeper=ports.gatekeeper or RuleGatekeeper({name: spec.risk for name, spec in tools.items()}),
            calls_model=lambda action: action in tools and tools[action].calls_model,
            # officeray run: nobody to ask, every step that needs approval is approved or rejected at once
            approvals=(
                self.approvals if unattended == "wait" else UnattendedApprovals(unattended == "approve")
            ),
            reviews=self.reviews,
            decomposer=ports.decomposer,
            redaction=settings.telemetry.redaction,
            memory=self.memory,
            memory_settings=settings.memory,
            owner=self.owner,  # every transition is written only while this life holds the task
        )
        self.scheduler = FairScheduler(
            settings.workflow.max_concurrent_tasks,
            lambda tenant: shard_tenant_cap(
                settings.tenant_limits(tenant).max_concurrent_tasks, settings.workflow.orchestrators
            ),
            metrics,
        )
        """Task slots: ``workflow.max_concurrent_tasks`` in all, ``tenants.<name>.max_concurrent_tasks``
        per tenant (split between the shards: :func:`~officeray.quotas.shard_tenant_cap`), taken in
        turns by tenants with waiting tasks (which stay ``queued`` meanwhile)."""
        self.workflow.subtasks = ShardSubtasks(self.store, self.scheduler, self._subtask_client)
        """A decomposed task's children run on any shard; the parent holds no slot while it waits."""
        self.reviews.slots = self.scheduler  # a task waiting for a person's review holds no slot either
        self._running: dict[str, asyncio.Task[TaskRecord]] = {}
        self._reserved: dict[str, asyncio.Future[None]] = {}
        self._retrying: set[str] = set()
        """Tasks whose DLQ retry is being started here (a second retry meanwhile answers the record)."""
        self._to_release: set[str] = set()
        self._releasing: set[asyncio.Future[bool]] = set()
        """Lease releases in flight (held here so that they are not collected before they ran)."""
        self._cancels: dict[str, str] = {}
        """Tasks cancelled here before their workflow started (waiting for a slot), with who cancelled."""
        self._ending: set[str] = set()
        """Tasks whose ``cancelled`` end is being written here outside a workflow run (another cancel
        of them is a no-op)."""
        self._background: list[asyncio.Future[None]] = []

    # -- life ------------------------------------------------------------------------------------

    async def ready(self) -> bool:
        """True once the runners are warm and the memory has started (and the lease and claim loops
        run)."""
        self._ensure_started()
        await asyncio.gather(self.pool.wait_ready(), self._warm_memory())
        return True

    async def _warm_memory(self) -> None:
        """Start the memory (its actor, the encoder's first answer, the index files) before the first
        task needs it; a memory that cannot start is logged by the memory, and tasks run without."""
        if self.memory is None:
            return
        try:
            await asyncio.wait_for(self.memory.stats(), MEMORY_WARM_TIMEOUT_S)
        except Exception as exc:
            logger.warning("the memory did not start: %s: %s", type(exc).__name__, exc)

    async def pid(self) -> int:
        """This actor's process id (fault-injection tests kill it)."""
        self._ensure_started()
        return os.getpid()

    async def pool_stats(self) -> dict[str, Any]:
        """The tool-runner pool now (runners, idle, starting, waiting steps, autoscaling totals, and
        why runners cannot be placed, if so), and under ``tasks`` the task slots (running and queued
        tasks, in all and per tenant: :meth:`FairScheduler.stats`)."""
        self._ensure_started()
        return {**self.pool.stats(), "tasks": self.scheduler.stats()}

    async def busy_runner_pids(self) -> list[int]:
        """Process ids of the tool runners running a step now (fault-injection tests kill them)."""
        return self.pool.busy_pids()

    def _ensure_started(self) -> None:
        """Start the background loops on the first call of this actor's life."""
        if not self._background:
            self._background = [
                asyncio.ensure_future(self._renew_leases()),
                asyncio.ensure_future(self.pool.wait_ready()),
                asyncio.ensure_future(self.pool.autoscale()),
                # the webhook outbox: every shard delivers (a lease per delivery keeps it to one)
                asyncio.ensure_future(self._webhooks.run()),
            ]
            if self.shard == 0 and self.metrics is not NO_METRICS:  # the cluster's backlogs, counted once
                self._background.append(asyncio.ensure_future(self._report_backlogs()))
            if self.shard == 0:  # expired task workspaces, deleted once for the cluster
                self._background.append(asyncio.ensure_future(self._clean_workspaces()))
            # An orchestrator whose folders are not confined to workspace_root (``officeray run``, the
            # invoking user's own task) never picks up other tasks of the store: they may come from
            # API clients, whose folders must stay confined.
            if self.settings.workspace_confined:
                self._background.append(asyncio.ensure_future(self._claim_unfinished()))

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

    async def clean_workspaces_once(self, now: datetime | None = None) -> int:
        """Delete the workspaces of tasks finished more than ``workspace.retention_days`` before
        ``now`` (default: the current time); how many files were deleted."""
        cutoff = (now or utcnow()) - timedelta(days=self.settings.workspace.retention_days)
        return await self.store.delete_expired_workspaces(cutoff)

    async def _clean_workspaces(self) -> None:
        """Shard 0, every ``workspace.cleanup_interval_s``: :meth:`clean_workspaces_once`."""
        while True:
            try:
                deleted = await self.clean_workspaces_once()
                if deleted:
                    logger.info("deleted %d files of expired task workspaces", deleted)
            except Exception as exc:
                logger.warning("could not delete expired task workspaces: %s", exc)
            await asyncio.sleep(self.settings.workspace.cleanup_interval_s)

    async def _report_backlogs(self) -> None:
        """Every ``metrics_poll_s``: the dead-letter queue's depth and the webhook backlog, counted in
        the store."""
        while True:
            try:
                self.metrics.dlq_depth(await self.store.dlq_size())
                self.metrics.webhook_backlog(await self.store.webhook_backlog())
            except Exception as exc:
                logger.warning("could not count the dead-letter queue and the webhook backlog: %s", exc)
            await asyncio.sleep(self.metrics_poll_s)

    async def _claim_unfinished(self) -> None:
        """Resume unfinished tasks nobody holds: after a restart, a dead peer, or a DLQ retry."""
        ttl = self.settings.workflow.lease_ttl_s
        while True:
            try:
                for record, request in await self.store.claimable_unfinished(self.owner, ttl):
                    if record.task_id in self._running:
                        continue
                    record.logs.append(LogLine(level="warning", message=f"claimed by {self.owner}"))
                    # started before any await: a cancel from now on finds it in ``_running``, and its run
                    # first looks for a cancel requested while no orchestrator ran it
                    self._start(request, record, claimed=True)
            except Exception:
                logger.exception("could not claim unfinished tasks")
            await asyncio.sleep(self.settings.workflow.claim_interval_s)

    # -- tasks -----------------------------------------------------------------------------------

    def _start(self, request: TaskRequest, record: TaskRecord, *, claimed: bool = False) -> bool:
        """Run ``record`` here unless it already runs here or is final; True when started.
        ``claimed``: resumed by the claim loop (the run ends it ``cancelled`` instead when a cancel was
        requested while no orchestrator ran it)."""
        if record.task_id in self._running or record.status.is_final:
            return False
        self._running[record.task_id] = asyncio.ensure_future(self._run(request, record, claimed=claimed))
        return True

    async def submit(self, request: TaskRequest) -> tuple[TaskRecord, bool]:
        """Claim the request's idempotency key, persist the task and start it, in this one call;
        returns ``(record, created)``.

        A request without ``task_id`` gets a fresh one that routes to this shard (:meth:`_new_task_id`).
        With an ``idempotency_key``, ``(tenant, key)`` is claimed first (the client sends keyed
        requests to the shard of ``tenant/key``, so every claim of a key is written here): the first
        claim binds the key to the new task; a later request with the same fingerprint
        (:meth:`TaskRequest.fingerprint`) gets the bound task (or creates it, when the submission
        that claimed the key failed before creating it); a different request raises
        :class:`IdempotencyConflictError`.

        The same ``task_id`` submitted twice (even at the same moment, from several gateways) runs
        once: the id is reserved here before any ``await`` and the store's insert is atomic; the
        later submissions get the existing record and ``created=False``.
        """
        self._ensure_started()
        if request.idempotency_key is not None:
            request = await self._claim(request, request.idempotency_key)
        if request.webhook_url is None:  # the tenant's default, kept with the task (the store reads it)
            default_url = self.settings.tenant_limits(request.tenant).webhook_url
            if default_url:
                request = request.model_copy(update={"webhook_url": default_url})
        task_id = request.task_id or self._new_task_id()
        pending = self._reserved.get(task_id)
        if pending is not None:  # the same id is being submitted right now: answer with its outcome
            await asyncio.shield(pending)
            return await self._existing(task_id), False
        self._reserved[task_id] = asyncio.get_running_loop().create_future()
        try:
            record = TaskRecord(
                task_id=task_id,
                description=request.description,
                tenant=request.tenant,
                trace_parent=request.traceparent,
                parent_id=request.parent_id,
            )
            record.logs.append(LogLine(message=f"accepted by {self.owner}"))
            # Lease and row in one transaction: another orchestrator's claim loop only sees the new
            # task once it exists, and by then it is already held.
            ttl = self.settings.workflow.lease_ttl_s
            if not await self.store.create_leased_task(record, request, self.owner, ttl):
                return await self._existing(task_id), False
            accepted = record.model_copy(deep=True)  # the run changes ``record`` from now on
            self._start(request, record)
            return accepted, True
        finally:
            self._reserved.pop(task_id).set_result(None)

    async def _claim(self, request: TaskRequest, key: str) -> TaskRequest:
        """Claim ``(tenant, key)`` for ``request``; the request to create, under the claimed id."""
        claim = await self.store.claim_idempotency_key(
            request.tenant, key, request.fingerprint(), request.task_id or self._new_task_id()
        )
        if not claim.same_body:
            raise IdempotencyConflictError(
                f"idempotency key {key!r} was used with a different request "
                f"(task {claim.task_id}); use a new key for a new task"
            )
        return request.model_copy(update={"task_id": claim.task_id})

    def _new_task_id(self) -> str:
        return task_id_on_shard(self.shard, self.shards)

    async def _existing(self, task_id: str) -> TaskRecord:
        """The stored task of a duplicate submission; retryable when it is not written yet."""
        existing = await self.store.get_task(task_id)
        if existing is None:
            raise StoreUnavailableError(f"task {task_id!r} is being created by another request; retry")
        return existing

    async def _run(self, request: TaskRequest, record: TaskRecord, *, claimed: bool = False) -> TaskRecord:
        """Run the task to its end. The workflow writes the end (a crash included) in one
        transaction (final record, dead-letter entry of a failed task, the tenant's usage:
        ``finish_task``), fenced on our lease. A ``claimed`` task whose cancel was requested while no
        orchestrator ran it is ended ``cancelled`` without running."""
        try:
            if claimed:
                by = await self._cancel_requested_by(record.task_id)
                if by is not None:
                    return self._finished(await self._end_cancelled(request, record, by))
            async with self.scheduler.slot(request.tenant, request.priority):
                return self._finished(await self.workflow.run(request, record.task_id, record))
        except RunSupersededError:
            logger.warning("task %s: another orchestrator took it over; this run stops", record.task_id)
            return record
        except asyncio.CancelledError:
            by = self._cancels.get(record.task_id)
            if by is None:
                raise  # the lease went to another orchestrator: the task goes on there
            return self._finished(await self._end_cancelled(request, record, by))  # cancelled while queued
        finally:
            self._running.pop(record.task_id, None)
            self._release_soon(record.task_id)
            if request.webhook_url:  # its end's delivery goes out now, not at the deliverer's next poll
                self._webhooks.wake()

    def _release_soon(self, task_id: str) -> None:
        """Give up the lease of a run that ended, without making its caller wait for the write (the
        writes of one store commit in submission order, so a later claim of the task comes after)."""
        release = asyncio.ensure_future(self.store.release_lease(task_id, self.owner))
        self._releasing.add(release)
        release.add_done_callback(partial(self._released, task_id))

    def _released(self, task_id: str, release: asyncio.Future[bool]) -> None:
        self._releasing.discard(release)
        if release.cancelled() or release.exception() is not None:
            self._to_release.add(task_id)  # released by the renew loop once the store is back

    def _finished(self, record: TaskRecord) -> TaskRecord:
        """``record``, the end of a run here: counted by the metrics when it is final."""
        if record.status.is_final:
            self.metrics.task_finished(record.tenant, record.status.value, task_latency_s(record))
        return record

    async def retry(self, task_id: str) -> TaskRecord:
        """Re-run a dead-lettered task from its last good checkpoint (its plan, its succeeded steps).

        Raises :class:`TaskNotFoundError` (not in the dead-letter queue), or
        :class:`LimitExceededError` when the task was retried ``tenants.<name>.max_dlq_retries`` times
        already (its ``retried_from_dlq`` events count them)."""
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
        if task_id in self._retrying:  # a retry of it is being started here right now
            return record
        self._retrying.add(task_id)
        try:
            retries_done = sum(e.kind == "retried_from_dlq" for e in await self.store.events(task_id))
            problem = dlq_retry_problem(retries_done, self.settings.tenant_limits(record.tenant))
            if problem is not None:
                raise LimitExceededError(f"task {task_id!r}: {problem}")
            return await self._requeue(request, record)
        finally:
            self._retrying.discard(task_id)

    async def _requeue(self, request: TaskRequest, record: TaskRecord) -> TaskRecord:
        task_id = record.task_id
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
            record.review_wait_s = 0.0
            record.counters = record.counters.model_copy(update={"step_attempts": 0, "model_calls": 0})
            record.usage = ModelUsage()  # usage already billed to the tenant is not billed again
            record.logs.append(LogLine(level="warning", message="re-queued from the dead-letter queue"))
            await self.store.save_task(record)  # not final any more: then out of the queue
            if not await self.store.dlq_remove(task_id):
                raise TaskNotFoundError(f"task {task_id!r} is not in the dead-letter queue")
            # a round a person rejected is decided again: its next wait must not find the old decision
            await self.store.clear_review_decisions(task_id)
            await self.store.append_event(task_id, "retried_from_dlq", {"status": record.status.value})
        except BaseException:
            await self.store.release_lease(task_id, self.owner)
            raise
        accepted = record.model_copy(deep=True)  # the run changes ``record`` from now on
        self._start(request, record)
        return accepted

    async def decide_approval(
        self, task_id: str, step_id: str, decision: Literal["approved", "rejected"], by: str, reason: str = ""
    ) -> tuple[ApprovalDecision, bool]:
        """Decide step ``step_id`` of ``task_id``, which waits for approval: the decision is stored
        (the first one wins) and the waiting step woken if it waits here. Returns the stored
        decision and whether a step here was woken (if not, it may wait on another shard).

        Raises :class:`TaskNotFoundError`, or :class:`ApprovalConflictError` when the step does not
        wait for a decision or was decided already.
        """
        self._ensure_started()
        record = await self.store.get_task(task_id)
        if record is None:
            raise TaskNotFoundError(f"task {task_id!r} not found")
        step = next((s for s in record.steps if s.step_id == step_id), None)
        if step is None or step.status != StepStatus.WAITING_APPROVAL:
            previous = await self.store.get_approval(task_id, step.idempotency_key) if step else None
            if previous is not None:
                raise ApprovalConflictError(_already_decided(task_id, step_id, previous))
            state = "has no such step" if step is None else f"is {step.status.value}"
            raise ApprovalConflictError(
                f"step {step_id!r} of task {task_id!r} is not waiting for approval (it {state})"
            )
        key = step.idempotency_key  # decisions belong to this round's step, not to every "s1"
        if not await self.store.decide_approval(task_id, key, decision, by, reason):
            previous = await self.store.get_approval(task_id, key)
            raise ApprovalConflictError(_already_decided(task_id, step_id, previous))
        stored = await self.store.get_approval(task_id, key)
        if stored is None:  # decided, then gone: the store was reset under us
            raise StoreUnavailableError(f"the decision on step {step_id!r} of task {task_id!r} was not kept")
        return stored, self.approvals.notify(task_id, key)

    async def notify_approval(self, task_id: str, step_id: str) -> bool:
        """A decision for ``task_id``/``step_id`` was stored: wake the step waiting for it here (True
        when one waited here)."""
        return self.approvals.notify(task_id, step_id)

    async def decide_review(
        self, task_id: str, decision: ReviewDecisionKind, by: str, feedback: str = ""
    ) -> tuple[ReviewDecision, bool]:
        """Decide the escalated results ``task_id`` waits with (:mod:`officeray.review`): the decision
        is stored (the first one per round wins) and the task woken if it waits here. Returns the
        stored decision and whether a task here was woken (if not, it may wait on another shard).

        Raises :class:`TaskNotFoundError`, :class:`~officeray.errors.ReviewConflictError` (not waiting
        for a review, or decided already; ``revise_not_supported`` for a revise of a decomposed
        task's result), ValueError (an unknown decision, a revise without feedback).
        """
        self._ensure_started()
        record = await self.store.get_task(task_id) if decision == "revise" else None
        refusal = None if record is None else revise_refusal(record, decision)
        if refusal is not None:
            raise ReviewConflictError(refusal, REVISE_NOT_SUPPORTED)
        stored = await record_review_decision(self.store, task_id, decision, by, feedback)
        return stored, self.reviews.notify(task_id, stored.iteration)

    async def notify_review(self, task_id: str, iteration: int) -> bool:
        """A review decision on round ``iteration`` of ``task_id`` was stored: wake the task waiting
        for it here (True when it waited here)."""
        return self.reviews.notify(task_id, iteration)

    # -- cancel (CANCEL) ---------------------------------------------------------------------------

    async def cancel(self, task_id: str, by: str) -> tuple[TaskRecord, bool]:
        """Cancel ``task_id``: the request is kept first (event ``cancel_requested``, ``{"by": by}``),
        then the task's run here is stopped (:meth:`stop_run`). Returns the record as it was and
        whether the task ran (or waited for a slot) here; when it did not, another shard may run it
        (the client tells them), or nobody does now: the orchestrator that resumes it finds the
        request and ends it ``cancelled`` instead of running it.

        Raises :class:`TaskNotFoundError`, or :class:`TaskFinalError` when it already ended."""
        self._ensure_started()
        record = await self.store.get_task(task_id)
        if record is None:
            raise TaskNotFoundError(f"task {task_id!r} not found")
        if record.status.is_final:
            status = record.status.value
            raise TaskFinalError(f"task {task_id!r} already ended: {status}", status)
        await self.store.append_event(
            task_id, CANCEL_REQUESTED_EVENT, {"by": by, "status": record.status.value}
        )
        stopped = await self.stop_run(task_id, by)
        if record.subtasks and not stopped:  # its run (which cancels its tree) goes on nowhere here
            await self.workflow_subtasks().cancel_all(record, by)
        return record, stopped

    async def stop_run(self, task_id: str, by: str) -> bool:
        """Stop the run of ``task_id`` on this shard, if any (True): a workflow going on is cancelled
        (its running steps stopped, the task ended ``cancelled``); a task still waiting for a slot
        is ended ``cancelled`` without running."""
        running = self._running.get(task_id)
        if running is None or running.done():
            return False
        if task_id in self._ending or task_id in self._cancels or self.workflow.cancel(task_id, by):
            return True  # being ended (or stopped) already: cancelling twice is cancelling once
        self._cancels[task_id] = by  # not in the workflow yet: it waits for a slot
        running.add_done_callback(lambda _done: self._cancels.pop(task_id, None))
        running.cancel()
        return True

    async def _end_cancelled(self, request: TaskRequest, record: TaskRecord, by: str) -> TaskRecord:
        """End a task that did not start its workflow as ``cancelled`` (a later cancel of it is a
        no-op meanwhile). The write is shielded: when the run is stopped anyway (its lease went to
        another orchestrator), it lands or is refused before the run releases its lease."""
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            task.uncancel()  # handled: the end is written below
        self._ending.add(record.task_id)
        write = asyncio.ensure_future(self.workflow.cancel_unstarted(request, record.task_id, record, by))
        try:
            return await asyncio.shield(write)
        except asyncio.CancelledError:
            await asyncio.wait([write])
            raise
        finally:
            self._ending.discard(record.task_id)

    def workflow_subtasks(self) -> ShardSubtasks:
        """The workflow's Subtasks port of this shard."""
        port = self.workflow.subtasks
        assert isinstance(port, ShardSubtasks)
        return port

    def _subtask_client(self) -> Any:
        """An :class:`actors.client.OrchestratorClient` of every shard, found by name (a parent's
        children run on the shard their id routes to)."""
        from actors.client import OrchestratorClient  # the client module imports this one

        namespace = self.settings.ray_namespace
        return OrchestratorClient(
            lambda shard: ray.get_actor(orchestrator_name(shard), namespace=namespace), self.shards
        )

    async def _cancel_requested_by(self, task_id: str) -> str | None:
        """Who asked to cancel ``task_id`` since its last (re)start from the dead-letter queue, if anyone."""
        by = None
        for event in await self.store.events(task_id):
            if event.kind == CANCEL_REQUESTED_EVENT:
                by = str(event.data.get("by") or "unknown")
            elif event.kind == "retried_from_dlq":
                by = None
        return by

    # -- end cancel (CANCEL) -----------------------------------------------------------------------

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


def _already_decided(task_id: str, step_id: str, previous: ApprovalDecision | None) -> str:
    decided = f"step {step_id!r} of task {task_id!r} was already decided"
    if previous is None:
        return decided
    return f"{decided}: {previous.decision} by {previous.decided_by} at {previous.decided_at.isoformat()}"


def orchestrator_name(shard: int) -> str:
    """The actor name of orchestrator shard ``shard`` (shard 0 keeps the plain name)."""
    return ORCHESTRATOR_NAME if shard == 0 else f"{ORCHESTRATOR_NAME}-{shard}"


def shard_of(routing_key: str, shards: int) -> int:
    """The orchestrator shard of ``routing_key`` (stable across processes and restarts): a task id,
    or ``tenant/key`` for an idempotency key (see :class:`actors.client.OrchestratorClient`)."""
    return zlib.crc32(routing_key.encode()) % shards


def task_id_on_shard(shard: int, shards: int) -> str:
    """A fresh task id (:func:`~officeray.contracts.new_task_id`) whose shard (:func:`shard_of`) is
    ``shard``: an orchestrator gives its new tasks such ids, so that later calls about a task
    (``wait``, ``retry``, approvals), routed by its id, reach the orchestrator that started it."""
    while True:  # ``shards`` draws on average
        task_id = new_task_id()
        if shard_of(task_id, shards) == shard:
            return task_id


def get_or_create_orchestrator(settings: Settings, ports: ModelPorts, shard: int = 0) -> Any:
    """Orchestrator shard ``shard`` of the cluster (its handle), created (detached) on first use."""
    actor_cls = ray.remote(Orchestrator).options(
        name=orchestrator_name(shard),
        namespace=settings.ray_namespace,
        get_if_exists=True,
        lifetime="detached",
        num_cpus=settings.serve.orchestrator_num_cpus,
        max_concurrency=ORCHESTRATOR_MAX_CONCURRENCY,
        max_restarts=-1,  # a crashed orchestrator comes back and resumes unfinished tasks
    )
    return actor_cls.remote(settings, ports, shard, metrics=metrics_for(settings))
