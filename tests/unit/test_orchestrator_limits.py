"""Tenant limits in a real orchestrator, in process: fair task slots and the DLQ retry ceiling. Its
workflow runs on a SQLite store and its tool-runner pool on in-process fake runners
(:mod:`actors.fake_runners`), no Ray. Steps wait at a gate the test opens, so "which task got the
freed slot" is read from the order in which steps started."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from actors.fake_runners import LocalRunnerActors
from actors.orchestrator import ModelPorts, Orchestrator
from officeray.config import Settings
from officeray.contracts import (
    ErrorType,
    PlanStep,
    Review,
    ReviewRequest,
    ReviewVerdict,
    StepError,
    StepOutcome,
    StepStatus,
    TaskRequest,
    TaskStatus,
)
from officeray.errors import LimitExceededError
from officeray.testing import ScriptedPlanner

SLOTS = 2
BACKLOG = 8
WAIT_S = 5.0


class Gates:
    """The fake runners' step: it records its task's id, then waits until the test opens its gate."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self._gates: dict[str, asyncio.Event] = {}

    def gate(self, task_id: str) -> asyncio.Event:
        return self._gates.setdefault(task_id, asyncio.Event())

    async def step(self, task_id: str, step: PlanStep, inputs: dict[str, Any]) -> StepOutcome:
        self.started.append(task_id)
        if task_id.startswith("broken"):
            return StepOutcome(error=StepError(type=ErrorType.BAD_INPUT, message="bad input"))
        await self.gate(task_id).wait()
        return StepOutcome(output={"value": 42})

    def open(self, task_id: str) -> None:
        self.gate(task_id).set()

    def open_all(self) -> None:
        for task_id in [*self.started, *self._gates]:
            self.open(task_id)


class Approver:
    """The reviewer port: approves a task whose steps succeeded, fails the others."""

    async def review(self, request: ReviewRequest) -> Review:
        if any(result.status != StepStatus.SUCCEEDED for result in request.results):
            return Review(verdict=ReviewVerdict.FAILED, feedback="a step failed")
        return Review(verdict=ReviewVerdict.APPROVED, final_output=request.results[-1].output)


def ready_plan() -> dict[str, Any]:
    """One math step, in the published plan schema (no planner call)."""
    return {
        "plan_id": "p",
        "task_id": "any",
        "confidence": 1.0,
        "metadata": {
            "priority": 0,
            "required_tools": ["math_calculator"],
            "estimated_cost_tokens": 0,
            "estimated_duration_seconds": 1,
        },
        "steps": [
            {
                "step_id": "s1",
                "action": "math_calculator",
                "inputs": {"expression": "6 * 7"},
                "outputs_expectation": None,
                "timeout_seconds": 30,
                "parallelizable": False,
                "idempotency_key": "k1",
                "dependencies": [],
            }
        ],
    }


def task(task_id: str, tenant: str, priority: int = 0) -> TaskRequest:
    return TaskRequest(
        description="multiply", task_id=task_id, tenant=tenant, priority=priority, plan=ready_plan()
    )


async def until(condition: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(WAIT_S):
        while not condition():
            await asyncio.sleep(0.01)
    assert condition(), what


def settings_for(tmp_path: Path, **sections: Any) -> Settings:
    return Settings.model_validate(
        {
            "store": {"url": f"sqlite:///{tmp_path / 'officeray.db'}"},
            "telemetry": {"trace_file": str(tmp_path / "traces.jsonl")},
            "runners": {"count": SLOTS + 2},  # steps never wait for a runner: only for a task slot
            **sections,
        }
    )


@contextlib.asynccontextmanager
async def orchestrator_on(settings: Settings, gates: Gates) -> AsyncIterator[Orchestrator]:
    """An orchestrator in this process (fake runners that run ``gates.step``), stopped at the end."""
    ports = ModelPorts(planner=ScriptedPlanner([]), reviewer=Approver())
    orchestrator = Orchestrator(settings, ports, runner_actors=LocalRunnerActors(step=gates.step))
    try:
        yield orchestrator
    finally:
        gates.open_all()
        # on Ray the actor's loops end with its process; here they end with the test
        runs: list[asyncio.Future[Any]] = [*orchestrator._background, *orchestrator._running.values()]
        for running in runs:
            running.cancel()
            with contextlib.suppress(BaseException):
                await running
        orchestrator.store.close()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[Orchestrator, Gates]]:
    gates = Gates()
    settings = settings_for(tmp_path, workflow={"max_concurrent_tasks": SLOTS})
    async with orchestrator_on(settings, gates) as orchestrator:
        yield orchestrator, gates


async def test_a_tenants_backlog_delays_another_tenants_task_by_one_freed_slot_at_most(
    cluster: tuple[Orchestrator, Gates],
) -> None:
    orchestrator, gates = cluster
    for i in range(BACKLOG):
        await orchestrator.submit(task(f"acme-{i}", "acme"))
    await until(lambda: len(gates.started) == SLOTS, "acme's first tasks take every slot")

    await orchestrator.submit(task("globex-0", "globex"))
    await until(
        lambda: orchestrator.scheduler.queued_by_tenant() == {"acme": BACKLOG - SLOTS, "globex": 1},
        "globex waits behind the busy slots",
    )
    stats = (await orchestrator.pool_stats())["tasks"]
    assert stats["queued_by_tenant"] == {"acme": BACKLOG - SLOTS, "globex": 1}
    waiting = await orchestrator.store.get_task("globex-0")
    assert waiting is not None and waiting.status == TaskStatus.QUEUED

    gates.open(gates.started[0])  # one slot frees: it is globex's, not the next of acme's backlog
    await until(lambda: len(gates.started) == SLOTS + 1, "the freed slot is taken")
    assert gates.started[-1] == "globex-0"

    gates.open("globex-0")
    done = await orchestrator.wait("globex-0", timeout_s=WAIT_S)
    assert done.status == TaskStatus.COMPLETED and done.result == {"value": 42}
    for i in range(BACKLOG):
        gates.open(f"acme-{i}")
    for i in range(BACKLOG):
        assert (await orchestrator.wait(f"acme-{i}", timeout_s=WAIT_S)).status == TaskStatus.COMPLETED
    # the first two ran at once (which reached its step first is a race); globex's task came next,
    # before all of acme's backlog (the order within acme is the scheduler's: test_scheduling.py)
    assert set(gates.started[:SLOTS]) == {"acme-0", "acme-1"}
    assert gates.started[SLOTS] == "globex-0"
    assert sorted(gates.started[SLOTS + 1 :]) == sorted(f"acme-{i}" for i in range(SLOTS, BACKLOG))


async def test_within_a_tenant_a_higher_priority_task_takes_the_next_slot(
    cluster: tuple[Orchestrator, Gates],
) -> None:
    orchestrator, gates = cluster
    for i in range(SLOTS):
        await orchestrator.submit(task(f"busy-{i}", "acme"))
    await until(lambda: len(gates.started) == SLOTS, "the slots are busy")
    await orchestrator.submit(task("routine", "acme", priority=0))
    await orchestrator.submit(task("urgent", "acme", priority=900))
    await until(lambda: orchestrator.scheduler.queued_by_tenant() == {"acme": 2}, "both wait")
    gates.open("busy-0")
    await until(lambda: len(gates.started) == SLOTS + 1, "the freed slot is taken")
    assert gates.started[-1] == "urgent"


async def test_a_tenant_at_its_own_cap_waits_while_slots_are_free(tmp_path: Path) -> None:
    gates = Gates()
    settings = settings_for(
        tmp_path, workflow={"max_concurrent_tasks": 8}, tenants={"acme": {"max_concurrent_tasks": 1}}
    )
    async with orchestrator_on(settings, gates) as orchestrator:
        await orchestrator.submit(task("acme-0", "acme"))
        await orchestrator.submit(task("acme-1", "acme"))
        await orchestrator.submit(task("other-0", "globex"))
        await until(lambda: sorted(gates.started) == ["acme-0", "other-0"], "acme's second waits")
        assert orchestrator.scheduler.queued_by_tenant() == {"acme": 1}
        gates.open("acme-0")
        await until(lambda: "acme-1" in gates.started, "acme's second starts when its first ends")


async def test_dlq_retries_stop_at_the_tenants_ceiling(tmp_path: Path) -> None:
    gates = Gates()
    settings = settings_for(tmp_path, tenants={"acme": {"max_dlq_retries": 2}})
    async with orchestrator_on(settings, gates) as orchestrator:
        await orchestrator.submit(task("broken-1", "acme"))
        assert (await orchestrator.wait("broken-1", timeout_s=WAIT_S)).status == TaskStatus.FAILED
        for _ in range(2):
            await orchestrator.retry("broken-1")
            assert (await orchestrator.wait("broken-1", timeout_s=WAIT_S)).status == TaskStatus.FAILED
        steps_run = len(gates.started)
        with pytest.raises(LimitExceededError, match="max_dlq_retries is 2"):
            await orchestrator.retry("broken-1")
        assert await orchestrator.store.dlq_get("broken-1") is not None  # still there, not re-run
        record = await orchestrator.store.get_task("broken-1")
        assert record is not None and record.status == TaskStatus.FAILED
        await asyncio.sleep(0.1)
        assert len(gates.started) == steps_run


async def test_a_tenant_without_dlq_retries_cannot_retry_at_all(tmp_path: Path) -> None:
    gates = Gates()
    settings = settings_for(tmp_path, tenants={"default": {"max_dlq_retries": 0}})
    async with orchestrator_on(settings, gates) as orchestrator:
        await orchestrator.submit(task("broken-1", "someone"))
        assert (await orchestrator.wait("broken-1", timeout_s=WAIT_S)).status == TaskStatus.FAILED
        with pytest.raises(LimitExceededError, match="retried from the dead-letter queue 0 time"):
            await orchestrator.retry("broken-1")


async def test_a_tenants_running_tasks_are_divided_between_the_orchestrator_shards(tmp_path: Path) -> None:
    gates = Gates()
    settings = settings_for(
        tmp_path,
        workflow={"max_concurrent_tasks": 4, "orchestrators": 2},
        tenants={"acme": {"max_concurrent_tasks": 3}},
    )
    async with orchestrator_on(settings, gates) as orchestrator:  # one of the two shards
        for i in range(4):
            await orchestrator.submit(task(f"acme-{i}", "acme"))
        await until(lambda: orchestrator.scheduler.queued_by_tenant() == {"acme": 2}, "two wait")
        await until(lambda: len(gates.started) == 2, "two run")  # their steps start a moment later
        await asyncio.sleep(0.1)
        assert len(gates.started) == 2  # ceil(3 / 2): the other shard may run two more of acme's
        assert orchestrator.scheduler.queued_by_tenant() == {"acme": 2}
        gates.open(gates.started[0])
        await until(lambda: len(gates.started) == 3, "the freed slot is acme's next task")
        assert orchestrator.scheduler.queued_by_tenant() == {"acme": 1}
