"""The batch job's logic without Ray: input files and rows, run ids, re-runs, order, reports, output.

The orchestrator is :class:`FakeOrchestrator`, an in-memory stand-in for the actor's ``submit``,
``retry`` and ``wait``; the Ray Data read and the real orchestrator are in
tests/integration/test_job_submit.py.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.cli_output import UsageError
from cluster.jobs import batch
from cluster.jobs.batch_io import (
    MAX_REPORTED_ROW_ERRORS,
    RESULT_SCHEMA,
    RUN_ID_MAX_CHARS,
    Output,
    RawRow,
    check_rows,
    check_run_id,
    flat_row,
    format_of,
    jsonl_lines,
    locate,
    new_run_id,
    open_writer,
    read_rows,
    record_latency_s,
    request_for,
    resolve_input,
    resolve_output,
    task_id_for,
)
from cluster.jobs.batch_report import (
    Disposition,
    Outcome,
    Tally,
    progress_line,
    summary_lines,
)
from cluster.jobs.batch_run import ROW_ATTEMPTS, conflict_of, run_row, run_rows
from officeray.contracts import (
    MAX_TASK_DESCRIPTION_CHARS,
    ModelUsage,
    StepResult,
    StepStatus,
    TaskRecord,
    TaskRequest,
    TaskStatus,
    utcnow,
)
from officeray.errors import TaskNotFoundError

T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


# -- a fake orchestrator -----------------------------------------------------------------------------


class FakeOrchestrator:
    """``submit``/``retry``/``wait`` over dicts. A task fails when its description is in ``fail``
    (changeable between runs) and takes ``delays[description]`` seconds (default 0)."""

    def __init__(self, *, fail: Iterable[str] = (), delays: dict[str, float] | None = None) -> None:
        self.fail = set(fail)
        self.delays = delays or {}
        self.records: dict[str, TaskRecord] = {}
        self.dlq: set[str] = set()
        self.runs: Counter[str] = Counter()
        self.running = 0
        self.most_running = 0
        self._done: dict[str, asyncio.Event] = {}

    def seed(self, record: TaskRecord, *, in_dlq: bool = False) -> None:
        """A task stored by an earlier job (final, so nothing runs it now)."""
        self.records[record.task_id] = record
        self._done[record.task_id] = asyncio.Event()
        self._done[record.task_id].set()
        if in_dlq:
            self.dlq.add(record.task_id)

    async def submit(self, request: TaskRequest) -> tuple[TaskRecord, bool]:
        assert request.task_id is not None
        if request.task_id in self.records:
            return self.records[request.task_id].model_copy(deep=True), False
        record = TaskRecord(task_id=request.task_id, description=request.description, tenant=request.tenant)
        self.records[request.task_id] = record
        self._start(request.task_id)
        return record.model_copy(deep=True), True

    def _start(self, task_id: str) -> None:
        self.runs[task_id] += 1
        self._done[task_id] = asyncio.Event()
        asyncio.get_running_loop().create_task(self._run(task_id))

    async def _run(self, task_id: str) -> None:
        record = self.records[task_id]
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        record.run_started_at = utcnow()
        await asyncio.sleep(self.delays.get(record.description, 0))
        failed = record.description in self.fail
        record.status = TaskStatus.FAILED if failed else TaskStatus.COMPLETED
        record.result = None if failed else f"done: {record.description}"
        record.error = "boom" if failed else None
        record.usage = ModelUsage(prompt_tokens=10, completion_tokens=2, calls=2)
        record.finished_at = utcnow()
        if failed:
            self.dlq.add(task_id)
        self.running -= 1
        self._done[task_id].set()

    async def retry(self, task_id: str) -> TaskRecord:
        if task_id not in self.dlq:
            raise TaskNotFoundError(f"task {task_id!r} is not in the dead-letter queue")
        self.dlq.discard(task_id)
        record = self.records[task_id]
        record.status, record.finished_at = TaskStatus.EXECUTING, None
        self._start(task_id)
        return record.model_copy(deep=True)

    async def wait(self, task_id: str) -> TaskRecord:
        await self._done[task_id].wait()
        return self.records[task_id].model_copy(deep=True)


class Flaky:
    """Wraps a port: the first ``failures`` submits raise (after reaching the orchestrator when
    ``after_submit``: the task was created, the answer was lost)."""

    def __init__(self, inner: FakeOrchestrator, failures: int, *, after_submit: bool = False) -> None:
        self.inner = inner
        self.failures = failures
        self.after_submit = after_submit

    async def submit(self, request: TaskRequest) -> tuple[TaskRecord, bool]:
        if self.failures:
            self.failures -= 1
            if self.after_submit:
                await self.inner.submit(request)
            raise ConnectionError("orchestrator restarting")
        return await self.inner.submit(request)

    async def retry(self, task_id: str) -> TaskRecord:
        return await self.inner.retry(task_id)

    async def wait(self, task_id: str) -> TaskRecord:
        return await self.inner.wait(task_id)


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def req(description: str, run_id: str = "r", index: int = 0, **fields: Any) -> TaskRequest:
    return request_for(TaskRequest(description=description, **fields), run_id, index)


async def rows_of(requests: list[TaskRequest]) -> AsyncIterator[tuple[int, TaskRequest]]:
    for index, request in enumerate(requests):
        yield index, request


async def run_all(
    port: Any, descriptions: list[str], run_id: str = "r", concurrency: int = 4
) -> list[Outcome]:
    outcomes: list[Outcome] = []
    requests = [req(d, run_id, i) for i, d in enumerate(descriptions)]
    await run_rows(rows_of(requests), port, concurrency=concurrency, on_outcome=outcomes.append)
    return outcomes


# -- run ids and task ids ------------------------------------------------------------------------------


def test_task_ids_are_the_run_id_and_the_zero_padded_row_index() -> None:
    assert task_id_for("nightly", 0) == "nightly-000000"
    assert task_id_for("nightly", 42) == "nightly-000042"
    assert task_id_for("nightly", 12_345_678) == "nightly-12345678"
    longest = task_id_for("x" * RUN_ID_MAX_CHARS, 10**12)
    assert TaskRequest(description="d", task_id=longest).task_id == longest  # fits the task-id pattern


@pytest.mark.parametrize("run_id", ["a", "nightly-2025.01_02", "x" * RUN_ID_MAX_CHARS])
def test_good_run_ids(run_id: str) -> None:
    assert check_run_id(run_id) == run_id


@pytest.mark.parametrize("run_id", ["", "has space", "slash/no", "x" * (RUN_ID_MAX_CHARS + 1), "é", "a:b"])
def test_bad_run_ids_are_refused(run_id: str) -> None:
    with pytest.raises(UsageError, match="--run-id"):
        check_run_id(run_id)


def test_a_fresh_run_id_carries_the_time_and_is_valid() -> None:
    run_id = new_run_id(T0, token="abc123")
    assert run_id == "batch-20250102-030405-abc123"
    assert check_run_id(new_run_id(T0)) != new_run_id(T0)  # a random token each time


def test_a_row_keeps_its_own_task_id() -> None:
    assert req("d", "r", 7).task_id == "r-000007"
    assert req("d", "r", 7, task_id="mine").task_id == "mine"


# -- input files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("tasks.jsonl", "jsonl"),
        ("tasks.JSON", "jsonl"),
        ("a/b.ndjson", "jsonl"),
        ("t.parquet", "parquet"),
        ("s3://bucket/dir/t.pq", "parquet"),
        ("s3://bucket/t.jsonl?region=x", "jsonl"),
        ("tasks.csv", None),
        ("dir", None),
    ],
)
def test_format_from_the_name(name: str, expected: str | None) -> None:
    assert format_of(name) == expected


def test_a_missing_input_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        resolve_input(str(tmp_path / "nope.jsonl"))


def test_an_unknown_suffix_needs_input_format(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text('{"description": "a"}\n')
    with pytest.raises(UsageError, match="--input-format"):
        resolve_input(str(tmp_path / "t.txt"))
    assert resolve_input(str(tmp_path / "t.txt"), "jsonl").format == "jsonl"


def test_a_directory_is_read_in_path_order_without_hidden_files(tmp_path: Path) -> None:
    (tmp_path / "b.jsonl").write_text('{"description": "b1"}\n')
    (tmp_path / "a.jsonl").write_text('{"description": "a1"}\n\n{"description": "a2"}\n')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.jsonl").write_text('{"description": "c1"}\n')
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / ".a.jsonl.crc").write_text("junk")
    inputs = resolve_input(str(tmp_path))
    assert inputs.format == "jsonl"
    assert [Path(p).name for p in inputs.paths] == ["a.jsonl", "b.jsonl", "c.jsonl"]
    rows = list(read_rows(inputs))
    assert [json.loads(str(r.value))["description"] for r in rows] == ["a1", "a2", "b1", "c1"]
    assert rows[1].where == f"{tmp_path}/a.jsonl:3"  # line numbers count blank lines


def test_a_directory_with_both_formats_needs_input_format(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"description": "a"}\n')
    pq.write_table(pa.table({"description": ["b"]}), tmp_path / "b.parquet")
    with pytest.raises(UsageError, match="jsonl and parquet"):
        resolve_input(str(tmp_path))
    assert [Path(p).name for p in resolve_input(str(tmp_path), "parquet").paths] == ["b.parquet"]


def test_an_empty_directory_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no .jsonl or .parquet"):
        resolve_input(str(tmp_path))


def test_file_uris_are_local_paths(tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").write_text('{"description": "a"}\n')
    location = locate(f"file://{tmp_path}/t.jsonl")
    assert location.is_local and location.uri(location.path) == f"{tmp_path}/t.jsonl"


def test_an_unknown_uri_scheme_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="cannot open nope://"):
        locate("nope://bucket/t.jsonl")


def test_jsonl_lines_are_split_as_ray_data_splits_them() -> None:
    text = '{"description": "a"}\r\n\n  \n{"description": "b"}\n{"description": "c"}'
    assert list(jsonl_lines(text)) == [
        (1, '{"description": "a"}'),
        (4, '{"description": "b"}'),
        (5, '{"description": "c"}'),
    ]
    assert [line for line in text.splitlines() if line.strip()] == [line for _, line in jsonl_lines(text)]


def test_parquet_rows_with_null_columns_mean_the_field_is_unset(tmp_path: Path) -> None:
    table = pa.table(
        {
            "description": ["a", "b"],
            "max_iterations": pa.array([2, None], pa.int64()),
            "tenant": pa.array([None, "acme"], pa.string()),
            "metadata": [{"k": "v"}, None],
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    rows = list(read_rows(resolve_input(str(tmp_path / "t.parquet"))))
    assert [r.where for r in rows] == [f"{tmp_path}/t.parquet row 1", f"{tmp_path}/t.parquet row 2"]
    assert rows[0].value == {"description": "a", "max_iterations": 2, "metadata": {"k": "v"}}
    assert rows[1].value == {"description": "b", "tenant": "acme"}
    assert check_rows(rows, "r").bad_rows == 0


# -- checking rows -------------------------------------------------------------------------------------


def jsonl_rows(*values: Any) -> list[RawRow]:
    return [
        RawRow(f"t.jsonl:{i}", v if isinstance(v, str) else json.dumps(v)) for i, v in enumerate(values, 1)
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("{not json}", "t.jsonl:1: Invalid JSON"),
        ({"text": "x"}, "t.jsonl:1: description: Field required"),
        ({"description": "a", "extra": 1}, "t.jsonl:1: extra: Extra inputs are not permitted"),
        ({"description": "   "}, "t.jsonl:1: description: Value error, description must not be blank"),
        (
            {"description": "x" * (MAX_TASK_DESCRIPTION_CHARS + 1)},
            "t.jsonl:1: description: String should have",
        ),
        ({"description": "a", "max_iterations": 0}, "t.jsonl:1: max_iterations: Input should be greater"),
        ({"description": "a", "task_id": "no spaces"}, "t.jsonl:1: task_id: String should match pattern"),
        ({"description": "a", "tenant": 3}, "t.jsonl:1: tenant: Input should be a valid string"),
        ('"just a string"', "t.jsonl:1: Input should be an object"),
    ],
)
def test_a_bad_row_is_named_with_its_field(value: Any, expected: str) -> None:
    check = check_rows(jsonl_rows(value), "r")
    assert check.bad_rows == 1 and check.count == 1
    assert check.errors[0].startswith(expected), check.errors[0]


def test_every_bad_row_is_reported_up_to_a_limit() -> None:
    values = [{"description": "ok"}] + [{"nope": i} for i in range(MAX_REPORTED_ROW_ERRORS + 5)]
    check = check_rows(jsonl_rows(*values), "r")
    assert check.count == len(values) and check.bad_rows == MAX_REPORTED_ROW_ERRORS + 5
    message = check.message("t.jsonl")
    assert message.startswith(f"{MAX_REPORTED_ROW_ERRORS + 5} bad row(s) in t.jsonl; nothing was run:")
    assert "t.jsonl:2: description: Field required" in message
    assert message.endswith("... and 5 more")


def test_rows_may_not_share_or_take_the_runs_task_ids() -> None:
    check = check_rows(
        jsonl_rows(
            {"description": "a", "task_id": "mine"},
            {"description": "b", "task_id": "mine"},
            {"description": "c", "task_id": "r-000000"},
            {"description": "d", "task_id": "r2-000000"},
        ),
        "r",
    )
    assert check.errors == [
        "t.jsonl:2: task_id: 'mine' is also the task_id of t.jsonl:1",
        "t.jsonl:3: task_id: 'r-000000' is reserved for the run's ids (r-…)",
    ]


# -- one row: new, skipped, re-run, waited for, conflict ------------------------------------------------


async def test_a_first_run_submits_every_row() -> None:
    fake = FakeOrchestrator(fail={"b"})
    outcomes = await run_all(fake, ["a", "b", "c"])
    assert [o.record.task_id for o in outcomes] == ["r-000000", "r-000001", "r-000002"]
    assert [o.record.status for o in outcomes] == [
        TaskStatus.COMPLETED,
        TaskStatus.FAILED,
        TaskStatus.COMPLETED,
    ]
    assert {o.disposition for o in outcomes} == {Disposition.NEW}
    assert fake.runs == Counter({"r-000000": 1, "r-000001": 1, "r-000002": 1})


async def test_the_same_run_id_skips_completed_tasks_and_reruns_failed_ones() -> None:
    fake = FakeOrchestrator(fail={"b"})
    first = await run_all(fake, ["a", "b", "c"])
    fake.fail.clear()  # whatever made b fail is fixed
    second = await run_all(fake, ["a", "b", "c"])
    assert [o.disposition for o in second] == [Disposition.SKIPPED, Disposition.RERUN, Disposition.SKIPPED]
    assert [o.record.status for o in second] == [TaskStatus.COMPLETED] * 3
    assert second[0].record == first[0].record  # the stored record, as it was
    assert fake.runs == Counter({"r-000000": 1, "r-000001": 2, "r-000002": 1})
    third = await run_all(fake, ["a", "b", "c"])
    assert {o.disposition for o in third} == {Disposition.SKIPPED}
    assert sum(fake.runs.values()) == 4


async def test_another_run_id_runs_everything_again() -> None:
    fake = FakeOrchestrator()
    await run_all(fake, ["a", "b"], run_id="one")
    outcomes = await run_all(fake, ["a", "b"], run_id="two")
    assert {o.disposition for o in outcomes} == {Disposition.NEW}
    assert len(fake.runs) == 4


async def test_a_task_still_running_from_an_earlier_job_is_waited_for() -> None:
    fake = FakeOrchestrator(delays={"slow": 0.05})
    await fake.submit(req("slow", "r", 0))  # the earlier job was interrupted here
    outcome = await run_row(fake, 0, req("slow", "r", 0))
    assert outcome.disposition == Disposition.RESUMED
    assert outcome.record.status == TaskStatus.COMPLETED
    assert fake.runs["r-000000"] == 1


async def test_a_reused_run_id_with_other_input_fails_the_row_and_runs_nothing() -> None:
    fake = FakeOrchestrator()
    await run_all(fake, ["a"])
    outcome = await run_row(fake, 0, req("something else", "r", 0))
    assert outcome.disposition == Disposition.CONFLICT
    assert outcome.record.status == TaskStatus.FAILED and outcome.record.finished_at is None
    assert "reused for different input" in (outcome.record.error or "")
    assert fake.runs["r-000000"] == 1
    assert conflict_of(fake.records["r-000000"], req("a", "r", 0, tenant="other")) is not None


async def test_a_failed_task_no_longer_in_the_dead_letter_queue_stays_failed() -> None:
    fake = FakeOrchestrator()
    stored = TaskRecord(task_id="r-000000", description="a", status=TaskStatus.FAILED, error="old")
    fake.seed(stored, in_dlq=False)
    outcome = await run_row(fake, 0, req("a", "r", 0))
    assert outcome.record.status == TaskStatus.FAILED and outcome.record.error == "old"
    assert fake.runs["r-000000"] == 0


async def test_a_call_that_raises_is_tried_again_with_backoff() -> None:
    fake = FakeOrchestrator()
    sleeps = Sleeps()
    outcome = await run_row(Flaky(fake, failures=2), 0, req("a"), sleep=sleeps)
    assert outcome.record.status == TaskStatus.COMPLETED and outcome.disposition == Disposition.NEW
    assert sleeps.calls == [1.0, 2.0]


async def test_a_task_created_by_a_lost_answer_is_not_run_twice_nor_taken_as_skipped() -> None:
    fake = FakeOrchestrator(fail={"b"})
    completed = await run_row(Flaky(fake, failures=1, after_submit=True), 0, req("a", "r", 0), sleep=Sleeps())
    await asyncio.sleep(0.01)
    failed = await run_row(Flaky(fake, failures=1, after_submit=True), 1, req("b", "r", 1), sleep=Sleeps())
    assert completed.disposition == Disposition.NEW and completed.record.status == TaskStatus.COMPLETED
    assert failed.disposition == Disposition.NEW and failed.record.status == TaskStatus.FAILED
    assert fake.runs == Counter({"r-000000": 1, "r-000001": 1})  # the failure of this job is not re-run


async def test_a_row_whose_calls_keep_failing_is_reported_failed() -> None:
    sleeps = Sleeps()
    outcome = await run_row(Flaky(FakeOrchestrator(), failures=99), 3, req("a", "r", 3), sleep=sleeps)
    assert outcome.index == 3 and outcome.record.task_id == "r-000003"
    assert outcome.record.status == TaskStatus.FAILED
    assert f"({ROW_ATTEMPTS} tries): ConnectionError: orchestrator restarting" in (outcome.record.error or "")
    assert len(sleeps.calls) == ROW_ATTEMPTS - 1


# -- many rows: concurrency and order ------------------------------------------------------------------


async def test_results_come_in_input_order_and_concurrency_is_bounded() -> None:
    descriptions = [f"t{i}" for i in range(30)]
    delays = {d: 0.001 * ((7 * i) % 11) for i, d in enumerate(descriptions)}  # finish out of order
    fake = FakeOrchestrator(delays=delays)
    outcomes = await run_all(fake, descriptions, concurrency=4)
    assert [o.index for o in outcomes] == list(range(30))
    assert [o.record.description for o in outcomes] == descriptions
    assert fake.most_running == 4


async def test_rows_are_read_only_as_slots_free_up() -> None:
    fake = FakeOrchestrator(delays={"slow": 0.05})
    read: list[int] = []

    async def rows() -> AsyncIterator[tuple[int, TaskRequest]]:
        for index in range(5):
            read.append(index)
            yield index, req("slow", "r", index)

    outcomes: list[Outcome] = []
    task = asyncio.ensure_future(run_rows(rows(), fake, concurrency=2, on_outcome=outcomes.append))
    await asyncio.sleep(0.02)
    assert read == [0, 1, 2]  # two in flight, the third waits for a slot
    await task
    assert len(outcomes) == 5


async def test_a_row_waits_while_too_far_ahead_of_the_first_unwritten_one() -> None:
    # concurrency 1 would never be ahead; concurrency 3 with a window of 6 rows and a slow row 0
    fake = FakeOrchestrator(delays={"slow": 0.05})
    started: list[int] = []

    async def rows() -> AsyncIterator[tuple[int, TaskRequest]]:
        for index in range(10):
            started.append(index)
            yield index, req("slow" if index == 0 else f"t{index}", "r", index)

    outcomes: list[Outcome] = []
    task = asyncio.ensure_future(run_rows(rows(), fake, concurrency=3, on_outcome=outcomes.append, window=1))
    await asyncio.sleep(0.03)
    assert max(started) <= 6 and outcomes == []  # rows 1..5 done, held back behind row 0
    await task
    assert [o.index for o in outcomes] == list(range(10))


async def test_an_output_error_stops_the_run() -> None:
    def broken(outcome: Outcome) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        await run_rows(
            rows_of([req("a"), req("b", index=1)]), FakeOrchestrator(), concurrency=2, on_outcome=broken
        )


# -- reports -------------------------------------------------------------------------------------------


def record(
    status: TaskStatus, latency_s: float | None = 1.0, tokens: tuple[int, int] = (10, 2)
) -> TaskRecord:
    finished = None if latency_s is None else T0 + timedelta(seconds=latency_s)
    return TaskRecord(
        task_id="t",
        description="d",
        status=status,
        created_at=T0,
        finished_at=finished,
        usage=ModelUsage(prompt_tokens=tokens[0], completion_tokens=tokens[1]),
    )


def test_latency_counts_from_the_last_run() -> None:
    assert record_latency_s(record(TaskStatus.COMPLETED, 2.5)) == 2.5
    assert record_latency_s(record(TaskStatus.FAILED, None)) is None
    retried = record(TaskStatus.COMPLETED, 10.0).model_copy(
        update={"run_started_at": T0 + timedelta(seconds=9)}
    )
    assert record_latency_s(retried) == 1.0


def test_the_tally_counts_skipped_tasks_apart() -> None:
    tally = Tally(total=5)
    tally.add(Outcome(0, record(TaskStatus.COMPLETED, 1.0)))
    tally.add(Outcome(1, record(TaskStatus.FAILED, 3.0)))
    tally.add(Outcome(2, record(TaskStatus.COMPLETED, 100.0, (500, 500)), Disposition.SKIPPED))
    tally.add(Outcome(3, record(TaskStatus.COMPLETED, 2.0), Disposition.RERUN))
    assert (tally.completed, tally.failed, tally.skipped, tally.rerun, tally.done) == (2, 1, 1, 1, 4)
    assert sorted(tally.latencies) == [1.0, 2.0, 3.0]  # the skipped task ran in an earlier job
    assert tally.usage.total_tokens == 36
    assert not tally.all_completed


def test_progress_line() -> None:
    tally = Tally(total=100, completed=44, failed=1)
    assert progress_line(tally, elapsed_s=14.0625) == (
        "[#########-----------] 45/100 done (44 completed, 1 failed, 0 skipped) 3.2 tasks/s"
    )
    assert (
        progress_line(Tally(total=0), 0.0)
        == "[####################] 0/0 done (0 completed, 0 failed, 0 skipped) 0.0 tasks/s"
    )
    done = Tally(total=3, completed=1, skipped=2)
    assert progress_line(done, 2.0, width=6).startswith(
        "[######] 3/3 done (1 completed, 0 failed, 2 skipped)"
    )


def test_summary_lines() -> None:
    tally = Tally(total=3)
    tally.add(Outcome(0, record(TaskStatus.COMPLETED, 1.0)))
    tally.add(Outcome(1, record(TaskStatus.FAILED, 3.0)))
    tally.add(Outcome(2, record(TaskStatus.COMPLETED, 9.0), Disposition.SKIPPED))
    lines = summary_lines(tally, run_id="nightly", elapsed_s=12.34, start_up_s=5.0)
    assert lines == [
        "batch: run nightly: 3 task(s) in 12.3s: 1 completed, 1 failed, 1 skipped (completed earlier), "
        "0 re-run (start-up 5.0s)",
        # officeray.stats.percentile of [1.0, 3.0] (linear interpolation): p50 2.0, p95 1 + 0.95 * 2
        "batch: latency p50 2.00s p95 2.90s; tokens 20 prompt + 4 completion = 24 (tasks run by this job)",
        "batch: re-submit with --run-id nightly to re-run the failed tasks (completed ones are skipped)",
    ]
    nothing_ran = Tally(total=1, skipped=1)
    assert "latency p50 n/a p95 n/a" in summary_lines(nothing_ran, run_id="x", elapsed_s=1.0)[1]


# -- output --------------------------------------------------------------------------------------------


def full_record() -> TaskRecord:
    step = StepResult(
        step_id="s1", action="math_calculator", idempotency_key="k", status=StepStatus.SUCCEEDED,
        attempts=1, output={"value": 42, "expression": "6 × 7"},
    )  # fmt: skip
    return TaskRecord(
        task_id="r-000003", description="Compute 6 * 7", status=TaskStatus.COMPLETED, result={"value": 42},
        iterations=1, steps=[step], trace_id="abc", usage=ModelUsage(prompt_tokens=7, completion_tokens=3),
        created_at=T0, finished_at=T0 + timedelta(seconds=1.5),
    )  # fmt: skip


def test_a_flat_row_has_every_column_of_the_schema() -> None:
    row = flat_row(full_record(), index=3, run_id="r")
    assert list(row) == RESULT_SCHEMA.names
    assert row["row"] == 3 and row["run_id"] == "r" and row["status"] == "completed"
    assert json.loads(row["result"]) == {"value": 42}
    assert (row["latency_s"], row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (
        1.5,
        7,
        3,
        10,
    )
    steps = json.loads(row["steps"])
    assert steps[0]["output"]["expression"] == "6 × 7" and steps[0]["status"] == "succeeded"
    unfinished = flat_row(TaskRecord(task_id="t", description="d"), index=0, run_id="r")
    assert (
        unfinished["result"] is None and unfinished["latency_s"] is None and unfinished["finished_at"] is None
    )


def test_the_parquet_writer_writes_one_row_per_task_in_order(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "results.parquet"
    writer = open_writer(resolve_output(str(out)), "r")
    for index in range(3):
        writer.write(index, full_record().model_copy(update={"task_id": task_id_for("r", index)}))
    assert not out.exists() and (tmp_path / "deep" / "results.parquet.partial").exists()
    writer.close()
    table = pq.read_table(out)
    assert table.schema.equals(RESULT_SCHEMA)
    assert table.column("task_id").to_pylist() == ["r-000000", "r-000001", "r-000002"]
    assert table.column("created_at").to_pylist()[0] == T0
    assert not (tmp_path / "deep" / "results.parquet.partial").exists()


def test_the_jsonl_writer_writes_officeray_run_json_records(tmp_path: Path) -> None:
    from cluster.cli_output import record_json

    out = tmp_path / "results.jsonl"
    writer = open_writer(Output(locate(str(out)), "jsonl"), "r")
    task = full_record()
    writer.write(0, task)
    writer.close()
    [line] = out.read_text().splitlines()
    assert json.loads(line) == json.loads(json.dumps(record_json(task), default=str))


def test_an_aborted_writer_leaves_no_file(tmp_path: Path) -> None:
    for name in ("r.jsonl", "r.parquet"):
        writer = open_writer(resolve_output(str(tmp_path / name)), "r")
        writer.write(0, full_record())
        writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_an_output_format_comes_from_the_name_or_the_flag(tmp_path: Path) -> None:
    assert resolve_output(str(tmp_path / "r.pq")).format == "parquet"
    assert resolve_output(str(tmp_path / "r.out"), "jsonl").format == "jsonl"
    with pytest.raises(UsageError, match="--output-format"):
        resolve_output(str(tmp_path / "r.out"))


# -- the command line: bad input answers 2 before Ray starts -------------------------------------------


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = batch.main(args)
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--run-id", "bad id"], "--run-id"),
        (["--run-id", "x" * (RUN_ID_MAX_CHARS + 1)], "--run-id"),
        (["--concurrency", "0"], "--concurrency: must be at least 1"),
        (["--concurrency", "many"], "--concurrency: not a number"),
        (["--input-format", "csv"], "--input-format"),
        (["--output-format", "xml"], "--output-format"),
    ],
)
def test_bad_flags_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], fragment: str
) -> None:
    tasks = tmp_path / "t.jsonl"
    tasks.write_text('{"description": "a"}\n')
    code, err = run_main([str(tasks), "--out", str(tmp_path / "o.jsonl"), *flags], capsys)
    assert code == 2 and fragment in err


def test_bad_rows_exit_2_naming_every_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tasks = tmp_path / "t.jsonl"
    lines = ['{"description": "ok"}', "", '{"description": ""}', '{"descripton": "typo"}']
    tasks.write_text("\n".join(lines) + "\n")
    code, err = run_main([str(tasks), "--out", str(tmp_path / "o.jsonl")], capsys)
    assert code == 2
    assert f"2 bad row(s) in {tasks}; nothing was run" in err
    assert f"{tasks}:3: description: String should have at least 1 character" in err
    assert f"{tasks}:4: description: Field required" in err
    assert "Traceback" not in err
    assert not (tmp_path / "o.jsonl").exists()


def test_a_bad_parquet_row_exits_2_naming_the_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tasks = tmp_path / "t.parquet"
    pq.write_table(pa.table({"description": ["ok", "fine"], "max_iterations": [1, 99]}), tasks)
    code, err = run_main([str(tasks), "--out", str(tmp_path / "o.parquet")], capsys)
    assert code == 2 and f"{tasks} row 2: max_iterations: Input should be less than or equal to 20" in err


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("missing.jsonl", None, "no such file or directory"),
        ("empty.jsonl", "\n\n", "holds no tasks"),
        ("t.csv", "description\na\n", "--input-format"),
        ("t.parquet", "not parquet", "cannot read"),
    ],
)
def test_unusable_input_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: str | None, fragment: str
) -> None:
    if content is not None:
        (tmp_path / name).write_text(content)
    code, err = run_main([str(tmp_path / name), "--out", str(tmp_path / "o.jsonl")], capsys)
    assert code == 2 and fragment in err, err


def test_an_unknown_output_suffix_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tasks = tmp_path / "t.jsonl"
    tasks.write_text('{"description": "a"}\n')
    code, err = run_main([str(tasks), "--out", str(tmp_path / "o.txt")], capsys)
    assert code == 2 and "--output-format" in err


def test_help_describes_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        batch.main(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    for flag in ("--out", "--run-id", "--concurrency", "--input-format", "--output-format", "--address"):
        assert flag in out
