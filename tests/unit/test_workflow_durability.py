"""Durability of a task run with the shipped fakes (issue 12, item 6).

* a resumed task's stored plan is validated again before any of its steps runs (a DLQ retry of a
  plan refused for a tool outside ``allowed_tools``, or whose tool left the catalog, never runs it);
* the end of a run (final record, its dead-letter entry when failed, the tenant's usage) is one write;
* a run that lost its task's lease writes nothing more: the run that took the task over keeps it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from officeray.contracts import (
    ModelCallRecord,
    ModelUsage,
    Plan,
    Planned,
    PlanRequest,
    TaskRecord,
    TaskRequest,
    TaskStatus,
)
from officeray.errors import PlanningError
from officeray.testing import (
    FunctionExecutor,
    InMemoryStore,
    ScriptedPlanner,
    ScriptedReviewer,
    in_memory_tracer,
    make_plan,
)
from officeray.workflow import RunSupersededError, Workflow
from tests.unit.test_workflow import TOOLS, approve, calc_plan, calculate, revise

TASK = "task-1"


def python_plan(iteration: int = 1) -> Plan:
    return make_plan(
        TASK, [{"step_id": "s1", "action": "python_exec", "inputs": {"code": "print(1)"}}], iteration
    )


class Harness:
    """A workflow on the fakes; ``python_runs`` counts python_exec steps that ran."""

    def __init__(
        self,
        plans: list[Any],
        reviews: list[Any],
        *,
        store: InMemoryStore | None = None,
        owner: str | None = None,
        functions: dict[str, Any] | None = None,
    ) -> None:
        tracer, _spans = in_memory_tracer()
        self.python_runs: list[dict[str, Any]] = []
        self.planner, self.reviewer = ScriptedPlanner(plans), ScriptedReviewer(reviews)
        self.executor = FunctionExecutor(
            functions or {"math_calculator": calculate, "python_exec": self.python_runs.append}
        )
        self.store = store or InMemoryStore()
        self.workflow = Workflow(
            planner=self.planner,
            reviewer=self.reviewer,
            executor=self.executor,
            store=self.store,
            tracer=tracer,
            tools=TOOLS,
            owner=owner,
        )

    async def run(self, request: TaskRequest, record: TaskRecord | None = None) -> TaskRecord:
        return await asyncio.wait_for(self.workflow.run(request, TASK, record), timeout=5)

    def assert_consumed(self) -> None:
        self.planner.assert_consumed()
        self.reviewer.assert_consumed()


def stored(status: TaskStatus, plan: Plan, iterations: int = 1) -> TaskRecord:
    """A record as a DLQ retry (or a restart) hands it to the workflow: a round's plan to go on with."""
    return TaskRecord(task_id=TASK, description="add", status=status, iterations=iterations, plan=plan)


# -- 1. a resumed plan is validated again -----------------------------------------------------------


@pytest.mark.parametrize("status", [TaskStatus.EXECUTING, TaskStatus.WAITING_APPROVAL, TaskStatus.REVIEWING])
async def test_a_resumed_plan_outside_allowed_tools_is_refused_and_the_task_plans_again(
    status: TaskStatus,
) -> None:
    h = Harness([calc_plan(iteration=2)], [approve])
    request = TaskRequest(description="add", allowed_tools=["math_calculator"])

    final = await h.run(request, stored(status, python_plan()))

    assert h.python_runs == []  # the refused plan never ran
    assert final.status == TaskStatus.COMPLETED and final.result == {"answer": 5}
    assert [s.action for s in final.steps] == ["math_calculator"]
    [replanned] = h.planner.requests
    assert replanned.iteration == 2 and replanned.allowed_tools == ["math_calculator"]
    assert any("plan rejected" in f and "'python_exec' is not allowed" in f for f in replanned.feedback)
    validated = [data for kind, data in h.store.event_log[TASK] if kind == "validated"]
    assert validated[0]["valid"] is False and validated[1]["valid"] is True
    h.assert_consumed()


async def test_a_resumed_plan_whose_tool_left_the_catalog_is_refused_and_planned_again() -> None:
    retired = make_plan(TASK, [{"step_id": "s1", "action": "retired_tool", "inputs": {}}])
    h = Harness([calc_plan(iteration=2)], [approve])

    final = await h.run(TaskRequest(description="add"), stored(TaskStatus.EXECUTING, retired))

    assert final.status == TaskStatus.COMPLETED
    assert h.executor.calls == [("s1", {"expression": "2 + 3"})]  # only the new plan's step
    assert any("retired_tool" in f for f in h.planner.requests[0].feedback)
    h.assert_consumed()


async def test_a_refused_resumed_plan_in_the_last_round_fails_the_task_without_running() -> None:
    h = Harness([], [])
    request = TaskRequest(description="add", allowed_tools=["math_calculator"], max_iterations=2)

    final = await h.run(request, stored(TaskStatus.EXECUTING, python_plan(2), iterations=2))

    assert h.python_runs == [] and h.executor.calls == []
    assert final.status == TaskStatus.FAILED
    assert final.error is not None and "'python_exec' is not allowed" in final.error
    h.assert_consumed()


async def test_a_resumed_plan_that_is_still_valid_goes_on_without_planning() -> None:
    h = Harness([], [approve])
    request = TaskRequest(description="add", allowed_tools=["math_calculator"])

    final = await h.run(request, stored(TaskStatus.EXECUTING, calc_plan()))

    assert final.status == TaskStatus.COMPLETED and final.iterations == 1
    assert h.planner.requests == []
    h.assert_consumed()


# -- 3. the end of a run is one write -----------------------------------------------------------------


def with_usage(plan: Plan, tokens: int = 10) -> Any:
    def answer(_request: PlanRequest) -> Planned:
        usage = ModelUsage(prompt_tokens=tokens, completion_tokens=tokens, calls=1)
        return Planned(plan=plan, call=ModelCallRecord(role="planner", tier="scripted", usage=usage))

    return answer


async def test_a_failed_task_ends_with_its_dead_letter_entry_and_its_usage() -> None:
    h = Harness([with_usage(calc_plan())], [revise("no")])
    final = await h.run(TaskRequest(description="add", tenant="acme", max_iterations=1))

    assert final.status == TaskStatus.FAILED and final.error
    assert h.store.dead_letters == {TASK: final.error}
    assert h.store.usage == {"acme": ModelUsage(prompt_tokens=10, completion_tokens=10, calls=1)}
    assert h.store.tasks[TASK].status == TaskStatus.FAILED
    assert h.store.kinds(TASK)[-1] == "failed"


async def test_a_completed_task_counts_its_usage_and_is_not_dead_lettered() -> None:
    h = Harness([with_usage(calc_plan())], [approve])
    await h.run(TaskRequest(description="add", tenant="acme"))

    assert h.store.dead_letters == {}
    assert h.store.usage["acme"].calls == 1


async def test_a_task_that_cannot_be_planned_is_dead_lettered() -> None:
    h = Harness([PlanningError("no tool for that")], [])
    final = await h.run(TaskRequest(description="add"))

    assert final.status == TaskStatus.FAILED
    assert h.store.dead_letters == {TASK: "no tool for that"}
    assert h.store.usage == {}  # no model call was paid for


# -- 4. a run that lost its lease writes nothing ------------------------------------------------------


async def test_a_run_that_lost_its_lease_cannot_overwrite_the_record_of_the_run_that_took_over() -> None:
    store = InMemoryStore()
    store.leases[TASK] = "orch-a"
    running, release = asyncio.Event(), asyncio.Event()

    async def slow(inputs: dict[str, Any]) -> dict[str, Any]:
        running.set()
        await release.wait()
        return calculate(inputs)

    first = Harness([calc_plan()], [], store=store, owner="orch-a", functions={"math_calculator": slow})
    first_run = asyncio.ensure_future(first.run(TaskRequest(description="add", tenant="acme")))
    await asyncio.wait_for(running.wait(), timeout=5)

    # orch-a's lease expired and orch-b took the task over from its stored record, and finished it
    store.leases[TASK] = "orch-b"
    taken = store.tasks[TASK].model_copy(deep=True)
    second = Harness([], [approve], store=store, owner="orch-b")
    final = await second.run(TaskRequest(description="add", tenant="acme"), taken)
    assert final.status == TaskStatus.COMPLETED
    after_takeover = store.tasks[TASK].model_copy(deep=True)
    events = list(store.event_log[TASK])

    release.set()  # the first run's step ends now: its next transition must not be written
    with pytest.raises(RunSupersededError):
        await asyncio.wait_for(first_run, timeout=5)

    assert store.tasks[TASK] == after_takeover
    assert store.event_log[TASK] == events
    first.assert_consumed()
    second.assert_consumed()


async def test_a_run_whose_lease_was_taken_writes_no_end() -> None:
    store = InMemoryStore()
    store.leases[TASK] = "orch-a"

    def take_over(request: Any) -> Any:  # the lease goes to another orchestrator during the review
        store.leases[TASK] = "orch-b"
        return approve(request)

    h = Harness([with_usage(calc_plan())], [take_over], store=store, owner="orch-a")
    with pytest.raises(RunSupersededError):
        await h.run(TaskRequest(description="add", tenant="acme"))

    assert store.tasks[TASK].status == TaskStatus.REVIEWING  # the last transition written with the lease
    assert store.dead_letters == {} and store.usage == {}


async def test_a_run_that_holds_its_lease_writes_every_transition() -> None:
    store = InMemoryStore()
    store.leases[TASK] = "orch-a"
    h = Harness([calc_plan()], [approve], store=store, owner="orch-a")

    final = await h.run(TaskRequest(description="add"))

    assert final.status == TaskStatus.COMPLETED
    assert store.tasks[TASK].status == TaskStatus.COMPLETED
    assert store.kinds(TASK)[0] == "accepted" and store.kinds(TASK)[-1] == "completed"


class _StoreThatBreaksWhileReviewing(InMemoryStore):
    """A store whose ``reviewing`` transition raises an unexpected error (a bug, not an outage)."""

    def save_transition(
        self, record: TaskRecord, kind: str, data: dict[str, Any], *, owner: str | None = None
    ) -> Any:
        if kind == "reviewing":
            raise RuntimeError("unexpected")
        return super().save_transition(record, kind, data, owner=owner)


async def test_a_crash_in_the_run_fails_the_task_with_one_end_write() -> None:
    """What escapes the loop ends the task as every run ends (``finish``: final record, its event,
    the dead-letter entry, the usage); the orchestrator has no end of its own to write."""
    h = Harness([with_usage(calc_plan())], [], store=_StoreThatBreaksWhileReviewing())
    final = await h.run(TaskRequest(description="add", tenant="acme"))

    assert final.status == TaskStatus.FAILED and final.error == "internal error: RuntimeError: unexpected"
    assert final.finished_at is not None and final.current_step is None
    assert h.store.tasks[TASK].status == TaskStatus.FAILED
    assert h.store.dead_letters == {TASK: final.error}
    assert h.store.usage == {"acme": ModelUsage(prompt_tokens=10, completion_tokens=10, calls=1)}
    assert h.store.kinds(TASK)[-1] == "failed"


async def test_the_planner_and_reviewer_are_told_whose_task_it_is() -> None:
    h = Harness([calc_plan()], [approve])
    await h.run(TaskRequest(description="add", tenant="acme"))
    assert [r.tenant for r in h.planner.requests] == ["acme"]
    assert [r.tenant for r in h.reviewer.requests] == ["acme"]
