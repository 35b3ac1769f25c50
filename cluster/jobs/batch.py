"""The ``ray job submit`` entrypoint: run a JSONL file of tasks and write one record per line.

    ray job submit --working-dir . -- python -m cluster.jobs.batch TASKS.jsonl --out RESULTS.jsonl
    python -m cluster.jobs.batch examples/tasks.jsonl --out results.jsonl   # no cluster: starts one

Input: one JSON object per line, ``{"description": ...}`` plus any other
:class:`~officeray.contracts.TaskRequest` field. Output: the final task record of each task, in the
input order, in the format of ``officeray run --json``. Under ``ray job submit`` (``RAY_ADDRESS`` is
set) or when a cluster is running on this machine it connects to that cluster and deploys the
Serve app there if it is not running yet; otherwise it starts a local Ray instance.
Exit code: 0 when every task completed, 1 when any failed, 2 for bad input.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

from cluster.prepare import prefer_loopback
from officeray.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UsageError, read_task_lines, record_json
from officeray.config import load_settings
from officeray.contracts import TaskRecord, TaskStatus
from officeray.errors import ConfigError

LOCAL_CLUSTER_PROBE_TIMEOUT_S = 1.0
"""How long the probe of a cluster recorded on this machine may take before a local one is started."""


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


def _summary(records: list[TaskRecord], elapsed_s: float) -> str:
    done = sum(r.status == TaskStatus.COMPLETED for r in records)
    latencies = sorted(
        (r.finished_at - r.created_at).total_seconds() for r in records if r.finished_at is not None
    )
    p50 = statistics.median(latencies) if latencies else 0.0
    p95 = latencies[min(len(latencies) - 1, int(round(0.95 * (len(latencies) - 1))))] if latencies else 0.0
    return (
        f"batch: {len(records)} task(s) in {elapsed_s:.1f}s: {done} completed, {len(records) - done} failed; "
        f"latency p50 {p50:.2f}s p95 {p95:.2f}s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cluster.jobs.batch", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("tasks", help="JSONL file, one task per line")
    parser.add_argument("--out", required=True, help="where to write one task record per line (JSONL)")
    parser.add_argument("--config", metavar="FILE", help="YAML config file (default: $OFFICERAY_CONFIG)")
    parser.add_argument("--address", help="Ray address (default: the running cluster, else a local one)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        requests = read_task_lines(Path(args.tasks))
    except (UsageError, ConfigError) as exc:
        print(f"batch: error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    from cluster.runtime import LocalStack

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    finished = 0

    def progress(_index: int, record: TaskRecord) -> None:
        nonlocal finished
        finished += 1
        print(
            f"[{finished}/{len(requests)}] {record.task_id} {record.status.value}",
            file=sys.stderr,
            flush=True,
        )

    with LocalStack(settings, address=_address(args.address)) as stack:
        records = stack.run(requests, on_done=progress)
    with out.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record_json(record), default=str) + "\n")
    print(_summary(records, time.monotonic() - started), flush=True)
    return EXIT_OK if all(r.status == TaskStatus.COMPLETED for r in records) else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
