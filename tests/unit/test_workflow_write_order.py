"""Every transition is durable before the workflow acts on it, with the writes that need no wait
submitted together (``persist_soon``); a task's first run reads no step result from the store."""

from __future__ import annotations

import asyncio
from typing import Any

from officeray.contracts import PlanRequest, ReviewRequest, StepResult, TaskRecord, TaskRequest, TaskStatus
from officeray.testing import InMemoryStore
from tests.unit.test_workflow import approve
from tests.unit.test_workflow_durable import TASK, make, two_step_plan


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []


WRITE_TURNS = 5
"""Event-loop turns each write of :class:`_LoggingStore` takes (as a real store's round trip does)."""


async def _takes_a_while() -> None:
    for _ in range(WRITE_TURNS):
        await asyncio.sleep(0)


class _LoggingStore(InMemoryStore):
    """Logs each write when it lands, and counts the reads of step results."""

    def __init__(self, log: _Log) -> None:
        super().__init__()
        self.log = log
        self.step_reads = 0

    async def _put_transition(self, snapshot: TaskRecord, event: Any, *args: Any, **kwargs: Any) -> bool:
        await _takes_a_while()
        written = await super()._put_transition(snapshot, event, *args, **kwargs)
        self.log.lines.append(f"write {event[0]}")
        return written

    async def _put_step_result(self, snapshot: StepResult) -> None:
        await _takes_a_while()
        await super()._put_step_result(snapshot)
        self.log.lines.append(f"write result {snapshot.step_id}")

    async def get_step_result(self, idempotency_key: str) -> StepResult | None:
        self.step_reads += 1
        return await super().get_step_result(idempotency_key)


def _wrap_calls(workflow: Any, log: _Log) -> None:
    planner, reviewer, executor = workflow.planner, workflow.reviewer, workflow.executor
    plan, review, execute = planner.plan, reviewer.review, executor.execute

    async def logged_plan(request: PlanRequest) -> Any:
        log.lines.append("call planner")
        return await plan(request)

    async def logged_review(request: ReviewRequest) -> Any:
        log.lines.append("call reviewer")
        return await review(request)

    async def logged_execute(task_id: str, step: Any, *args: Any) -> Any:
        log.lines.append(f"call step {step.step_id}")
        return await execute(task_id, step, *args)

    planner.plan, reviewer.review, executor.execute = logged_plan, logged_review, logged_execute


def _before(lines: list[str], call: str) -> list[str]:
    return lines[: lines.index(call)]


async def test_every_transition_is_written_before_the_call_that_acts_on_it() -> None:
    log = _Log()
    store = _LoggingStore(log)
    workflow, *_ = make([two_step_plan()], [approve], store=store)
    _wrap_calls(workflow, log)

    final = await workflow.run(TaskRequest(description="halve the answer"), TASK)

    assert final.status == TaskStatus.COMPLETED and final.result is not None
    lines = log.lines
    assert {"write accepted", "write planning"} <= set(_before(lines, "call planner"))
    before_s1 = _before(lines, "call step s1")
    assert [w for w in before_s1 if w.startswith("write") and "planning" not in w][-4:] == [
        "write validated",
        "write executing",
        "write gatekeeper",
        "write step_started",
    ]
    assert "write planned" in before_s1
    # s2 needs s1's output: s1's result and end are stored before s2 runs
    assert {"write result s1", "write step_finished"} <= set(_before(lines, "call step s2"))
    before_review = _before(lines, "call reviewer")
    assert before_review.count("write step_finished") == 2 and "write result s2" in before_review
    assert before_review[-1] == "write reviewing"
    assert lines[-2:] == ["write reviewed", "write completed"]
    # the events are stored in the order of the transitions, as one task's history
    kinds = store.kinds(TASK)
    assert kinds == [
        line.removeprefix("write ") for line in lines if line.startswith("write ") and "result" not in line
    ]


async def test_a_first_run_reads_no_step_result_and_a_resumed_one_does() -> None:
    log = _Log()
    store = _LoggingStore(log)
    workflow, *_ = make([two_step_plan()], [approve], store=store)
    final = await workflow.run(TaskRequest(description="halve the answer"), TASK)
    assert final.status == TaskStatus.COMPLETED
    assert store.step_reads == 0  # keys of its own: only this run could have stored them

    resumed = final.model_copy(deep=True, update={"status": TaskStatus.EXECUTING, "finished_at": None})
    again, *_ = make([], [approve], store=store)
    ended = await again.run(TaskRequest(description="halve the answer"), TASK, resumed)
    assert ended.status == TaskStatus.COMPLETED
    assert store.step_reads == 2  # each step's recorded success is found, and reused
    assert store.kinds(TASK).count("step_reused") == 2
