"""Cancelling a task: the workflow with the shipped fakes, then a real orchestrator in process (SQLite
store, fake tool runners, no Ray): a running step is stopped on its runner, a queued task never
runs, a task waiting for approval stops waiting, and a cancel requested while no orchestrator ran
the task ends it when it is resumed. What was recorded before the cancel stays."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from actors.fake_runners import LocalRunnerActors
from actors.orchestrator import ModelPorts, Orchestrator
from officeray.config import ApprovalSettings, Settings, WorkflowSettings
from officeray.contracts import (
    ErrorType,
    ModelCallRecord,
    ModelUsage,
    Planned,
    PlanStep,
    Review,
    ReviewRequest,
    ReviewVerdict,
    StepOutcome,
    StepStatus,
    TaskRecord,
    TaskRequest,
    TaskStatus,
)
from officeray.errors import TaskFinalError
from officeray.testing import (
    FunctionExecutor,
    InMemoryApprovals,
    InMemoryStore,
    ScriptedPlanner,
    ScriptedReviewer,
    in_memory_tracer,
    make_plan,
)
from officeray.workflow import Workflow
from tests.unit.test_workflow import TOOLS, calculate

TASK = "task-c"
WAIT_S = 5.0


async def until(condition: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(WAIT_S):
        while not condition():
            await asyncio.sleep(0.01)
    assert condition(), what


async def forever(_inputs: dict[str, Any]) -> dict[str, Any]:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def two_steps() -> Any:
    """s1 (math) then s2 (code_analyzer, which never ends here), and s3 after s2."""
    return make_plan(
        TASK,
        [
            {"step_id": "s1", "action": "math_calculator", "inputs": {"expression": "6 * 7"}},
            {
                "step_id": "s2",
                "action": "code_analyzer",
                "inputs": {"folder": "src", "start_func": "main", "end_func": "run"},
                "dependencies": ["s1"],
            },
            {
                "step_id": "s3",
                "action": "math_calculator",
                "inputs": {"expression": "1"},
                "dependencies": ["s2"],
            },
        ],
    )


def workflow_with(
    store: InMemoryStore, plans: list[Any], **kwargs: Any
) -> tuple[Workflow, ScriptedPlanner, FunctionExecutor]:
    tracer, _spans = in_memory_tracer()
    planner = ScriptedPlanner(plans)
    executor = FunctionExecutor({"math_calculator": calculate, "code_analyzer": forever})
    workflow = Workflow(
        planner=planner,
        reviewer=ScriptedReviewer([]),
        executor=executor,
        store=store,
        tracer=tracer,
        tools=TOOLS,
        **kwargs,
    )
    return workflow, planner, executor


def costly(plan: Any) -> Planned:
    """The plan, answered by a model call of 100 tokens (billed to the tenant when the task ends)."""
    usage = ModelUsage(calls=1, prompt_tokens=60, completion_tokens=40)
    return Planned(plan=plan, call=ModelCallRecord(role="planner", tier="embedded", usage=usage))


async def test_a_task_cancelled_mid_step_ends_cancelled_and_keeps_what_it_recorded() -> None:
    store = InMemoryStore()
    workflow, _planner, executor = workflow_with(store, [costly(two_steps())])
    request = TaskRequest(description="d", tenant="acme")
    running = asyncio.ensure_future(workflow.run(request, TASK))
    await until(lambda: [c[0] for c in executor.calls] == ["s1", "s2"], "s2 runs")
    await until(lambda: "step_started" in store.kinds(TASK)[-1:], "s2's start is recorded")

    assert workflow.cancel(TASK, by="key-1")
    record = await asyncio.wait_for(running, WAIT_S)

    assert record.status == TaskStatus.CANCELLED and record.error == "cancelled by key-1"
    s1, s2, s3 = record.steps
    assert s1.status == StepStatus.SUCCEEDED and s1.output == {"value": 42.0}  # kept
    assert s2.status == StepStatus.FAILED and s2.error is not None and s2.error.type == ErrorType.CANCELLED
    assert s3.status == StepStatus.SKIPPED and s3.error is not None and s3.error.type == ErrorType.CANCELLED
    stored = await store.get_task(TASK)
    assert stored is not None and stored.status == TaskStatus.CANCELLED
    kinds = store.kinds(TASK)
    assert kinds[-1] == "cancelled" and "step_finished" in kinds  # earlier events are all there
    assert dict(store.event_log[TASK])["cancelled"]["by"] == "key-1"
    recorded = await store.get_step_result(s2.idempotency_key)
    assert recorded is not None and recorded.status == StepStatus.FAILED
    assert TASK not in store.dead_letters  # a cancelled task is not dead-lettered
    assert (await store.tenant_usage("acme")).total_tokens == 100  # billed like a finished task
    assert not workflow.cancel(TASK, by="key-1")  # nothing runs any more


async def test_cancelling_twice_writes_one_end() -> None:
    store = InMemoryStore()
    workflow, _planner, executor = workflow_with(store, [two_steps()])
    running = asyncio.ensure_future(workflow.run(TaskRequest(description="d"), TASK))
    await until(lambda: len(executor.calls) == 2, "s2 runs")
    assert workflow.cancel(TASK, by="a") and workflow.cancel(TASK, by="b")
    record = await asyncio.wait_for(running, WAIT_S)
    assert record.error == "cancelled by a" and store.kinds(TASK).count("cancelled") == 1


async def test_a_task_waiting_for_approval_is_cancelled_without_a_decision() -> None:
    store = InMemoryStore()
    approvals = InMemoryApprovals()
    settings = WorkflowSettings(approvals=ApprovalSettings(required_risk_levels=["medium"], timeout_s=600))
    workflow, _planner, executor = workflow_with(
        store,
        [two_steps()],
        approvals=approvals,
        needs_approval=lambda action: action == "math_calculator",
        settings=settings,
    )
    running = asyncio.ensure_future(workflow.run(TaskRequest(description="d"), TASK))
    await until(lambda: bool(approvals.requested), "s1 waits for a person")

    assert workflow.cancel(TASK, by="cli")
    record = await asyncio.wait_for(running, WAIT_S)

    assert record.status == TaskStatus.CANCELLED and executor.calls == []
    assert record.steps[0].status == StepStatus.SKIPPED
    assert record.steps[0].error is not None and record.steps[0].error.type == ErrorType.CANCELLED
    assert store.kinds(TASK)[-1] == "cancelled"


async def test_a_task_resumed_after_a_cancel_request_ends_cancelled_without_running() -> None:
    store = InMemoryStore()
    plan = two_steps()
    record = TaskRecord(task_id=TASK, description="d", status=TaskStatus.EXECUTING, iterations=1, plan=plan)
    workflow, planner, executor = workflow_with(store, [])

    ended = await workflow.cancel_unstarted(TaskRequest(description="d"), TASK, record, "key-9")

    assert ended.status == TaskStatus.CANCELLED and ended.error == "cancelled by key-9"
    assert executor.calls == [] and planner.requests == []
    assert store.kinds(TASK) == ["cancelled"]


# -- a real orchestrator, in process ---------------------------------------------------------------


class Steps:
    """The fake runners' step: it records its task's id and waits until the test opens its gate."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}

    async def step(self, task_id: str, step: PlanStep, inputs: dict[str, Any]) -> StepOutcome:
        self.started.append(task_id)
        await self.gates.setdefault(task_id, asyncio.Event()).wait()
        return StepOutcome(output={"value": 42})


class Approver:
    async def review(self, request: ReviewRequest) -> Review:
        return Review(verdict=ReviewVerdict.APPROVED, final_output=request.results[-1].output)


def ready_plan() -> dict[str, Any]:
    step = {
        "step_id": "s1",
        "action": "math_calculator",
        "inputs": {"expression": "6 * 7"},
        "outputs_expectation": None,
        "timeout_seconds": 30,
        "parallelizable": False,
        "idempotency_key": "k1",
        "dependencies": [],
    }
    metadata = {
        "priority": 0,
        "required_tools": ["math_calculator"],
        "estimated_cost_tokens": 0,
        "estimated_duration_seconds": 1,
    }
    return {"plan_id": "p", "task_id": "any", "confidence": 1.0, "metadata": metadata, "steps": [step]}


def task(task_id: str) -> TaskRequest:
    return TaskRequest(description="multiply", task_id=task_id, tenant="acme", plan=ready_plan())


@contextlib.asynccontextmanager
async def orchestrator_in(
    tmp_path: Path, steps: Steps
) -> AsyncIterator[tuple[Orchestrator, LocalRunnerActors]]:
    settings = Settings.model_validate(
        {
            "store": {"url": f"sqlite:///{tmp_path / 'officeray.db'}"},
            "telemetry": {"trace_file": str(tmp_path / "traces.jsonl")},
            "runners": {"count": 2},
            "workflow": {"max_concurrent_tasks": 1, "claim_interval_s": 0.05},
        }
    )
    actors = LocalRunnerActors(step=steps.step)
    orchestrator = Orchestrator(
        settings, ModelPorts(planner=ScriptedPlanner([]), reviewer=Approver()), runner_actors=actors
    )
    try:
        yield orchestrator, actors
    finally:
        for gate in steps.gates.values():
            gate.set()
        for running in [*orchestrator._background, *orchestrator._running.values()]:
            running.cancel()
            with contextlib.suppress(BaseException):
                await running
        orchestrator.store.close()


async def test_a_running_step_is_stopped_on_its_runner_and_the_runner_is_free_again(tmp_path: Path) -> None:
    steps = Steps()
    async with orchestrator_in(tmp_path, steps) as (orchestrator, actors):
        await orchestrator.submit(task("t-run"))
        await until(lambda: steps.started == ["t-run"], "the step runs")

        before, here = await orchestrator.cancel("t-run", "key-1")
        record = await orchestrator.wait("t-run", timeout_s=WAIT_S)

        assert here and before.status == TaskStatus.EXECUTING
        assert record.status == TaskStatus.CANCELLED and record.steps[0].status == StepStatus.FAILED
        assert [r.interrupts for r in actors.runner_objects if r.interrupts] == [[("t-run", "s1")]]
        await until(lambda: orchestrator.pool.stats()["idle"] == 2, "the runner is back in the pool")
        kinds = [e.kind for e in await orchestrator.store.events("t-run")]
        assert kinds[0] == "accepted" and kinds.index("cancel_requested") < kinds.index("cancelled")
        assert await orchestrator.store.dlq_get("t-run") is None
        with pytest.raises(TaskFinalError) as final:
            await orchestrator.cancel("t-run", "key-1")
        assert final.value.status == "cancelled"

        steps.gates.setdefault("t-next", asyncio.Event()).set()  # the next step gets a runner at once
        await orchestrator.submit(task("t-next"))
        assert (await orchestrator.wait("t-next", timeout_s=WAIT_S)).status == TaskStatus.COMPLETED


async def test_a_runner_that_does_not_stop_its_step_is_replaced(tmp_path: Path) -> None:
    steps = Steps()
    async with orchestrator_in(tmp_path, steps) as (orchestrator, actors):
        orchestrator.pool.limits = orchestrator.pool.limits.model_copy(update={"interrupt_timeout_s": 0.2})
        actors.ignore_interrupts = True
        await orchestrator.submit(task("t-stuck"))
        await until(lambda: steps.started == ["t-stuck"], "the step runs")
        await orchestrator.cancel("t-stuck", "key-1")
        assert (await orchestrator.wait("t-stuck", timeout_s=WAIT_S)).status == TaskStatus.CANCELLED
        await until(lambda: len(actors.runners) == 3, "a fresh runner replaces the stuck one")
        await until(lambda: orchestrator.pool.stats()["idle"] == 2, "the pool has two idle runners again")


async def test_a_queued_task_is_cancelled_without_running(tmp_path: Path) -> None:
    steps = Steps()
    async with orchestrator_in(tmp_path, steps) as (orchestrator, _actors):
        await orchestrator.submit(task("t-busy"))
        await until(lambda: steps.started == ["t-busy"], "the only slot is taken")
        await orchestrator.submit(task("t-queued"))
        queued = await orchestrator.store.get_task("t-queued")
        assert queued is not None and queued.status == TaskStatus.QUEUED

        await orchestrator.cancel("t-queued", "key-2")
        record = await orchestrator.wait("t-queued", timeout_s=WAIT_S)

        assert record.status == TaskStatus.CANCELLED and record.error == "cancelled by key-2"
        steps.gates["t-busy"].set()
        assert (await orchestrator.wait("t-busy", timeout_s=WAIT_S)).status == TaskStatus.COMPLETED
        assert steps.started == ["t-busy"]  # the cancelled task never ran


async def test_a_cancel_requested_while_no_orchestrator_ran_the_task_ends_it_on_resume(
    tmp_path: Path,
) -> None:
    steps = Steps()
    async with orchestrator_in(tmp_path, steps) as (orchestrator, _actors):
        # a task whose orchestrator died: unfinished, nobody holds it; its cancel was kept
        record = TaskRecord(task_id="t-orphan", description="multiply", tenant="acme")
        await orchestrator.store.create_task(record, task("t-orphan"))
        await orchestrator.store.append_event("t-orphan", "cancel_requested", {"by": "key-3"})

        await orchestrator.in_flight()  # starts the claim loop
        ended = await orchestrator.wait("t-orphan", timeout_s=WAIT_S)

        assert ended.status == TaskStatus.CANCELLED and ended.error == "cancelled by key-3"
        assert steps.started == []


async def test_a_cancel_that_comes_while_the_claim_loop_looks_for_cancel_requests_is_not_lost(
    tmp_path: Path,
) -> None:
    steps = Steps()
    async with orchestrator_in(tmp_path, steps) as (orchestrator, _actors):
        record = TaskRecord(task_id="t-race", description="multiply", tenant="acme")
        await orchestrator.store.create_task(record, task("t-race"))  # unfinished, nobody holds it
        reading, gate = asyncio.Event(), asyncio.Event()
        events = orchestrator.store.events

        async def slow_events(task_id: str, after_id: int | None = None) -> list[Any]:
            found = await events(task_id, after_id)  # read before the cancel request is written
            if task_id == "t-race" and not reading.is_set():
                reading.set()
                await gate.wait()
            return found

        orchestrator.store.events = slow_events  # type: ignore[method-assign]
        await orchestrator.in_flight()  # starts the claim loop
        await until(reading.is_set, "the claim loop looks for a cancel request")

        _before, here = await orchestrator.cancel("t-race", "key-4")
        gate.set()
        ended = await orchestrator.wait("t-race", timeout_s=WAIT_S)

        assert here  # the claimed task was stopped here
        assert ended.status == TaskStatus.CANCELLED and ended.error == "cancelled by key-4"
        assert steps.started == []  # it never ran


async def test_a_second_cancel_does_not_cut_short_the_end_of_a_cancelled_claimed_task(
    tmp_path: Path,
) -> None:
    steps = Steps()
    async with orchestrator_in(tmp_path, steps) as (orchestrator, _actors):
        record = TaskRecord(task_id="t-orphan", description="multiply", tenant="acme")
        await orchestrator.store.create_task(record, task("t-orphan"))
        await orchestrator.store.append_event("t-orphan", "cancel_requested", {"by": "key-3"})
        finishing, gate = asyncio.Event(), asyncio.Event()
        finish_task = orchestrator.store.finish_task

        async def slow_finish(*args: Any, **kwargs: Any) -> bool:
            finishing.set()
            await gate.wait()
            return await finish_task(*args, **kwargs)

        orchestrator.store.finish_task = slow_finish  # type: ignore[method-assign]
        await orchestrator.in_flight()  # starts the claim loop
        await until(finishing.is_set, "the cancelled end is being written")

        _before, here = await orchestrator.cancel("t-orphan", "key-5")
        gate.set()
        ended = await orchestrator.wait("t-orphan", timeout_s=WAIT_S)

        assert here
        assert ended.status == TaskStatus.CANCELLED and ended.error == "cancelled by key-3"  # the first end
        kinds = [e.kind for e in await orchestrator.store.events("t-orphan")]
        assert kinds.count("cancelled") == 1 and steps.started == []


async def test_a_step_cut_short_by_its_caller_is_stopped_and_its_runner_taken_back() -> None:
    """What the ``maximum_duration_s`` cap does to a running step (it stops waiting for it)."""
    from actors.tool_runner import PoolLimits, RunnerPool
    from officeray.config import load_settings

    steps = Steps()
    actors = LocalRunnerActors(step=steps.step)
    pool = RunnerPool(load_settings(None, **{"runners.count": 1}), actors=actors, limits=PoolLimits())
    step = PlanStep(step_id="s1", action="python_exec", inputs={"code": "1"}, idempotency_key="k1")

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(pool.execute("t-capped", step, {}, {}), 0.2)

    assert actors.runner_objects[0].interrupts == [("t-capped", "s1")]
    assert actors.runner_objects[0].running == {} and pool.stats()["idle"] == 1


async def test_a_cancelled_task_is_never_resumed(tmp_path: Path) -> None:
    from officeray.store import SqlStore

    store = SqlStore(f"sqlite:///{tmp_path / 'officeray.db'}")
    try:
        record = TaskRecord(task_id="t-done", description="d")
        await store.create_task(record, TaskRequest(description="d"))
        record.status = TaskStatus.CANCELLED
        assert await store.finish_task(record, "cancelled", {"by": "key-1"})
        assert await store.unfinished() == []
        assert await store.claimable_unfinished("someone", 30.0) == []
    finally:
        store.close()
