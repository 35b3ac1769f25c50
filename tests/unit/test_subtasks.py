"""Decomposed tasks (:mod:`officeray.subtasks`) with in-process fakes: the embedded planner and
reviewer, steps as Python functions, an in-memory store, and a Subtasks port that runs the child tasks
with the same workflow, each in a slot of a real :class:`~officeray.scheduling.FairScheduler`."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, cast

import pytest

from officeray.config import WorkflowSettings
from officeray.contracts import (
    DecomposeRequest,
    Decomposition,
    ErrorType,
    ModelUsage,
    Plan,
    PlanRequest,
    Review,
    ReviewRequest,
    Subtask,
    TaskRecord,
    TaskRequest,
    TaskStatus,
)
from officeray.decompose import EmbeddedDecomposer
from officeray.errors import LimitExceededError
from officeray.gatekeeper import GateDecision, GateRequest, RuleGatekeeper
from officeray.scheduling import FairScheduler
from officeray.subtasks import (
    GATE_TEXT_KEY,
    SubtaskStartError,
    child_task_id,
    gate_description,
    integrated_result,
    retry_subtask_id,
    revise_refusal,
)
from officeray.testing import FunctionExecutor, InMemoryStore, ToolFailed, in_memory_tracer
from officeray.workflow import Workflow
from serving.tiers.embedded import plan_task, review_results
from tests.unit.test_workflow import TOOLS, calculate

PARENT = "parent-1"
THREE_PARTS = "1) compute 2+3 2) compute the result of part 1 * 4 3) compute 10 - 7"
WAIT_S = 5.0


class EmbeddedPlanner:
    def __init__(self) -> None:
        self.requests: list[PlanRequest] = []

    async def plan(self, request: PlanRequest) -> Plan:
        self.requests.append(request)
        return plan_task(request)


class EmbeddedReviewer:
    def __init__(self) -> None:
        self.requests: list[ReviewRequest] = []

    async def review(self, request: ReviewRequest) -> Review:
        self.requests.append(request)
        return review_results(request)


class CountingDecomposer(EmbeddedDecomposer):
    def __init__(self) -> None:
        self.calls = 0

    async def decompose(self, request: DecomposeRequest) -> Any:
        self.calls += 1
        return await super().decompose(request)


class LocalSubtasks:
    """The Subtasks port in process: child tasks run with ``workflow`` (set after construction),
    each in a slot of ``scheduler``; the parent's slot is released while it waits (:meth:`idle`)."""

    def __init__(self, store: InMemoryStore, scheduler: FairScheduler) -> None:
        self.store = store
        self.scheduler = scheduler
        self.workflow: Workflow | None = None
        self.runs: dict[str, asyncio.Task[TaskRecord]] = {}
        self.requests: dict[str, TaskRequest] = {}
        self.starts: list[str] = []
        self.cancelled: list[tuple[str, str]] = []
        self.retried: list[str] = []
        self.idle_blocks = 0

    async def start(self, request: TaskRequest) -> None:
        assert request.task_id is not None
        self.starts.append(request.task_id)
        if request.task_id in self.requests:
            return
        self.requests[request.task_id] = request
        record = TaskRecord(task_id=request.task_id, description=request.description, tenant=request.tenant)
        await self.store.save_task(record)
        self.runs[request.task_id] = asyncio.ensure_future(self._run(request, record))

    async def _run(self, request: TaskRequest, record: TaskRecord) -> TaskRecord:
        assert self.workflow is not None and request.task_id is not None
        async with self.scheduler.slot(request.tenant):
            return await self.workflow.run(request, request.task_id, record)

    async def wait(self, task_id: str, timeout_s: float) -> TaskRecord | None:
        run = self.runs.get(task_id)
        if run is not None:
            await asyncio.wait([run], timeout=timeout_s)
        return await self.store.get_task(task_id)

    async def cancel(self, task_id: str, by: str) -> None:
        assert self.workflow is not None
        self.cancelled.append((task_id, by))
        self.workflow.cancel(task_id, by)

    async def retry(self, task_id: str) -> bool:
        record = await self.store.get_task(task_id)
        if record is None or record.status != TaskStatus.FAILED:
            return False
        self.retried.append(task_id)
        record.status, record.error, record.finished_at = TaskStatus.QUEUED, None, None
        record.iterations = max(1, record.iterations)
        await self.store.save_task(record)
        self.runs[task_id] = asyncio.ensure_future(self._run(self.requests[task_id], record))
        return True

    def idle(self, tenant: str, priority: int) -> AbstractAsyncContextManager[None]:
        return self._idle(tenant, priority)

    @asynccontextmanager
    async def _idle(self, tenant: str, priority: int) -> AsyncIterator[None]:
        self.idle_blocks += 1
        async with self.scheduler.released(tenant, priority):
            yield


class Tree:
    """A workflow with decomposition, its fakes and a one-slot scheduler (children need the slot
    the parent holds: they only run when the parent gives it back while it waits)."""

    def __init__(self, functions: dict[str, Any] | None = None, slots: int = 1, **settings: Any) -> None:
        tracer, self.spans = in_memory_tracer()
        self.store = InMemoryStore()
        self.scheduler = FairScheduler(slots, lambda _tenant: slots)
        self.subtasks = LocalSubtasks(self.store, self.scheduler)
        self.decomposer = CountingDecomposer()
        self.planner = EmbeddedPlanner()
        self.reviewer = EmbeddedReviewer()
        self.executor = FunctionExecutor(functions or {"math_calculator": calculate})
        self.workflow = Workflow(
            planner=self.planner,
            reviewer=self.reviewer,
            executor=self.executor,
            store=self.store,
            tracer=tracer,
            tools=TOOLS,
            settings=WorkflowSettings(**settings),
            decomposer=self.decomposer,
            subtasks=self.subtasks,
        )
        self.subtasks.workflow = self.workflow

    async def run(
        self, description: str, task_id: str = PARENT, record: TaskRecord | None = None, **request: Any
    ) -> TaskRecord:
        async with asyncio.timeout(WAIT_S), self.scheduler.slot("default"):
            return await self.workflow.run(TaskRequest(description=description, **request), task_id, record)

    async def kinds(self, task_id: str = PARENT) -> list[str]:
        return [e.kind for e in await self.store.events(task_id)]


def test_child_task_ids() -> None:
    assert child_task_id("t-1", "s2") == "t-1.s2"
    long = "x" * 100
    child = child_task_id(long, "s2")
    assert len(child) == 100 and child.endswith(".s2") and child != child_task_id("y" * 100, "s2")


def test_integrated_result_keeps_every_subtask_result() -> None:
    from officeray.contracts import SubtaskView

    views = [SubtaskView(subtask_id=s, task_id=f"p.{s}", description="d", result=r) for s, r in [("s1", 1)]]
    assert integrated_result({"s1": 1}, views) == {"s1": 1}
    assert integrated_result("done", views) == {"result": "done", "subtasks": {"s1": 1}}


async def test_one_subtask_runs_as_today() -> None:
    tree = Tree()
    record = await tree.run("Compute 6 * 7 then calculate ans / 2")
    assert record.status == TaskStatus.COMPLETED and record.result == 21, record.error
    assert record.subtasks == [] and record.parent_id is None
    assert tree.decomposer.calls == 1 and tree.subtasks.starts == []
    kinds = await tree.kinds()
    assert not [k for k in kinds if "subtask" in k or k == "decomposed"]
    assert tree.subtasks.idle_blocks == 0


async def test_a_submitted_plan_and_a_child_are_not_decomposed() -> None:
    tree = Tree()
    step = {
        "step_id": "a",
        "action": "math_calculator",
        "inputs": {"expression": "1+1"},
        "idempotency_key": "a",
    }
    plan = {"plan_id": "p", "task_id": "x", "steps": [step]}
    record = await tree.run("1) compute 1+1 2) compute 2+2", task_id="ready", plan=plan)
    assert record.status == TaskStatus.COMPLETED and record.subtasks == [], record.error
    child = await tree.run("1) compute 1+1 2) compute 2+2", task_id="p.s1", parent_id="p")
    assert child.subtasks == [] and tree.decomposer.calls == 0


async def test_three_parts_run_as_child_tasks_and_integrate() -> None:
    async def slow_calculate(inputs: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0.05)
        return calculate(inputs)

    tree = Tree({"math_calculator": slow_calculate}, slots=4)
    record = await tree.run(THREE_PARTS)

    assert record.status == TaskStatus.COMPLETED, record.error
    assert record.result == {"s1": 5, "s2": 20, "s3": 3}
    assert [(v.subtask_id, v.task_id, v.status, v.dependencies) for v in record.subtasks] == [
        ("s1", f"{PARENT}.s1", "completed", []),
        ("s2", f"{PARENT}.s2", "completed", ["s1"]),
        ("s3", f"{PARENT}.s3", "completed", []),
    ]
    # the dependent child got part 1's result in its description; children know their parent
    assert tree.subtasks.requests[f"{PARENT}.s2"].description == "compute 5 * 4"
    assert all(r.parent_id == PARENT for r in tree.subtasks.requests.values())
    # parts 1 and 3 ran at once; part 2 after part 1
    for i in (1, 2, 3):
        child = await tree.store.get_task(f"{PARENT}.s{i}")
        assert child is not None and child.parent_id == PARENT and child.status == TaskStatus.COMPLETED
    assert tree.executor.max_parallel >= 2
    views = {v.subtask_id: v for v in record.subtasks}
    assert views["s2"].started_at is not None and views["s1"].finished_at is not None
    assert views["s2"].started_at >= views["s1"].finished_at
    # the final review saw one pseudo-step per subtask with the child's result
    final = tree.reviewer.requests[-1]
    assert final.task_id == PARENT and [(r.action, r.output) for r in final.results] == [
        ("subtask", 5),
        ("subtask", 20),
        ("subtask", 3),
    ]
    kinds = await tree.kinds()
    assert kinds.count("decomposed") == 1 and kinds.count("subtask_started") == 3
    assert kinds.count("subtask_finished") == 3 and kinds[-1] == "completed"
    assert record.plan is None and record.steps == []


async def test_the_parent_holds_no_slot_while_it_waits() -> None:
    tree = Tree(slots=1)  # one slot: a parent holding it would starve its children
    record = await tree.run(THREE_PARTS)
    assert record.status == TaskStatus.COMPLETED, record.error
    assert tree.subtasks.idle_blocks == 1
    assert tree.scheduler.running == 0  # balanced: the slot taken back for the final review was released


async def test_a_failed_child_fails_the_parent_and_dlq_retry_resumes_the_tree() -> None:
    attempts: dict[str, int] = {}

    def flaky(inputs: dict[str, Any]) -> dict[str, Any]:
        expression = inputs["expression"]
        attempts[expression] = attempts.get(expression, 0) + 1
        if expression == "10 - 7" and attempts[expression] == 1:
            raise ToolFailed(ErrorType.TOOL_ERROR, "boom")
        return calculate(inputs)

    tree = Tree({"math_calculator": flaky}, slots=4)
    record = await tree.run(THREE_PARTS)
    assert record.status == TaskStatus.FAILED
    assert record.error is not None and record.error.startswith("subtask s3 failed: ")
    child = await tree.store.get_task(f"{PARENT}.s3")
    assert child is not None and child.status == TaskStatus.FAILED
    assert (
        await tree.store.dlq_get(PARENT) is not None and await tree.store.dlq_get(f"{PARENT}.s3") is not None
    )

    # the DLQ retry of the parent (the orchestrator re-queues it as queued) retries its dead child
    record.status, record.error, record.finished_at = TaskStatus.QUEUED, None, None
    retried = await tree.run(THREE_PARTS, record=record)
    assert retried.status == TaskStatus.COMPLETED, retried.error
    assert tree.subtasks.retried == [f"{PARENT}.s3"]
    assert retried.result == {"s1": 5, "s2": 20, "s3": 3}
    assert attempts["2+3"] == 1  # a completed child is not run again


async def test_a_resumed_parent_does_not_decompose_again_nor_duplicate_children() -> None:
    gate = asyncio.Event()

    async def gated(inputs: dict[str, Any]) -> dict[str, Any]:
        if inputs["expression"] == "10 - 7":
            await gate.wait()
        return calculate(inputs)

    tree = Tree({"math_calculator": gated}, slots=8)
    parent = asyncio.ensure_future(tree.run(THREE_PARTS))
    async with asyncio.timeout(WAIT_S):
        while f"{PARENT}.s3" not in tree.subtasks.requests or len(tree.subtasks.requests) < 3:
            await asyncio.sleep(0.01)
    parent.cancel()  # the parent's run stops (as when its orchestrator dies): nothing is written
    with pytest.raises(asyncio.CancelledError):
        await parent
    stored = await tree.store.get_task(PARENT)
    assert stored is not None and len(stored.subtasks) == 3 and not stored.status.is_final
    gate.set()
    resumed = await tree.run(THREE_PARTS, record=stored)
    assert resumed.status == TaskStatus.COMPLETED, resumed.error
    assert resumed.resumed == 1 and tree.decomposer.calls == 1
    assert sorted(tree.subtasks.requests) == [f"{PARENT}.s{i}" for i in (1, 2, 3)]  # each created once
    assert len(tree.subtasks.starts) > 3  # started again, idempotently


async def test_cancel_of_the_parent_cancels_its_children() -> None:
    never = asyncio.Event()

    async def stuck(inputs: dict[str, Any]) -> dict[str, Any]:
        await never.wait()
        return calculate(inputs)

    tree = Tree({"math_calculator": stuck}, slots=4)
    parent = asyncio.ensure_future(tree.run(THREE_PARTS))
    async with asyncio.timeout(WAIT_S):
        while len(tree.subtasks.requests) < 2 or any(tree.executor.running < 2 for _ in [0]):
            await asyncio.sleep(0.01)
    assert tree.workflow.cancel(PARENT, "tester")
    record = await asyncio.wait_for(parent, WAIT_S)
    assert record.status == TaskStatus.CANCELLED
    assert sorted(tree.subtasks.cancelled) == [(f"{PARENT}.s1", "tester"), (f"{PARENT}.s3", "tester")]
    assert {v.subtask_id: v.status for v in record.subtasks} == {
        "s1": "cancelled",
        "s2": "cancelled",
        "s3": "cancelled",
    }
    for child_id in (f"{PARENT}.s1", f"{PARENT}.s3"):
        child = await asyncio.wait_for(tree.subtasks.runs[child_id], WAIT_S)
        assert child.status == TaskStatus.CANCELLED
    assert f"{PARENT}.s2" not in tree.subtasks.requests  # never started


async def test_a_decomposer_that_fails_leaves_one_plan() -> None:
    class Broken:
        async def decompose(self, request: DecomposeRequest) -> Decomposition:
            raise RuntimeError("model down")

    tree = Tree()
    tree.workflow.decomposer = Broken()
    record = await tree.run("Compute 2 + 3")
    assert record.status == TaskStatus.COMPLETED and record.result == 5 and record.subtasks == []


async def test_a_decomposition_from_a_model_is_accounted() -> None:
    from officeray.contracts import Decomposed, ModelCallRecord

    class Model:
        async def decompose(self, request: DecomposeRequest) -> Decomposed:
            subtasks = [
                Subtask(subtask_id="a", description="compute 1 + 1"),
                Subtask(subtask_id="b", description="compute {result:a} * 10", dependencies=["a"]),
            ]
            usage = ModelUsage(prompt_tokens=10, completion_tokens=5, calls=1)
            call = ModelCallRecord(role="decomposer", tier="fake", usage=usage)
            return Decomposed(decomposition=Decomposition(subtasks=subtasks), call=call)

    tree = Tree(slots=2)
    tree.workflow.decomposer = Model()
    record = await tree.run("two things")
    assert record.status == TaskStatus.COMPLETED, record.error
    assert record.result == {"a": 2, "b": 20}
    assert record.model_calls[0].role == "decomposer" and record.usage.prompt_tokens >= 10


async def test_a_released_slot_is_taken_back_when_the_block_raises() -> None:
    scheduler = FairScheduler(1, lambda _tenant: 1)
    with pytest.raises(RuntimeError, match="boom"):
        async with scheduler.slot("a"), scheduler.released("a"):
            assert scheduler.running == 0
            async with scheduler.slot("b"):  # another task takes the freed slot meanwhile
                assert scheduler.running == 1
            raise RuntimeError("boom")
    assert scheduler.running == 0 and scheduler.queued_by_tenant() == {}


# -- trust and failure handling of the tree -----------------------------------------------------------


class RecordingGatekeeper(RuleGatekeeper):
    def __init__(self) -> None:
        super().__init__()
        self.requests: list[GateRequest] = []

    async def gate(self, request: GateRequest) -> GateDecision:
        self.requests.append(request)
        return await super().gate(request)


async def test_a_child_is_gated_against_its_roots_words_not_its_dependencies_results() -> None:
    tree = Tree(slots=4)
    gatekeeper = RecordingGatekeeper()
    tree.workflow.gatekeeper = gatekeeper
    record = await tree.run(THREE_PARTS)
    assert record.status == TaskStatus.COMPLETED, record.error
    child = tree.subtasks.requests[f"{PARENT}.s2"]
    assert child.description == "compute 5 * 4" and child.metadata[GATE_TEXT_KEY] == THREE_PARTS
    gated = {r.task_id: r.description for r in gatekeeper.requests}
    assert gated[f"{PARENT}.s2"] == THREE_PARTS  # not "compute 5 * 4": results name no hosts
    # a task of its own is gated on its description; a child without the root's words on nothing
    assert gate_description(TaskRequest(description="fetch a.example")) == "fetch a.example"
    assert gate_description(TaskRequest(description="post to evil.example", parent_id="p")) == ""
    forged = TaskRequest(description="d", parent_id="p", metadata={GATE_TEXT_KEY: 3})
    assert gate_description(forged) == ""


async def test_a_failed_child_cancels_its_running_siblings() -> None:
    never = asyncio.Event()

    async def fn(inputs: dict[str, Any]) -> dict[str, Any]:
        if inputs["expression"] == "10 - 7":
            raise ToolFailed(ErrorType.TOOL_ERROR, "boom")
        await never.wait()
        return calculate(inputs)

    tree = Tree({"math_calculator": fn}, slots=4)
    record = await tree.run(THREE_PARTS, max_iterations=1)
    assert record.status == TaskStatus.FAILED
    assert record.error is not None and record.error.startswith("subtask s3 failed: ")
    assert tree.subtasks.cancelled == [(f"{PARENT}.s1", "subtask s3 failed")]
    assert {v.subtask_id: v.status for v in record.subtasks} == {
        "s1": "cancelled",
        "s2": "cancelled",
        "s3": "failed",
    }
    sibling = await asyncio.wait_for(tree.subtasks.runs[f"{PARENT}.s1"], WAIT_S)
    assert sibling.status == TaskStatus.CANCELLED


async def test_dlq_retry_runs_cancelled_subtasks_again() -> None:
    release = asyncio.Event()
    attempts: dict[str, int] = {}

    async def fn(inputs: dict[str, Any]) -> dict[str, Any]:
        expression = inputs["expression"]
        attempts[expression] = attempts.get(expression, 0) + 1
        if expression == "10 - 7" and attempts[expression] == 1:
            raise ToolFailed(ErrorType.TOOL_ERROR, "boom")
        if expression == "2+3":
            await release.wait()
        return calculate(inputs)

    tree = Tree({"math_calculator": fn}, slots=4)
    record = await tree.run(THREE_PARTS, max_iterations=1)
    assert record.status == TaskStatus.FAILED, record.error
    release.set()

    record.status, record.error, record.finished_at = TaskStatus.QUEUED, None, None
    retried = await tree.run(THREE_PARTS, record=record, max_iterations=1)
    assert retried.status == TaskStatus.COMPLETED, retried.error
    assert retried.result == {"s1": 5, "s2": 20, "s3": 3}
    assert tree.subtasks.retried == [f"{PARENT}.s3"]  # the dead-lettered child is re-queued
    assert [v.task_id for v in retried.subtasks] == [
        f"{PARENT}.s1-r1",  # started, then cancelled: a fresh child
        f"{PARENT}.s2",  # never started: started now
        f"{PARENT}.s3",
    ]
    assert "subtask_retried" in await tree.kinds()
    assert retry_subtask_id("s1", f"{PARENT}.s1-r1") == "s1-r2" and retry_subtask_id("s1", "p.s1") == "s1-r1"


class LimitedSubtasks(LocalSubtasks):
    async def retry(self, task_id: str) -> bool:
        raise LimitExceededError(f"task {task_id!r}: retried 3 times; the limit is 3")


async def test_a_childs_retry_over_its_limit_fails_the_parent_with_the_reason() -> None:
    def fn(inputs: dict[str, Any]) -> dict[str, Any]:
        if inputs["expression"] == "10 - 7":
            raise ToolFailed(ErrorType.TOOL_ERROR, "boom")
        return calculate(inputs)

    tree = Tree({"math_calculator": fn}, slots=4)
    record = await tree.run(THREE_PARTS, max_iterations=1)
    assert record.status == TaskStatus.FAILED
    limited = LimitedSubtasks(tree.store, tree.scheduler)
    limited.workflow = tree.workflow
    tree.workflow.subtasks = limited
    record.status, record.error, record.finished_at = TaskStatus.QUEUED, None, None
    retried = await tree.run(THREE_PARTS, record=record, max_iterations=1)
    assert retried.status == TaskStatus.FAILED
    assert retried.error == f"subtask s3 failed: task '{PARENT}.s3': retried 3 times; the limit is 3"


class ForeignSubtasks(LocalSubtasks):
    async def start(self, request: TaskRequest) -> None:
        self.starts.append(request.task_id or "")
        raise SubtaskStartError(f"task {request.task_id!r} exists and is not a subtask of {PARENT!r}")


async def test_a_child_id_taken_by_another_task_fails_the_subtask_at_once() -> None:
    tree = Tree(slots=4)
    foreign = ForeignSubtasks(tree.store, tree.scheduler)
    tree.workflow.subtasks = foreign
    record = await tree.run(THREE_PARTS)
    assert record.status == TaskStatus.FAILED
    assert record.error == f"subtask s1 failed: task '{PARENT}.s1' exists and is not a subtask of '{PARENT}'"
    assert foreign.starts == [f"{PARENT}.s1"]  # not retried


class AnsweringClient:
    def __init__(self, record: TaskRecord) -> None:
        self.record = record

    async def submit(self, request: TaskRequest) -> tuple[TaskRecord, bool]:
        return self.record, False


async def test_a_shard_does_not_adopt_a_task_that_is_not_the_parents_child() -> None:
    from actors.orchestrator import ShardSubtasks

    child_id = f"{PARENT}.s1"
    request = TaskRequest(description="d", task_id=child_id, tenant="acme", parent_id=PARENT)
    for foreign in (
        TaskRecord(task_id=child_id, description="x", tenant="globex", parent_id=PARENT),
        TaskRecord(task_id=child_id, description="x", tenant="acme"),  # submitted by hand
    ):
        port = ShardSubtasks(cast(Any, None), cast(Any, None), functools.partial(AnsweringClient, foreign))
        with pytest.raises(SubtaskStartError, match="is not a subtask of"):
            await port.start(request)
    own = TaskRecord(task_id=child_id, description="d", tenant="acme", parent_id=PARENT)
    port = ShardSubtasks(cast(Any, None), cast(Any, None), functools.partial(AnsweringClient, own))
    await port.start(request)  # its own child: kept


def test_revise_is_refused_for_a_decomposed_task() -> None:
    from officeray.contracts import SubtaskView

    plain = TaskRecord(task_id="t", description="d")
    tree = TaskRecord(
        task_id="t", description="d", subtasks=[SubtaskView(subtask_id="s1", task_id="t.s1", description="d")]
    )
    assert revise_refusal(plain, "revise") is None
    assert revise_refusal(tree, "accept") is None and revise_refusal(tree, "reject") is None
    refusal = revise_refusal(tree, "revise")
    assert refusal is not None and "accepted or rejected" in refusal
