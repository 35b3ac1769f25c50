"""Benchmark of the store's write cost per task transition, on a SQLite file and optionally PostgreSQL.

    python -m loadtests.bench_store [--url postgresql+psycopg://...] [--transitions N] [--json [FILE]]

Times, one after the other (no concurrency: each write waits for the one before), the writes a task's
run makes through :class:`~officeray.store.SqlStore`'s async API and its group-commit writer thread:

* ``save_task + append_event``: the record, then an event, each its own commit;
* ``save_transition``: the record and its event in one commit (what the workflow writes);

and then :data:`CONCURRENT_TASKS` tasks writing their transitions at the same time: the CPU per
transition of this process (the caller and the group-commit writer) and the transitions a second.

A SQLite file in a temporary folder is always measured; ``--url`` adds that database (its rows written
here are deleted afterwards). ``--json [FILE]`` as for the other benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable

import sqlalchemy as sa

from loadtests.bench_format import BenchResult, Column, Table, add_json_argument, emit
from officeray.contracts import TaskRecord, TaskStatus
from officeray.stats import percentiles
from officeray.store import SqlStore
from officeray.store.engine import normalized_url
from officeray.store.schema import events_table, tasks_table

__all__ = ["main", "run_bench"]

BENCH_TRANSITIONS = 500
"""Transitions timed per backend and write (after :data:`BENCH_WARMUP` untimed ones)."""

BENCH_WARMUP = 20

CONCURRENT_TASKS = 200
"""Tasks writing at once in the concurrent run (what the group committer batches)."""
CONCURRENT_TRANSITIONS = 15
"""Transitions each of them writes, one after the other (about a task's)."""
CONCURRENT_ROW = "concurrent"

MIN_TRANSITIONS = 2
"""Fewest timed transitions (percentiles need two samples)."""

Write = Callable[[SqlStore, TaskRecord], Awaitable[object]]


async def _save_then_event(store: SqlStore, record: TaskRecord) -> None:
    await store.save_task(record)
    await store.append_event(record.task_id, record.status.value, {"status": record.status.value})


async def _transition(store: SqlStore, record: TaskRecord) -> None:
    await store.save_transition(record, record.status.value, {"status": record.status.value})


WRITES: dict[str, Write] = {
    "save_task + append_event": _save_then_event,
    "save_transition": _transition,
}


async def _time(store: SqlStore, write: Write, prefix: str, transitions: int) -> list[float]:
    """Milliseconds of each of ``transitions`` writes (tasks named ``prefix-N``)."""
    statuses = list(TaskStatus)
    timings: list[float] = []
    for i in range(BENCH_WARMUP + transitions):
        record = TaskRecord(
            task_id=f"{prefix}-{i // len(statuses)}",
            description="benchmark task",
            status=statuses[i % len(statuses)],
        )
        started = time.perf_counter()
        await write(store, record)
        if i >= BENCH_WARMUP:
            timings.append((time.perf_counter() - started) * 1000)
    return timings


async def _concurrent(store: SqlStore, prefix: str, tasks: int, per_task: int) -> tuple[float, float]:
    """``tasks`` tasks at once, each writing ``per_task`` transitions one after the other (what many
    tasks in flight do: the group committer takes what is queued together): CPU ms of this process
    per transition, and transitions a second."""

    async def one(n: int) -> None:
        record = TaskRecord(task_id=f"{prefix}-{n}", description="benchmark task")
        for status in list(TaskStatus)[:per_task]:
            record.status = status
            await store.save_transition(record, status.value, {"status": status.value})

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one(n) for n in range(tasks)))
    wall, spent = time.perf_counter() - started, time.process_time() - cpu
    writes = tasks * min(per_task, len(TaskStatus))
    return spent * 1000 / writes, writes / wall


def _delete_rows(url: str, prefix: str) -> None:
    engine = sa.create_engine(normalized_url(url))
    try:
        with engine.begin() as conn:
            for table in (tasks_table, events_table):
                conn.execute(table.delete().where(table.c.task_id.startswith(prefix)))
    finally:
        engine.dispose()


async def _bench_url(url: str, transitions: int) -> dict[str, list[float]]:
    """The timings of each of :data:`WRITES` on ``url``; the rows written are deleted afterwards."""
    store = SqlStore(url)
    prefix = f"bench-{uuid.uuid4().hex[:12]}"
    try:
        timings = {
            name: await _time(store, write, f"{prefix}-{n}", transitions)
            for n, (name, write) in enumerate(WRITES.items())
        }
        cpu_ms, per_s = await _concurrent(store, f"{prefix}-c", CONCURRENT_TASKS, CONCURRENT_TRANSITIONS)
        timings[CONCURRENT_ROW] = [cpu_ms, per_s]
        return timings
    finally:
        store.close()
        _delete_rows(url, prefix)


def run_bench(url: str | None = None, transitions: int = BENCH_TRANSITIONS) -> BenchResult:
    """Time the writes of :data:`WRITES` on a temporary SQLite file, and on ``url`` when given."""
    with tempfile.TemporaryDirectory(prefix="officeray-bench-") as folder:
        targets = [("sqlite (file, WAL)", f"sqlite:///{folder}/bench.db")]
        if url:
            targets.append((sa.make_url(url).render_as_string(hide_password=True), url))
        rows, together = [], []
        for backend, target in targets:
            for write, timings in asyncio.run(_bench_url(target, transitions)).items():
                if write == CONCURRENT_ROW:
                    together.append({"backend": backend, "cpu_ms": timings[0], "per_s": timings[1]})
                    continue
                p50, p95 = percentiles(timings, (50, 95))
                rows.append({"backend": backend, "write": write, "p50_ms": p50, "p95_ms": p95})
    table = Table(
        "one task transition, one at a time",
        [
            Column("backend", "backend"),
            Column("write", "write"),
            Column("p50_ms", "p50 ms", ".2f"),
            Column("p95_ms", "p95 ms", ".2f"),
        ],
        rows,
    )
    concurrent = Table(
        f"save_transition from {CONCURRENT_TASKS} tasks at once, {CONCURRENT_TRANSITIONS} each",
        [
            Column("backend", "backend"),
            Column("cpu_ms", "CPU ms/transition (this process)", ".3f"),
            Column("per_s", "transitions/s", ".0f"),
        ],
        together,
    )
    notes = [f"{transitions} transitions timed per row after {BENCH_WARMUP} untimed ones"]
    return BenchResult(
        benchmark="store",
        title="store write cost per task transition",
        tables=[table, concurrent],
        notes=notes,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench_store", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--url", help="also time this store (a PostgreSQL URL)")
    parser.add_argument(
        "--transitions", type=int, default=BENCH_TRANSITIONS, help="timed transitions per row"
    )
    add_json_argument(parser)
    args = parser.parse_args(argv)
    if args.transitions < MIN_TRANSITIONS:
        parser.error(f"--transitions must be at least {MIN_TRANSITIONS}")
    emit(run_bench(args.url, args.transitions), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
