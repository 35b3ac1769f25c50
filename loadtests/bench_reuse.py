"""What planning from memory saves: a task the memory has never seen against its near-duplicate.

``officeray bench reuse [--pairs 6] [--planner-ttft-s 0.5] [--json [FILE]]`` starts one local stack
(Ray, the Serve app, the memory, a warm sandbox) with its own store, runs a warm-up task, then
``--pairs`` pairs one after the other: ``Compute A * B`` (random A, B: new to the memory, planned by
the planner) and ``Please compute A * B`` (a near-duplicate: planned from memory, nothing generated).
For each it reports the planning time (the task's ``task accepted`` log line to its ``planned`` line:
the recall, the planner call and the plan's record) and the whole task's latency, medians over the
pairs, and how many of the second tasks reused a plan. ``--planner-ttft-s`` gives the embedded
planner a model's time (:class:`~officeray.config.LatencyModel`: that many seconds to the first token
and :data:`PLANNER_TOKENS_PER_S`), as an LLM tier takes; 0 leaves it instant.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests.bench_format import BenchResult, Column, Table, add_json_argument, emit

DEFAULT_PAIRS = 6
MAX_PAIRS = 200
"""Most pairs one run takes (each pair is two tasks, about a second each)."""

DEFAULT_PLANNER_TTFT_S = 0.5
PLANNER_TOKENS_PER_S = 50.0
"""The stand-in planner's generation speed (a plan is a few dozen tokens)."""

OPERAND_RANGE = (1000, 9999)
"""Operands of the tasks: four digits, so that no two pairs share a task."""


@dataclass(frozen=True)
class Sample:
    plan_ms: float
    task_ms: float
    reused: bool


def plan_ms(record: Any) -> float:
    """Milliseconds from a record's ``task accepted`` log line to its first ``planned`` line."""
    accepted = next(line.at for line in record.logs if line.message == "task accepted")
    planned = next(line.at for line in record.logs if "planned" in line.message)
    return float((planned - accepted).total_seconds() * 1000)


def summary(name: str, samples: list[Sample]) -> dict[str, Any]:
    """One table row: the medians of ``samples`` and how many reused a plan."""
    return {
        "tasks": name,
        "count": len(samples),
        "plan_ms": statistics.median(s.plan_ms for s in samples),
        "task_ms": statistics.median(s.task_ms for s in samples),
        "reused": sum(s.reused for s in samples),
    }


def run_bench(pairs: int, planner_ttft_s: float, config: str | None, state_dir: Path) -> BenchResult:
    from cluster.runtime import LocalStack
    from officeray.config import absolutize, load_settings
    from officeray.contracts import TaskRequest

    overrides: dict[str, Any] = {"store.url": f"sqlite:///{state_dir}/reuse.db", "runners.count": 1}
    if planner_ttft_s > 0:
        latency = {"ttft_s": planner_ttft_s, "tokens_per_s": PLANNER_TOKENS_PER_S, "jitter": 0.0}
        overrides["models.planner"] = [{"tier": "embedded", "latency": latency}]
    settings = absolutize(load_settings(config, **overrides))
    new: list[Sample] = []
    reused: list[Sample] = []
    rng = random.Random()
    with LocalStack(settings) as stack:
        stack.run([TaskRequest(description="Compute 1 + 1")])  # warm: the first call of every part
        for _ in range(pairs):
            a, b = rng.randint(*OPERAND_RANGE), rng.randint(*OPERAND_RANGE)
            for description, samples in ((f"Compute {a} * {b}", new), (f"Please compute {a} * {b}", reused)):
                started = time.perf_counter()
                (record,) = stack.run([TaskRequest(description=description)])
                took = (time.perf_counter() - started) * 1000
                was_reused = bool(record.model_calls) and record.model_calls[0].reused_from is not None
                samples.append(Sample(plan_ms(record), took, was_reused))
    rows = [summary("new to the memory", new), summary("near-duplicate", reused)]
    table = Table(
        "planning and task latency, medians",
        [
            Column("tasks", "tasks"),
            Column("count", "n"),
            Column("plan_ms", "plan ms", ".1f"),
            Column("task_ms", "task ms", ".1f"),
            Column("reused", "reused"),
        ],
        rows,
    )
    ratio = rows[0]["task_ms"] / rows[1]["task_ms"] if rows[1]["task_ms"] else None
    notes = [f"planner: embedded, ttft {planner_ttft_s} s" + (", instant" if planner_ttft_s == 0 else "")]
    if ratio is not None:
        notes.append(f"a near-duplicate's task latency is {ratio:.2f}x shorter")
    return BenchResult(
        benchmark="reuse",
        title="memory: a new task against its near-duplicate (planned from memory)",
        tables=[table],
        notes=notes,
        extra={"pairs": pairs, "planner_ttft_s": planner_ttft_s, "ratio": ratio},
    )


def _pairs(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_PAIRS:
        raise argparse.ArgumentTypeError(f"pairs must be 1 to {MAX_PAIRS}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 60:
        raise argparse.ArgumentTypeError("planner-ttft-s must be 0 to 60")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pairs", type=_pairs, default=DEFAULT_PAIRS, help=f"task pairs (default {DEFAULT_PAIRS})"
    )
    parser.add_argument(
        "--planner-ttft-s",
        type=_seconds,
        default=DEFAULT_PLANNER_TTFT_S,
        help=f"the planner's simulated time to first token (default {DEFAULT_PLANNER_TTFT_S}; 0: instant)",
    )
    add_json_argument(parser)
    parser.add_argument("--config", metavar="FILE", help="YAML config file (default: $OFFICERAY_CONFIG)")


def run_from_args(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="officeray-bench-reuse-") as state:
        emit(run_bench(args.pairs, args.planner_ttft_s, args.config, Path(state)), args.json)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench_reuse", description=(__doc__ or "").split("\n")[0]
    )
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
