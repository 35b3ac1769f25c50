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
from officeray.contracts import TaskRecord, TaskRequest, TaskStatus, new_id
from officeray.errors import TaskNotFoundError
from officeray.store import SqlStore
from officeray.telemetry import setup_tracing
from officeray.workflow import Workflow
from serving.models import ServePlanner, ServeReviewer
from tools_sandbox.catalog import input_models
from tools_sandbox.plugins import load_plugins

logger = logging.getLogger(__name__)

ORCHESTRATOR_NAME = "officeray-orchestrator"


class Orchestrator:
    def __init__(self, settings: Settings, planner_handle: Any, reviewer_handle: Any) -> None:
        self.settings = settings
        load_plugins(settings.plugins)
        self.store = SqlStore(settings.store.url)
        self.pool = RunnerPool(settings)
        self.workflow = Workflow(
            planner=ServePlanner(planner_handle),
            reviewer=ServeReviewer(reviewer_handle),
            executor=self.pool,
            store=self.store,
            tracer=setup_tracing(settings.telemetry.trace_file, settings.telemetry.service_name),
            tools=input_models(),
            settings=settings.workflow,
        )
        self._slots = asyncio.Semaphore(settings.workflow.max_concurrent_tasks)
        self._running: dict[str, asyncio.Task[TaskRecord]] = {}

    async def ready(self) -> bool:
        await self.pool.wait_ready()
        return True

    async def submit(self, request: TaskRequest) -> TaskRecord:
        """Persist the task and start it; returns the queued record (or the existing one)."""
        task_id = request.task_id or new_id("task")
        existing = await self.store.get_task(task_id)
        if existing is not None:
            return existing
        record = TaskRecord(task_id=task_id, description=request.description)
        await self.store.save_task(record)
        await self.store.append_event(task_id, "accepted", {"status": TaskStatus.QUEUED.value})
        self._running[task_id] = asyncio.ensure_future(self._run(request, record))
        return record

    async def _run(self, request: TaskRequest, record: TaskRecord) -> TaskRecord:
        try:
            async with self._slots:
                return await self.workflow.run(request, record.task_id, record)
        except Exception as exc:  # the workflow does not raise; this is a last line of defence
            logger.exception("task %s crashed", record.task_id)
            record.status = TaskStatus.FAILED
            record.error = f"internal error: {type(exc).__name__}: {exc}"
            await self.store.save_task(record)
            return record
        finally:
            self._running.pop(record.task_id, None)

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
        record = await self.submit(request)
        return await self.wait(record.task_id, timeout_s)

    async def in_flight(self) -> int:
        return len(self._running)


def get_or_create_orchestrator(settings: Settings, planner_handle: Any, reviewer_handle: Any) -> Any:
    """The cluster's orchestrator actor, created (detached) on first use."""
    actor_cls = ray.remote(Orchestrator).options(
        name=ORCHESTRATOR_NAME,
        namespace=settings.ray_namespace,
        get_if_exists=True,
        lifetime="detached",
        num_cpus=settings.serve.orchestrator_num_cpus,
        max_concurrency=100_000,
    )
    return actor_cls.remote(settings, planner_handle, reviewer_handle)
