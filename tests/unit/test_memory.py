"""The memory with the shipped fakes: what it records, recalls, forgets and rebuilds, and how the
workflow and the planner use it (HashingEncoder, InMemoryStore, an in-process routed planner).

The same behaviours with the real packaged encoder: tests/unit/test_memory_model.py.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from officeray.config import EmbeddedTierConfig, MemorySettings
from officeray.contracts import (
    ErrorType,
    MemoryHit,
    Plan,
    Review,
    ReviewRequest,
    ReviewVerdict,
    StepError,
    StepResult,
    StepStatus,
    TaskRecord,
    TaskRequest,
    TaskStatus,
)
from officeray.memory.learn import entry_from_record, memory_prompt, plan_similarity, reusable_plan
from officeray.memory.service import Memory, tenant_file
from officeray.testing import (
    FunctionExecutor,
    HashingEncoder,
    InMemoryStore,
    ScriptedReviewer,
    ToolFailed,
    in_memory_tracer,
    make_plan,
)
from officeray.tools.builtin import BUILTIN_TOOLS
from officeray.workflow import Workflow
from serving.testing import RoutedPlanner, ScriptedTier, chain
from serving.tiers.embedded_tier import EmbeddedTier
from tools_sandbox.agent.tools.math_calculator import evaluate

TOOLS = {name: spec.input_model for name, spec in BUILTIN_TOOLS.items()}
CATALOG = {name: (spec.description, spec.input_model) for name, spec in BUILTIN_TOOLS.items()}


def record(
    task_id: str,
    description: str,
    *,
    tenant: str = "default",
    status: TaskStatus = TaskStatus.COMPLETED,
    expression: str = "6 * 7",
    error: str | None = None,
) -> TaskRecord:
    plan = make_plan(
        task_id, [{"step_id": "s1", "action": "math_calculator", "inputs": {"expression": expression}}]
    )
    step = StepResult(
        step_id="s1",
        action="math_calculator",
        idempotency_key=f"{task_id}:1:s1",
        status=StepStatus.FAILED if error else StepStatus.SUCCEEDED,
        error=StepError(type=ErrorType.BAD_INPUT, message=error) if error else None,
    )
    return TaskRecord(
        task_id=task_id,
        description=description,
        tenant=tenant,
        status=status,
        iterations=1,
        plan=plan,
        steps=[step],
        error=error,
    )


def memory(store: InMemoryStore, tmp_path: Path | None, encoder: Any = None, **settings: Any) -> Memory:
    return Memory(store, encoder or HashingEncoder(), MemorySettings(**settings), tmp_path)


# -- the service --------------------------------------------------------------------------------


async def test_recall_finds_the_similar_success_and_failure_above_unrelated_ones(tmp_path: Path) -> None:
    mem = memory(InMemoryStore(), tmp_path, min_score=0.5)
    await mem.remember(record("t-ok", "Compute the product 6 * 7 for the report"))
    await mem.remember(
        record(
            "t-bad",
            "Compute the product 6 / 0 for the report",
            status=TaskStatus.FAILED,
            error="division by zero",
        )
    )
    await mem.remember(record("t-far", "List the files in src folder recursively"))

    recall = await mem.recall("default", "Compute the product 6 * 7 for the summary")

    assert recall is not None
    assert [h.task_id for h in recall.successes] == ["t-ok"]
    assert [h.task_id for h in recall.failures] == ["t-bad"]
    assert "division by zero" in recall.failures[0].lesson
    assert recall.best_score == pytest.approx(recall.successes[0].score)
    assert recall.searched == 3
    hits = await mem.search("default", "Compute the product 6 * 7", k=3)
    assert hits[0].task_id == "t-ok" and hits[-1].task_id == "t-far"
    assert hits[0].score > hits[-1].score


async def test_a_tenant_never_retrieves_another_tenants_entries(tmp_path: Path) -> None:
    store = InMemoryStore()
    mem = memory(store, tmp_path, min_score=0.0)
    await mem.remember(record("a-1", "Compute 6 * 7", tenant="a"))
    await mem.remember(record("b-1", "Compute 6 * 7 for tenant b", tenant="b"))
    await mem.remember(record("c-1", "List the files in src", tenant="c"))

    for restarted in (mem, memory(store, tmp_path)):  # and after a restart, from the files
        assert [h.task_id for h in await restarted.search("b", "Compute 6 * 7", k=50)] == ["b-1"]
        recall = await restarted.recall("b", "Compute 6 * 7")
        assert recall is not None and [h.task_id for h in recall.hits] == ["b-1"]
        assert [h.task_id for h in await restarted.search("a", "Compute 6 * 7", k=50)] == ["a-1"]
        restarted.persist()


async def test_negative_feedback_hides_an_entry_and_positive_feedback_promotes_one(tmp_path: Path) -> None:
    mem = memory(InMemoryStore(), tmp_path, promotion_per_rating=0.1, max_promotion=0.3)
    await mem.remember(record("t-1", "Compute 6 * 7 for me"))
    await mem.remember(record("t-2", "Compute 6 * 7 for them please"))
    before = await mem.search("default", "Compute 6 * 7 for me", k=2)
    assert [h.task_id for h in before] == ["t-1", "t-2"]

    assert await mem.feedback("t-2", 1) == 1
    promoted = await mem.search("default", "Compute 6 * 7 for me", k=2)
    assert promoted[1 if promoted[0].task_id == "t-1" else 0].rank_score > before[1].rank_score

    assert await mem.feedback("t-1", -1) == 1
    after = await mem.search("default", "Compute 6 * 7 for me", k=2)
    assert [h.task_id for h in after] == ["t-2"]


async def test_feedback_given_before_the_task_was_remembered_counts(tmp_path: Path) -> None:
    from officeray.feedback import TaskFeedback

    store = InMemoryStore()
    mem = memory(store, tmp_path)
    await store.add_feedback(TaskFeedback(task_id="t-1", tenant="default", rating=-1))

    entry = await mem.remember(record("t-1", "Compute 6 * 7"))

    assert entry is not None and entry.rating == -1
    assert await mem.search("default", "Compute 6 * 7", k=5) == []


async def test_remembering_the_same_attempt_twice_stores_it_once(tmp_path: Path) -> None:
    store = InMemoryStore()
    mem = memory(store, tmp_path)
    done = record("t-1", "Compute 6 * 7")
    first = await mem.remember(done)
    again = await mem.remember(done)

    assert first is not None and again is not None and first.entry_id == again.entry_id
    assert len(await store.task_memory("t-1")) == 1
    assert len(await mem.search("default", "Compute 6 * 7", k=5)) == 1


async def test_a_failed_encoder_is_tried_again_after_a_while(tmp_path: Path) -> None:
    from officeray.memory.service import ENCODER_RETRY_S

    now = [0.0]
    encoder = HashingEncoder(fail="replica restarting")
    mem = Memory(InMemoryStore(), encoder, MemorySettings(), tmp_path, clock=lambda: now[0])
    assert await mem.recall("default", "Compute 6 * 7") is None
    encoder.fail = None
    assert await mem.recall("default", "Compute 6 * 7") is None  # still within the wait
    assert encoder.calls == 0

    now[0] += ENCODER_RETRY_S
    recall = await mem.recall("default", "Compute 6 * 7")
    assert recall is not None and mem.on
    await mem.remember(record("t-1", "Compute 6 * 7"))
    assert [h.task_id for h in await mem.search("default", "Compute 6 * 7", k=1)] == ["t-1"]


async def test_deleting_an_entry_a_task_and_a_tenant(tmp_path: Path) -> None:
    store = InMemoryStore()
    mem = memory(store, tmp_path)
    one = await mem.remember(record("t-1", "Compute 6 * 7", tenant="a"))
    await mem.remember(record("t-2", "Compute 6 * 8", tenant="a"))
    await mem.remember(record("t-3", "Compute 6 * 9", tenant="b"))
    assert one is not None

    assert not await mem.delete_entry(one.entry_id, tenant="b")  # another tenant's entry: untouched
    assert await mem.delete_entry(one.entry_id, tenant="a")
    assert [h.task_id for h in await mem.search("a", "Compute 6 * 7", k=5)] == ["t-2"]
    assert await mem.delete_task("t-2", tenant="b") == 0
    assert await mem.delete_task("t-2", tenant="a") == 1
    assert await mem.search("a", "Compute", k=5) == []
    assert await mem.delete_tenant("b") == 1
    assert await mem.search("b", "Compute 6 * 9", k=5) == []
    assert not tenant_file(tmp_path, "b").exists()


async def test_a_deleted_index_file_is_rebuilt_from_the_store_at_the_next_start(tmp_path: Path) -> None:
    store = InMemoryStore()
    first = memory(store, tmp_path, persist_every=1)
    for i in range(5):
        await first.remember(record(f"t-{i}", f"Compute {i} * 7 then report"))
    expected = [h.task_id for h in await first.search("default", "Compute 3 * 7 then report", k=3)]
    path = tenant_file(tmp_path, "default")
    assert path.exists()
    path.unlink()

    encoder = HashingEncoder()
    restarted = memory(store, tmp_path, encoder)
    assert [
        h.task_id for h in await restarted.search("default", "Compute 3 * 7 then report", k=3)
    ] == expected
    assert path.exists()
    assert encoder.calls == 2  # the start's probe and the query: the stored vectors were reused


async def test_entries_written_after_the_index_file_are_caught_up(tmp_path: Path) -> None:
    store = InMemoryStore()
    first = memory(store, tmp_path, persist_every=1000)
    await first.remember(record("t-old", "Compute 1 * 7"))
    first.persist()
    await first.remember(record("t-new", "Compute 2 * 7 and more"))  # not in the file

    restarted = memory(store, tmp_path)
    hits = await restarted.search("default", "Compute 2 * 7 and more", k=2)
    assert hits[0].task_id == "t-new"
    assert len(hits) == 2


async def test_an_encoder_that_cannot_load_turns_memory_off_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = InMemoryStore()
    mem = memory(store, tmp_path, HashingEncoder(fail="no model at /nowhere"))
    with caplog.at_level(logging.WARNING, logger="officeray.memory.service"):
        assert await mem.recall("default", "Compute 6 * 7") is None
        assert await mem.recall("default", "Compute 6 * 8") is None
        stored = await mem.remember(record("t-1", "Compute 6 * 7"))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no model at /nowhere" in warnings[0].getMessage()
    assert stored is not None and stored.vector is None  # kept for a later rebuild

    fixed = memory(store, tmp_path)
    report = await fixed.rebuild()
    assert report["entries"] == 1
    assert [h.task_id for h in await fixed.search("default", "Compute 6 * 7", k=1)] == ["t-1"]


# -- learning -----------------------------------------------------------------------------------


def hit(task_id: str, score: float, expression: str = "6 * 7", outcome: str = "completed") -> MemoryHit:
    plan = make_plan(
        task_id, [{"step_id": "s1", "action": "math_calculator", "inputs": {"expression": expression}}]
    )
    return MemoryHit(
        entry_id=f"mem-{task_id}",
        task_id=task_id,
        outcome=outcome,  # type: ignore[arg-type]
        score=score,
        rank_score=score,
        description=f"Compute {expression}",
        lesson="Step s1 (math_calculator) failed with bad_input: division by zero",
        plan=plan.model_dump(mode="json"),
    )


@pytest.mark.parametrize(
    ("description", "reused"),
    [
        ("Please compute 6 * 7", True),
        ("COMPUTE   6 * 7 now", True),
        ("Compute 6 * 8", False),  # as similar a sentence, another input: never reused
        ("What is six times seven?", False),  # the literal input is not in the text
        ("Please compute 6 * 7 and add 1", False),  # the task asks for more than the plan does
        ("Compute 6 * 7 and write it to out_2.txt", False),
    ],
)
def test_a_plan_is_reused_only_when_its_inputs_appear_in_the_new_task(description: str, reused: bool) -> None:
    found = reusable_plan([hit("t-1", 0.97)], description, threshold=0.93)
    assert (found is not None) is reused


CALLS_PLAN = make_plan(
    "t-calls",
    [
        {
            "step_id": "s1",
            "action": "code_analyzer",
            "inputs": {"folder": "examples/sample_project", "start_func": "main", "end_func": "process_data"},
        }
    ],
).model_dump(mode="json")


@pytest.mark.parametrize(
    ("description", "reused"),
    [
        ("Trace the call path from main to process_data in examples/sample_project", True),
        ("Trace the call path from main to process_data in examples/sample_project.", True),
        ("Trace the call path from main to process_data in ./examples/sample_project/", True),
        ("Trace the call path from main to process_data in examples/sample_project/app", False),
        ("Trace the call path from main to process_data in my_examples/sample_project", False),
        ("Trace the call path from domain to process_data in examples/sample_project", False),
        ("Trace the call path from main to process_data_v2 in examples/sample_project", False),
    ],
)
def test_a_path_or_name_must_appear_whole_for_a_plan_to_be_reused(description: str, reused: bool) -> None:
    success = hit("t-calls", 0.95).model_copy(update={"plan": CALLS_PLAN})
    assert (reusable_plan([success], description, threshold=0.9) is not None) is reused


def test_a_plan_below_the_reuse_threshold_is_not_reused() -> None:
    assert reusable_plan([hit("t-1", 0.9)], "Please compute 6 * 7", threshold=0.93) is None


def test_the_planner_prompt_keeps_whole_lines_within_its_budget() -> None:
    from officeray.contracts import Recall

    recall = Recall(
        successes=[hit("t-1", 0.9)], failures=[hit("t-2", 0.8, "6 / 0", "failed")], best_score=0.9
    )
    full = memory_prompt(recall, 1_000)
    assert "succeeded" in full and "math_calculator" in full
    assert "failed" in full and "division by zero" in full
    small = memory_prompt(recall, 55)  # JSON counts a token per 4 characters
    assert "succeeded" in small and "division by zero" not in small  # the examples come first
    assert memory_prompt(recall, 3) == ""
    assert memory_prompt(None, 1_000) == ""


def test_a_failed_record_teaches_its_failing_step_and_error() -> None:
    entry = entry_from_record(
        record("t-1", "Compute 6 / 0", status=TaskStatus.FAILED, error="division by zero")
    )
    assert entry is not None
    assert entry.outcome == "failed"
    assert entry.failed_steps[0].error_type == "bad_input"
    assert entry.lesson == "Step s1 (math_calculator) failed with bad_input: division by zero"
    running = record("t-2", "x").model_copy(update={"status": TaskStatus.EXECUTING})
    assert entry_from_record(running) is None


def test_plan_similarity_compares_tools_and_inputs_not_ids() -> None:
    a = make_plan("t-1", [{"step_id": "s1", "action": "math_calculator", "inputs": {"expression": "1 + 1"}}])
    b = make_plan("t-2", [{"step_id": "x", "action": "math_calculator", "inputs": {"expression": "1 + 1"}}])
    c = make_plan("t-3", [{"step_id": "s1", "action": "math_calculator", "inputs": {"expression": "2 + 2"}}])
    assert plan_similarity(a, b.model_dump(mode="json")) == 1.0
    assert plan_similarity(a, c.model_dump(mode="json")) == 0.0


# -- the workflow and the planner ---------------------------------------------------------------


def calculate(inputs: dict[str, Any]) -> dict[str, Any]:
    return {"value": evaluate(inputs["expression"], dict(inputs.get("variables", {})))["value"]}


def calculate_or_fail(inputs: dict[str, Any]) -> dict[str, Any]:
    """The calculator, failing a division by zero as bad input (what a failure's lesson says)."""
    if inputs["expression"] == "6 / 0":
        raise ToolFailed(ErrorType.BAD_INPUT, "division by zero")
    return calculate(inputs)


def approve(request: ReviewRequest) -> Review:
    return Review(verdict=ReviewVerdict.APPROVED, final_output=request.results[-1].output)


def fail_review(request: ReviewRequest) -> Review:
    return Review(verdict=ReviewVerdict.FAILED, feedback="the step failed")


def workflow(planner: Any, reviews: list[Any], mem: Memory, functions: dict[str, Any] | None = None) -> Any:
    tracer, spans = in_memory_tracer()
    wf = Workflow(
        planner=planner,
        reviewer=ScriptedReviewer(reviews),
        executor=FunctionExecutor(functions or {"math_calculator": calculate}),
        store=InMemoryStore(),
        tracer=tracer,
        tools=TOOLS,
        memory=mem,
        memory_settings=mem.settings,
    )
    return wf, spans


async def run(wf: Workflow, description: str, task_id: str) -> TaskRecord:
    return await asyncio.wait_for(wf.run(TaskRequest(description=description), task_id), timeout=10)


async def test_a_near_duplicate_is_planned_from_memory_without_planning_anew(tmp_path: Path) -> None:
    planner = RoutedPlanner([(EmbeddedTierConfig(), EmbeddedTier("planner"))], CATALOG)
    mem = memory(InMemoryStore(), tmp_path)
    wf, spans = workflow(planner, [approve, approve], mem)

    first = await run(wf, "Compute 6 * 7", "task-1")
    second = await run(wf, "compute 6 * 7", "task-2")

    assert first.status == second.status == TaskStatus.COMPLETED
    assert second.result == {"value": 42}
    assert first.model_calls[0].reused_from is None and first.model_calls[0].usage.total_tokens > 0
    call = second.model_calls[0]
    assert call.reused_from == "task-1" and call.usage.total_tokens == 0
    assert second.plan is not None and second.plan.task_id == "task-2"
    assert all(s.idempotency_key.startswith("task-2:1:") for s in second.plan.steps)
    assert any("planned from memory: the plan of task-1" in line.message for line in second.logs)
    assert [h.task_id for h in second.memory] == ["task-1"] and second.memory[0].plan is None
    searches = [s for s in spans.get_finished_spans() if s.name == "memory.search"]
    assert len(searches) == 2
    assert searches[1].attributes is not None
    assert searches[1].attributes["officeray.memory.hits"] == 1
    assert searches[1].attributes["officeray.memory.best_score"] > 0.93


async def test_a_failures_lesson_reaches_the_next_similar_tasks_planner_prompt(tmp_path: Path) -> None:
    bad = make_plan("x", [{"step_id": "s1", "action": "math_calculator", "inputs": {"expression": "6 / 0"}}])
    good = make_plan("x", [{"step_id": "s1", "action": "math_calculator", "inputs": {"expression": "6 / 2"}}])
    llm = ScriptedTier("openai", "scripted-llm", [bad.model_dump(mode="json"), good.model_dump(mode="json")])
    mem = memory(InMemoryStore(), tmp_path, min_score=0.2)

    wf, _ = workflow(
        RoutedPlanner(chain(llm), CATALOG),
        [fail_review, approve],
        mem,
        {"math_calculator": calculate_or_fail},
    )
    first = await run(wf, "Divide six by the number of errors in the log", "task-1")
    assert first.status == TaskStatus.FAILED

    await run(wf, "Divide six by the number of warnings in the log", "task-2")

    system = llm.calls[1].messages[0]["content"]
    assert "Similar tasks that failed before" in system
    assert "division by zero" in system
    assert "Divide six by the number of errors in the log" in system
    assert "failed before" not in llm.calls[0].messages[0]["content"]


async def test_validation_warns_when_a_plan_matches_a_recorded_failure(tmp_path: Path) -> None:
    bad = make_plan("x", [{"step_id": "s1", "action": "math_calculator", "inputs": {"expression": "6 / 0"}}])
    llm = ScriptedTier("openai", "scripted-llm", [bad.model_dump(mode="json"), bad.model_dump(mode="json")])
    mem = memory(InMemoryStore(), tmp_path, min_score=0.2)

    def fails(inputs: dict[str, Any]) -> dict[str, Any]:
        raise ToolFailed(ErrorType.BAD_INPUT, "division by zero")

    wf, _ = workflow(
        RoutedPlanner(chain(llm), CATALOG), [fail_review, fail_review], mem, {"math_calculator": fails}
    )
    await run(wf, "Divide six by the number of errors", "task-1")
    second = await run(wf, "Divide six by the number of errors again", "task-2")

    events = await wf.store.events("task-2")
    validated = [e for e in events if e.kind == "validated"]
    assert validated and validated[0].data["warnings"]
    assert "task-1" in validated[0].data["warnings"][0]
    assert any(line.level == "warning" and "matches the failed plan" in line.message for line in second.logs)


async def test_a_task_plans_without_memory_when_the_encoder_is_off(tmp_path: Path) -> None:
    planner = RoutedPlanner([(EmbeddedTierConfig(), EmbeddedTier("planner"))], CATALOG)
    mem = memory(InMemoryStore(), tmp_path, HashingEncoder(fail="cannot load"))
    wf, _ = workflow(planner, [approve], mem)

    done = await run(wf, "Compute 6 * 7", "task-1")

    assert done.status == TaskStatus.COMPLETED and done.memory == []
    assert isinstance(done.plan, Plan)
