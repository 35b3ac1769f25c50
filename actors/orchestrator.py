"""The orchestrator: an async Ray actor that runs many task workflows at once.

It owns the store, the tracer and the pool of tool runners, and calls the planner and reviewer
deployments through their handles. ``submit`` persists the task before it answers, then the
workflow runs in the background, bounded by ``workflow.max_concurrent_tasks``; ``wait`` returns the
final record. One orchestrator per cluster, found by name (:data:`ORCHESTRATOR_NAME`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray

from actors.tool_runner import RunnerPool
from officeray.config import Settings
from officeray.contracts import LogLine, TaskRecord, TaskRequest, TaskStatus, new_id, utcnow
from officeray.errors import TaskNotFoundError
from officeray.store import SqlStore
from officeray.telemetry import setup_tracing
from officeray.workflow import Workflow
from serving.models import ServePlanner, ServeReviewer
from tools_sandbox.catalog import input_models
from tools_sandbox.plugins import load_plugins

logger = logging.getLogger(__name__)

ORCHESTRATOR_NAME = "officeray-orchestrator"

ORCHESTRATOR_MAX_CONCURRENCY = 100_000
"""Concurrent actor calls (submit, wait, run) the orchestrator accepts; task workflows themselves
are bounded by ``workflow.max_concurrent_tasks``."""


class Orchestrator:
    def __init__(
        self, settings: Settings, planner_handle: Any, reviewer_handle: Any, ai_tool_handle: Any = None
    ) -> None:
        self.settings = settings
        load_plugins(settings.plugins)
        self.store = SqlStore(settings.store.url)
        self.pool = RunnerPool(settings, ai_tool_handle)
        self._tenants: dict[str, str] = {}
        self.workflow = Workflow(
            planner=ServePlanner(planner_handle, self._tenant_of),
            reviewer=ServeReviewer(reviewer_handle, self._tenant_of),
            executor=self.pool,
            store=self.store,
            tracer=setup_tracing(settings.telemetry.trace_file, settings.telemetry.service_name),
            tools=input_models(),
            settings=settings.workflow,
            token_budget=settings.models.task_token_budget,
        )
        self._slots = asyncio.Semaphore(settings.workflow.max_concurrent_tasks)
        self._running: dict[str, asyncio.Task[TaskRecord]] = {}
        self._reserved: set[str] = set()
        self._resumed = False

    def _tenant_of(self, task_id: str) -> str:
        return self._tenants.get(task_id, "default")

    async def ready(self) -> bool:
        """True once the runners are warm and unfinished tasks of an earlier life were resumed."""
        await self.pool.wait_ready()
        await self._ensure_resumed()
        return True

    async def _ensure_resumed(self) -> None:
        """Resume unfinished tasks once per actor life, on the first call of any kind."""
        if not self._resumed:
            self._resumed = True
            await self._resume_unfinished()

    async def _resume_unfinished(self) -> None:
        """After a restart (Ray restarts this actor), run again every task the store has unfinished.

        A resumed task starts a new round from planning; steps already recorded are run again
        (durable step results by idempotency key come with the durable-workflow work).
        """
        for record, request in await self.store.unfinished():
            if record.task_id in self._running:
                continue
            record.logs.append(LogLine(level="warning", message="resumed after an orchestrator restart"))
            self._start(request, record)

    def _start(self, request: TaskRequest, record: TaskRecord) -> None:
        self._tenants[record.task_id] = request.tenant
        self._running[record.task_id] = asyncio.ensure_future(self._run(request, record))

    async def submit(self, request: TaskRequest) -> tuple[TaskRecord, bool]:
        """Persist the task and start it; returns ``(record, created)``.

        The same ``task_id`` submitted twice (even at the same moment, from several gateways) runs
        once: the id is reserved here before any ``await`` and the store's insert is atomic; the
        later submissions get the existing record and ``created=False``.
        """
        await self._ensure_resumed()
        task_id = request.task_id or new_id("task")
        if task_id in self._reserved:
            existing = await self.store.get_task(task_id)
            return (existing or TaskRecord(task_id=task_id, description=request.description)), False
        self._reserved.add(task_id)
        try:
            record = TaskRecord(task_id=task_id, description=request.description, tenant=request.tenant)
            if not await self.store.create_task(record, request):
                existing = await self.store.get_task(task_id)
                assert existing is not None
                return existing, False
            self._start(request, record)
            return record, True
        finally:
            self._reserved.discard(task_id)

    async def _run(self, request: TaskRequest, record: TaskRecord) -> TaskRecord:
        try:
            async with self._slots:
                final = await self.workflow.run(request, record.task_id, record)
            if final.usage.calls:
                await self.store.add_tenant_usage(final.tenant, final.usage)
            return final
        except Exception as exc:  # the workflow does not raise; this is a last line of defence
            logger.exception("task %s crashed", record.task_id)
            record.status = TaskStatus.FAILED
            record.error = f"internal error: {type(exc).__name__}: {exc}"
            record.current_step = None
            record.finished_at = utcnow()
            await self.store.save_task(record)
            await self.store.append_event(
                record.task_id, "failed", {"status": "failed", "error": record.error}
            )
            return record
        finally:
            self._running.pop(record.task_id, None)
            self._tenants.pop(record.task_id, None)

    async def wait(self, task_id: str, timeout_s: float | None = None) -> TaskRecord:
        """The final record of ``task_id`` (waits for it while it runs here)."""
        running = self._running.get(task_id)
        if running is not None:
            await asyncio.wait_for(asyncio.shield(running), timeout_s)
        record = await self.store.get_task(task_id)
        if record is None:
            raise TaskNotFoundError(task_id)
        return record

    async def run(self, request: TaskRequest, timeout_s: float | None = None) -> TaskRecord:
        record, _created = await self.submit(request)
        return await self.wait(record.task_id, timeout_s)

    async def in_flight(self) -> int:
        await self._ensure_resumed()
        return len(self._running)


def get_or_create_orchestrator(
    settings: Settings, planner_handle: Any, reviewer_handle: Any, ai_tool_handle: Any = None
) -> Any:
    """The cluster's orchestrator actor, created (detached) on first use."""
    actor_cls = ray.remote(Orchestrator).options(
        name=ORCHESTRATOR_NAME,
        namespace=settings.ray_namespace,
        get_if_exists=True,
        lifetime="detached",
        num_cpus=settings.serve.orchestrator_num_cpus,
        max_concurrency=ORCHESTRATOR_MAX_CONCURRENCY,
        max_restarts=-1,  # a crashed orchestrator comes back and resumes unfinished tasks
    )
    return actor_cls.remote(settings, planner_handle, reviewer_handle, ai_tool_handle)
