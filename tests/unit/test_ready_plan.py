"""Ready plans (a task submitted with its plan) and the wall-clock cap, in the workflow with the fakes.

No Ray, no sandbox: the planner and reviewer are scripted (an empty planner script answers nothing,
so a call would show in its ``requests``), steps run as Python functions, the store lives in memory.
The wall-clock cap is tested on tasks accepted a while ago (their record's ``created_at`` lies in
the past), so a cap of minutes is reached after a few milliseconds of real time.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from officeray.config import WorkflowSettings
from officeray.contracts import (
    ErrorType,
    PlanRequest,
    Review,
    ReviewRequest,
    ReviewVerdict,
    StepStatus,
    TaskRecord,
    TaskRequest,
    TaskStatus,
    WorkflowRetryPolicy,
    utcnow,
)
from officeray.testing import (
    FunctionExecutor,
    InMemoryApprovals,
    InMemoryStore,
    ScriptedPlanner,
    ScriptedReviewer,
    in_memory_tracer,
    make_plan,
)
from officeray.tools.builtin import BUILTIN_TOOLS
from officeray.workflow import Planner, Workflow
from tools_sandbox.agent.tools.math_calculator import evaluate

TOOLS = {name: spec.input_model for name, spec in BUILTIN_TOOLS.items()}
TASK = "task-ready"
RUN_TIMEOUT_S = 5.0
CAP_S = 300.0
LEFT_S = 0.05
"""Real time left before the cap when a capped test task starts."""


def ready_plan(*steps: dict[str, Any], task_id: str = "written-before-the-task-existed") -> dict[str, Any]:
    """A plan document in the published plan schema, as a client writes it."""
    return {
        "plan_id": "plan-from-the-client",
        "task_id": task_id,
        "confidence": 0.9,
        "metadata": {
            "priority": 1,
            "required_tools": sorted({s["action"] for s in steps}),
            "estimated_cost_tokens": 0,
            "estimated_duration_seconds": 1,
        },
        "steps": [
            {
                "inputs": {},
                "outputs_expectation": None,
                "timeout_seconds": 30,
                "parallelizable": False,
                "idempotency_key": f"key-{s['step_id']}",
                "dependencies": [],
                **s,
            }
            for s in steps
        ],
    }


CALC = {"step_id": "s1", "action": "math_calculator", "inputs": {"expression": "6 * 7"}}


def calculate(inputs: dict[str, Any]) -> dict[str, Any]:
    return {"value": evaluate(inputs["expression"], dict(inputs.get("variables", {})))["value"]}


async def forever(_inputs: dict[str, Any]) -> None:
    await asyncio.Event().wait()


def approve(request: ReviewRequest) -> Review:
    return Review(verdict=ReviewVerdict.APPROVED, final_output=request.results[-1].output)


class HangingPlanner:
    """A planner that never answers (a model that hangs)."""

    def __init__(self) -> None:
        self.requests: list[PlanRequest] = []

    async def plan(self, request: PlanRequest) -> Any:
        self.requests.append(request)
        await asyncio.Event().wait()


@dataclass
class Harness:
    planner: Any
    reviewer: ScriptedReviewer
    executor: FunctionExecutor
    store: InMemoryStore
    workflow: Workflow

    async def run(self, request: TaskRequest, task_id: str = TASK, accepted_s_ago: float = 0.0) -> TaskRecord:
        record = TaskRecord(
            task_id=task_id,
            description=request.description,
            created_at=utcnow() - timedelta(seconds=accepted_s_ago),
        )
        final = await asyncio.wait_for(self.workflow.run(request, task_id, record), RUN_TIMEOUT_S)
        assert final.status.is_final
        return final


def harness(
    plans: list[Any] | None = None,
    reviews: list[Any] | None = None,
    functions: dict[str, Any] | None = None,
    *,
    planner: Planner | None = None,
    needs_approval: bool = False,
    approvals: InMemoryApprovals | None = None,
    store: InMemoryStore | None = None,
) -> Harness:
    tracer, _spans = in_memory_tracer()

    async def no_sleep(_seconds: float) -> None:
        return None

    the_planner = planner or ScriptedPlanner(plans or [])
    reviewer = ScriptedReviewer(reviews or [])
    executor = FunctionExecutor(functions or {"math_calculator": calculate})
    store = store or InMemoryStore()
    workflow = Workflow(
        planner=the_planner,
        reviewer=reviewer,
        executor=executor,
        store=store,
        tracer=tracer,
        tools=TOOLS,
        settings=WorkflowSettings(),
        needs_approval=(lambda _action: True) if needs_approval else None,
        approvals=approvals,
        sleep=no_sleep,
        rand=lambda: 0.5,
    )
    return Harness(the_planner, reviewer, executor, store, workflow)


def capped(description: str = "capped task", **request: Any) -> TaskRequest:
    return TaskRequest(
        description=description, retry_policy=WorkflowRetryPolicy(maximum_duration_s=CAP_S), **request
    )


# -- ready plans ---------------------------------------------------------------------------------


async def test_a_ready_plan_runs_without_the_planner_and_is_reviewed() -> None:
    h = harness(reviews=[approve])
    record = await h.run(TaskRequest(description="six times seven", plan=ready_plan(CALC)))

    assert record.status == TaskStatus.COMPLETED, record.error
    assert record.result == {"value": 42}
    assert h.planner.requests == []  # iteration 1 never asked the planner
    assert h.executor.calls == [("s1", {"expression": "6 * 7"})]
    (review,) = h.reviewer.requests
    assert review.plan.plan_id == "plan-from-the-client" and review.results[0].output == {"value": 42}
    assert record.counters.model_calls == 1  # the review only
    # the plan's task_id is informational: it runs under the task's id
    assert record.plan is not None and record.plan.task_id == TASK
    assert ("planned", {"status": "validating", "iteration": 1, "plan_id": "plan-from-the-client",
                        "source": "submitted"}) in h.store.event_log[TASK]  # fmt: skip
    assert any("the submitted plan has 1 step(s): s1=math_calculator" in line.message for line in record.logs)


async def test_ready_plan_steps_run_as_a_dag_with_references() -> None:
    plan = ready_plan(
        CALC,
        {
            "step_id": "s2",
            "action": "math_calculator",
            "inputs": {"expression": "x / 2", "variables": {"x": {"from_step": "s1", "path": "value"}}},
            "dependencies": ["s1"],
        },
    )
    h = harness(reviews=[approve])
    record = await h.run(TaskRequest(description="then halve it", plan=plan))

    assert record.status == TaskStatus.COMPLETED, record.error
    assert record.result == {"value": 21}
    assert [call[0] for call in h.executor.calls] == ["s1", "s2"]
    assert h.planner.requests == []


async def test_a_revision_goes_to_the_planner_with_the_ready_plan_as_previous() -> None:
    def replan(request: PlanRequest) -> Any:
        return make_plan(
            request.task_id,
            [{"step_id": "s1", "action": "math_calculator", "inputs": {"expression": "6 * 7 + 0"}}],
            iteration=2,
        )

    h = harness(
        plans=[replan],
        reviews=[Review(verdict=ReviewVerdict.REVISE, feedback="show your work"), approve],
    )
    record = await h.run(TaskRequest(description="six times seven", plan=ready_plan(CALC)))

    assert record.status == TaskStatus.COMPLETED, record.error
    assert record.iterations == 2
    (request,) = h.planner.requests  # iteration 2 only
    assert request.iteration == 2 and request.feedback == ["show your work"]
    assert request.previous_plan is not None and request.previous_plan.plan_id == "plan-from-the-client"
    h.planner.assert_consumed()
    h.reviewer.assert_consumed()


async def test_a_refused_ready_plan_fails_the_task_with_the_reasons() -> None:
    plan = ready_plan(
        {"step_id": "s1", "action": "teleport"},
        {"step_id": "s2", "action": "math_calculator", "inputs": {}, "dependencies": ["s9"]},
    )
    h = harness()
    record = await h.run(TaskRequest(description="impossible", plan=plan))

    assert record.status == TaskStatus.FAILED
    assert record.error is not None and record.error.startswith("the submitted plan was refused: ")
    assert "teleport" in record.error and "s9" in record.error and "expression" in record.error
    assert record.iterations == 1  # not re-planned: the planner never rewrites a user's plan
    assert h.planner.requests == [] and h.executor.calls == [] and h.reviewer.requests == []
    assert record.plan is None  # a refused plan is never the task's plan (a DLQ retry checks it again)


async def test_a_ready_plan_that_is_not_a_plan_fails_with_the_schema_reasons() -> None:
    h = harness()
    record = await h.run(TaskRequest(description="not a plan", plan={"steps": "all of them"}))

    assert record.status == TaskStatus.FAILED
    assert record.error is not None and "plan_id" in record.error and "steps" in record.error
    assert h.planner.requests == [] and h.executor.calls == []


async def test_a_ready_plan_obeys_allowed_tools() -> None:
    h = harness()
    request = TaskRequest(description="calc", plan=ready_plan(CALC), allowed_tools=["code_analyzer"])
    record = await h.run(request)

    assert record.status == TaskStatus.FAILED
    assert record.error is not None and "'math_calculator' is not allowed" in record.error
    assert h.executor.calls == []


async def test_two_tasks_with_the_same_ready_plan_do_not_share_step_results() -> None:
    """Recorded results are found by idempotency key: a client's "key-s1" is made the task's own
    (``<task_id>:0:<step_id>``)."""
    store = InMemoryStore()
    first = harness(reviews=[approve], store=store)
    second = harness(reviews=[approve], store=store)
    request = TaskRequest(description="six times seven", plan=ready_plan(CALC))

    await first.run(request, task_id="task-a")
    record = await second.run(request, task_id="task-b")

    assert record.status == TaskStatus.COMPLETED
    assert second.executor.calls == [("s1", {"expression": "6 * 7"})]  # run, not reused from task-a
    assert record.steps[0].idempotency_key == "task-b:0:s1"
    assert set(store.step_results) == {"task-a:0:s1", "task-b:0:s1"}


async def test_steps_of_a_ready_plan_that_share_a_key_each_run() -> None:
    """Two steps given the same key by the client both run (neither reuses the other's result)."""
    plan = ready_plan({**CALC, "idempotency_key": "k"}, {**CALC, "step_id": "s2", "idempotency_key": "k",
                      "inputs": {"expression": "10 * 10"}})  # fmt: skip
    h = harness(reviews=[approve])
    record = await h.run(TaskRequest(description="two products", plan=plan))

    assert record.status == TaskStatus.COMPLETED, record.error
    assert [inputs for _, inputs in h.executor.calls] == [{"expression": "6 * 7"}, {"expression": "10 * 10"}]
    assert [s.output for s in record.steps] == [{"value": 42}, {"value": 100}]


async def test_a_long_step_id_is_hashed_to_stay_within_the_key_limit() -> None:
    plan = ready_plan({**CALC, "step_id": "s" * 64})
    h = harness(reviews=[approve])
    record = await h.run(TaskRequest(description="six times seven", plan=plan))

    assert record.status == TaskStatus.COMPLETED, record.error
    key = record.steps[0].idempotency_key
    assert key.startswith(f"{TASK}:") and len(key) <= 200


async def test_a_ready_plan_resumed_before_it_ran_is_validated_and_used_again() -> None:
    """A task that stopped while validating its ready plan (a crash) takes it again, not the planner."""
    h = harness(reviews=[approve])
    request = TaskRequest(description="six times seven", plan=ready_plan(CALC))
    stopped = TaskRecord(task_id=TASK, description=request.description, iterations=1,
                         status=TaskStatus.VALIDATING)  # fmt: skip
    record = await asyncio.wait_for(h.workflow.run(request, TASK, stopped), RUN_TIMEOUT_S)

    assert record.status == TaskStatus.COMPLETED, record.error
    assert h.planner.requests == []


# -- the wall-clock cap --------------------------------------------------------------------------


async def test_the_cap_stops_a_step_while_it_runs() -> None:
    cancelled: list[str] = []

    async def sleeps_forever(_inputs: dict[str, Any]) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append("s1")
            raise

    plan = ready_plan({"step_id": "s1", "action": "sleep", "inputs": {"seconds": 600}})
    h = harness(functions={"sleep": sleeps_forever})
    record = await h.run(capped(plan=plan), accepted_s_ago=CAP_S - LEFT_S)

    assert record.status == TaskStatus.FAILED
    assert (
        record.error
        == "workflow retry policy: maximum_duration_s (300) reached while step s1 (sleep) was running"
    )
    (step,) = record.steps
    assert step.status == StepStatus.FAILED and step.attempts == 1
    assert step.error is not None and step.error.type == ErrorType.POLICY
    assert cancelled == ["s1"]  # the step was stopped, not left running
    assert h.reviewer.requests == []  # nothing to review: the task is over
    assert h.store.tasks[TASK].status == TaskStatus.FAILED
    assert h.store.kinds(TASK)[-1] == "failed"


async def test_the_cap_stops_parallel_steps_and_skips_what_depends_on_them() -> None:
    plan = ready_plan(
        {"step_id": "a", "action": "sleep", "inputs": {"seconds": 600}, "parallelizable": True},
        {"step_id": "b", "action": "sleep", "inputs": {"seconds": 600}, "parallelizable": True},
        {**CALC, "step_id": "c", "dependencies": ["a", "b"]},
    )
    h = harness(functions={"sleep": forever, "math_calculator": calculate})
    record = await h.run(capped(plan=plan), accepted_s_ago=CAP_S - LEFT_S)

    assert record.status == TaskStatus.FAILED
    assert record.error is not None and "maximum_duration_s (300) reached while step" in record.error
    by_id = {s.step_id: s for s in record.steps}
    assert by_id["a"].status == by_id["b"].status == StepStatus.FAILED
    assert by_id["c"].status == StepStatus.SKIPPED
    assert [call[0] for call in h.executor.calls] == ["a", "b"]


async def test_the_cap_stops_a_wait_for_approval() -> None:
    plan = ready_plan({"step_id": "s1", "action": "sleep", "inputs": {"seconds": 1}})
    approvals = InMemoryApprovals()
    h = harness(functions={"sleep": forever}, needs_approval=True, approvals=approvals)
    record = await h.run(capped(plan=plan), accepted_s_ago=CAP_S - LEFT_S)

    assert record.status == TaskStatus.FAILED
    assert (
        record.error
        == "workflow retry policy: maximum_duration_s (300) reached while step s1 waited for approval"
    )
    assert approvals.requested == [(TASK, f"{TASK}:0:s1")]
    assert h.executor.calls == []


async def test_the_cap_stops_a_planner_that_does_not_answer() -> None:
    planner = HangingPlanner()
    h = harness(planner=planner)
    record = await h.run(capped("What is 6 * 7?"), accepted_s_ago=CAP_S - LEFT_S)

    assert record.status == TaskStatus.FAILED
    assert record.error == "workflow retry policy: maximum_duration_s (300) reached while planning"
    assert len(planner.requests) == 1


async def test_a_step_that_ends_in_time_is_not_affected_by_the_cap() -> None:
    h = harness(reviews=[approve])
    record = await h.run(capped(plan=ready_plan(CALC)), accepted_s_ago=CAP_S - 10)

    assert record.status == TaskStatus.COMPLETED, record.error
