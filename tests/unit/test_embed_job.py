"""The embed job (cluster/jobs/embed.py) without Ray: backfill, what is pending, writing vectors back,
the summary's rates, and a whole run with an in-process embedder (HashingEncoder) in place of Ray
Data. The job on a real Ray instance with the packaged model: tests/integration/test_embed_job.py."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from itertools import count
from pathlib import Path

import numpy as np
import pytest

from cluster.jobs.embed import (
    TASK_PAGE,
    WRITE_BATCH,
    Embed,
    Report,
    Written,
    backfill,
    pending,
    run,
    write_vectors,
)
from officeray.config import Settings
from officeray.contracts import TaskRecord, TaskStatus
from officeray.memory.entries import MAX_QUERY_CHARS, vector_of
from officeray.memory.learn import entry_from_record
from officeray.memory.service import Memory, tenant_file
from officeray.testing import HashingEncoder, InMemoryStore

MODEL = "hashing"


def finished(task_id: str, description: str, status: TaskStatus = TaskStatus.COMPLETED) -> TaskRecord:
    return TaskRecord(task_id=task_id, description=description, status=status, iterations=1)


async def stored(store: InMemoryStore, *records: TaskRecord) -> None:
    for record in records:
        await store.save_task(record)


async def test_backfill_gives_each_finished_task_without_an_entry_one_and_only_one() -> None:
    store = InMemoryStore()
    await stored(
        store,
        finished("done", "Compute 6 * 7"),
        finished("broke", "Compute 1 / 0", TaskStatus.FAILED),
        finished("stopped", "List the files", TaskStatus.CANCELLED),
        finished("running", "Still going", TaskStatus.EXECUTING),
    )
    known = entry_from_record(finished("done", "Compute 6 * 7"))
    assert known is not None
    await store.add_memory_entry(known)

    assert await backfill(store) == (4, 2)
    assert await backfill(store) == (4, 0)  # a second run adds nothing
    by_task = {e.task_id: e for e in await store.memory_entries()}
    assert sorted(by_task) == ["broke", "done", "stopped"]
    assert by_task["broke"].outcome == "failed" and by_task["stopped"].outcome == "cancelled"


async def test_backfill_reads_every_page_of_tasks() -> None:
    store = InMemoryStore()
    total = TASK_PAGE * 2 + 3
    await stored(store, *(finished(f"t-{i:05d}", f"Compute {i} * 7") for i in range(total)))

    assert await backfill(store) == (total, total)
    assert len({e.task_id for e in await store.memory_entries(limit=total)}) == total


async def test_pending_rows_are_the_entries_without_a_vector_of_the_model_or_all() -> None:
    store = InMemoryStore()
    long_text = "Compute 6 * 7 " + "and again " * MAX_QUERY_CHARS
    await stored(store, finished("a", "Compute 6 * 7"), finished("b", long_text), finished("c", "Sum a list"))
    await backfill(store)
    entries = {e.task_id: e for e in await store.memory_entries()}
    vector = np.ones(4, np.float32).tobytes()
    await store.set_memory_vectors(
        {entries["a"].entry_id: (vector, MODEL), entries["c"].entry_id: (vector, "another-model")}
    )

    rows = {r["entry_id"]: r["text"] for r in await pending(store, MODEL, everything=False)}
    assert rows == {
        entries["b"].entry_id: long_text[:MAX_QUERY_CHARS],  # cut as the memory cuts what it embeds
        entries["c"].entry_id: "Sum a list",
    }
    everything = await pending(store, MODEL, everything=True)
    assert sorted(r["entry_id"] for r in everything) == sorted(e.entry_id for e in entries.values())


async def test_vectors_are_written_back_to_their_entries_in_chunks() -> None:
    store = InMemoryStore()
    total = WRITE_BATCH + 10
    await stored(store, *(finished(f"t-{i:04d}", f"task {i}") for i in range(total)))
    await backfill(store)
    ids = [e.entry_id for e in await store.memory_entries(limit=total)]
    vectors = np.arange(total * 3, dtype=np.float32).reshape(total, 3)
    chunks = iter([(ids[i : i + 100], vectors[i : i + 100]) for i in range(0, total, 100)])
    ticks = count()

    async def batches() -> tuple[Sequence[str], np.ndarray] | None:
        return next(chunks, None)

    written = await write_vectors(store, batches, MODEL, clock=lambda: float(next(ticks)))

    assert (written.embedded, written.written, written.first_batch) == (total, total, 100)
    by_id = {e.entry_id: e for e in await store.memory_entries(limit=total)}
    for i, entry_id in enumerate(ids):
        assert by_id[entry_id].encoder == MODEL
        np.testing.assert_array_equal(vector_of(by_id[entry_id].vector or b""), vectors[i])
    assert await pending(store, MODEL, everything=False) == []


async def test_writing_refuses_a_batch_whose_vectors_do_not_match_its_ids() -> None:
    answers = iter([(["a", "b"], np.zeros((1, 3), np.float32))])

    async def batches() -> tuple[Sequence[str], np.ndarray] | None:
        return next(answers, None)

    with pytest.raises(ValueError, match="1 vectors for 2 entries"):
        await write_vectors(InMemoryStore(), batches, MODEL)


def test_the_steady_rate_leaves_out_the_first_batch_and_its_start_up() -> None:
    report = Report(MODEL, 4, 64, 2, False)
    report.add_rates(Written(embedded=300, first_batch=100, first_at=15.0, last_at=17.0), started=5.0)
    assert report.embed_s == 12.0
    assert report.texts_per_s == 25.0  # 300 texts over the whole stage
    assert report.steady_texts_per_s == 100.0  # 200 texts between the first batch and the last
    assert json.loads(report.line())["steady_texts_per_s"] == 100.0


def _hashing_embedder(batch: int) -> Embed:
    encoder = HashingEncoder(MODEL)

    def embed(rows: list[dict[str, str]]) -> Iterator[tuple[Sequence[str], np.ndarray]]:
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            vectors = np.stack([encoder.vector(r["text"]) for r in chunk]).astype(np.float32)
            yield [r["entry_id"] for r in chunk], vectors

    return embed


async def test_a_run_backfills_embeds_and_rebuilds_index_files_the_memory_then_loads(tmp_path: Path) -> None:
    store = InMemoryStore()
    await stored(
        store,
        finished("math", "Compute 6 * 7 for the report"),
        finished("files", "List the files in the src folder"),
        finished("oops", "Compute 6 / 0 for the report", TaskStatus.FAILED),
    )
    settings = Settings.model_validate({"memory": {"index_dir": str(tmp_path / "index")}})
    dim = HashingEncoder().dim

    report = await run(
        store, settings, MODEL, dim, batch_size=2, concurrency=1, everything=False, embed=_hashing_embedder(2)
    )

    assert (report.tasks, report.entries_added, report.to_embed) == (3, 3, 3)
    assert (report.embedded, report.written) == (3, 3)
    assert report.index["by"] == "this job" and report.index["entries"] == 3
    assert tenant_file(tmp_path / "index", "default").is_file()
    memory = Memory(store, HashingEncoder(MODEL), settings.memory, tmp_path / "index")
    hits = await memory.search("default", "Compute 6 * 7 for the report", k=3)
    assert [h.task_id for h in hits][0] == "math" and len(hits) == 3

    again = await run(
        store, settings, MODEL, dim, batch_size=2, concurrency=1, everything=False, embed=_hashing_embedder(2)
    )
    assert (again.entries_added, again.to_embed, again.embedded) == (0, 0, 0)
    everything = await run(
        store, settings, MODEL, dim, batch_size=2, concurrency=1, everything=True, embed=_hashing_embedder(2)
    )
    assert everything.embedded == 3 and everything.steady_texts_per_s is not None
