"""Orchestration overhead benchmark: task latency against a known ideal, throughput, CPU, memory and
the CPU cost of telemetry export.

    python -m loadtests.bench_overhead [--levels 1,10,100,500,1000] [--json FILE]

Also ``officeray bench overhead``. Its runs, each on its own local Ray instance (loopback only):

* **latency run**: the embedded planner and reviewer with an exact latency model (default planner
  3 s, reviewer 1 s, no jitter, no token time) and the task "Wait 0.5 seconds and also wait 0.5
  seconds", planned as two parallel ``sleep`` steps. Its ideal critical path is planner + one step +
  reviewer (4.5 s). At each concurrency level ``c``, ``c`` clients each run ``rounds`` tasks back to
  back (closed loop; at least :data:`MIN_TASKS_PER_LEVEL` tasks a level); a task's latency is from
  its submission to its final record, seen by this process. Printed per level: median and p95 latency
  and their ratio to the ideal, throughput, failures (a task not ``completed``, or not final within
  :data:`LEVEL_TIMEOUT_S`), the peak of tasks in flight in the orchestrator and its memory per
  in-flight task (RSS at the peak minus RSS before the first level, over the peak in flight).
* **instant run**: no model latency, "wait 0 seconds and also wait 0 seconds". Per level:
  throughput and CPU time (user + system) per task, summed over every process of the Ray session
  (raylet, GCS, every worker: orchestrator, Serve replicas and controller, tool runners) and this
  process, and the orchestrator's own share; plus a per-process breakdown at the largest level.
* **telemetry cost**: the instant task at one level (default c=10, 200 tasks) on two more stacks,
  one with telemetry export **on** (the trace store, OTLP/HTTP to a loopback receiver the benchmark
  starts in a process of its own, metrics) and one with it **off** (``telemetry.trace_store.enabled``
  false, no OTLP endpoint, metrics off); the local trace file is off in both, and the ``OTEL_*``
  variables of this process are set aside while they run. Printed: CPU ms per task of each (every
  process of the session, the receiver left out), their ratio and difference, and the spans the
  receiver got per task. Each measurement window ends when the last batch of spans has been exported
  (:func:`export_tail_s`), and the idle CPU of that tail is taken off (:func:`cpu_ms_per_task`).

The system is sized so that no level waits in an artificial queue: ``workflow.max_concurrent_tasks``,
every tenant's ``max_concurrent_tasks`` and the planner/reviewer ``max_ongoing_requests`` at least
the largest level, host-tool threads twice it (two steps a task), one orchestrator, one tool runner,
no spare sandboxes. The store (SQLite)
and traces live in a temporary folder. Targets are printed, never asserted: exit 0 once the figures
are printed, 2 on bad arguments, a bad config or no Docker, 1 when the stack cannot start.

Why one file of this length: one benchmark, its runs, the per-process CPU accounting and the
report of targets met or missed, all read together.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

from loadtests.bench_format import BenchResult, Column, Table, Target, add_json_argument, emit
from officeray.stats import percentile

# -- limits and defaults ----------------------------------------------------------------------------

DEFAULT_LEVELS = (1, 10, 100, 500, 1000)
"""Concurrency levels of the latency run."""
MAX_LEVEL = 2000
"""Largest concurrency level accepted (the host-tool runner gets two threads per task)."""
DEFAULT_ROUNDS = 1
"""Tasks each client runs back to back at a level (raised for small levels, see below)."""
MAX_ROUNDS = 50
MIN_TASKS_PER_LEVEL = 5
"""A level runs at least this many tasks (``c=1`` runs 5 rounds)."""

DEFAULT_INSTANT_LEVELS = (1, 10, 100)
"""Concurrency levels of the instant run."""
DEFAULT_INSTANT_TASKS = 200
"""Tasks per instant level (rounded up to a multiple of the level)."""
MAX_INSTANT_TASKS = 10_000

DEFAULT_TELEMETRY_LEVEL = 10
"""Concurrency of the telemetry cost runs (export on, export off)."""
DEFAULT_TELEMETRY_TASKS = 200
"""Tasks of each telemetry cost run (rounded up to a multiple of the level)."""
OTLP_BATCH_DELAY_S = 5.0
"""How long the OTLP exporter's batch span processor holds spans (the OpenTelemetry SDK's default
``OTEL_BSP_SCHEDULE_DELAY``, which officeray keeps)."""
EXPORT_TAIL_MARGIN_S = 1.0
"""Added to the longest batch delay: the window of a telemetry cost run ends this long after the
last spans of its tasks could have been sent."""
RECEIVER_START_TIMEOUT_S = 60.0
"""How long the loopback OTLP receiver's process may take to start."""
OTEL_ENV_PREFIX = "OTEL_"

DEFAULT_PLANNER_S = 3.0
DEFAULT_REVIEWER_S = 1.0
DEFAULT_STEP_S = 0.5
"""Duration of each of the two parallel ``sleep`` steps of the latency run."""
MAX_MODEL_S = 60.0
MAX_STEP_S = 60.0

LEVEL_TIMEOUT_S = 300.0
"""A level's tasks not final this long after the level started count as failed (``timeout``)."""
SETTLE_TIMEOUT_S = 60.0
"""How long to wait, after a level, for the orchestrator to have no task in flight."""
WARMUP_TASKS = 5
"""Tasks run (not measured) after start-up, before the first level of a run."""
SAMPLE_INTERVAL_S = 0.25
"""How often the orchestrator's RSS and tasks in flight are sampled during a level."""
IN_FLIGHT_CALL_TIMEOUT_S = 5.0
"""Limit of one ``in_flight`` call to the orchestrator while it is busy."""
IDLE_CPU_SAMPLE_S = 3.0
"""How long the session's idle CPU use (background loops) is sampled before the instant levels."""
EXPECTED_RUN = (1, 2, 2)
"""What a task on its ideal path takes: (rounds, model calls, step attempts)."""
HOST_THREADS_PER_TASK = 2
"""Host-tool threads one task may hold at once (its two parallel ``sleep`` steps)."""

TARGET_LATENCY_LEVEL = 100
TARGET_MEDIAN_RATIO = 1.10
"""(a) median latency at most this multiple of the ideal critical path at 100 concurrent tasks."""
TARGET_MEMORY_LEVEL = 1000
TARGET_MEMORY_KIB_PER_TASK = 1024.0
"""(b) "bounded memory": this benchmark's bound on the orchestrator's RSS growth per in-flight task."""
TARGET_CPU_MS_PER_TASK = 40.0
"""(c) CPU time (all processes of the session) per instant task."""
TARGET_THROUGHPUT = 50.0
"""(c) instant tasks per second at the largest instant level."""

KIB = 1024
MIB = 1024 * 1024


# -- pure helpers -----------------------------------------------------------------------------------


def sleep_task(step_s: float) -> str:
    """The task the embedded planner plans as two parallel ``sleep`` steps of ``step_s`` each."""
    amount = f"{step_s:.6f}".rstrip("0").rstrip(".")
    return f"Wait {amount} seconds and also wait {amount} seconds"


def ideal_s(planner_s: float, reviewer_s: float, step_s: float) -> float:
    """The critical path of :func:`sleep_task`: one planner call, the parallel steps, one review."""
    return planner_s + step_s + reviewer_s


def rounds_for(concurrency: int, rounds: int, min_tasks: int = MIN_TASKS_PER_LEVEL) -> int:
    """Rounds per client at a latency level: ``rounds``, raised so the level runs ``min_tasks``."""
    return max(rounds, math.ceil(min_tasks / concurrency))


def instant_rounds(concurrency: int, tasks: int) -> int:
    """Rounds per client at an instant level so that the level runs at least ``tasks`` tasks."""
    return max(1, math.ceil(tasks / concurrency))


def memory_per_task_kib(baseline_rss: int | None, peak_rss: int | None, in_flight: int) -> float | None:
    """The orchestrator's RSS growth per in-flight task (KiB), or None when not measured."""
    if baseline_rss is None or peak_rss is None or in_flight <= 0:
        return None
    return max(0, peak_rss - baseline_rss) / in_flight / KIB


def process_group(
    name: str, cmdline: Sequence[str], pid: int, *, driver_pid: int, orchestrator_pid: int
) -> str:
    """The group a process of the Ray session is counted under in the CPU breakdown."""
    if pid == driver_pid:
        return "driver (this process)"
    if pid == orchestrator_pid:
        return "orchestrator"
    if name in ("raylet", "gcs_server"):
        return name
    title = cmdline[0] if cmdline else name
    if title.startswith("ray::ServeReplica:"):
        return f"serve replica {title.split(':')[-1].split('.')[0]}"
    prefixes = {
        "ray::ServeController": "serve controller",
        "ray::HostToolRunner": "host-tool runner",
        "ray::ToolRunner": "tool runner",
        "ray::TraceCollector": "trace collector",
        "ray::IDLE": "idle workers",
    }
    for prefix, group in prefixes.items():
        if title.startswith(prefix):
            return group
    return "other ray workers" if title.startswith("ray::") else "ray daemons"


def _parse_int_list(text: str, what: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"{what}: give comma-separated integers, e.g. 1,10,100")
    values = []
    for part in parts:
        try:
            value = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what}: {part!r} is not an integer") from None
        if not 1 <= value <= MAX_LEVEL:
            raise argparse.ArgumentTypeError(f"{what}: {value} is not between 1 and {MAX_LEVEL}")
        if value not in values:
            values.append(value)
    return tuple(values)


def levels_arg(text: str) -> tuple[int, ...]:
    """``--levels``/``--instant-levels``: comma-separated concurrency levels, 1..MAX_LEVEL, in order."""
    return _parse_int_list(text, "levels")


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer in ``[low, high]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
        return value

    return parse


def bounded_float(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a number in ``[low, high]``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"{text} is not between {low:g} and {high:g}")
        return value

    return parse


def check_args(args: argparse.Namespace) -> str | None:
    """What is wrong with a combination of arguments (each one is checked by its type), or None."""
    if args.skip_latency and args.skip_instant and getattr(args, "skip_telemetry", False):
        return "--skip-latency, --skip-instant and --skip-telemetry together leave nothing to measure"
    return None


# -- measurements -----------------------------------------------------------------------------------


@dataclass
class LevelRun:
    """What one concurrency level measured."""

    concurrency: int
    tasks: int
    latencies_s: list[float] = field(default_factory=list)
    """Submission to final record, seen by the driver; completed tasks only."""
    server_s: list[float] = field(default_factory=list)
    """``created_at`` to ``finished_at`` of the record (the orchestrator's view); completed tasks only."""
    failures: Counter[str] = field(default_factory=Counter)
    unexpected: Counter[str] = field(default_factory=Counter)
    """Completed tasks that took other than one round, two model calls and two step attempts, by what
    they took."""
    wall_s: float = 0.0
    peak_in_flight: int = 0
    rss_peak: int | None = None
    cpu_s: dict[str, float] = field(default_factory=dict)
    """CPU seconds (user + system) spent during the level, by process group."""
    processes: Counter[str] = field(default_factory=Counter)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def session_cpu_s(self) -> float:
        return sum(self.cpu_s.values())


def level_row(run: LevelRun, ideal: float | None, baseline_rss: int | None) -> dict[str, Any]:
    """One table row of figures from a level (latencies in seconds when ``ideal`` is given, else ms)."""
    row: dict[str, Any] = {"concurrency": run.concurrency, "tasks": run.tasks, "failed": run.failed}
    done = len(run.latencies_s)
    median = percentile(run.latencies_s, 50) if done else None
    p95 = percentile(run.latencies_s, 95) if done else None
    if ideal is not None:
        row.update(median_s=median, p95_s=p95)
        row["median_ratio"] = None if median is None or ideal <= 0 else median / ideal
        row["p95_ratio"] = None if p95 is None or ideal <= 0 else p95 / ideal
        row["server_median_s"] = percentile(run.server_s, 50) if run.server_s else None
    else:
        row["median_ms"] = None if median is None else median * 1000
        row["p95_ms"] = None if p95 is None else p95 * 1000
    row["tasks_per_s"] = done / run.wall_s if run.wall_s > 0 else None
    per_task = 1000 / run.tasks if run.tasks else 0.0
    row["cpu_ms_per_task"] = run.session_cpu_s * per_task if run.cpu_s else None
    row["orch_cpu_ms_per_task"] = run.cpu_s.get("orchestrator", 0.0) * per_task if run.cpu_s else None
    row["cores_used"] = run.session_cpu_s / run.wall_s if run.cpu_s and run.wall_s > 0 else None
    row["peak_in_flight"] = run.peak_in_flight
    row["orch_rss_peak_mib"] = None if run.rss_peak is None else run.rss_peak / MIB
    row["kib_per_in_flight_task"] = memory_per_task_kib(baseline_rss, run.rss_peak, run.peak_in_flight)
    return row


class SessionCpu:
    """CPU times of this process and all its descendants (a local Ray instance is one tree)."""

    def __init__(self, orchestrator_pid: int, exclude: Iterable[int] = ()) -> None:
        self.root = psutil.Process()
        self.orchestrator_pid = orchestrator_pid
        self.exclude = frozenset(exclude)
        """Processes left out (the benchmark's own helpers, e.g. the OTLP receiver)."""

    def snapshot(self) -> dict[int, tuple[str, float]]:
        """``{pid: (group, CPU seconds so far)}`` for every live process of the session."""
        out: dict[int, tuple[str, float]] = {}
        for proc in [self.root, *self.root.children(recursive=True)]:
            if proc.pid in self.exclude:
                continue
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    group = process_group(
                        proc.name(),
                        proc.cmdline(),
                        proc.pid,
                        driver_pid=self.root.pid,
                        orchestrator_pid=self.orchestrator_pid,
                    )
            except psutil.Error:  # exited meanwhile, or not ours to read
                continue
            out[proc.pid] = (group, times.user + times.system)
        return out

    @staticmethod
    def spent(
        before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
    ) -> tuple[dict[str, float], Counter[str]]:
        """CPU seconds spent between two snapshots, and the process count, by group.

        A process born in between counts whole; one that died in between is not counted.
        """
        spent: dict[str, float] = {}
        count: Counter[str] = Counter()
        for pid, (group, cpu) in after.items():
            previous = before.get(pid, (group, 0.0))[1]
            spent[group] = spent.get(group, 0.0) + max(0.0, cpu - previous)
            count[group] += 1
        return spent, count


async def _sample_in_flight(actor: Any, run: LevelRun) -> None:
    while True:
        try:
            in_flight = await asyncio.wait_for(actor.in_flight.remote(), IN_FLIGHT_CALL_TIMEOUT_S)
            run.peak_in_flight = max(run.peak_in_flight, int(in_flight))
        except TimeoutError:
            pass
        await asyncio.sleep(SAMPLE_INTERVAL_S)


async def _sample_rss(proc: psutil.Process | None, run: LevelRun) -> None:
    while proc is not None:
        try:
            rss = int(proc.memory_info().rss)
        except psutil.Error:
            return
        run.rss_peak = rss if run.rss_peak is None else max(run.rss_peak, rss)
        await asyncio.sleep(SAMPLE_INTERVAL_S)


async def run_level(
    actor: Any,
    description: str,
    concurrency: int,
    rounds: int,
    *,
    timeout_s: float = LEVEL_TIMEOUT_S,
    orchestrator: psutil.Process | None = None,
    cpu: SessionCpu | None = None,
) -> LevelRun:
    """``concurrency`` clients, each running ``rounds`` tasks back to back; bounded by ``timeout_s``."""
    from officeray.contracts import TaskRequest, TaskStatus

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    run = LevelRun(concurrency=concurrency, tasks=concurrency * rounds)

    async def client() -> None:
        for _ in range(rounds):
            remaining = deadline - loop.time()
            if remaining <= 0:
                run.failures["timeout"] += 1
                continue
            started = time.perf_counter()
            try:
                record = await asyncio.wait_for(
                    actor.run.remote(TaskRequest(description=description)), remaining
                )
            except TimeoutError:
                run.failures["timeout"] += 1
                continue
            except Exception as exc:  # a failed call is a failed task, counted by its error type
                run.failures[type(exc).__name__] += 1
                continue
            elapsed = time.perf_counter() - started
            if record.status != TaskStatus.COMPLETED:
                run.failures[f"status {record.status.value}"] += 1
                continue
            run.latencies_s.append(elapsed)
            if record.finished_at is not None:
                run.server_s.append((record.finished_at - record.created_at).total_seconds())
            took = (record.iterations, len(record.model_calls), record.counters.step_attempts)
            if took != EXPECTED_RUN:
                run.unexpected["{} round(s), {} model calls, {} step attempts".format(*took)] += 1

    samplers = [
        asyncio.ensure_future(_sample_in_flight(actor, run)),
        asyncio.ensure_future(_sample_rss(orchestrator, run)),
    ]
    before = cpu.snapshot() if cpu else {}
    started = time.perf_counter()
    try:
        await asyncio.gather(*(client() for _ in range(concurrency)))
    finally:
        run.wall_s = time.perf_counter() - started
        if cpu:
            run.cpu_s, run.processes = cpu.spent(before, cpu.snapshot())
        for sampler in samplers:
            sampler.cancel()
        await asyncio.gather(*samplers, return_exceptions=True)
    return run


async def _settle(actor: Any) -> bool:
    """Wait until the orchestrator has no task in flight; False when it still has after a while."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if await asyncio.wait_for(actor.in_flight.remote(), IN_FLIGHT_CALL_TIMEOUT_S) == 0:
                return True
        except TimeoutError:
            pass
        await asyncio.sleep(SAMPLE_INTERVAL_S)
    return False


# -- the two runs -----------------------------------------------------------------------------------


@dataclass
class BenchConfig:
    """Everything one benchmark run needs (from the command line)."""

    levels: tuple[int, ...] = DEFAULT_LEVELS
    rounds: int = DEFAULT_ROUNDS
    instant_levels: tuple[int, ...] = DEFAULT_INSTANT_LEVELS
    instant_tasks: int = DEFAULT_INSTANT_TASKS
    planner_s: float = DEFAULT_PLANNER_S
    reviewer_s: float = DEFAULT_REVIEWER_S
    step_s: float = DEFAULT_STEP_S
    skip_latency: bool = False
    skip_instant: bool = False
    skip_telemetry: bool = False
    telemetry_level: int = DEFAULT_TELEMETRY_LEVEL
    telemetry_tasks: int = DEFAULT_TELEMETRY_TASKS
    config: str | None = None
    level_timeout_s: float = LEVEL_TIMEOUT_S

    @property
    def ideal_s(self) -> float:
        return ideal_s(self.planner_s, self.reviewer_s, self.step_s)


@dataclass
class RunOutcome:
    """The levels of one run (latency or instant) and what was measured around them."""

    levels: list[LevelRun] = field(default_factory=list)
    baseline_rss: int | None = None
    """The orchestrator's RSS after the warm-up, before the first level."""
    idle_cores: dict[str, float] | None = None
    """CPU cores the idle session used (its background loops) by process group, sampled before the
    levels."""
    unsettled: list[int] = field(default_factory=list)
    """Levels after which tasks were still in flight when the next level began."""


def _embedded_chain(latency_s: float | None) -> list[dict[str, Any]]:
    if latency_s is None:
        return [{"tier": "embedded"}]
    return [{"tier": "embedded", "latency": {"ttft_s": latency_s, "tokens_per_s": 0.0, "jitter": 0.0}}]


def bench_settings(
    config: str | None, state_dir: Path, max_level: int, planner_s: float | None, reviewer_s: float | None
) -> Any:
    """The settings of one run: the config file's, sized for ``max_level`` and with the model latency."""
    from officeray.config import load_settings

    base = load_settings(config)
    overrides: dict[str, Any] = {
        "store.url": f"sqlite:///{state_dir}/bench.db",
        "telemetry.trace_file": str(state_dir / "traces.jsonl"),
        "workflow.orchestrators": 1,
        "workflow.max_concurrent_tasks": max(base.workflow.max_concurrent_tasks, max_level),
        "runners.count": 1,
        "runners.host_concurrency": max(base.runners.host_concurrency, HOST_THREADS_PER_TASK * max_level),
        "sandbox.spares": 0,
        "models.planner": _embedded_chain(planner_s),
        "models.reviewer": _embedded_chain(reviewer_s),
        # the bench's tasks repeat: with the memory, near-duplicates would skip the simulated planner
        # and the latencies would no longer be against the critical path the bench computes
        "memory.enabled": False,
    }
    # the bench's tasks are the default tenant's: no tenant cap below the level either
    overrides["tenants"] = {
        name: limits.model_copy(update={"max_concurrent_tasks": max(limits.max_concurrent_tasks, max_level)})
        for name, limits in base.tenants.items()
    }
    for role in ("planner", "reviewer"):
        dep = getattr(base.serve, role)
        overrides[f"serve.{role}.max_ongoing_requests"] = max(dep.max_ongoing_requests, max_level)
        if dep.max_queued_requests != -1:
            overrides[f"serve.{role}.max_queued_requests"] = max(dep.max_queued_requests, max_level)
    return load_settings(config, **overrides)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _orchestrator_process(actor: Any) -> tuple[int, psutil.Process | None]:
    pid = int(await actor.pid.remote())
    try:
        return pid, psutil.Process(pid)
    except psutil.Error:  # on another node: no memory figures
        return pid, None


async def _run_levels(
    actor: Any,
    description: str,
    plan: Sequence[tuple[int, int]],
    *,
    timeout_s: float,
    label: str,
    idle_sample_s: float = 0.0,
) -> RunOutcome:
    pid, orchestrator = await _orchestrator_process(actor)
    cpu = SessionCpu(pid)
    outcome = RunOutcome()
    await run_level(actor, description, WARMUP_TASKS, 1, timeout_s=timeout_s)
    await _settle(actor)
    if idle_sample_s > 0:
        before = cpu.snapshot()
        await asyncio.sleep(idle_sample_s)
        spent, _count = cpu.spent(before, cpu.snapshot())
        outcome.idle_cores = {group: cpu_s / idle_sample_s for group, cpu_s in spent.items()}
    if orchestrator is not None:
        outcome.baseline_rss = int(orchestrator.memory_info().rss)
    for concurrency, rounds in plan:
        run = await run_level(
            actor, description, concurrency, rounds, timeout_s=timeout_s, orchestrator=orchestrator, cpu=cpu
        )
        outcome.levels.append(run)
        done = run.latencies_s
        median = f"{percentile(done, 50):.3f} s" if done else "-"
        _progress(
            f"{label} c={concurrency}: {run.tasks} tasks, {run.failed} failed, median {median}, "
            f"{len(done) / run.wall_s:.1f} tasks/s, peak in flight {run.peak_in_flight}"
        )
        if not await _settle(actor):
            outcome.unsettled.append(concurrency)
    return outcome


_Outcome = TypeVar("_Outcome")


def _run_stack(settings: Any, body: Callable[[Any], Coroutine[Any, Any, _Outcome]]) -> _Outcome:
    from cluster.runtime import LocalStack

    with LocalStack(settings) as stack:
        return asyncio.run(body(stack.actor))


def latency_run(cfg: BenchConfig, state_dir: Path) -> RunOutcome:
    """The latency run: one stack, every level of ``cfg.levels``."""
    settings = bench_settings(cfg.config, state_dir, max(cfg.levels), cfg.planner_s, cfg.reviewer_s)
    plan = [(c, rounds_for(c, cfg.rounds)) for c in cfg.levels]

    def body(actor: Any) -> Coroutine[Any, Any, RunOutcome]:
        return _run_levels(
            actor, sleep_task(cfg.step_s), plan, timeout_s=cfg.level_timeout_s, label="latency"
        )

    return _run_stack(settings, body)


def instant_run(cfg: BenchConfig, state_dir: Path) -> RunOutcome:
    """The instant run: one stack without model latency, every level of ``cfg.instant_levels``."""
    settings = bench_settings(cfg.config, state_dir, max(cfg.instant_levels), None, None)
    plan = [(c, instant_rounds(c, cfg.instant_tasks)) for c in cfg.instant_levels]

    def body(actor: Any) -> Coroutine[Any, Any, RunOutcome]:
        return _run_levels(
            actor,
            sleep_task(0.0),
            plan,
            timeout_s=cfg.level_timeout_s,
            label="instant",
            idle_sample_s=IDLE_CPU_SAMPLE_S,
        )

    return _run_stack(settings, body)


# -- the telemetry cost runs ------------------------------------------------------------------------


def telemetry_variant(telemetry: Any, otlp_endpoint: str | None) -> Any:
    """``telemetry`` (a :class:`~officeray.config.TelemetrySettings`) with export on, to the OTLP/HTTP
    receiver at ``otlp_endpoint`` (trace store, OTLP, metrics), or off when it is None (no trace
    store, no OTLP endpoint, no metrics). The local trace file is off in both."""
    export = otlp_endpoint is not None
    otlp = telemetry.otlp.model_copy(
        update={"endpoint": otlp_endpoint, "protocol": "http/protobuf" if export else None, "headers": {}}
    )
    return telemetry.model_copy(
        update={
            "trace_file": None,
            "otlp": otlp,
            "trace_store": telemetry.trace_store.model_copy(update={"enabled": export}),
            "metrics": telemetry.metrics.model_copy(update={"enabled": export}),
        }
    )


def export_tail_s(telemetry: Any) -> float:
    """How long after its last task a telemetry cost run keeps measuring: until every batch of spans
    (trace store: ``flush_interval_s``; OTLP: :data:`OTLP_BATCH_DELAY_S`) has been sent."""
    return max(telemetry.trace_store.flush_interval_s, OTLP_BATCH_DELAY_S) + EXPORT_TAIL_MARGIN_S


@contextlib.contextmanager
def without_otel_environment(environ: MutableMapping[str, str] | None = None) -> Iterator[list[str]]:
    """Set aside the ``OTEL_*`` variables of ``environ`` (default: this process's, which a local Ray
    instance passes on to every worker) for the block; yields their names. Only the settings decide
    what a telemetry cost run exports."""
    env = os.environ if environ is None else environ
    saved = {k: v for k, v in env.items() if k.startswith(OTEL_ENV_PREFIX)}
    for key in saved:
        del env[key]
    try:
        yield sorted(saved)
    finally:
        for key in [k for k in env if k.startswith(OTEL_ENV_PREFIX)]:
            del env[key]
        env.update(saved)


def _serve_receiver(conn: Any) -> None:
    """The receiver process: an :class:`~officeray.otlp_receiver.OtlpReceiver` that answers
    ``"count"`` with ``(requests, spans)`` and ends on ``"stop"``."""
    from officeray.otlp_receiver import OtlpReceiver

    with OtlpReceiver() as receiver:
        conn.send(receiver.endpoint)
        while conn.recv() != "stop":
            conn.send((receiver.requests, len(receiver.spans())))


class ReceiverProcess:
    """A loopback OTLP/HTTP receiver in a process of its own (spawned, so that its CPU is not this
    process's and can be left out of the figures); a context manager."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve_receiver, args=(child,), name="otlp-receiver", daemon=True
        )
        self.endpoint = ""

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def __enter__(self) -> ReceiverProcess:
        self._process.start()
        if not self._conn.poll(RECEIVER_START_TIMEOUT_S):
            self._process.kill()
            raise TimeoutError(f"the OTLP receiver did not start in {RECEIVER_START_TIMEOUT_S:g} s")
        self.endpoint = str(self._conn.recv())
        return self

    def counts(self) -> tuple[int, int]:
        """Export requests and spans received so far."""
        self._conn.send("count")
        requests, spans = self._conn.recv()
        return int(requests), int(spans)

    def __exit__(self, *_exc: object) -> None:
        with contextlib.suppress(OSError, EOFError):
            self._conn.send("stop")
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout=5)


@dataclass
class TelemetryRun:
    """One telemetry cost run: its level (CPU over the level and the export tail) and around it."""

    export: bool
    run: LevelRun
    tail_s: float
    idle_cores: float | None = None
    """CPU cores the idle session used before the level (its background loops)."""
    exported_requests: int | None = None
    """OTLP export requests the receiver got during the measurement (export on)."""
    exported_spans: int | None = None


def cpu_ms_per_task(
    session_cpu_s: float, tasks: int, idle_cores: float | None, tail_s: float
) -> float | None:
    """CPU ms per task over a window that went on ``tail_s`` after the last task ended (for the last
    spans to be exported): the session's CPU less what its idle loops use in that tail."""
    if tasks <= 0:
        return None
    tail_idle_s = (idle_cores or 0.0) * tail_s
    return max(0.0, session_cpu_s - tail_idle_s) * 1000 / tasks


def telemetry_row(measured: TelemetryRun) -> dict[str, Any]:
    """One row of the telemetry cost table."""
    run = measured.run
    orch = run.cpu_s.get("orchestrator")
    return {
        "export": "on" if measured.export else "off",
        "concurrency": run.concurrency,
        "tasks": run.tasks,
        "failed": run.failed,
        "tasks_per_s": len(run.latencies_s) / run.wall_s if run.wall_s > 0 else None,
        "cpu_ms_per_task": cpu_ms_per_task(run.session_cpu_s, run.tasks, measured.idle_cores, measured.tail_s)
        if run.cpu_s
        else None,
        "orch_cpu_ms_per_task": orch * 1000 / run.tasks if orch is not None and run.tasks else None,
        "idle_cores": measured.idle_cores,
        "spans_per_task": (
            measured.exported_spans / run.tasks if measured.exported_spans is not None and run.tasks else None
        ),
        "export_requests": measured.exported_requests,
    }


def export_cost(on: dict[str, Any], off: dict[str, Any]) -> dict[str, float | None]:
    """What export costs: the CPU per task with it on over that with it off (``ratio``) and their
    difference in ms (``extra_ms_per_task``); None where a figure is missing."""
    on_ms, off_ms = on.get("cpu_ms_per_task"), off.get("cpu_ms_per_task")
    if on_ms is None or off_ms is None:
        return {"ratio": None, "extra_ms_per_task": None}
    return {"ratio": on_ms / off_ms if off_ms > 0 else None, "extra_ms_per_task": on_ms - off_ms}


async def _measure_export(
    actor: Any,
    concurrency: int,
    rounds: int,
    *,
    timeout_s: float,
    tail_s: float,
    receiver: ReceiverProcess | None,
) -> TelemetryRun:
    pid, _orchestrator = await _orchestrator_process(actor)
    cpu = SessionCpu(pid, exclude=[receiver.pid] if receiver is not None and receiver.pid else [])
    description = sleep_task(0.0)
    await run_level(actor, description, WARMUP_TASKS, 1, timeout_s=timeout_s)
    await _settle(actor)
    await asyncio.sleep(tail_s)  # the warm-up's spans are out before anything is measured
    before = cpu.snapshot()
    await asyncio.sleep(IDLE_CPU_SAMPLE_S)
    idle, _count = cpu.spent(before, cpu.snapshot())
    counted = receiver.counts() if receiver is not None else None
    before = cpu.snapshot()
    run = await run_level(actor, description, concurrency, rounds, timeout_s=timeout_s)
    await asyncio.sleep(tail_s)
    run.cpu_s, run.processes = cpu.spent(before, cpu.snapshot())
    measured = TelemetryRun(
        export=receiver is not None,
        run=run,
        tail_s=tail_s,
        idle_cores=sum(idle.values()) / IDLE_CPU_SAMPLE_S,
    )
    if receiver is not None and counted is not None:
        requests, spans = receiver.counts()
        measured.exported_requests, measured.exported_spans = requests - counted[0], spans - counted[1]
    _progress(
        f"telemetry export {'on' if measured.export else 'off'} c={concurrency}: {run.tasks} tasks, "
        f"{run.failed} failed, {len(run.latencies_s) / run.wall_s:.1f} tasks/s"
    )
    return measured


def telemetry_run(cfg: BenchConfig, state_dir: Path, export: bool) -> TelemetryRun:
    """One telemetry cost run: a stack with export on (and the receiver it exports to) or off."""
    rounds = instant_rounds(cfg.telemetry_level, cfg.telemetry_tasks)
    base = bench_settings(cfg.config, state_dir, cfg.telemetry_level, None, None)
    with without_otel_environment(), ReceiverProcess() if export else contextlib.nullcontext() as receiver:
        endpoint = receiver.endpoint if isinstance(receiver, ReceiverProcess) else None
        settings = base.model_copy(update={"telemetry": telemetry_variant(base.telemetry, endpoint)})
        tail_s = export_tail_s(settings.telemetry)

        def body(actor: Any) -> Coroutine[Any, Any, TelemetryRun]:
            return _measure_export(
                actor,
                cfg.telemetry_level,
                rounds,
                timeout_s=cfg.level_timeout_s,
                tail_s=tail_s,
                receiver=receiver if isinstance(receiver, ReceiverProcess) else None,
            )

        return _run_stack(settings, body)


# -- the result -------------------------------------------------------------------------------------

LATENCY_COLUMNS = [
    Column("concurrency", "c"),
    Column("tasks", "tasks"),
    Column("failed", "failed"),
    Column("median_s", "median s", ".3f"),
    Column("p95_s", "p95 s", ".3f"),
    Column("median_ratio", "median/ideal", ".3f"),
    Column("p95_ratio", "p95/ideal", ".3f"),
    Column("server_median_s", "orch median s", ".3f"),
    Column("tasks_per_s", "tasks/s", ".1f"),
    Column("cpu_ms_per_task", "CPU ms/task", ".1f"),
    Column("peak_in_flight", "peak in flight"),
    Column("orch_rss_peak_mib", "orch RSS MiB", ".0f"),
    Column("kib_per_in_flight_task", "KiB/in-flight task", ".1f"),
]
INSTANT_COLUMNS = [
    Column("concurrency", "c"),
    Column("tasks", "tasks"),
    Column("failed", "failed"),
    Column("median_ms", "median ms", ".1f"),
    Column("p95_ms", "p95 ms", ".1f"),
    Column("tasks_per_s", "tasks/s", ".1f"),
    Column("cpu_ms_per_task", "CPU ms/task", ".1f"),
    Column("orch_cpu_ms_per_task", "orch CPU ms/task", ".1f"),
    Column("cores_used", "cores used", ".2f"),
]
TELEMETRY_COLUMNS = [
    Column("export", "export"),
    Column("concurrency", "c"),
    Column("tasks", "tasks"),
    Column("failed", "failed"),
    Column("tasks_per_s", "tasks/s", ".1f"),
    Column("cpu_ms_per_task", "CPU ms/task", ".1f"),
    Column("orch_cpu_ms_per_task", "orch CPU ms/task", ".1f"),
    Column("idle_cores", "idle cores", ".3f"),
    Column("spans_per_task", "spans exported/task", ".1f"),
    Column("export_requests", "OTLP requests"),
]
TELEMETRY_BREAKDOWN_COLUMNS = [
    Column("group", "process"),
    Column("on_ms_per_task", "on ms/task", ".2f"),
    Column("off_ms_per_task", "off ms/task", ".2f"),
    Column("extra_ms_per_task", "on - off", "+.2f"),
]
BREAKDOWN_COLUMNS = [
    Column("group", "process"),
    Column("processes", "n"),
    Column("cpu_ms_per_task", "CPU ms/task", ".2f"),
    Column("idle_ms_per_task", "idle ms/task", ".2f"),
    Column("share_pct", "share %", ".1f"),
]


def breakdown_rows(run: LevelRun, idle_cores: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """CPU per task by process group at one level, largest first; with the CPU the same group used
    while idle (``idle_cores``), the part of it its background loops account for."""
    total = run.session_cpu_s
    per_task = 1000 / run.tasks if run.tasks else None
    rows = [
        {
            "group": group,
            "processes": run.processes.get(group, 0),
            "cpu_ms_per_task": None if per_task is None else cpu * per_task,
            "idle_ms_per_task": (
                None
                if per_task is None or idle_cores is None
                else idle_cores.get(group, 0.0) * run.wall_s * per_task
            ),
            "share_pct": 100 * cpu / total if total > 0 else None,
        }
        for group, cpu in run.cpu_s.items()
    ]
    return sorted(rows, key=lambda r: -(r["cpu_ms_per_task"] or 0.0))


def _row_at(rows: Iterable[dict[str, Any]], concurrency: int) -> dict[str, Any] | None:
    return next((r for r in rows if r["concurrency"] == concurrency), None)


def targets_of(
    latency_rows: Sequence[dict[str, Any]], instant_rows: Sequence[dict[str, Any]]
) -> list[Target]:
    """The issue's targets, evaluated on the rows (a level not in the run is "not measured")."""
    at_a = _row_at(latency_rows, TARGET_LATENCY_LEVEL) or {}
    at_b = _row_at(latency_rows, TARGET_MEMORY_LEVEL) or {}
    at_c = instant_rows[-1] if instant_rows else {}
    c_level = at_c.get("concurrency", "?")
    return [
        Target(
            "(a)",
            f"median latency / ideal at {TARGET_LATENCY_LEVEL} concurrent",
            at_a.get("median_ratio"),
            TARGET_MEDIAN_RATIO,
            "<=",
            fmt=".3f",
        ),
        Target(
            "(a)", f"failed tasks at {TARGET_LATENCY_LEVEL} concurrent", at_a.get("failed"), 0, "<=", fmt="d"
        ),
        Target(
            "(b)", f"failed tasks at {TARGET_MEMORY_LEVEL} concurrent", at_b.get("failed"), 0, "<=", fmt="d"
        ),
        Target(
            "(b)",
            f"peak tasks in flight at {TARGET_MEMORY_LEVEL} concurrent",
            at_b.get("peak_in_flight"),
            TARGET_MEMORY_LEVEL,
            ">=",
            fmt="d",
        ),
        Target(
            "(b)",
            f"orchestrator RSS growth per in-flight task at {TARGET_MEMORY_LEVEL} concurrent",
            at_b.get("kib_per_in_flight_task"),
            TARGET_MEMORY_KIB_PER_TASK,
            "<=",
            "KiB",
            ".1f",
        ),
        Target(
            "(c)",
            f"CPU per instant task (all session processes) at {c_level} concurrent",
            at_c.get("cpu_ms_per_task"),
            TARGET_CPU_MS_PER_TASK,
            "<=",
            "ms",
            ".1f",
        ),
        Target(
            "(c)",
            f"instant throughput at {c_level} concurrent",
            at_c.get("tasks_per_s"),
            TARGET_THROUGHPUT,
            ">=",
            "tasks/s",
            ".1f",
        ),
    ]


def _run_notes(label: str, outcome: RunOutcome) -> list[str]:
    notes = []
    for run in outcome.levels:
        if run.failures:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in run.failures.most_common())
            notes.append(f"{label} c={run.concurrency}: failures by reason: {reasons}")
        if run.unexpected:
            took = ", ".join(f"{what}: {n}" for what, n in run.unexpected.most_common())
            notes.append(
                f"{label} c={run.concurrency}: completed tasks off the ideal path (1 round, 2 model calls, "
                f"2 step attempts): {took}"
            )
    if outcome.unsettled:
        levels = ", ".join(str(c) for c in outcome.unsettled)
        notes.append(f"{label}: tasks still in flight {SETTLE_TIMEOUT_S:g} s after level(s) {levels}")
    return notes


def telemetry_breakdown(on: LevelRun, off: LevelRun) -> list[dict[str, Any]]:
    """CPU ms per task by process group with export on and off (each run's whole window, the export
    tail included), largest difference first."""

    def per_task(run: LevelRun, group: str) -> float | None:
        return run.cpu_s[group] * 1000 / run.tasks if group in run.cpu_s and run.tasks else None

    rows = []
    for group in sorted(set(on.cpu_s) | set(off.cpu_s)):
        on_ms, off_ms = per_task(on, group), per_task(off, group)
        rows.append(
            {
                "group": group,
                "on_ms_per_task": on_ms,
                "off_ms_per_task": off_ms,
                "extra_ms_per_task": (on_ms or 0.0) - (off_ms or 0.0),
            }
        )
    return sorted(rows, key=lambda r: (-r["extra_ms_per_task"], r["group"]))


def telemetry_summary(on: TelemetryRun, off: TelemetryRun) -> tuple[list[Table], list[str], dict[str, Any]]:
    """The telemetry cost table, its notes (the ratio first) and its JSON (``extra["telemetry"]``)."""
    on_row, off_row = telemetry_row(on), telemetry_row(off)
    cost = export_cost(on_row, off_row)
    level = on.run.concurrency
    tables = [
        Table(
            f"telemetry export on and off, instant, at {level} concurrent",
            TELEMETRY_COLUMNS,
            [on_row, off_row],
        ),
        Table(
            "CPU by process, telemetry export on and off (the export tail included)",
            TELEMETRY_BREAKDOWN_COLUMNS,
            telemetry_breakdown(on.run, off.run),
        ),
    ]
    if cost["ratio"] is not None and cost["extra_ms_per_task"] is not None:
        headline = (
            f"telemetry export costs {cost['extra_ms_per_task']:+.1f} ms CPU per task: "
            f"{on_row['cpu_ms_per_task']:.1f} ms with it on / {off_row['cpu_ms_per_task']:.1f} ms off "
            f"= {cost['ratio']:.3f}"
        )
    else:
        headline = "telemetry export cost: not measured (a run measured no CPU)"
    notes = [
        headline,
        "telemetry on: trace store, OTLP/HTTP to a loopback receiver (its own process, left out of the "
        "CPU), metrics; off: no trace store, no OTLP, no metrics; CPU over the level and "
        f"{on.tail_s:g} s after it (the last batches), less the idle session's CPU in those seconds",
    ]
    notes.extend(_run_notes("telemetry on", RunOutcome(levels=[on.run])))
    notes.extend(_run_notes("telemetry off", RunOutcome(levels=[off.run])))
    return tables, notes, {"on": on_row, "off": off_row, **cost}


def build_result(
    cfg: BenchConfig,
    latency: RunOutcome | None,
    instant: RunOutcome | None,
    telemetry: tuple[TelemetryRun, TelemetryRun] | None = None,
) -> BenchResult:
    """The printed and JSON result of the runs (each may be None: skipped); ``telemetry`` is the
    export-on and export-off runs."""
    ideal = cfg.ideal_s
    tables: list[Table] = []
    notes = [
        "store: SQLite in a temporary folder; one orchestrator, one tool runner, sleep steps on the "
        "host-tool runner; latency = submission to final record, seen by the driver"
    ]
    latency_rows: list[dict[str, Any]] = []
    instant_rows: list[dict[str, Any]] = []
    if latency is not None:
        latency_rows = [level_row(r, ideal, latency.baseline_rss) for r in latency.levels]
        title = (
            f"latency: planner {cfg.planner_s:g} s + two parallel {cfg.step_s:g} s sleep steps + "
            f"reviewer {cfg.reviewer_s:g} s = ideal {ideal:.3f} s"
        )
        tables.append(Table(title, LATENCY_COLUMNS, latency_rows))
        if latency.baseline_rss is not None:
            notes.append(
                f"orchestrator RSS before the first latency level: {latency.baseline_rss / MIB:.0f} MiB; "
                "KiB/in-flight task = (RSS peak - that) / peak in flight"
            )
        notes.extend(_run_notes("latency", latency))
    if instant is not None:
        instant_rows = [level_row(r, None, instant.baseline_rss) for r in instant.levels]
        tables.append(Table("instant models and tools", INSTANT_COLUMNS, instant_rows))
        if instant.levels:
            top = instant.levels[-1]
            title = f"CPU by process, instant, at {top.concurrency} concurrent ({top.tasks} tasks)"
            tables.append(Table(title, BREAKDOWN_COLUMNS, breakdown_rows(top, instant.idle_cores)))
        if instant.idle_cores is not None:
            notes.append(
                f"the idle session (background loops) used {sum(instant.idle_cores.values()):.3f} CPU cores "
                "before the instant levels; 'idle ms/task' is that share of the CPU per task"
            )
        notes.extend(_run_notes("instant", instant))
    extra: dict[str, Any] = {}
    if telemetry is not None:
        telemetry_tables, telemetry_notes, extra["telemetry"] = telemetry_summary(*telemetry)
        tables.extend(telemetry_tables)
        notes.extend(telemetry_notes)
    config = {
        "levels": list(cfg.levels),
        "rounds": cfg.rounds,
        "instant_levels": list(cfg.instant_levels),
        "instant_tasks": cfg.instant_tasks,
        "planner_s": cfg.planner_s,
        "reviewer_s": cfg.reviewer_s,
        "step_s": cfg.step_s,
        "ideal_s": ideal,
        "skip_latency": cfg.skip_latency,
        "skip_instant": cfg.skip_instant,
        "skip_telemetry": cfg.skip_telemetry,
        "telemetry_level": cfg.telemetry_level,
        "telemetry_tasks": cfg.telemetry_tasks,
    }
    return BenchResult(
        benchmark="overhead",
        title="bench overhead: orchestration overhead against a known ideal critical path",
        tables=tables,
        targets=targets_of(latency_rows, instant_rows),
        notes=notes,
        extra={"config": config, "latency_levels": latency_rows, "instant_levels": instant_rows, **extra},
    )


def run_bench(cfg: BenchConfig) -> BenchResult:
    """Run the latency run, the instant run, then the telemetry cost runs (export off, then on; each
    on its own local Ray instance)."""
    from cluster.prepare import prefer_loopback

    prefer_loopback()  # before Ray is imported: a local instance stays on 127.0.0.1
    with tempfile.TemporaryDirectory(prefix="officeray-bench-") as tmp:
        latency = None if cfg.skip_latency else latency_run(cfg, Path(tmp) / "latency")
        instant = None if cfg.skip_instant else instant_run(cfg, Path(tmp) / "instant")
        telemetry = None
        if not cfg.skip_telemetry:
            off = telemetry_run(cfg, Path(tmp) / "telemetry-off", export=False)
            on = telemetry_run(cfg, Path(tmp) / "telemetry-on", export=True)
            telemetry = (on, off)
    return build_result(cfg, latency, instant, telemetry)


# -- command line -----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``bench overhead`` (shared by ``python -m`` and ``officeray bench overhead``)."""
    levels = ",".join(str(c) for c in DEFAULT_LEVELS)
    instant_levels = ",".join(str(c) for c in DEFAULT_INSTANT_LEVELS)
    parser.add_argument(
        "--levels", type=levels_arg, default=DEFAULT_LEVELS, help=f"latency-run levels (default {levels})"
    )
    parser.add_argument(
        "--rounds",
        type=bounded_int(1, MAX_ROUNDS),
        default=DEFAULT_ROUNDS,
        help=f"tasks each client runs back to back (default {DEFAULT_ROUNDS}; "
        f"a level runs at least {MIN_TASKS_PER_LEVEL})",
    )
    parser.add_argument(
        "--instant-levels",
        type=levels_arg,
        default=DEFAULT_INSTANT_LEVELS,
        help=f"instant-run levels (default {instant_levels})",
    )
    parser.add_argument(
        "--instant-tasks",
        type=bounded_int(1, MAX_INSTANT_TASKS),
        default=DEFAULT_INSTANT_TASKS,
        help=f"tasks per instant level (default {DEFAULT_INSTANT_TASKS})",
    )
    parser.add_argument(
        "--planner-s",
        type=bounded_float(0, MAX_MODEL_S),
        default=DEFAULT_PLANNER_S,
        help=f"planner latency, latency run (default {DEFAULT_PLANNER_S:g})",
    )
    parser.add_argument(
        "--reviewer-s",
        type=bounded_float(0, MAX_MODEL_S),
        default=DEFAULT_REVIEWER_S,
        help=f"reviewer latency, latency run (default {DEFAULT_REVIEWER_S:g})",
    )
    parser.add_argument(
        "--step-s",
        type=bounded_float(0, MAX_STEP_S),
        default=DEFAULT_STEP_S,
        help=f"each of the two parallel sleep steps, latency run (default {DEFAULT_STEP_S:g})",
    )
    parser.add_argument("--skip-latency", action="store_true", help="do not run the latency run")
    parser.add_argument("--skip-instant", action="store_true", help="do not run the instant run")
    parser.add_argument(
        "--skip-telemetry", action="store_true", help="do not measure telemetry export (on and off)"
    )
    parser.add_argument(
        "--telemetry-level",
        type=bounded_int(1, MAX_LEVEL),
        default=DEFAULT_TELEMETRY_LEVEL,
        help=f"concurrency of the telemetry export runs (default {DEFAULT_TELEMETRY_LEVEL})",
    )
    parser.add_argument(
        "--telemetry-tasks",
        type=bounded_int(1, MAX_INSTANT_TASKS),
        default=DEFAULT_TELEMETRY_TASKS,
        help=f"tasks of each telemetry export run (default {DEFAULT_TELEMETRY_TASKS})",
    )
    add_json_argument(parser)
    parser.add_argument("--config", metavar="FILE", help="YAML config file (default: $OFFICERAY_CONFIG)")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        levels=tuple(args.levels),
        rounds=args.rounds,
        instant_levels=tuple(args.instant_levels),
        instant_tasks=args.instant_tasks,
        planner_s=args.planner_s,
        reviewer_s=args.reviewer_s,
        step_s=args.step_s,
        skip_latency=args.skip_latency,
        skip_instant=args.skip_instant,
        skip_telemetry=args.skip_telemetry,
        telemetry_level=args.telemetry_level,
        telemetry_tasks=args.telemetry_tasks,
        config=args.config,
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Run the benchmark the parsed arguments describe and print its result; the exit status."""
    from officeray.errors import ConfigError
    from tools_sandbox.image import DockerUnavailable

    problem = check_args(args)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    cfg = config_from_args(args)
    try:
        result = run_bench(cfg)
    except (ConfigError, DockerUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TimeoutError as exc:
        print(f"error: the stack did not start: {exc}", file=sys.stderr)
        return 1
    emit(result, args.json)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench_overhead", description=(__doc__ or "").split("\n")[0]
    )
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
