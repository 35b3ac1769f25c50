"""The ``ray job submit`` entrypoint: run a file of tasks with Ray Data and write one result per task.

    ray job submit --working-dir . -- python -m cluster.jobs.batch TASKS --out RESULTS [--run-id ID]
    python -m cluster.jobs.batch examples/tasks.jsonl --out results.jsonl   # no cluster: starts one

Input (``TASKS``): JSON Lines (``.jsonl``, ``.json``: one ``{"description": ...}`` object per line,
plus any other :class:`~officeray.contracts.TaskRequest` field; blank lines skipped) or Parquet
(``.parquet``: one column per field, a null column meaning "not set"); a file, a directory of such
files (read in path order), or a URI pyarrow opens (``s3://``, ``gs://``, ``hdfs://``, ``file://``);
``--input-format`` overrides the guess from the name. On a cluster of several nodes, give a path
every node sees (shared or cloud storage) or a local file of the node the job runs on.

Every row is checked before anything runs, and before Ray starts: the job reads the input once
with pyarrow (:mod:`cluster.jobs.batch_io`); a bad row, a missing file or a bad flag answers with a
message naming the row(s) and the field, and exit code 2. Then Ray Data reads the same files and
streams the rows to the orchestrator, at most ``--concurrency`` tasks in flight
(:mod:`cluster.jobs.batch_run`); the results are written in input order as they come.

Run id: each row's task is named ``RUN_ID-000042`` (the row index, blank lines not counted; a row
may name its own ``task_id`` instead). ``--run-id`` defaults to a fresh id, printed at the start and
in the summary. Submitting the same input again with the same ``--run-id`` skips the tasks that
completed (their stored records are the results), re-runs the failed ones from the dead-letter queue
and waits for the unfinished ones: an interrupted or partly failed batch is finished by re-submitting.
A row whose task id already names another task (the run id reused for other input) fails, and
nothing runs for it.

Output (``--out``): ``.jsonl``: the final record of each task per line, in input order, as
``officeray run --json`` prints it; ``.parquet``: one flat row per task
(:data:`cluster.jobs.batch_io.RESULT_SCHEMA`); a local path or a URI; ``--output-format`` overrides
the guess. The file appears when the batch is done (it is written as ``OUT.partial`` until then).
The job logs show a progress bar on stderr every :data:`PROGRESS_INTERVAL_S` seconds and a summary
on stdout at the end: completed, failed, skipped, re-run, p50/p95 latency, tokens, elapsed, run id.

Under ``ray job submit`` (``RAY_ADDRESS`` is set) or when a cluster is running on this machine it
connects to that cluster and deploys the Serve app there if it is not running yet; otherwise it
starts a local Ray instance. Exit code: 0 when every task completed, 1 when any failed, 2 for bad
input.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from cluster.cli_output import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UsageError
from cluster.jobs.batch_io import (
    FORMATS,
    InputFiles,
    Output,
    ResultWriter,
    check_rows,
    check_run_id,
    describe_error,
    new_run_id,
    open_writer,
    parquet_value,
    parse_row,
    read_rows,
    request_for,
    resolve_input,
    resolve_output,
)
from cluster.jobs.batch_report import Outcome, Tally, progress_line, summary_lines
from cluster.jobs.batch_run import DEFAULT_CONCURRENCY, run_rows
from cluster.prepare import prefer_loopback
from officeray.config import load_settings
from officeray.contracts import TaskRequest, TaskStatus
from officeray.errors import ConfigError

if TYPE_CHECKING:
    from cluster.runtime import LocalStack

LOCAL_CLUSTER_PROBE_TIMEOUT_S = 1.0
"""How long the probe of a cluster recorded on this machine may take before a local one is started."""

PROGRESS_INTERVAL_S = 5.0
"""Seconds between two progress lines in the job logs (one more comes at the end)."""

READ_BATCH_ROWS = 256
"""Rows Ray Data hands over at a time."""

READ_TASK_NUM_CPUS = 0.1
"""CPUs each Ray Data read task asks for: reading task rows is light, and a cluster busy with the
app's actors still has this much to spare."""

ERROR_PREVIEW_CHARS = 200
"""Longest error quoted in the job logs for a failed task."""


def _running_local_cluster() -> str | None:
    """The GCS address of a cluster started on this machine with ``ray start`` on loopback, if it answers.

    Only loopback addresses are considered: a stale record of an earlier cluster, or one bound to
    another interface, never makes the job wait on or send traffic to another address.
    """
    from ray._private.utils import read_ray_address

    address = read_ray_address()
    if not address:
        return None
    host, _, port = address.rpartition(":")
    try:
        if not ipaddress.ip_address(host).is_loopback:
            return None
        with socket.create_connection((host, int(port)), timeout=LOCAL_CLUSTER_PROBE_TIMEOUT_S):
            return address
    except (ValueError, OSError):
        return None


def _address(explicit: str | None) -> str:
    """``explicit``; else the cluster of ``ray job submit`` (RAY_ADDRESS); else a running loopback
    cluster on this machine; else ``local`` (start one)."""
    if explicit:
        return explicit
    if os.environ.get("RAY_ADDRESS"):
        return "auto"
    prefer_loopback()
    return _running_local_cluster() or "local"


# -- Ray: the orchestrator and Ray Data ------------------------------------------------------------


def _dataset(inputs: InputFiles) -> Any:
    """The Ray Data dataset of the checked input files, rows in file and line order."""
    import ray
    import ray.data

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # row index = task id: the order must hold
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # the job prints its own progress
    kwargs: dict[str, Any] = {"num_cpus": READ_TASK_NUM_CPUS, "file_extensions": None}
    if inputs.location.is_local:  # read where the job runs: the file is on this node
        kwargs["label_selector"] = {"ray.io/node-id": ray.get_runtime_context().get_node_id()}
    else:
        kwargs["filesystem"] = inputs.location.filesystem
    if inputs.format == "jsonl":
        return ray.data.read_text(inputs.uris, drop_empty_lines=False, **kwargs)
    # no hive partitioning: columns are exactly those the pre-run check saw in the files
    return ray.data.read_parquet(inputs.uris, partitioning=None, **kwargs)


def _values(dataset: Any, fmt: str) -> Iterator[str | dict[str, Any]]:
    """Each task row's value as :func:`cluster.jobs.batch_io.read_rows` gives it (blank lines skipped)."""
    for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=READ_BATCH_ROWS):
        for row in batch.to_pylist():
            if fmt == "jsonl":
                if row["text"].strip():
                    yield row["text"]
            else:
                yield parquet_value(row)


async def _requests(
    values: Iterator[str | dict[str, Any]], run_id: str, given: str
) -> AsyncIterator[tuple[int, TaskRequest]]:
    """``(index, request)`` per row; the next rows are fetched off the event loop."""
    index = 0
    while True:
        value = await asyncio.to_thread(next, values, None)
        if value is None:
            return
        try:
            request = parse_row(value)
        except ValidationError as exc:  # checked before the run: the input changed since
            where = f"{given} task {index + 1}"
            raise UsageError(f"{given} changed while the batch ran: {describe_error(where, exc)}") from None
        yield index, request_for(request, run_id, index)
        index += 1


# -- the job ---------------------------------------------------------------------------------------


def _print_outcome(outcome: Outcome) -> None:
    record = outcome.record
    if record.status == TaskStatus.FAILED:
        error = (record.error or "")[:ERROR_PREVIEW_CHARS]
        print(f"batch: task {record.task_id} failed: {error}", file=sys.stderr, flush=True)


async def _progress(tally: Tally, started: float, clock: Callable[[], float]) -> None:
    while True:
        await asyncio.sleep(PROGRESS_INTERVAL_S)
        print(progress_line(tally, clock() - started), file=sys.stderr, flush=True)


async def _run(
    stack: LocalStack,
    inputs: InputFiles,
    *,
    run_id: str,
    given: str,
    writer: ResultWriter,
    tally: Tally,
    concurrency: int,
    clock: Callable[[], float],
) -> float:
    """Run the batch; the seconds it took (from the first row read to the last result written)."""
    started = clock()
    values = _values(_dataset(inputs), inputs.format)

    def handle(outcome: Outcome) -> None:
        writer.write(outcome.index, outcome.record)
        tally.add(outcome)
        _print_outcome(outcome)

    ticker = asyncio.ensure_future(_progress(tally, started, clock))
    try:
        await run_rows(
            _requests(values, run_id, given),
            stack.client,  # the TaskPort: submit, retry and wait, each routed to its shard
            concurrency=concurrency,
            on_outcome=handle,
        )
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
    return clock() - started


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _run_id(text: str) -> str:
    try:
        return check_run_id(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("bad --run-id ")) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cluster.jobs.batch", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("tasks", help="JSONL or Parquet file, a directory of them, or a URI (s3://, ...)")
    parser.add_argument("--out", required=True, help="where to write one result per task (.jsonl, .parquet)")
    parser.add_argument("--input-format", choices=FORMATS, help="format of TASKS (default: from its name)")
    parser.add_argument("--output-format", choices=FORMATS, help="format of --out (default: from its name)")
    parser.add_argument(
        "--run-id",
        type=_run_id,
        help="name of this run; the same input re-submitted with the same id skips completed tasks "
        "and re-runs failed ones (default: a fresh id)",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        default=DEFAULT_CONCURRENCY,
        help=f"most tasks in flight at once (default {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument("--config", metavar="FILE", help="YAML config file (default: $OFFICERAY_CONFIG)")
    parser.add_argument("--address", help="Ray address (default: the running cluster, else a local one)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run_id = args.run_id or new_run_id(datetime.now(UTC))
    try:
        settings = load_settings(args.config)
        inputs = resolve_input(args.tasks, args.input_format)
        check = check_rows(read_rows(inputs), run_id)
        if check.bad_rows:
            raise UsageError(check.message(args.tasks))
        if check.count == 0:
            raise UsageError(f"{args.tasks} holds no tasks")
        output: Output = resolve_output(args.out, args.output_format)
    except (UsageError, ConfigError) as exc:
        print(f"batch: error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    from cluster.runtime import LocalStack

    try:
        stack = LocalStack(settings, address=_address(args.address))
        writer = open_writer(output, run_id)
    except (UsageError, ConfigError) as exc:
        print(f"batch: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"batch: run {run_id}: {check.count} task(s) from {args.tasks} to {args.out}", flush=True)
    tally = Tally(total=check.count)
    started = time.monotonic()
    try:
        with stack:
            start_up = time.monotonic() - started
            elapsed = asyncio.run(
                _run(
                    stack,
                    inputs,
                    run_id=run_id,
                    given=args.tasks,
                    writer=writer,
                    tally=tally,
                    concurrency=args.concurrency,
                    clock=time.monotonic,
                )
            )
    except UsageError as exc:
        writer.abort()
        print(f"batch: error: {exc}; re-submit with --run-id {run_id}", file=sys.stderr)
        return EXIT_USAGE
    except BaseException:
        writer.abort()
        raise
    writer.close()
    print(progress_line(tally, elapsed), file=sys.stderr, flush=True)
    for line in summary_lines(tally, run_id=run_id, elapsed_s=elapsed, start_up_s=start_up):
        print(line, flush=True)
    return EXIT_OK if tally.all_completed else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
