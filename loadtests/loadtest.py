"""``officeray loadtest``: a bounded locust run against officeray (or a model endpoint), then the report.

    officeray loadtest --users 100 --spawn-rate 50 --duration 60 --out runs/100u
    officeray loadtest --host http://127.0.0.1:8000 --workers 2 --shape spike:spike_users=200 --out runs/spike
    officeray loadtest --arrival-rate 20 --users 50 --duration 60 --out runs/open        # open loop
    officeray loadtest --scenario model --host http://127.0.0.1:8000 --users 20 --out runs/llm

What it does:

1. Checks every input first (numbers, task mix, shape, SLOs, the output folder); a bad one is a
   one-line message and exit code 2, before anything starts.
2. Without ``--host`` it starts the system itself: a local Ray instance with the Serve app on a free
   loopback port, configured by ``--config`` or else :data:`DEFAULT_STACK_CONFIG` (the embedded
   tier with its latency model standing in for real models; the report says so). Store and traces
   go under ``OUT/system/``; an admin key made for the run in that store is what locust sends. It is
   stopped after the run. Against a ``--host``, the task users send ``$OFFICERAY_API_KEY``, else, for
   a loopback host only, the key in the config's ``auth.admin_key_file`` (the one ``officeray serve``
   wrote on this machine).
3. Runs locust headless in subprocesses (locust's gevent must not share a process with Ray): one
   process, or with ``--workers N`` a master and N workers on loopback (locust's distributed mode).
   Users, spawn rate and duration come from the flags, or the stages of ``--shape``. In-flight tasks
   get ``--drain`` seconds to finish after the load stops; a hard deadline (the run's length plus the
   drain plus :data:`START_GRACE_S`) stops everything that is still running.
4. Shows live progress: users, tasks in flight, completed, failures, p50/p95 of completion and submit.
5. Checks trace completeness of the completed tasks (:mod:`loadtests.traces`), then writes
   ``report.json``, ``report.html`` and the plots (:mod:`loadtests.report`) and evaluates the SLOs
   (``--slo``, ``--slo-file``; with none given, :data:`DEFAULT_SLOS`).

Exit code: 0 when every SLO holds, 1 when one is violated or locust itself failed, 2 for bad input.
locust's own CSV statistics (``OUT/locust_stats.csv``...) and log (``OUT/locust.log``) are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from loadtests.records import (
    COMPLETION_TYPE,
    RUN_FILE,
    SAMPLES_FILE,
    SUBMIT_NAME,
    SUBMIT_TYPE,
    TIMELINE_FILE,
)
from loadtests.shapes import MAX_RUN_S, MAX_USERS, ShapeError, Stage, load_shape, steady
from loadtests.slo import Slo, SloError, load_slo_file, parse_slos
from loadtests.taskmix import DEFAULT_TASK_MIX, TaskMixError, load_task_mix
from officeray.stats import percentile

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
SHAPE_LOCUSTFILE = Path(__file__).resolve().parent / "shape_locustfile.py"
MODEL_LOCUSTFILE = Path(__file__).resolve().parent / "model_user.py"
API_KEY_ENV = "OFFICERAY_API_KEY"
"""The key the locust task users send (:data:`loadtests.locustfile.API_KEY_ENV`; not imported from
there: that module starts gevent's monkey-patching)."""
DEFAULT_STACK_CONFIG = Path(__file__).resolve().parent / "stack.yaml"
"""The system ``officeray loadtest`` starts when no ``--host`` and no ``--config`` are given."""

MAX_WORKERS = 64
START_GRACE_S = 60.0
"""Time locust (and its workers) may take to start, on top of the run's own length."""
DEFAULT_DRAIN_S = 30.0
"""How long in-flight tasks may take to finish after the load stops (locust's ``--stop-timeout``)."""
HEALTH_TIMEOUT_S = 10.0
"""How long a ``--host`` has to answer ``/healthz`` (tasks) or ``/v1/models`` (model) before the run."""
PROGRESS_TTY_S = 1.0
PROGRESS_PLAIN_S = 5.0
"""How often progress is shown on a terminal / in a log."""
DEFAULT_SLOS = ("run.failures <= 0",)
"""The gate when no SLO is given: any failed request or task fails the run."""
DEFAULT_TRACE_CHECKS_REMOTE = 200
"""Against a ``--host``, traces are checked for a random sample of this many completed tasks (each
trace read scans the server's trace file); the local system's trace file is read whole."""


LOADTEST_KEY_TENANT = "default"
"""The tenant of the admin key ``officeray loadtest`` creates in the system it starts (an admin key
submits for every tenant of the task mix)."""


class LoadtestError(ValueError):
    """Bad input to ``officeray loadtest``: the message says what and how to fix it."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``officeray loadtest``."""
    parser.add_argument("--users", type=int, default=10, help="concurrent users (default 10)")
    parser.add_argument("--spawn-rate", type=float, default=10.0, help="users started per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--host", default=None, help="base URL of a running system (default: start one)")
    parser.add_argument("--workers", type=int, default=0, help="locust worker processes (distributed mode)")
    parser.add_argument(
        "--shape", default=None, help="KIND[:k=v,...] or a YAML file: ramp, step, spike, soak"
    )
    parser.add_argument("--arrival-rate", type=float, default=0.0, help="open loop: tasks per second")
    parser.add_argument(
        "--think-time", type=float, default=0.0, help="closed loop: mean seconds between tasks"
    )
    parser.add_argument("--task-mix", default=str(DEFAULT_TASK_MIX), help="JSONL task mix")
    parser.add_argument("--scenario", choices=("tasks", "model"), default="tasks", help="task or model users")
    parser.add_argument("--model-prompts", default=None, help="model scenario: JSONL prompt mix")
    parser.add_argument("--follow", choices=("wait", "poll"), default="wait", help="long poll or poll")
    parser.add_argument("--task-timeout", type=float, default=300.0, help="seconds a task may take")
    parser.add_argument("--drain", type=float, default=DEFAULT_DRAIN_S, help="seconds for in-flight tasks")
    parser.add_argument("--slo", action="append", default=[], metavar="EXPR", help="e.g. 'submit.p99_ms<=50'")
    parser.add_argument("--slo-file", default=None, help="YAML file with slos: [EXPR, ...]")
    parser.add_argument(
        "--trace-checks", type=int, default=None, help="completed tasks whose trace is checked"
    )
    parser.add_argument("--out", required=True, help="output folder (report.json, report.html, plots)")
    parser.add_argument("--quiet", action="store_true", help="no live progress")


@dataclass
class Plan:
    """A checked load-test request."""

    args: argparse.Namespace
    out: Path
    stages: list[Stage]
    shaped: bool
    slos: list[Slo]
    locustfiles: list[Path] = field(default_factory=list)

    @property
    def length_s(self) -> float:
        return sum(stage.duration_s for stage in self.stages)


def check(args: argparse.Namespace) -> Plan:
    """Every input checked before anything starts; raises :class:`LoadtestError`."""
    _check_numbers(args)
    if args.scenario == "tasks":
        try:
            load_task_mix(args.task_mix)
        except TaskMixError as exc:
            raise LoadtestError(str(exc)) from None
    try:
        stages = (
            load_shape(args.shape, users=args.users, spawn_rate=args.spawn_rate, duration_s=args.duration)
            if args.shape
            else steady(args.users, args.spawn_rate, args.duration)
        )
    except ShapeError as exc:
        raise LoadtestError(str(exc)) from None
    try:
        slos = parse_slos(args.slo) + (load_slo_file(args.slo_file) if args.slo_file else [])
    except (SloError, OSError) as exc:
        raise LoadtestError(str(exc)) from None
    if not slos:
        slos = parse_slos(list(DEFAULT_SLOS))
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise LoadtestError(f"output folder {out} is not empty; give a new --out")
    files = [LOCUSTFILE] + ([MODEL_LOCUSTFILE] if args.scenario == "model" else [])
    if args.shape:
        files.append(SHAPE_LOCUSTFILE)
    if args.scenario == "model" and args.host is None:
        raise LoadtestError("--scenario model needs --host (the OpenAI-compatible endpoint's base URL)")
    return Plan(args=args, out=out, stages=stages, shaped=bool(args.shape), slos=slos, locustfiles=files)


def _check_numbers(args: argparse.Namespace) -> None:
    checks = [
        (1 <= args.users <= MAX_USERS, f"--users must be 1..{MAX_USERS}"),
        (args.spawn_rate > 0, "--spawn-rate must be above 0"),
        (0 < args.duration <= MAX_RUN_S, f"--duration must be above 0 and at most {MAX_RUN_S:g} s"),
        (0 <= args.workers <= MAX_WORKERS, f"--workers must be 0..{MAX_WORKERS}"),
        (args.arrival_rate >= 0, "--arrival-rate must be 0 (closed loop) or above"),
        (args.think_time >= 0, "--think-time must be 0 or above"),
        (args.task_timeout > 0, "--task-timeout must be above 0"),
        (0 <= args.drain <= 3600, "--drain must be 0..3600 s"),
        (args.trace_checks is None or args.trace_checks >= 0, "--trace-checks must be 0 or above"),
    ]
    for ok, message in checks:
        if not ok:
            raise LoadtestError(message)
    if args.host is not None and not args.host.startswith(("http://", "https://")):
        raise LoadtestError(f"--host must be an http(s) URL, not {args.host!r}")


# --------------------------------------------------------------------------------------------------
# The system under test
# --------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def local_system(plan: Plan, config: str | None) -> Iterator[tuple[str, Any, str]]:
    """The system on loopback for the run: ``(base URL, settings, API key)``; stopped on exit. The key
    is an admin key made for the run in the system's own (new) store."""
    from cluster.runtime import LocalStack
    from officeray.config import load_settings

    system = (plan.out / "system").resolve()
    system.mkdir(parents=True, exist_ok=True)
    defaults = {} if config else {"workspace_root": str(REPO_ROOT)}  # the task mix's folders
    settings = load_settings(
        config or DEFAULT_STACK_CONFIG,
        **{
            **defaults,
            "serve.host": "127.0.0.1",
            "serve.port": _free_port(),
            "store.url": f"sqlite:///{system}/officeray.db",
            "telemetry.trace_file": str(system / "traces.jsonl"),
        },
    )
    api_key = create_admin_key(settings.store.url)
    with LocalStack(settings, http=True) as stack:
        url = f"http://127.0.0.1:{stack.settings.serve.port}"
        _wait_healthy(url, "/healthz", READY_WAIT_S)
        yield url, stack.settings, api_key


def create_admin_key(store_url: str) -> str:
    """A new admin key (tenant :data:`LOADTEST_KEY_TENANT`) stored in ``store_url``: the key itself."""
    import asyncio

    from officeray.auth import Role, mint_key
    from officeray.store import SqlStore

    key, record = mint_key(LOADTEST_KEY_TENANT, Role.ADMIN, name="officeray loadtest")
    store = SqlStore(store_url)
    try:
        asyncio.run(store.create_api_key(record))
    finally:
        store.close()
    return key


def remote_api_key(config: str | None, host: str) -> str | None:
    """The key a run against ``host`` sends: ``$OFFICERAY_API_KEY``, else, for a loopback ``host``
    only, the admin key file of the config (:func:`cluster.keyfile.local_api_key`)."""
    from cluster.keyfile import local_api_key
    from officeray.config import load_settings

    return local_api_key(load_settings(config), None, address=host)


READY_WAIT_S = 120.0
"""How long the local system's HTTP API may take to answer after the app is deployed."""


def _wait_healthy(url: str, path: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url + path, timeout=5.0)
            if response.status_code < 500:
                return
            last = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last = str(exc) or type(exc).__name__
        time.sleep(0.5)
    raise LoadtestError(f"{url}{path} did not answer within {timeout_s:g} s ({last})")


def stand_in(settings: Any) -> bool:
    """Whether the local system's planner and reviewer are the embedded tier (a model stand-in)."""
    chains = (settings.models.planner, settings.models.reviewer)
    return all(chain[0].tier == "embedded" for chain in chains)


# --------------------------------------------------------------------------------------------------
# locust processes
# --------------------------------------------------------------------------------------------------


def locust_commands(plan: Plan, host: str, master_port: int) -> list[list[str]]:
    """The locust command lines: ``[standalone]`` or ``[master, worker, ...]``."""
    args = plan.args
    files = ",".join(str(p) for p in plan.locustfiles)
    user_class = "ModelUser" if args.scenario == "model" else "TaskUser"
    common = [sys.executable, "-m", "locust", "-f", files, "--loglevel", "WARNING"]
    options = [
        "--headless",
        "--host",
        host,
        "--out-dir",
        str(plan.out.resolve()),
        "--task-mix",
        str(Path(args.task_mix).resolve()),
        "--follow",
        args.follow,
        "--task-timeout",
        str(args.task_timeout),
        "--think-time",
        str(args.think_time),
        "--arrival-rate",
        str(args.arrival_rate),
        "--stop-timeout",
        f"{round(args.drain)}s",
        "--csv",
        str(plan.out.resolve() / "locust"),
        "--only-summary",
        "--exit-code-on-error",
        "0",  # failures are judged by the SLOs, from the samples
    ]
    if args.model_prompts:
        options += ["--model-prompts", str(Path(args.model_prompts).resolve())]
    if plan.shaped:
        options += ["--shape-file", str(plan.out.resolve() / "shape.json")]
    else:
        options += [
            "-u",
            str(args.users),
            "-r",
            str(args.spawn_rate),
            "-t",
            f"{max(1, round(args.duration))}s",
        ]
    if args.workers == 0:
        return [common + options + [user_class]]
    master = (
        common
        + options
        + [
            "--master",
            "--master-bind-host",
            "127.0.0.1",
            "--master-bind-port",
            str(master_port),
            "--expect-workers",
            str(args.workers),
            user_class,
        ]
    )
    # locust hands the master's options to its workers at spawn; the custom ones are also given
    # here so a worker's own start-up (before the first spawn) sees the same values
    custom = options[options.index("--task-mix") : options.index("--stop-timeout")]
    worker = (
        common
        + custom
        + [
            "--worker",
            "--master-host",
            "127.0.0.1",
            "--master-port",
            str(master_port),
            user_class,
        ]
    )
    if args.model_prompts:
        worker += ["--model-prompts", str(Path(args.model_prompts).resolve())]
    return [master] + [list(worker) for _ in range(args.workers)]


def _environment(plan: Plan, stand_in_model: bool, api_key: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop(API_KEY_ENV, None)
    if api_key and plan.args.scenario == "tasks":  # never sent to a model endpoint of someone else
        env[API_KEY_ENV] = api_key
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    env["OFFICERAY_LOADTEST_WORKERS"] = str(max(1, plan.args.workers))
    env["OFFICERAY_LOADTEST_STAND_IN"] = "1" if stand_in_model else "0"
    return env


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for proc in processes:
        if proc.poll() is None:
            with suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for proc in processes:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_locust(
    plan: Plan, host: str, stand_in_model: bool, progress: Progress, api_key: str | None = None
) -> int:
    """Run the locust processes to their end (or the hard deadline); locust's exit code. The task
    users send ``api_key`` (``Authorization: Bearer``)."""
    if plan.shaped:
        stages = [stage.model_dump() for stage in plan.stages]
        (plan.out / "shape.json").write_text(json.dumps(stages), encoding="utf-8")
    commands = locust_commands(plan, host, _free_port())
    env = _environment(plan, stand_in_model, api_key)
    deadline = time.monotonic() + plan.length_s + plan.args.drain + START_GRACE_S
    with open(plan.out / "locust.log", "ab") as log:
        processes = [
            subprocess.Popen(
                cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            for cmd in commands
        ]
        try:
            master = processes[0]
            while master.poll() is None:
                if time.monotonic() > deadline:
                    progress.note("the run passed its hard deadline; stopping locust")
                    return 1  # the finally below stops it
                progress.update()
                time.sleep(0.25)
            progress.update(final=True)
            return int(master.returncode)
        finally:
            _stop(processes)


# --------------------------------------------------------------------------------------------------
# Live progress
# --------------------------------------------------------------------------------------------------


class _Tail:
    """New complete lines of a growing JSON-lines file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        out = []
        for line in lines:
            with suppress(ValueError):
                out.append(json.loads(line))
        return out


def _pct(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) as report.json computes it (:func:`officeray.stats.percentile`)."""
    return percentile(values, q) if values else None


class Progress:
    """Live figures from the run's samples and timeline, shown every second on a terminal."""

    def __init__(self, out: Path, *, quiet: bool) -> None:
        self.samples = _Tail(out / SAMPLES_FILE)
        self.timeline = _Tail(out / TIMELINE_FILE)
        self.quiet = quiet
        self.tty = sys.stdout.isatty()
        self.completion_ms: list[float] = []
        self.submit_ms: list[float] = []
        self.tick: dict[str, Any] = {}
        self.started = time.monotonic()
        self._shown = 0.0

    def update(self, *, final: bool = False) -> None:
        for sample in self.samples.read():
            if sample.get("type") == COMPLETION_TYPE:
                self.completion_ms.append(float(sample.get("ms", 0.0)))
            elif sample.get("type") == SUBMIT_TYPE and sample.get("name") == SUBMIT_NAME:
                self.submit_ms.append(float(sample.get("ms", 0.0)))
        ticks = self.timeline.read()
        if ticks:
            self.tick = ticks[-1]
        every = PROGRESS_TTY_S if self.tty else PROGRESS_PLAIN_S
        now = time.monotonic()
        if self.quiet or (not final and now - self._shown < every):
            return
        self._shown = now
        end = "\n" if (final or not self.tty) else "\r"
        print(self.line(), end=end, flush=True)

    def line(self) -> str:
        t = self.tick

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.0f}"

        return (
            f"[{time.monotonic() - self.started:5.0f}s] stage {t.get('stage', '-')}: "
            f"users {t.get('users', 0)}, "
            f"in flight {t.get('in_flight', 0)}, completed {t.get('completed', 0)}, "
            f"failures {t.get('failures', 0)}; completion p50/p95 "
            f"{ms(_pct(self.completion_ms, 50))}/{ms(_pct(self.completion_ms, 95))} ms, "
            f"submit p50/p95 {ms(_pct(self.submit_ms, 50))}/{ms(_pct(self.submit_ms, 95))} ms   "
        )

    def note(self, message: str) -> None:
        print(f"\nofficeray loadtest: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# The whole command
# --------------------------------------------------------------------------------------------------


def run(plan: Plan, config: str | None) -> int:
    """Start (or reach) the system, run the load, check traces, write the report; the exit code."""
    from loadtests.report import build_report
    from loadtests.traces import check_traces

    plan.out.mkdir(parents=True, exist_ok=True)
    if plan.args.host is None:
        with local_system(plan, config) as (url, settings, api_key):
            print(f"officeray loadtest: system up at {url} (store and traces in {plan.out / 'system'})")
            progress = Progress(plan.out, quiet=plan.args.quiet)
            code = run_locust(plan, url, stand_in(settings), progress, api_key)
            trace_file = Path(settings.telemetry.trace_file)
            traces = check_traces(
                plan.out, url, trace_file=trace_file, limit=plan.args.trace_checks, api_key=api_key
            )
    else:
        host = plan.args.host.rstrip("/")
        api_key = None
        if plan.args.scenario == "tasks":
            api_key = remote_api_key(config, host)
            if api_key is None:
                raise LoadtestError(
                    f"no API key for {host}: set {API_KEY_ENV} (a key of `officeray keys create`), or run "
                    "on the server's machine, where the admin key file is found"
                )
        _wait_healthy(host, "/healthz" if plan.args.scenario == "tasks" else "/v1/models", HEALTH_TIMEOUT_S)
        code = run_locust(plan, host, False, Progress(plan.out, quiet=plan.args.quiet), api_key)
        traces = None
        if plan.args.scenario == "tasks":
            limit = DEFAULT_TRACE_CHECKS_REMOTE if plan.args.trace_checks is None else plan.args.trace_checks
            traces = check_traces(plan.out, host, trace_file=None, limit=limit, api_key=api_key)
    run_file = plan.out / RUN_FILE
    if not run_file.exists():
        print(
            f"officeray loadtest: locust wrote no {RUN_FILE}; see {plan.out / 'locust.log'}", file=sys.stderr
        )
        return 1
    _amend_run_file(run_file, plan, traces)
    report, results = build_report(plan.out, plan.slos)
    _print_summary(report, results, plan.out)
    if code != 0:
        print(
            f"officeray loadtest: locust exited with {code}; see {plan.out / 'locust.log'}", file=sys.stderr
        )
        return 1
    return 0 if all(r.ok for r in results) else 1


def _amend_run_file(run_file: Path, plan: Plan, traces: dict[str, Any] | None) -> None:
    info = json.loads(run_file.read_text(encoding="utf-8"))
    if traces is not None:
        info["traces"] = traces
        if plan.args.host is not None and traces.get("tiers"):
            info["stand_in_model"] = set(traces["tiers"]) == {"embedded"}
    info["settings"].update(
        {
            "host": plan.args.host or "local system",
            "shape": plan.args.shape,
            "duration": plan.args.duration,
            "drain": plan.args.drain,
            "scenario": plan.args.scenario,
        }
    )
    run_file.write_text(json.dumps(info, indent=2), encoding="utf-8")


def _fmt(aggregate: dict[str, Any] | None) -> str:
    if not aggregate:
        return "no samples"
    return (
        f"n={aggregate['count']} failures={aggregate['failures']} p50={aggregate['p50_ms']:.0f} "
        f"p95={aggregate['p95_ms']:.0f} p99={aggregate['p99_ms']:.0f} max={aggregate['max_ms']:.0f} ms, "
        f"{aggregate['throughput_rps']:.1f}/s"
    )


def _print_summary(report: dict[str, Any], results: list[Any], out: Path) -> None:
    print(f"submit:     {_fmt(report.get('submit'))}")
    print(f"completion: {_fmt(report.get('completion'))}")
    traces = report.get("traces") or {}
    if traces:
        print(
            f"traces:     {traces.get('complete', 0)}/{traces.get('checked', 0)} complete "
            f"({traces.get('source')})"
        )
    for result in results:
        print(f"SLO {'ok  ' if result.ok else 'FAIL'} {result.expr}: {result.message}")
    print(f"report:     {out / 'report.html'} ({out / 'report.json'})")


def run_from_args(args: argparse.Namespace, config: str | None = None) -> int:
    """``officeray loadtest``; 2 with a message for bad input."""
    try:
        plan = check(args)
    except LoadtestError as exc:
        print(f"officeray loadtest: error: {exc}", file=sys.stderr)
        return 2
    try:
        return run(plan, config)
    except LoadtestError as exc:
        print(f"officeray loadtest: error: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.loadtest", description=__doc__.split("\n")[0])
    add_arguments(parser)
    parser.add_argument(
        "--config", default=None, help="config of the local system (default: loadtests/stack.yaml)"
    )
    args = parser.parse_args(argv)
    return run_from_args(args, args.config)


if __name__ == "__main__":
    sys.exit(main())
