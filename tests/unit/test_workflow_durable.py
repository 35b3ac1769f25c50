"""Durable workflow behaviour with the shipped fakes: resume, step idempotency, approvals, caps."""

from __future__ import annotations

import asyncio
from typing import Any

from officeray.config import ApprovalSettings, StepRetryPolicy, WorkflowSettings
from officeray.contracts import (
    ErrorType,
    StepStatus,
    TaskRecord,
    TaskRequest,
    TaskStatus,
    WorkflowRetryPolicy,
)
from officeray.testing import (
    FunctionExecutor,
    InMemoryApprovals,
    InMemoryStore,
    ScriptedPlanner,
    ScriptedReviewer,
    ToolFailed,
    in_memory_tracer,
    make_plan,
)
from officeray.workflow import Workflow
from tests.unit.test_workflow import TOOLS, approve, calculate

TASK = "task-d"


def two_step_plan() -> Any:
    return make_plan(
        TASK,
        [
            {"step_id": "s1", "action": "math_calculator", "inputs": {"expression": "6 * 7"}},
            {
                "step_id": "s2",
                "action": "math_calculator",
                "inputs": {
                    "expression": "ans / 2",
                    "variables": {"ans": {"from_step": "s1", "path": "value"}},
                },
                "dependencies": ["s1"],
            },
        ],
    )


def make(
    plans: list[Any],
    reviews: list[Any],
    *,
    functions: dict[str, Any] | None = None,
    store: InMemoryStore | None = None,
    settings: WorkflowSettings | None = None,
    approvals: InMemoryApprovals | None = None,
    needs_approval: Any = None,
) -> tuple[Workflow, ScriptedPlanner, ScriptedReviewer, FunctionExecutor, InMemoryStore]:
    tracer, _spans = in_memory_tracer()
    planner, reviewer = ScriptedPlanner(plans), ScriptedReviewer(reviews)
    executor = FunctionExecutor(functions or {"math_calculator": calculate})
    store = store or InMemoryStore()

    async def no_sleep(_s: float) -> None:
        return None

    workflow = Workflow(
        planner=planner,
        reviewer=reviewer,
        executor=executor,
        store=store,
        tracer=tracer,
        tools=TOOLS,
        settings=settings,
        approvals=approvals,
        needs_approval=needs_approval,
        sleep=no_sleep,
    )
    return workflow, planner, reviewer, executor, store


async def test_a_resumed_task_reuses_its_plan_and_never_reruns_a_succeeded_step() -> None:
    plan = two_step_plan()
    store = InMemoryStore()
    # the first life: s1 succeeded and was recorded, then the orchestrator died while s2 ran
    first, _p, _r, _e, _s = make([plan], [], store=store)
    s1 = (await _run_one_step(first, plan, store)).model_copy()
    record = TaskRecord(task_id=TASK, description="d", status=TaskStatus.EXECUTING, iterations=1, plan=plan)
    record.trace_id = "0af7651916cd43dd8448eb211c80319c"

    workflow, planner, reviewer, executor, _ = make([], [approve], store=store)
    final = await workflow.run(TaskRequest(description="d"), TASK, record)

    assert final.status == TaskStatus.COMPLETED and final.result == {"answer": 21.0}
    assert [step_id for step_id, _ in executor.calls] == ["s2"]  # s1 was not run again
    assert final.steps[0] == s1 and final.resumed == 1
    assert final.trace_id == "0af7651916cd43dd8448eb211c80319c"  # the same trace goes on
    kinds = store.kinds(TASK)
    assert "resumed" in kinds and "step_reused" in kinds and "accepted" not in kinds
    planner.assert_consumed()
    reviewer.assert_consumed()


async def _run_one_step(workflow: Workflow, plan: Any, store: InMemoryStore) -> Any:
    from officeray.workflow import _TaskRun

    run = _TaskRun(workflow, TaskRequest(description="d"), TASK, None)
    result = await run._run_step(plan.steps[0], plan.steps[0].inputs)
    await run.durable()  # the step's end is written before whatever the run does next
    assert result.status == StepStatus.SUCCEEDED
    assert (await store.get_step_result(plan.steps[0].idempotency_key)) is not None
    return result


def _approval_settings(timeout_s: float = 5.0) -> WorkflowSettings:
    return WorkflowSettings(approvals=ApprovalSettings(required_risk_levels=["medium"], timeout_s=timeout_s))


async def test_a_step_that_needs_approval_waits_and_runs_once_approved() -> None:
    approvals = InMemoryApprovals()
    workflow, _p, _r, executor, store = make(
        [
            make_plan(
                TASK, [{"step_id": "s1", "action": "math_calculator", "inputs": {"expression": "1 + 1"}}]
            )
        ],
        [approve],
        approvals=approvals,
        needs_approval=lambda action: action == "math_calculator",
        settings=_approval_settings(),
    )
    running = asyncio.ensure_future(workflow.run(TaskRequest(description="d"), TASK))
    while not approvals.requested:
        await asyncio.sleep(0.01)
    waiting = store.tasks[TASK]
    assert waiting.status == TaskStatus.WAITING_APPROVAL
    assert waiting.steps[0].status == StepStatus.WAITING_APPROVAL
    assert executor.calls == []  # waiting holds no runner: nothing ran yet
    approvals.decide(TASK, f"{TASK}:1:s1", "approved", by="alice")
    final = await asyncio.wait_for(running, 5)
    assert final.status == TaskStatus.COMPLETED and len(executor.calls) == 1
    decided = [data for kind, data in store.event_log[TASK] if kind == "approval_decided"]
    assert decided[0]["decided_by"] == "alice" and decided[0]["decision"] == "approved"


async def test_a_rejected_step_fails_its_task_without_running() -> None:
    approvals = InMemoryApprovals()
    approvals.decide(TASK, f"{TASK}:1:s1", "rejected", by="bob", reason="too risky")
    workflow, _p, reviewer, executor, _store = make(
        [make_plan(TASK, [{"step_id": "s1", "action": "math_calculator", "inputs": {"expression": "1"}}])],
        [lambda request: __import__("serving.tiers.embedded", fromlist=["x"]).review_results(request)],
        approvals=approvals,
        needs_approval=lambda action: True,
        settings=_approval_settings(),
    )
    final = await workflow.run(TaskRequest(description="d"), TASK)
    assert final.status == TaskStatus.FAILED and executor.calls == []
    assert final.steps[0].error is not None and final.steps[0].error.type == ErrorType.APPROVAL
    assert "rejected by bob: too risky" in final.steps[0].error.message


async def test_an_undecided_step_times_out_and_fails_the_task() -> None:
    workflow, _p, _r, executor, _store = make(
        [make_plan(TASK, [{"step_id": "s1", "action": "math_calculator", "inputs": {"expression": "1"}}])],
        [lambda request: __import__("serving.tiers.embedded", fromlist=["x"]).review_results(request)],
        approvals=InMemoryApprovals(),
        needs_approval=lambda action: True,
        settings=_approval_settings(timeout_s=0.05),
    )
    final = await workflow.run(TaskRequest(description="d"), TASK)
    assert final.status == TaskStatus.FAILED and executor.calls == []
    assert "approval of step s1 timed out" in (final.steps[0].error.message if final.steps[0].error else "")


async def test_the_workflow_retry_policy_stops_a_runaway_task() -> None:
    def always_flaky(_inputs: dict[str, Any]) -> Any:
        raise ToolFailed(ErrorType.SANDBOX_ERROR, "container lost")

    settings = WorkflowSettings(step_retry=StepRetryPolicy(maximum_attempts=10, initial_interval_s=0))
    workflow, _p, _r, executor, _store = make(
        [make_plan(TASK, [{"step_id": "s1", "action": "math_calculator", "inputs": {"expression": "1"}}])],
        [],
        functions={"math_calculator": always_flaky},
        settings=settings,
    )
    request = TaskRequest(description="d", retry_policy=WorkflowRetryPolicy(maximum_step_attempts=3))
    final = await workflow.run(request, TASK)
    assert final.status == TaskStatus.FAILED
    assert "maximum_step_attempts (3)" in (final.error or "")
    assert len(executor.calls) == 3 and final.counters.step_attempts == 3


async def test_per_tool_step_retry_policy_replaces_the_default() -> None:
    failures = iter([ToolFailed(ErrorType.TIMEOUT, "slow")] * 4)

    def flaky(inputs: dict[str, Any]) -> Any:
        error = next(failures, None)
        if error is not None:
            raise error
        return calculate(inputs)

    settings = WorkflowSettings(
        step_retry=StepRetryPolicy(maximum_attempts=1),
        step_retry_by_tool={"math_calculator": StepRetryPolicy(maximum_attempts=5, initial_interval_s=0)},
    )
    workflow, _p, _r, _executor, _store = make(
        [make_plan(TASK, [{"step_id": "s1", "action": "math_calculator", "inputs": {"expression": "2"}}])],
        [approve],
        functions={"math_calculator": flaky},
        settings=settings,
    )
    final = await workflow.run(TaskRequest(description="d"), TASK)
    assert final.status == TaskStatus.COMPLETED and final.steps[0].attempts == 5


async def test_attempts_in_the_trace_follow_the_step_policy() -> None:
    """Retryable twice then success: 3 attempts; non-retryable: exactly 1; never past maximum_attempts."""
    outcomes: dict[str, list[Any]] = {
        "2+1": [ToolFailed(ErrorType.TIMEOUT, "slow"), ToolFailed(ErrorType.SANDBOX_ERROR, "lost")],
        "2+2": [ToolFailed(ErrorType.BAD_INPUT, "no")],
        "2+3": [ToolFailed(ErrorType.TIMEOUT, "slow")] * 10,
    }

    def scripted(inputs: dict[str, Any]) -> Any:
        pending = outcomes[inputs["expression"]]
        if pending:
            raise pending.pop(0)
        return calculate(inputs)

    settings = WorkflowSettings(step_retry=StepRetryPolicy(maximum_attempts=3, initial_interval_s=0))
    steps = [
        {"step_id": f"s{i}", "action": "math_calculator", "inputs": {"expression": expr}}
        for i, expr in enumerate(outcomes, start=1)
    ]
    tracer, spans = in_memory_tracer()
    planner, reviewer = ScriptedPlanner([make_plan(TASK, steps)]), ScriptedReviewer([approve])
    workflow = Workflow(
        planner=planner,
        reviewer=reviewer,
        executor=FunctionExecutor({"math_calculator": scripted}),
        store=InMemoryStore(),
        tracer=tracer,
        tools=TOOLS,
        settings=settings,
    )
    await workflow.run(TaskRequest(description="d"), TASK)
    attempts = {
        span.name: span.attributes["officeray.attempts"]
        for span in spans.get_finished_spans()
        if span.name.startswith("step ")
    }
    assert attempts == {"step s1": 3, "step s2": 1, "step s3": 3}


async def test_a_tool_s_workflow_policy_tightens_the_caps_of_tasks_that_use_it() -> None:
    def always_flaky(_inputs: dict[str, Any]) -> Any:
        raise ToolFailed(ErrorType.SANDBOX_ERROR, "container lost")

    settings = WorkflowSettings(
        step_retry=StepRetryPolicy(maximum_attempts=10, initial_interval_s=0),
        retry_policy_by_tool={"math_calculator": WorkflowRetryPolicy(maximum_step_attempts=2)},
    )
    workflow, _p, _r, executor, _store = make(
        [make_plan(TASK, [{"step_id": "s1", "action": "math_calculator", "inputs": {"expression": "1"}}])],
        [],
        functions={"math_calculator": always_flaky},
        settings=settings,
    )
    final = await workflow.run(TaskRequest(description="d"), TASK)
    assert final.status == TaskStatus.FAILED and "maximum_step_attempts (2)" in (final.error or "")
    assert len(executor.calls) == 2


async def test_model_usage_reported_by_a_step_counts_toward_the_task() -> None:
    def ai_tool(inputs: dict[str, Any]) -> dict[str, Any]:
        return {"answer": "short", "tier": "embedded", "usage": {"prompt_tokens": 7, "completion_tokens": 2}}

    plan = make_plan(TASK, [{"step_id": "s1", "action": "ai_tool", "inputs": {"prompt": "summarize: a. b."}}])
    workflow, _p, _r, _e, _store = make(
        [plan],
        [lambda request: __import__("officeray.contracts", fromlist=["x"]).Review(verdict="APPROVED")],
        functions={"ai_tool": ai_tool},
    )
    final = await workflow.run(TaskRequest(description="d"), TASK)
    assert final.status == TaskStatus.COMPLETED
    assert final.usage.prompt_tokens == 7 and final.usage.completion_tokens == 2 and final.usage.calls == 1
    assert [(c.role, c.tier) for c in final.model_calls] == [("ai_tool", "embedded")]
