"""Orchestration overhead benchmark: task latency against a known ideal, throughput, CPU, memory, idle
CPU, the CPU cost of telemetry export and the gateway's submit latency, with issue 18's targets.

    python -m loadtests.bench_overhead [--levels 1,10,100,500,1000] [--shards 1,2 --postgres] [--json FILE]

Also ``officeray bench overhead``. Its runs, each on its own local Ray instance (loopback only), one
after the other:

* **latency run**: the embedded planner and reviewer with an exact latency model (default planner
  3 s, reviewer 1 s, no jitter, no token time) and the task "Wait 0.5 seconds and also wait 0.5
  seconds", planned as two parallel ``sleep`` steps. Its ideal critical path is planner + one step +
  reviewer (4.5 s). At each concurrency level ``c``, ``c`` clients each run ``rounds`` tasks back to
  back (closed loop; at least :data:`MIN_TASKS_PER_LEVEL` tasks a level); a task's latency is from
  its submission to its final record, seen by this process. Printed per level: median and p95 latency
  and their ratio to the ideal, throughput, failures (a task not ``completed``, or not final within
  :data:`LEVEL_TIMEOUT_S`), the peak of tasks in flight in the orchestrators and the memory per
  in-flight task, twice: the orchestrators' RSS (peak minus the RSS before the first level, over the
  peak in flight) and the RSS summed over every process of the session (sampled every
  :data:`SESSION_RSS_INTERVAL_S`; the target's figure).
* **instant run**: no model latency, "wait 0 seconds and also wait 0 seconds". First the idle CPU
  of the started system: after the warm-up has settled, :data:`IDLE_SETTLE_S` of quiet (the warm-up's
  spans flushed), then :data:`IDLE_CPU_SAMPLE_S` measured, by process group. Then per level:
  throughput and CPU time (user + system) per task, summed over every process of the Ray session
  (raylet, GCS, every worker: orchestrators, Serve replicas and controller, tool runners), this
  process and the PostgreSQL server's processes when there is one, with the orchestrators' and the
  database's shares; plus a per-process breakdown at the largest level. With ``--shards 1,2`` it runs
  once per shard count, and a scaling table compares them (the targets are the first count's).
* **telemetry cost**: the instant task at one level (default c=10, 200 tasks) on two more stacks,
  one with telemetry export **on** (the trace store, OTLP/HTTP to a loopback receiver the benchmark
  starts in a process of its own, metrics) and one with it **off** (``telemetry.trace_store.enabled``
  false, no OTLP endpoint, metrics off); the local trace file is off in both, and the ``OTEL_*``
  variables of this process are set aside while they run. Printed: CPU ms per task of each (every
  process of the session, the receiver left out), their ratio and difference, and the spans the
  receiver got per task. Each measurement window ends when the last batch of spans has been exported
  (:func:`export_tail_s`), and the idle CPU of that tail is taken off (:func:`cpu_ms_per_task`).
* **gateway run** (on by default, ``--skip-gateway``): ``officeray loadtest --users 100 --think-time
  5`` for :data:`DEFAULT_GATEWAY_DURATION_S` in a process of its own, on the system the load test
  starts (``loadtests/stack.yaml``: the HTTP gateway with an admin key made for the run, the load
  tenant's rate limits on); the p99 of its submit requests is read from its ``report.json``. On by
  default so that one run measures every target; it adds about a minute and a half.

Orchestrator shards (``--shards``): tasks are routed by the
:class:`~actors.client.OrchestratorClient` (``shard_of_request``: shards in turn), one ``run`` call
each. Store (``--store-url``, ``--postgres``): by default a SQLite file per stack in a temporary
folder; a given loopback URL is shared by every stack; ``--postgres`` starts a throwaway server
(:mod:`loadtests.bench_shards`) with a database per stack, whose processes count in the CPU and memory.

The system is sized so that no level waits in an artificial queue: ``workflow.max_concurrent_tasks``,
every tenant's ``max_concurrent_tasks`` and the planner/reviewer ``max_ongoing_requests`` at least
the largest level, host-tool threads twice it (two steps a task), one tool runner a shard, no spare
sandboxes. Traces live in a temporary folder. Targets are printed, never asserted: exit 0 once the
figures are printed, 2 on bad arguments, a bad config, no Docker or no PostgreSQL binaries, 1 when the
stack cannot start.

Why one file of this length: one benchmark, its runs, the per-process CPU accounting and the
report of targets met or missed, all read together (the store and shard side is in
:mod:`loadtests.bench_shards`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import (
    Callable,
    Collection,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

from loadtests.bench_format import BenchResult, Column, Table, Target, add_json_argument, emit
from loadtests.bench_shards import (
    MAX_SHARDS,
    PG_GROUP,
    StoreChoice,
    scaling_rows,
    shards_arg,
    store_choice,
    store_url_arg,
)
from loadtests.postgres import PostgresUnavailable
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
"""How often the orchestrators' RSS and tasks in flight are sampled during a level."""
SESSION_RSS_INTERVAL_S = 1.0
"""How often the RSS of every process of the session is summed during a latency level (a walk of the
process tree: less often than the orchestrators' own RSS, so that the sampling costs little CPU)."""
IN_FLIGHT_CALL_TIMEOUT_S = 5.0
"""Limit of one ``in_flight`` call to the orchestrators while they are busy."""
IDLE_SETTLE_S = 5.0
"""How long the idle session is left alone after the warm-up has settled, before its idle CPU is
sampled: the warm-up's last spans and metrics are flushed by then (the batch delays are ~5 s)."""
IDLE_CPU_SAMPLE_S = 5.0
"""How long the session's idle CPU use (background loops) is sampled before the instant levels (and
before each telemetry cost run)."""
EXPECTED_RUN = (1, 2, 2)
"""What a task on its ideal path takes: (rounds, model calls, step attempts)."""
HOST_THREADS_PER_TASK = 2
"""Host-tool threads one task may hold at once (its two parallel ``sleep`` steps)."""

# The targets of issue 18 (on the 2-core benchmark machine, against LangGraph and DBOS run there).
TARGET_INSTANT_LEVEL = 100
TARGET_CPU_MS_PER_TASK = 6.0
"""CPU time per instant task at :data:`TARGET_INSTANT_LEVEL`, every process of the session."""
TARGET_THROUGHPUT = 150.0
"""Instant tasks per second at :data:`TARGET_INSTANT_LEVEL`."""
TARGET_C1_MEDIAN_MS = 6.0
"""Median latency of an instant task alone (c=1)."""
TARGET_MEDIAN_RATIOS = {100: 1.03, 500: 1.25, 1000: 1.9}
"""Latency run: the most median latency / ideal critical path may be at each level (0 failures)."""
TARGET_MEMORY_LEVEL = 1000
TARGET_KIB_PER_TASK = 60.0
"""RSS growth of every process of the session per in-flight task at :data:`TARGET_MEMORY_LEVEL`."""
TARGET_IDLE_CORES = 0.03
"""CPU cores a started, settled, idle system uses (every process of the session)."""
TARGET_GATEWAY_USERS = 100
TARGET_GATEWAY_P99_MS = 50.0
"""p99 of the gateway's submit request at :data:`TARGET_GATEWAY_USERS` users (auth and rate limits on)."""

DEFAULT_GATEWAY_DURATION_S = 30.0
"""Seconds of load of the gateway run (``officeray loadtest --users 100 --think-time 5``)."""
MAX_GATEWAY_DURATION_S = 600.0
GATEWAY_THINK_TIME_S = 5.0
"""Mean think time of a gateway user between tasks (the issue's load test)."""
GATEWAY_DRAIN_S = 30.0
"""How long the gateway run's in-flight tasks may take to finish after the load stops."""
GATEWAY_START_S = 300.0
"""Added to the gateway run's load and drain: the stack's start, locust's start, the trace check and
the report. Past load + drain + this, the load test is stopped."""
GATEWAY_STOP_WAIT_S = 30.0
"""How long the load test may take to stop after SIGINT (then SIGKILL, as long again)."""
GATEWAY_REPORT = "report.json"
"""The load test's report (``loadtests.report``), whose ``submit.p99_ms`` the gateway run reads."""

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
    """RSS growth per in-flight task (KiB): ``(peak - baseline) / in_flight``, of the orchestrators or
    of every process of the session (sums of RSS); None when not measured."""
    if baseline_rss is None or peak_rss is None or in_flight <= 0:
        return None
    return max(0, peak_rss - baseline_rss) / in_flight / KIB


def process_group(
    name: str, cmdline: Sequence[str], pid: int, *, driver_pid: int, orchestrator_pids: Collection[int]
) -> str:
    """The group a process of the Ray session is counted under in the CPU breakdown (every
    orchestrator shard is counted under ``orchestrator``)."""
    if pid == driver_pid:
        return "driver (this process)"
    if pid in orchestrator_pids:
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
    skipped = ("skip_latency", "skip_instant", "skip_telemetry", "skip_gateway")
    if all(getattr(args, name, False) for name in skipped):
        return "--skip-latency, --skip-instant, --skip-telemetry and --skip-gateway leave nothing to measure"
    if getattr(args, "store_url", None) and getattr(args, "postgres", False):
        return "--postgres starts a server of its own: give it or --store-url, not both"
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
    """The peak of the orchestrators' RSS (summed over the shards)."""
    session_rss_peak: int | None = None
    """The peak of the RSS summed over every process of the session (sampled in latency runs)."""
    cpu_s: dict[str, float] = field(default_factory=dict)
    """CPU seconds (user + system) spent during the level, by process group."""
    processes: Counter[str] = field(default_factory=Counter)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def session_cpu_s(self) -> float:
        return sum(self.cpu_s.values())


def level_row(
    run: LevelRun, ideal: float | None, baseline_rss: int | None, baseline_session_rss: int | None = None
) -> dict[str, Any]:
    """One table row of figures from a level (latencies in seconds when ``ideal`` is given, else ms);
    ``baseline_rss`` and ``baseline_session_rss`` are the orchestrators' and the whole session's RSS
    before the first level."""
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
    db = run.cpu_s.get(PG_GROUP)
    row["db_cpu_ms_per_task"] = None if db is None else db * per_task
    row["cores_used"] = run.session_cpu_s / run.wall_s if run.cpu_s and run.wall_s > 0 else None
    row["peak_in_flight"] = run.peak_in_flight
    row["orch_rss_peak_mib"] = None if run.rss_peak is None else run.rss_peak / MIB
    row["kib_per_in_flight_task"] = memory_per_task_kib(baseline_rss, run.rss_peak, run.peak_in_flight)
    row["session_rss_peak_mib"] = None if run.session_rss_peak is None else run.session_rss_peak / MIB
    row["session_kib_per_in_flight_task"] = memory_per_task_kib(
        baseline_session_rss, run.session_rss_peak, run.peak_in_flight
    )
    return row


class SessionCpu:
    """CPU times and memory of this process and all its descendants (a local Ray instance is one
    tree), and of the trees of ``extra_roots`` (processes that are not this one's children, such as a
    PostgreSQL server: ``{root pid: group}``, every descendant counted under the root's group)."""

    def __init__(
        self,
        orchestrator_pids: Collection[int],
        exclude: Iterable[int] = (),
        extra_roots: Mapping[int, str] | None = None,
    ) -> None:
        self.root = psutil.Process()
        self.orchestrator_pids = frozenset(orchestrator_pids)
        self.exclude = frozenset(exclude)
        """Processes left out (the benchmark's own helpers, e.g. the OTLP receiver)."""
        self.extra_roots = dict(extra_roots or {})

    def processes(self) -> list[tuple[psutil.Process, str | None]]:
        """Every live process counted: ``(process, group)``, group None for the session's own (found
        by :func:`process_group`)."""
        found: dict[int, tuple[psutil.Process, str | None]] = {
            proc.pid: (proc, None) for proc in [self.root, *self.root.children(recursive=True)]
        }
        for pid, group in self.extra_roots.items():
            try:
                root = psutil.Process(pid)
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:  # the server is gone: nothing of it to count
                continue
            found.update((proc.pid, (proc, group)) for proc in tree)  # once, under the root's group
        return [entry for pid, entry in found.items() if pid not in self.exclude]

    def _group(self, proc: psutil.Process) -> str:
        return process_group(
            proc.name(),
            proc.cmdline(),
            proc.pid,
            driver_pid=self.root.pid,
            orchestrator_pids=self.orchestrator_pids,
        )

    def snapshot(self) -> dict[int, tuple[str, float]]:
        """``{pid: (group, CPU seconds so far)}`` for every live process counted."""
        out: dict[int, tuple[str, float]] = {}
        for proc, group in self.processes():
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    group = group or self._group(proc)
            except psutil.Error:  # exited meanwhile, or not ours to read
                continue
            out[proc.pid] = (group, times.user + times.system)
        return out

    def rss(self) -> int:
        """The RSS of every live process counted, summed (pages shared between processes count once
        per process: an upper bound)."""
        return sum_rss(self.processes())

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


def sum_rss(processes: Iterable[tuple[Any, object]]) -> int:
    """The RSS of ``processes`` (``(process, anything)`` pairs, each with ``memory_info()``) summed; a
    process that exited meanwhile or that is not ours to read counts 0."""
    total = 0
    for proc, _group in processes:
        try:
            total += int(proc.memory_info().rss)
        except psutil.Error:
            continue
    return total


class TaskDriver:
    """How the benchmark reaches the orchestrators: a task goes to the shard the
    :class:`~actors.client.OrchestratorClient` routes it to (``shard_of_request``: the next shard in
    turn), as one ``run`` call (submit and wait in one round trip, as with one shard before shards
    were routed: the figures stay comparable); ``in_flight`` sums every shard's."""

    def __init__(self, client: Any) -> None:
        self.client = client

    @property
    def shards(self) -> int:
        return int(self.client.shards)

    async def run(self, request: Any) -> Any:
        """Run ``request`` on its shard; its final record."""
        return await self.client.handle(self.client.shard_of_request(request)).run.remote(request)

    async def in_flight(self, timeout_s: float = IN_FLIGHT_CALL_TIMEOUT_S) -> int:
        """Tasks in flight on every shard; :class:`TimeoutError` when a shard does not answer."""
        from officeray.errors import OrchestratorUnavailableError

        try:
            return int(await self.client.in_flight(timeout_s))
        except OrchestratorUnavailableError as exc:
            raise TimeoutError(str(exc)) from None

    async def pids(self) -> list[int]:
        """The process id of every orchestrator shard."""
        handles = [self.client.handle(shard) for shard in range(self.shards)]
        return [int(pid) for pid in await asyncio.gather(*(h.pid.remote() for h in handles))]


async def _sample_in_flight(driver: TaskDriver, run: LevelRun) -> None:
    while True:
        try:
            in_flight = await driver.in_flight()
            run.peak_in_flight = max(run.peak_in_flight, in_flight)
        except TimeoutError:
            pass
        await asyncio.sleep(SAMPLE_INTERVAL_S)


async def _sample_rss(procs: Sequence[psutil.Process], run: LevelRun) -> None:
    while procs:
        rss = sum_rss((proc, None) for proc in procs)
        run.rss_peak = rss if run.rss_peak is None else max(run.rss_peak, rss)
        await asyncio.sleep(SAMPLE_INTERVAL_S)


async def _sample_session_rss(cpu: SessionCpu, run: LevelRun) -> None:
    while True:
        rss = cpu.rss()
        run.session_rss_peak = rss if run.session_rss_peak is None else max(run.session_rss_peak, rss)
        await asyncio.sleep(SESSION_RSS_INTERVAL_S)


async def run_level(
    driver: TaskDriver,
    description: str,
    concurrency: int,
    rounds: int,
    *,
    timeout_s: float = LEVEL_TIMEOUT_S,
    orchestrators: Sequence[psutil.Process] = (),
    cpu: SessionCpu | None = None,
    session_memory: bool = False,
) -> LevelRun:
    """``concurrency`` clients, each running ``rounds`` tasks back to back; bounded by ``timeout_s``.
    With ``session_memory`` (and ``cpu``) the RSS of every process of the session is sampled too."""
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
                record = await asyncio.wait_for(driver.run(TaskRequest(description=description)), remaining)
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
        asyncio.ensure_future(_sample_in_flight(driver, run)),
        asyncio.ensure_future(_sample_rss(orchestrators, run)),
    ]
    if cpu is not None and session_memory:
        samplers.append(asyncio.ensure_future(_sample_session_rss(cpu, run)))
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


async def _settle(driver: TaskDriver) -> bool:
    """Wait until the orchestrators have no task in flight; False when they still have after a while."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if await driver.in_flight() == 0:
                return True
        except TimeoutError:
            pass
        await asyncio.sleep(SAMPLE_INTERVAL_S)
    return False


# -- the runs ---------------------------------------------------------------------------------------


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
    skip_gateway: bool = False
    telemetry_level: int = DEFAULT_TELEMETRY_LEVEL
    telemetry_tasks: int = DEFAULT_TELEMETRY_TASKS
    gateway_duration_s: float = DEFAULT_GATEWAY_DURATION_S
    shards: tuple[int, ...] = (1,)
    """Orchestrator shard counts: the instant run runs once per count; the latency and telemetry runs
    use the first."""
    store_url: str | None = None
    """The store of every stack (default: a SQLite file of its own each)."""
    postgres: bool = False
    """Start a throwaway PostgreSQL server on 127.0.0.1: a database of its own for each stack."""
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
    """The orchestrators' RSS (summed over the shards) after the warm-up, before the first level."""
    baseline_session_rss: int | None = None
    """The RSS of every process of the session, summed, at the same moment (latency runs)."""
    idle_cores: dict[str, float] | None = None
    """CPU cores the started, settled, idle session used (its background loops) by process group,
    sampled before the levels."""
    unsettled: list[int] = field(default_factory=list)
    """Levels after which tasks were still in flight when the next level began."""
    shards: int = 1


def _embedded_chain(latency_s: float | None) -> list[dict[str, Any]]:
    if latency_s is None:
        return [{"tier": "embedded"}]
    return [{"tier": "embedded", "latency": {"ttft_s": latency_s, "tokens_per_s": 0.0, "jitter": 0.0}}]


def bench_settings(
    config: str | None,
    state_dir: Path,
    max_level: int,
    planner_s: float | None,
    reviewer_s: float | None,
    *,
    store_url: str | None = None,
    shards: int = 1,
) -> Any:
    """The settings of one run: the config file's, sized for ``max_level``, with the model latency,
    ``shards`` orchestrators and the store at ``store_url`` (default: SQLite in ``state_dir``)."""
    from officeray.config import load_settings

    base = load_settings(config)
    overrides: dict[str, Any] = {
        "store.url": store_url or f"sqlite:///{state_dir}/bench.db",
        "telemetry.trace_file": str(state_dir / "traces.jsonl"),
        "workflow.orchestrators": shards,
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


async def _orchestrator_processes(driver: TaskDriver) -> tuple[list[int], list[psutil.Process]]:
    pids = await driver.pids()
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.Error:  # on another node: no memory figures of it
            continue
    return pids, procs


async def _idle_cores(cpu: SessionCpu, settle_s: float, sample_s: float) -> dict[str, float]:
    """CPU cores by process group of a settled session left alone: ``settle_s`` of quiet first (the
    last flushes of what ran before), then ``sample_s`` measured."""
    await asyncio.sleep(settle_s)
    before = cpu.snapshot()
    await asyncio.sleep(sample_s)
    spent, _count = cpu.spent(before, cpu.snapshot())
    return {group: cpu_s / sample_s for group, cpu_s in spent.items()}


async def _run_levels(
    driver: TaskDriver,
    description: str,
    plan: Sequence[tuple[int, int]],
    *,
    timeout_s: float,
    label: str,
    idle: bool = False,
    session_memory: bool = False,
    extra_roots: Mapping[int, str] | None = None,
) -> RunOutcome:
    pids, orchestrators = await _orchestrator_processes(driver)
    cpu = SessionCpu(pids, extra_roots=extra_roots)
    outcome = RunOutcome(shards=driver.shards)
    await run_level(driver, description, WARMUP_TASKS, 1, timeout_s=timeout_s)
    await _settle(driver)
    if idle:
        outcome.idle_cores = await _idle_cores(cpu, IDLE_SETTLE_S, IDLE_CPU_SAMPLE_S)
        _progress(f"{label}: idle session uses {sum(outcome.idle_cores.values()):.3f} cores")
    if orchestrators:
        outcome.baseline_rss = sum_rss((proc, None) for proc in orchestrators)
    if session_memory:
        outcome.baseline_session_rss = cpu.rss()
    for concurrency, rounds in plan:
        run = await run_level(
            driver,
            description,
            concurrency,
            rounds,
            timeout_s=timeout_s,
            orchestrators=orchestrators,
            cpu=cpu,
            session_memory=session_memory,
        )
        outcome.levels.append(run)
        done = run.latencies_s
        median = f"{percentile(done, 50):.3f} s" if done else "-"
        _progress(
            f"{label} c={concurrency}: {run.tasks} tasks, {run.failed} failed, median {median}, "
            f"{len(done) / run.wall_s:.1f} tasks/s, peak in flight {run.peak_in_flight}"
        )
        if not await _settle(driver):
            outcome.unsettled.append(concurrency)
    return outcome


_Outcome = TypeVar("_Outcome")


def _run_stack(settings: Any, body: Callable[[TaskDriver], Coroutine[Any, Any, _Outcome]]) -> _Outcome:
    from cluster.runtime import LocalStack

    with LocalStack(settings) as stack:
        return asyncio.run(body(TaskDriver(stack.client)))


def latency_run(cfg: BenchConfig, state_dir: Path, store: StoreChoice | None = None) -> RunOutcome:
    """The latency run: one stack (the first shard count), every level of ``cfg.levels``."""
    store = store or StoreChoice()
    settings = bench_settings(
        cfg.config,
        state_dir,
        max(cfg.levels),
        cfg.planner_s,
        cfg.reviewer_s,
        store_url=store.url_for(state_dir),
        shards=cfg.shards[0],
    )
    plan = [(c, rounds_for(c, cfg.rounds)) for c in cfg.levels]

    def body(driver: TaskDriver) -> Coroutine[Any, Any, RunOutcome]:
        return _run_levels(
            driver,
            sleep_task(cfg.step_s),
            plan,
            timeout_s=cfg.level_timeout_s,
            label="latency",
            session_memory=True,
            extra_roots=store.extra_roots(),
        )

    return _run_stack(settings, body)


def instant_run(
    cfg: BenchConfig, state_dir: Path, store: StoreChoice | None = None, shards: int | None = None
) -> RunOutcome:
    """The instant run: one stack of ``shards`` orchestrators (default the first shard count) without
    model latency, its idle CPU, then every level of ``cfg.instant_levels``."""
    store = store or StoreChoice()
    count = cfg.shards[0] if shards is None else shards
    settings = bench_settings(
        cfg.config,
        state_dir,
        max(cfg.instant_levels),
        None,
        None,
        store_url=store.url_for(state_dir),
        shards=count,
    )
    plan = [(c, instant_rounds(c, cfg.instant_tasks)) for c in cfg.instant_levels]

    def body(driver: TaskDriver) -> Coroutine[Any, Any, RunOutcome]:
        return _run_levels(
            driver,
            sleep_task(0.0),
            plan,
            timeout_s=cfg.level_timeout_s,
            label=f"instant ({count} shard{'s' if count > 1 else ''})",
            idle=True,
            extra_roots=store.extra_roots(),
        )

    return _run_stack(settings, body)


# -- the gateway run --------------------------------------------------------------------------------


@dataclass
class GatewayRun:
    """What the load test's submit requests measured (``report.json`` of ``officeray loadtest``)."""

    users: int
    duration_s: float
    exit_code: int | None = None
    """The load test's exit code (1 also when one of its SLOs was missed); None: it was stopped."""
    submit: dict[str, Any] | None = None
    """The report's ``submit`` aggregate (count, failures, p50_ms, p95_ms, p99_ms...)."""
    completion: dict[str, Any] | None = None
    trace_completeness: float | None = None
    problem: str | None = None
    """Why there are no figures (no report, the run was stopped), or None."""

    @property
    def p99_ms(self) -> float | None:
        value = (self.submit or {}).get("p99_ms")
        return None if value is None else float(value)


def gateway_command(out: Path, users: int, duration_s: float) -> list[str]:
    """The load test of the gateway run: the issue's ``officeray loadtest --users 100 --think-time 5``
    for ``duration_s``, on the system it starts itself (``loadtests/stack.yaml``: auth with an admin
    key made for the run, rate limits on), its report in ``out``."""
    return [
        sys.executable,
        "-m",
        "loadtests.loadtest",
        "--users",
        str(users),
        "--think-time",
        f"{GATEWAY_THINK_TIME_S:g}",
        "--duration",
        f"{duration_s:g}",
        "--drain",
        f"{GATEWAY_DRAIN_S:g}",
        "--slo",
        f"submit.p99_ms<={TARGET_GATEWAY_P99_MS:g}",
        "--quiet",
        "--out",
        str(out),
    ]


def gateway_of_report(
    report: Mapping[str, Any] | None, users: int, duration_s: float, exit_code: int | None
) -> GatewayRun:
    """The :class:`GatewayRun` of a load test's report (None: it wrote none)."""
    run = GatewayRun(users=users, duration_s=duration_s, exit_code=exit_code)
    if report is None:
        run.problem = (
            "the load test was stopped at its deadline"
            if exit_code is None
            else f"the load test wrote no {GATEWAY_REPORT} (exit {exit_code})"
        )
        return run
    run.submit = report.get("submit")
    run.completion = report.get("completion")
    completeness = report.get("trace_completeness")
    run.trace_completeness = None if completeness is None else float(completeness)
    if run.submit is None:
        run.problem = "the load test made no submit request"
    return run


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop the load test and what it started: SIGINT (its ``finally`` blocks stop its Ray), then
    SIGKILL of its process group."""
    for sig, wait_s in ((signal.SIGINT, GATEWAY_STOP_WAIT_S), (signal.SIGKILL, GATEWAY_STOP_WAIT_S)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def gateway_run(cfg: BenchConfig, out: Path) -> GatewayRun:
    """Run the gateway's load test in a process of its own (locust and its Ray stay out of this
    process; it starts after the other runs' stacks are gone) and read its report."""
    from loadtests.loadtest import REPO_ROOT

    out.parent.mkdir(parents=True, exist_ok=True)
    command = gateway_command(out, TARGET_GATEWAY_USERS, cfg.gateway_duration_s)
    limit_s = cfg.gateway_duration_s + GATEWAY_DRAIN_S + GATEWAY_START_S
    _progress(f"gateway: {' '.join(command[1:])} (at most {limit_s:g} s)")
    exit_code: int | None
    with open(out.parent / "gateway.log", "ab") as log:
        proc = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            exit_code = proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            exit_code = None
        finally:
            if proc.poll() is None:
                _stop_group(proc)
    report_file = out / GATEWAY_REPORT
    report = json.loads(report_file.read_text()) if exit_code is not None and report_file.exists() else None
    measured = gateway_of_report(report, TARGET_GATEWAY_USERS, cfg.gateway_duration_s, exit_code)
    p99 = "-" if measured.p99_ms is None else f"{measured.p99_ms:.1f} ms"
    _progress(f"gateway: submit p99 {p99}{'' if measured.problem is None else ': ' + measured.problem}")
    return measured


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
    driver: TaskDriver,
    concurrency: int,
    rounds: int,
    *,
    timeout_s: float,
    tail_s: float,
    receiver: ReceiverProcess | None,
    extra_roots: Mapping[int, str] | None = None,
) -> TelemetryRun:
    pids, _orchestrators = await _orchestrator_processes(driver)
    cpu = SessionCpu(
        pids,
        exclude=[receiver.pid] if receiver is not None and receiver.pid else [],
        extra_roots=extra_roots,
    )
    description = sleep_task(0.0)
    await run_level(driver, description, WARMUP_TASKS, 1, timeout_s=timeout_s)
    await _settle(driver)
    await asyncio.sleep(tail_s)  # the warm-up's spans are out before anything is measured
    before = cpu.snapshot()
    await asyncio.sleep(IDLE_CPU_SAMPLE_S)
    idle, _count = cpu.spent(before, cpu.snapshot())
    counted = receiver.counts() if receiver is not None else None
    before = cpu.snapshot()
    run = await run_level(driver, description, concurrency, rounds, timeout_s=timeout_s)
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


def telemetry_run(
    cfg: BenchConfig, state_dir: Path, export: bool, store: StoreChoice | None = None
) -> TelemetryRun:
    """One telemetry cost run: a stack (the first shard count) with export on (and the receiver it
    exports to) or off."""
    store = store or StoreChoice()
    rounds = instant_rounds(cfg.telemetry_level, cfg.telemetry_tasks)
    base = bench_settings(
        cfg.config,
        state_dir,
        cfg.telemetry_level,
        None,
        None,
        store_url=store.url_for(state_dir),
        shards=cfg.shards[0],
    )
    with without_otel_environment(), ReceiverProcess() if export else contextlib.nullcontext() as receiver:
        endpoint = receiver.endpoint if isinstance(receiver, ReceiverProcess) else None
        settings = base.model_copy(update={"telemetry": telemetry_variant(base.telemetry, endpoint)})
        tail_s = export_tail_s(settings.telemetry)

        def body(driver: TaskDriver) -> Coroutine[Any, Any, TelemetryRun]:
            return _measure_export(
                driver,
                cfg.telemetry_level,
                rounds,
                timeout_s=cfg.level_timeout_s,
                tail_s=tail_s,
                receiver=receiver if isinstance(receiver, ReceiverProcess) else None,
                extra_roots=store.extra_roots(),
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
    Column("kib_per_in_flight_task", "orch KiB/in-flight task", ".1f"),
    Column("session_rss_peak_mib", "all RSS MiB", ".0f"),
    Column("session_kib_per_in_flight_task", "all KiB/in-flight task", ".1f"),
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
    Column("db_cpu_ms_per_task", "db CPU ms/task", ".1f"),
    Column("cores_used", "cores used", ".2f"),
]
SCALING_COLUMNS = [
    Column("shards", "shards"),
    Column("concurrency", "c"),
    Column("tasks", "tasks"),
    Column("failed", "failed"),
    Column("tasks_per_s", "tasks/s", ".1f"),
    Column("speedup", "x first", ".2f"),
    Column("cpu_ms_per_task", "CPU ms/task", ".2f"),
    Column("orch_cpu_ms_per_task", "orch CPU ms/task", ".2f"),
    Column("db_cpu_ms_per_task", "db CPU ms/task", ".2f"),
    Column("cores_used", "cores used", ".2f"),
]
IDLE_COLUMNS = [
    Column("group", "process"),
    Column("cores", "idle cores", ".4f"),
    Column("share_pct", "share %", ".1f"),
]
GATEWAY_COLUMNS = [
    Column("users", "users"),
    Column("duration_s", "load s", ".0f"),
    Column("count", "submits"),
    Column("failures", "failed"),
    Column("p50_ms", "submit p50 ms", ".1f"),
    Column("p95_ms", "submit p95 ms", ".1f"),
    Column("p99_ms", "submit p99 ms", ".1f"),
    Column("completion_p50_ms", "completion p50 ms", ".0f"),
    Column("trace_completeness", "traces complete", ".3f"),
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


def idle_rows(idle_cores: Mapping[str, float]) -> list[dict[str, Any]]:
    """The idle session's CPU cores by process group, largest first."""
    total = sum(idle_cores.values())
    rows = [
        {"group": group, "cores": cores, "share_pct": 100 * cores / total if total > 0 else None}
        for group, cores in idle_cores.items()
    ]
    return sorted(rows, key=lambda r: (-r["cores"], r["group"]))


def gateway_row(run: GatewayRun) -> dict[str, Any]:
    """The gateway table's row."""
    submit = run.submit or {}
    return {
        "users": run.users,
        "duration_s": run.duration_s,
        **{key: submit.get(key) for key in ("count", "failures", "p50_ms", "p95_ms", "p99_ms")},
        "completion_p50_ms": (run.completion or {}).get("p50_ms"),
        "trace_completeness": run.trace_completeness,
        "exit_code": run.exit_code,
        "problem": run.problem,
    }


def _row_at(rows: Iterable[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    return next((r for r in rows if r["concurrency"] == concurrency), {})


def targets_of(
    latency_rows: Sequence[dict[str, Any]],
    instant_rows: Sequence[dict[str, Any]],
    *,
    idle_cores: float | None = None,
    gateway_p99_ms: float | None = None,
) -> list[Target]:
    """Issue 18's targets, evaluated on the rows of this run (a level not in the run, an idle CPU or a
    gateway p99 not measured, is "not measured")."""
    instant = _row_at(instant_rows, TARGET_INSTANT_LEVEL)
    alone = _row_at(instant_rows, 1)
    targets = [
        Target(
            "instant",
            f"CPU per task (every process) at {TARGET_INSTANT_LEVEL} concurrent",
            instant.get("cpu_ms_per_task"),
            TARGET_CPU_MS_PER_TASK,
            "<=",
            "ms",
            ".2f",
        ),
        Target(
            "instant",
            f"throughput at {TARGET_INSTANT_LEVEL} concurrent",
            instant.get("tasks_per_s"),
            TARGET_THROUGHPUT,
            ">=",
            "tasks/s",
            ".1f",
        ),
        Target(
            "instant",
            "median latency at 1 concurrent",
            alone.get("median_ms"),
            TARGET_C1_MEDIAN_MS,
            "<=",
            "ms",
            ".2f",
        ),
    ]
    for level, ratio in TARGET_MEDIAN_RATIOS.items():
        row = _row_at(latency_rows, level)
        targets.append(
            Target(
                "latency",
                f"median / ideal at {level} concurrent",
                row.get("median_ratio"),
                ratio,
                "<=",
                fmt=".3f",
            )
        )
        targets.append(
            Target("latency", f"failed tasks at {level} concurrent", row.get("failed"), 0, "<=", fmt="d")
        )
    memory = _row_at(latency_rows, TARGET_MEMORY_LEVEL)
    targets += [
        Target(
            "memory",
            f"RSS growth per in-flight task (every process) at {TARGET_MEMORY_LEVEL} concurrent",
            memory.get("session_kib_per_in_flight_task"),
            TARGET_KIB_PER_TASK,
            "<=",
            "KiB",
            ".1f",
        ),
        Target(
            "idle",
            "CPU of the started, settled system (every process)",
            idle_cores,
            TARGET_IDLE_CORES,
            "<=",
            "cores",
            ".3f",
        ),
        Target(
            "gateway",
            f"submit p99 at {TARGET_GATEWAY_USERS} users (auth and rate limits on)",
            gateway_p99_ms,
            TARGET_GATEWAY_P99_MS,
            "<=",
            "ms",
            ".1f",
        ),
    ]
    return targets


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


@dataclass
class _Part:
    """The tables, notes and JSON of one part of the result."""

    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def _latency_part(cfg: BenchConfig, latency: RunOutcome) -> tuple[_Part, list[dict[str, Any]]]:
    ideal = cfg.ideal_s
    rows = [level_row(r, ideal, latency.baseline_rss, latency.baseline_session_rss) for r in latency.levels]
    title = (
        f"latency: planner {cfg.planner_s:g} s + two parallel {cfg.step_s:g} s sleep steps + "
        f"reviewer {cfg.reviewer_s:g} s = ideal {ideal:.3f} s"
    )
    part = _Part(tables=[Table(title, LATENCY_COLUMNS, rows)])
    if latency.baseline_rss is not None:
        part.notes.append(
            f"orchestrator RSS before the first latency level: {latency.baseline_rss / MIB:.0f} MiB; "
            "orch KiB/in-flight task = (RSS peak - that) / peak in flight"
        )
    if latency.baseline_session_rss is not None:
        part.notes.append(
            f"RSS of every process of the session before the first latency level: "
            f"{latency.baseline_session_rss / MIB:.0f} MiB; all KiB/in-flight task = (peak of that sum, "
            f"sampled every {SESSION_RSS_INTERVAL_S:g} s - that) / peak in flight"
        )
    part.notes.extend(_run_notes("latency", latency))
    return part, rows


def _shards_label(outcome: RunOutcome, several: bool) -> str:
    return f", {outcome.shards} shard{'s' if outcome.shards > 1 else ''}" if several else ""


def _instant_part(instants: Sequence[RunOutcome]) -> tuple[_Part, list[dict[str, Any]], float | None]:
    """The instant tables of every shard count (the targets' rows and idle cores are the first's)."""
    part = _Part()
    several = len(instants) > 1
    by_shards: list[tuple[int, list[dict[str, Any]]]] = []
    for outcome in instants:
        rows = [level_row(r, None, outcome.baseline_rss) for r in outcome.levels]
        by_shards.append((outcome.shards, rows))
        label = _shards_label(outcome, several)
        part.tables.append(Table(f"instant models and tools{label}", INSTANT_COLUMNS, rows))
        if outcome.levels:
            top = outcome.levels[-1]
            title = f"CPU by process, instant{label}, at {top.concurrency} concurrent ({top.tasks} tasks)"
            part.tables.append(Table(title, BREAKDOWN_COLUMNS, breakdown_rows(top, outcome.idle_cores)))
        if outcome.idle_cores is not None:
            part.tables.append(
                Table(f"idle CPU by process{label}", IDLE_COLUMNS, idle_rows(outcome.idle_cores))
            )
            part.notes.append(
                f"the idle session{label} used {sum(outcome.idle_cores.values()):.3f} CPU cores: sampled "
                f"{IDLE_CPU_SAMPLE_S:g} s, {IDLE_SETTLE_S:g} s after the warm-up settled; 'idle ms/task' is "
                "that share of the CPU per task"
            )
        part.notes.extend(_run_notes(f"instant{label}", outcome))
    if several or (instants and instants[0].shards > 1):
        rows = scaling_rows(by_shards)
        part.tables.append(Table("scaling: instant run by orchestrator shards", SCALING_COLUMNS, rows))
        part.extra["scaling"] = rows
    first = instants[0] if instants else None
    idle = None if first is None or first.idle_cores is None else sum(first.idle_cores.values())
    part.extra["instant_by_shards"] = [{"shards": n, "levels": rows} for n, rows in by_shards]
    return part, (by_shards[0][1] if by_shards else []), idle


def _gateway_part(gateway: GatewayRun) -> _Part:
    row = gateway_row(gateway)
    title = (
        f"gateway: officeray loadtest --users {gateway.users} --think-time {GATEWAY_THINK_TIME_S:g} "
        f"--duration {gateway.duration_s:g} (auth and rate limits on)"
    )
    part = _Part(tables=[Table(title, GATEWAY_COLUMNS, [row])], extra={"gateway": row})
    if gateway.problem is not None:
        part.notes.append(f"gateway: {gateway.problem}")
    return part


def build_result(
    cfg: BenchConfig,
    latency: RunOutcome | None,
    instants: Sequence[RunOutcome] = (),
    telemetry: tuple[TelemetryRun, TelemetryRun] | None = None,
    gateway: GatewayRun | None = None,
    *,
    store: str = "SQLite in a temporary folder",
    store_notes: Sequence[str] = (),
) -> BenchResult:
    """The printed and JSON result of the runs (each may be None or empty: skipped); ``instants`` are
    the instant runs, one per shard count (the targets are the first's); ``telemetry`` is the
    export-on and export-off runs."""
    shards = ", ".join(str(n) for n in cfg.shards)
    notes = [
        f"store: {store}; orchestrator shards: {shards}; one tool runner a shard, sleep steps on the "
        "host-tool runner; tasks routed to shards in turn; latency = submission to final record, seen by "
        "the driver",
        *store_notes,
    ]
    parts: list[_Part] = []
    latency_rows: list[dict[str, Any]] = []
    if latency is not None:
        part, latency_rows = _latency_part(cfg, latency)
        parts.append(part)
    instant_part, instant_rows, idle = _instant_part(instants)
    parts.append(instant_part)
    if telemetry is not None:
        tables, telemetry_notes, telemetry_extra = telemetry_summary(*telemetry)
        parts.append(_Part(tables, telemetry_notes, {"telemetry": telemetry_extra}))
    if gateway is not None:
        parts.append(_gateway_part(gateway))
    config = {
        "levels": list(cfg.levels),
        "rounds": cfg.rounds,
        "instant_levels": list(cfg.instant_levels),
        "instant_tasks": cfg.instant_tasks,
        "planner_s": cfg.planner_s,
        "reviewer_s": cfg.reviewer_s,
        "step_s": cfg.step_s,
        "ideal_s": cfg.ideal_s,
        "skip_latency": cfg.skip_latency,
        "skip_instant": cfg.skip_instant,
        "skip_telemetry": cfg.skip_telemetry,
        "skip_gateway": cfg.skip_gateway,
        "telemetry_level": cfg.telemetry_level,
        "telemetry_tasks": cfg.telemetry_tasks,
        "gateway_duration_s": cfg.gateway_duration_s,
        "shards": list(cfg.shards),
        "store": store,
    }
    extra: dict[str, Any] = {"config": config, "latency_levels": latency_rows, "instant_levels": instant_rows}
    if instants and instants[0].idle_cores is not None:
        extra["idle_cores"] = instants[0].idle_cores
    for part in parts:
        extra.update(part.extra)
    return BenchResult(
        benchmark="overhead",
        title="bench overhead: orchestration overhead against a known ideal critical path",
        tables=[table for part in parts for table in part.tables],
        targets=targets_of(
            latency_rows,
            instant_rows,
            idle_cores=idle,
            gateway_p99_ms=None if gateway is None else gateway.p99_ms,
        ),
        notes=notes + [note for part in parts for note in part.notes],
        extra=extra,
    )


def run_bench(cfg: BenchConfig) -> BenchResult:
    """Run the latency run, the instant run (once per shard count), the telemetry cost runs (export
    off, then on), then the gateway run; each on a local Ray instance of its own, one at a time."""
    from cluster.prepare import prefer_loopback

    prefer_loopback()  # before Ray is imported: a local instance stays on 127.0.0.1
    with (
        tempfile.TemporaryDirectory(prefix="officeray-bench-") as tmp,
        store_choice(cfg.store_url, cfg.postgres) as store,
    ):
        root = Path(tmp)
        latency = None if cfg.skip_latency else latency_run(cfg, root / "latency", store)
        instants = (
            []
            if cfg.skip_instant
            else [instant_run(cfg, root / f"instant-{n}-shards", store, n) for n in cfg.shards]
        )
        telemetry = None
        if not cfg.skip_telemetry:
            off = telemetry_run(cfg, root / "telemetry-off", export=False, store=store)
            on = telemetry_run(cfg, root / "telemetry-on", export=True, store=store)
            telemetry = (on, off)
        gateway = None if cfg.skip_gateway else gateway_run(cfg, root / "gateway" / "loadtest")
        return build_result(
            cfg, latency, instants, telemetry, gateway, store=store.kind, store_notes=store.notes
        )


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
    parser.add_argument(
        "--skip-gateway",
        action="store_true",
        help=f"do not run the gateway's load test ({TARGET_GATEWAY_USERS} users, auth and rate limits on)",
    )
    parser.add_argument(
        "--gateway-duration",
        type=bounded_float(1, MAX_GATEWAY_DURATION_S),
        default=DEFAULT_GATEWAY_DURATION_S,
        help=f"seconds of load of the gateway run (default {DEFAULT_GATEWAY_DURATION_S:g})",
    )
    parser.add_argument(
        "--shards",
        type=shards_arg,
        default=(1,),
        help=f"orchestrator shard counts, e.g. 1,2 (1..{MAX_SHARDS}): the instant run runs once per "
        "count; the latency and telemetry runs use the first (default 1)",
    )
    parser.add_argument(
        "--store-url",
        type=store_url_arg,
        default=None,
        metavar="URL",
        help="store of every stack: SQLite, or PostgreSQL on loopback "
        "(postgresql+psycopg://...@127.0.0.1/db); "
        "default a SQLite file per stack",
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="start a throwaway PostgreSQL server on 127.0.0.1 for the run (a database per stack; its "
        "processes' CPU and memory are counted)",
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
        skip_gateway=args.skip_gateway,
        gateway_duration_s=args.gateway_duration,
        shards=tuple(args.shards),
        store_url=args.store_url,
        postgres=args.postgres,
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
    except (ConfigError, DockerUnavailable, PostgresUnavailable) as exc:
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
