"""The task workflow with the shipped fakes: plan -> validate -> execute -> review, and its loops.

No Ray, no sandbox, no real sleeping: the planner and reviewer are scripted, steps run as Python
functions, the store lives in memory, the retry sleep and jitter source are injected.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from officeray.config import StepRetryPolicy, WorkflowSettings
from officeray.contracts import (
    ErrorType,
    Plan,
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
from officeray.errors import PlanningError
from officeray.testing import (
    FunctionExecutor,
    InMemoryStore,
    ScriptedPlanner,
    ScriptedReviewer,
    ToolFailed,
    in_memory_tracer,
    make_plan,
)
from officeray.tools.builtin import BUILTIN_TOOLS
from officeray.workflow import Workflow
from tools_sandbox.agent.tools.math_calculator import evaluate

TOOLS = {name: spec.input_model for name, spec in BUILTIN_TOOLS.items()}
TASK = "task-1"


def calculate(inputs: dict[str, Any]) -> dict[str, Any]:
    """math_calculator's own evaluator, called in process (no sandbox)."""
    return {"value": evaluate(inputs["expression"], dict(inputs.get("variables", {})))["value"]}


def calc_plan(task_id: str = TASK, expression: str = "2 + 3", iteration: int = 1) -> Plan:
    return make_plan(
        task_id,
        [{"step_id": "s1", "action": "math_calculator", "inputs": {"expression": expression}}],
        iteration=iteration,
    )


def approve(request: ReviewRequest) -> Review:
    """Approves with the last step's value as the task's result."""
    return Review(
        verdict=ReviewVerdict.APPROVED, final_output={"answer": request.results[-1].output["value"]}
    )


def revise(feedback: str) -> Review:
    return Review(verdict=ReviewVerdict.REVISE, feedback=feedback)


@dataclass
class Harness:
    planner: ScriptedPlanner
    reviewer: ScriptedReviewer
    executor: FunctionExecutor
    store: InMemoryStore
    spans: InMemorySpanExporter
    workflow: Workflow
    sleeps: list[float] = field(default_factory=list)

    async def run(
        self, description: str = "add two numbers", task_id: str = TASK, **request: Any
    ) -> TaskRecord:
        record = await asyncio.wait_for(
            self.workflow.run(TaskRequest(description=description, **request), task_id), timeout=5
        )
        assert record.status.is_final
        return record

    def assert_consumed(self) -> None:
        self.planner.assert_consumed()
        self.reviewer.assert_consumed()


T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class Clock:
    """The workflow's injected wall clock: stands still at :data:`T0` until a test moves it."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def harness(
    plans: list[Any],
    reviews: list[Any],
    functions: dict[str, Any] | None = None,
    settings: WorkflowSettings | None = None,
    rand: float = 0.5,
    clock: Clock | None = None,
) -> Harness:
    tracer, spans = in_memory_tracer()
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    planner = ScriptedPlanner(plans)
    reviewer = ScriptedReviewer(reviews)
    executor = FunctionExecutor(functions or {"math_calculator": calculate})
    store = InMemoryStore()
    workflow = Workflow(
        planner=planner,
        reviewer=reviewer,
        executor=executor,
        store=store,
        tracer=tracer,
        tools=TOOLS,
        settings=settings,
        sleep=fake_sleep,
        rand=lambda: rand,
        now=clock or utcnow,
    )
    return Harness(planner, reviewer, executor, store, spans, workflow, sleeps)


# -- the happy path ------------------------------------------------------------------------------


async def test_approved_first_time() -> None:
    h = harness([calc_plan()], [approve])
    record = await h.run()

    assert record.status == TaskStatus.COMPLETED
    assert record.result == {"answer": 5}
    assert record.error is None
    assert record.iterations == 1
    assert record.finished_at is not None
    assert record.current_step is None
    assert [(s.step_id, s.status, s.attempts, s.output) for s in record.steps] == [
        ("s1", StepStatus.SUCCEEDED, 1, {"value": 5})
    ]
    assert record.steps[0].duration_s is not None
    assert record.plan is not None and record.plan.plan_id == f"{TASK}-plan-1"
    assert h.store.tasks[TASK].status == TaskStatus.COMPLETED
    assert h.store.tasks[TASK].result == {"answer": 5}

    # The planner was told which tools it may use; the reviewer saw the plan and the results.
    assert h.planner.requests[0].allowed_tools == sorted(TOOLS)
    assert h.planner.requests[0].feedback == []
    assert h.planner.requests[0].iteration == 1
    review_request = h.reviewer.requests[0]
    assert review_request.plan == record.plan
    assert [r.output for r in review_request.results] == [{"value": 5}]
    h.assert_consumed()


async def test_one_trace_per_task_with_named_spans() -> None:
    h = harness([calc_plan()], [approve])
    record = await h.run()

    assert record.trace_id is not None and len(record.trace_id) == 32
    spans = h.spans.get_finished_spans()
    assert sorted(s.name for s in spans) == sorted(["task", "plan", "validate", "step s1", "review"])
    assert {format(s.context.trace_id, "032x") for s in spans} == {record.trace_id}
    task_span = next(s for s in spans if s.name == "task")
    assert task_span.parent is None
    for span in spans:
        if span is not task_span:
            assert span.parent is not None and span.parent.span_id == task_span.context.span_id, span.name
    assert task_span.attributes["officeray.task_id"] == TASK
    assert task_span.attributes["officeray.status"] == "completed"
    step_span = next(s for s in spans if s.name == "step s1")
    assert step_span.attributes["officeray.action"] == "math_calculator"
    assert step_span.attributes["officeray.attempts"] == 1
    h.assert_consumed()


async def test_store_sees_every_transition_in_order() -> None:
    h = harness([calc_plan()], [approve])
    await h.run()

    assert h.store.kinds(TASK) == [
        "accepted",
        "planning",
        "planned",
        "validated",
        "executing",
        "gatekeeper",
        "step_started",
        "step_finished",
        "reviewing",
        "reviewed",
        "completed",
    ]
    events = dict(h.store.event_log[TASK])
    assert events["validated"]["valid"] is True
    assert events["step_finished"] == {"status": "executing", "step_id": "s1", "step_status": "succeeded"}
    assert events["reviewed"]["verdict"] == "APPROVED"
    assert events["completed"]["status"] == "completed"

    # Step results are kept under the plan's idempotency key.
    assert set(h.store.step_results) == {f"{TASK}:1:s1"}
    saved = h.store.step_results[f"{TASK}:1:s1"]
    assert saved.status == StepStatus.SUCCEEDED
    assert saved.output == {"value": 5}
    h.assert_consumed()


async def test_outputs_flow_between_steps() -> None:
    plan = make_plan(
        TASK,
        [
            {"step_id": "s1", "action": "math_calculator", "inputs": {"expression": "6 * 7"}},
            {
                "step_id": "s2",
                "action": "math_calculator",
                "inputs": {"expression": "x + 1", "variables": {"x": {"from_step": "s1", "path": "value"}}},
                "dependencies": ["s1"],
            },
        ],
    )
    h = harness([plan], [approve])
    record = await h.run()

    assert record.status == TaskStatus.COMPLETED
    assert h.executor.calls == [
        ("s1", {"expression": "6 * 7"}),
        ("s2", {"expression": "x + 1", "variables": {"x": 42}}),
    ]
    assert record.result == {"answer": 43}
    assert [s.output for s in record.steps] == [{"value": 42}, {"value": 43}]
    h.assert_consumed()


# -- the revise loop -----------------------------------------------------------------------------


async def test_revise_then_approve_passes_the_feedback_to_the_planner() -> None:
    first, second = calc_plan(expression="2 + 2"), calc_plan(expression="2 + 3", iteration=2)
    h = harness([first, second], [revise("the task says 2 + 3"), approve])
    record = await h.run()

    assert record.status == TaskStatus.COMPLETED
    assert record.iterations == 2
    assert record.result == {"answer": 5}
    second_request = h.planner.requests[1]
    assert second_request.iteration == 2
    assert second_request.feedback == ["the task says 2 + 3"]
    assert second_request.previous_plan == first
    assert record.plan == second
    # Both rounds' step results are kept (different idempotency keys).
    assert set(h.store.step_results) == {f"{TASK}:1:s1", f"{TASK}:2:s1"}
    h.assert_consumed()


async def test_invalid_plan_sends_the_validator_reasons_back() -> None:
    bad = make_plan(TASK, [{"step_id": "s1", "action": "send_email", "inputs": {"q": "x"}}])
    h = harness([bad, calc_plan(iteration=2)], [approve])
    record = await h.run()

    assert record.status == TaskStatus.COMPLETED
    assert record.iterations == 2
    feedback = h.planner.requests[1].feedback
    assert feedback and all(line.startswith("plan rejected: ") for line in feedback)
    assert any("unknown action 'send_email'" in line for line in feedback)
    assert h.executor.calls == [("s1", {"expression": "2 + 3"})]  # the bad plan never ran
    validated = [data for kind, data in h.store.event_log[TASK] if kind == "validated"]
    assert [v["valid"] for v in validated] == [False, True]
    assert validated[0]["reasons"]
    h.assert_consumed()


async def test_planning_error_fails_the_task_at_once() -> None:
    h = harness([PlanningError("I cannot plan a task about cooking")], [])
    record = await h.run(description="cook dinner")

    assert record.status == TaskStatus.FAILED
    assert record.error == "I cannot plan a task about cooking"
    assert len(h.planner.requests) == 1
    assert h.executor.calls == []
    assert h.store.kinds(TASK)[-1] == "failed"
    task_span = next(s for s in h.spans.get_finished_spans() if s.name == "task")
    assert task_span.status.status_code == StatusCode.ERROR
    h.assert_consumed()


async def test_planner_crash_counts_as_a_round_and_the_next_round_works() -> None:
    h = harness([RuntimeError("model overloaded"), calc_plan(iteration=2)], [approve])
    record = await h.run()

    assert record.status == TaskStatus.COMPLETED
    assert record.iterations == 2
    assert h.planner.requests[1].feedback == ["the planner failed: RuntimeError: model overloaded"]
    assert any("planner failed" in line.message and line.level == "warning" for line in record.logs)
    h.assert_consumed()


async def test_reviewer_crash_runs_another_round() -> None:
    h = harness([calc_plan(), calc_plan(iteration=2)], [RuntimeError("reviewer down"), approve])
    record = await h.run()

    assert record.status == TaskStatus.COMPLETED
    assert record.iterations == 2
    assert h.planner.requests[1].feedback == ["the reviewer did not answer; run the plan again"]
    h.assert_consumed()


async def test_reviewer_can_fail_the_task() -> None:
    h = harness([calc_plan()], [Review(verdict=ReviewVerdict.FAILED, feedback="impossible task")])
    record = await h.run()

    assert record.status == TaskStatus.FAILED
    assert record.error == "impossible task"
    assert record.result is None
    h.assert_consumed()


async def test_max_iterations_exhausted_fails_with_the_count_and_last_feedback() -> None:
    settings = WorkflowSettings(max_iterations=2)
    h = harness(
        [calc_plan(), calc_plan(iteration=2)], [revise("try again"), revise("still wrong")], settings=settings
    )
    record = await h.run()

    assert record.status == TaskStatus.FAILED
    assert record.iterations == 2
    assert "not approved after 2 iteration(s)" in record.error
    assert "still wrong" in record.error
    h.assert_consumed()


async def test_max_iterations_counts_rejected_plans() -> None:
    bad = make_plan(TASK, [{"step_id": "s1", "action": "math_calculator", "inputs": {}}])
    h = harness([bad, bad, bad], [], settings=WorkflowSettings(max_iterations=3))
    record = await h.run()

    assert record.status == TaskStatus.FAILED
    assert "not approved after 3 iteration(s)" in record.error
    assert "expression" in record.error  # the last reasons are in the message
    assert h.executor.calls == []
    h.assert_consumed()


async def test_task_request_max_iterations_overrides_the_setting() -> None:
    h = harness([calc_plan()], [revise("no")], settings=WorkflowSettings(max_iterations=5))
    record = await h.run(max_iterations=1)

    assert record.status == TaskStatus.FAILED
    assert "not approved after 1 iteration(s)" in record.error
    assert len(h.planner.requests) == 1
    h.assert_consumed()


async def test_allowed_tools_reach_the_planner_and_are_enforced() -> None:
    python_plan = make_plan(
        TASK, [{"step_id": "s1", "action": "python_exec", "inputs": {"code": "print(1)"}}]
    )
    h = harness([python_plan, calc_plan(iteration=2)], [approve])
    record = await h.run(allowed_tools=["math_calculator"])

    assert record.status == TaskStatus.COMPLETED
    assert h.planner.requests[0].allowed_tools == ["math_calculator"]
    assert any("'python_exec' is not allowed" in line for line in h.planner.requests[1].feedback)
    h.assert_consumed()


async def test_unknown_allowed_tool_fails_the_task_without_planning() -> None:
    h = harness([], [])
    record = await h.run(allowed_tools=["math_calculator", "teleport"])

    assert record.status == TaskStatus.FAILED
    assert "teleport" in record.error
    assert h.planner.requests == []
    h.assert_consumed()


# -- step retries --------------------------------------------------------------------------------

RETRY = StepRetryPolicy(maximum_attempts=3, initial_interval_s=0.5, backoff_coefficient=2.0, jitter=0.2)


def flaky(failures: list[ErrorType]) -> Any:
    """A math_calculator that fails with the given error types first, then works."""
    remaining = list(failures)

    def run(inputs: dict[str, Any]) -> dict[str, Any]:
        if remaining:
            raise ToolFailed(remaining.pop(0), "transient trouble")
        return calculate(inputs)

    return run


async def test_transient_step_error_is_retried_after_the_policy_delay() -> None:
    h = harness(
        [calc_plan()],
        [approve],
        functions={"math_calculator": flaky([ErrorType.SANDBOX_ERROR])},
        settings=WorkflowSettings(step_retry=RETRY),
        rand=0.5,  # jitter factor exactly 1
    )
    record = await h.run()

    assert record.status == TaskStatus.COMPLETED
    step = record.steps[0]
    assert step.status == StepStatus.SUCCEEDED
    assert step.attempts == 2
    assert step.error is None
    assert h.sleeps == [0.5]
    assert h.sleeps == [RETRY.delay_s(1, 0.5)]
    h.assert_consumed()


async def test_retry_delays_grow_and_use_the_injected_random_source() -> None:
    h = harness(
        [calc_plan()],
        [approve],
        functions={"math_calculator": flaky([ErrorType.TIMEOUT, ErrorType.SANDBOX_ERROR])},
        settings=WorkflowSettings(step_retry=RETRY),
        rand=0.0,  # the low end of the jitter range
    )
    record = await h.run()

    assert record.steps[0].attempts == 3
    assert h.sleeps == pytest.approx([0.5 * 0.8, 1.0 * 0.8])
    h.assert_consumed()


async def test_retries_stop_at_maximum_attempts() -> None:
    always = [ErrorType.SANDBOX_ERROR] * 10
    h = harness(
        [calc_plan()],
        [Review(verdict=ReviewVerdict.FAILED, feedback="the step never worked")],
        functions={"math_calculator": flaky(always)},
        settings=WorkflowSettings(step_retry=RETRY),
    )
    record = await h.run()

    step = record.steps[0]
    assert step.status == StepStatus.FAILED
    assert step.attempts == 3
    assert step.error is not None and step.error.type == ErrorType.SANDBOX_ERROR
    assert len(h.sleeps) == 2
    assert h.reviewer.requests[0].results[0].status == StepStatus.FAILED
    h.assert_consumed()


async def test_non_retryable_tool_error_is_not_retried() -> None:
    def broken(inputs: dict[str, Any]) -> Any:
        raise ZeroDivisionError("division by zero")

    h = harness(
        [calc_plan()],
        [Review(verdict=ReviewVerdict.FAILED, feedback="division by zero")],
        functions={"math_calculator": broken},
        settings=WorkflowSettings(step_retry=RETRY),
    )
    record = await h.run()

    step = record.steps[0]
    assert step.status == StepStatus.FAILED
    assert step.attempts == 1
    assert step.error is not None
    assert step.error.type == ErrorType.TOOL_ERROR
    assert "division by zero" in step.error.message
    assert h.sleeps == []
    h.assert_consumed()


async def test_failed_step_skips_dependants_and_the_reviewer_sees_it() -> None:
    plan = make_plan(
        TASK,
        [
            {"step_id": "s1", "action": "math_calculator", "inputs": {"expression": "1 / 0"}},
            {
                "step_id": "s2",
                "action": "math_calculator",
                "inputs": {"expression": "x", "variables": {"x": {"from_step": "s1", "path": "value"}}},
                "dependencies": ["s1"],
            },
            {"step_id": "s3", "action": "math_calculator", "inputs": {"expression": "7"}},
        ],
    )
    h = harness([plan], [Review(verdict=ReviewVerdict.FAILED, feedback="s1 failed")])
    record = await h.run()

    statuses = {s.step_id: s.status for s in record.steps}
    assert statuses == {"s1": StepStatus.FAILED, "s2": StepStatus.SKIPPED, "s3": StepStatus.SUCCEEDED}
    skipped = next(s for s in record.steps if s.step_id == "s2")
    assert skipped.error is not None and skipped.error.type == ErrorType.DEPENDENCY_FAILED
    assert "step_skipped" in h.store.kinds(TASK)
    assert record.public_view()["progress"]["skipped"] == 1
    h.assert_consumed()


async def test_missing_output_path_fails_the_step_in_the_record() -> None:
    plan = make_plan(
        TASK,
        [
            {"step_id": "s1", "action": "math_calculator", "inputs": {"expression": "1"}},
            {
                "step_id": "s2",
                "action": "math_calculator",
                "inputs": {"expression": "x", "variables": {"x": {"from_step": "s1", "path": "no_such_key"}}},
                "dependencies": ["s1"],
            },
        ],
    )
    h = harness([plan], [Review(verdict=ReviewVerdict.FAILED, feedback="bad reference")])
    record = await h.run()

    s2 = next(s for s in record.steps if s.step_id == "s2")
    assert s2.status == StepStatus.FAILED
    assert s2.error is not None and s2.error.type == ErrorType.BAD_INPUT
    assert "no_such_key" in s2.error.message
    assert h.store.tasks[TASK].steps[1].status == StepStatus.FAILED
    assert record.public_view()["progress"]["pending"] == 0
    h.assert_consumed()


# -- the wall-clock cap, on the injected clock ---------------------------------------------------


async def test_maximum_duration_stops_retries_once_the_clock_passes_it() -> None:
    clock = Clock()

    def slow_and_failing(_inputs: dict[str, Any]) -> Any:
        clock.advance(200)  # each attempt takes 200 s of wall-clock time
        raise ToolFailed(ErrorType.SANDBOX_ERROR, "transient trouble")

    h = harness(
        [calc_plan()],
        [],
        functions={"math_calculator": slow_and_failing},
        settings=WorkflowSettings(step_retry=RETRY.model_copy(update={"maximum_attempts": 5})),
        clock=clock,
    )
    record = await h.run(retry_policy=WorkflowRetryPolicy(maximum_duration_s=300))

    assert record.status == TaskStatus.FAILED
    assert record.error == "workflow retry policy: maximum_duration_s (300) reached"
    (step,) = record.steps
    # attempt 1 at 0 s, attempt 2 at 200 s; at 400 s the cap (300 s) stops the third
    assert step.attempts == 2 and len(h.sleeps) == 2
    assert step.error is not None and step.error.type == ErrorType.POLICY
    assert h.reviewer.requests == []  # the task is over: nothing to review
    # every timestamp of the record comes from the injected clock
    assert record.created_at == step.started_at == T0
    assert record.finished_at == step.finished_at == T0 + timedelta(seconds=400)
    assert record.logs[0].at == T0 and record.logs[-1].at == T0 + timedelta(seconds=400)
    h.planner.assert_consumed()


async def test_maximum_duration_counts_from_acceptance() -> None:
    clock = Clock()
    h = harness([calc_plan()], [approve], clock=clock)
    request = TaskRequest(description="add", retry_policy=WorkflowRetryPolicy(maximum_duration_s=300))
    accepted = TaskRecord(task_id=TASK, description="add", created_at=T0 - timedelta(seconds=301))
    record = await asyncio.wait_for(h.workflow.run(request, TASK, accepted), timeout=5)

    assert record.status == TaskStatus.FAILED
    assert record.error == "workflow retry policy: maximum_duration_s (300) reached"
    assert h.planner.requests == []  # stopped before the first plan


async def test_maximum_duration_counts_from_the_start_of_this_run() -> None:
    """A DLQ retry starts a new run (``run_started_at``): the time before it does not count."""
    clock = Clock()
    h = harness([calc_plan()], [approve], clock=clock)
    request = TaskRequest(description="add", retry_policy=WorkflowRetryPolicy(maximum_duration_s=300))
    retried = TaskRecord(
        task_id=TASK, description="add", created_at=T0 - timedelta(days=1), run_started_at=T0
    )
    clock.advance(299)
    record = await asyncio.wait_for(h.workflow.run(request, TASK, retried), timeout=5)

    assert record.status == TaskStatus.COMPLETED, record.error
    h.assert_consumed()


# -- many tasks ----------------------------------------------------------------------------------


async def test_many_concurrent_tasks_through_one_workflow() -> None:
    count = 50

    def plan_for(request: PlanRequest) -> Plan:
        n = int(request.description.split()[-1])
        return calc_plan(request.task_id, expression=f"{n} * 2")

    async def slow_calculate(inputs: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)  # let the other tasks interleave
        return calculate(inputs)

    h = harness([plan_for] * count, [approve] * count, functions={"math_calculator": slow_calculate})
    records = await asyncio.gather(*(h.run(f"double {n}", task_id=f"task-{n}") for n in range(count)))

    assert [r.status for r in records] == [TaskStatus.COMPLETED] * count
    assert [r.task_id for r in records] == [f"task-{n}" for n in range(count)]
    assert [r.result for r in records] == [{"answer": n * 2} for n in range(count)]
    assert len({r.trace_id for r in records}) == count
    assert h.executor.max_parallel > 1  # they really ran at the same time
    assert all(h.store.tasks[f"task-{n}"].status == TaskStatus.COMPLETED for n in range(count))
    assert all(h.store.kinds(f"task-{n}")[-1] == "completed" for n in range(count))
    assert len(h.store.step_results) == count
    h.assert_consumed()
