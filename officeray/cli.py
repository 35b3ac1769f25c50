"""The ``officeray`` command line.

* ``officeray run "TASK" [--plan FILE] [--json] [--config FILE]``: one task on an embedded local Ray
  cluster; exit 0 when it completed, 1 when it failed, 2 for bad usage. ``--plan`` runs a ready plan
  (a JSON file in the published plan schema) instead of asking the planner first; an invalid one is
  refused with the validator's reasons (exit 2) before anything starts. Folders the task names are the
  invoking user's: relative to the current directory, or absolute (``workspace_confined`` off).
* ``officeray serve [--host 127.0.0.1] [--port 8000] [--config FILE]``: Ray + the Serve app with the
  HTTP API; blocks until interrupted.
* ``officeray examples [FILE] [--config FILE]``: every task of ``examples/tasks.jsonl`` end to end,
  with a per-task summary.
* ``officeray tools [--json]``: every registered tool with its input schema.
* ``officeray tool NAME --input JSON [--timeout S] [--json]``: one tool call as a plan step would
  run it; exit 0 succeeded, 1 failed, 2 bad usage. Folders as for ``run``.
* ``officeray bench sandbox [--json [FILE]]``: warm sandbox vs ``docker exec`` vs ``docker run``.
* ``officeray bench overhead [--levels 1,10,100,500,1000] [--json [FILE]]``: task latency against
  the ideal critical path, throughput, CPU and memory per task (:mod:`loadtests.bench_overhead`).
* ``officeray loadtest --users N --spawn-rate R --duration S --out DIR [--host URL] [--workers N]
  [--shape KIND|FILE] [--arrival-rate R] [--slo EXPR]...``: a bounded locust run with a report
  (see :mod:`loadtests.loadtest`); exit 0 when the SLOs hold, 1 when one is violated, 2 bad input.
* ``officeray tools [--json] [--config FILE]``: every registered tool (the built-ins and the config's
  ``plugins:``) with its runtime, risk, description, outputs and input JSON schema.
* ``officeray dlq list [--tenant T] [--limit N] [--json]``, ``officeray dlq show TASK_ID [--json]``,
  ``officeray dlq retry TASK_ID [--json]``: the dead-letter queue of a running server (``officeray
  serve``), over HTTP at ``--url`` (default ``http://{serve.host}:{serve.port}`` of the config);
  exit 0 on success, 2 when the server cannot be reached or the task is not in the queue, 1 when
  the server answers another error.

Ray, Serve and the sandbox are imported only inside the commands: ``--help`` and usage errors
answer at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import ValidationError

from officeray.config import Settings, load_settings
from officeray.contracts import TaskRecord, TaskRequest, TaskStatus
from officeray.errors import ConfigError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

DEFAULT_EXAMPLES = Path("examples/tasks.jsonl")
DLQ_HTTP_TIMEOUT_S = 30.0
"""How long ``officeray dlq`` waits for the server's answer."""
RESULT_PREVIEW_CHARS = 90
SUMMARY_MIN_WIDTH = 140
SERVE_POLL_S = 1.0
"""How often ``officeray serve`` checks whether it was asked to stop (SIGINT or SIGTERM)."""


_ENVIRONMENT_ERRORS = frozenset({"DockerUnavailable", "ImageBuildError"})
"""Errors of the machine's set-up (raised by tools_sandbox.image) reported as a message, not a traceback."""


class UsageError(Exception):
    """Bad command-line input: reported on stderr with exit code 2."""


class ServerError(Exception):
    """The server answered an error (other than not found): reported on stderr with exit code 1."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="officeray", description="Run agentic tasks on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one task on a local Ray cluster and print the result")
    run.add_argument("task", help="the task in plain words")
    run.add_argument(
        "--plan",
        metavar="FILE",
        help="a ready plan (JSON, the published plan schema) to run instead of asking the planner",
    )
    run.add_argument("--json", action="store_true", help="print the final task record as one JSON object")
    run.add_argument("--config", metavar="FILE", help="YAML config file (default: $OFFICERAY_CONFIG)")

    srv = sub.add_parser("serve", help="start Ray and the HTTP API, and block")
    srv.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    srv.add_argument("--port", type=int, default=None, help="port to listen on (default 8000)")
    srv.add_argument("--config", metavar="FILE", help="YAML config file (default: $OFFICERAY_CONFIG)")

    ex = sub.add_parser("examples", help="run the example tasks end to end and print a summary")
    ex.add_argument("file", nargs="?", default=str(DEFAULT_EXAMPLES), help="JSONL file of tasks")
    ex.add_argument("--json", action="store_true", help="print one task record per line")
    ex.add_argument("--config", metavar="FILE", help="YAML config file (default: $OFFICERAY_CONFIG)")

    tl = sub.add_parser(
        "tools", help="list every registered tool (built-ins and plugins) with its input schema"
    )
    tl.add_argument("--json", action="store_true", help='print one JSON object: {"tools": [...]}')
    tl.add_argument("--config", metavar="FILE", help="YAML config file (default: $OFFICERAY_CONFIG)")

    one = sub.add_parser("tool", help="run one tool call exactly as a plan step would, and print the result")
    one.add_argument("name", help="the tool's name (see `officeray tools`)")
    one.add_argument("--input", required=True, metavar="JSON", help="the tool's inputs as a JSON object")
    one.add_argument("--timeout", type=float, default=None, metavar="S", help="step timeout in seconds")
    one.add_argument("--json", action="store_true", help="print the step result as one JSON object")
    one.add_argument("--config", metavar="FILE", help="YAML config file (default: $OFFICERAY_CONFIG)")

    from loadtests.bench_format import add_json_argument

    bench = sub.add_parser("bench", help="benchmarks that print figures")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    bsb = bench_sub.add_parser(
        "sandbox", help="a trivial step through the warm sandbox, docker exec and docker run, with ratios"
    )
    bsb.add_argument("--calls", type=int, default=200, help="samples per warm measurement")
    bsb.add_argument("--run-calls", type=int, default=10, help="docker run samples")
    add_json_argument(bsb)
    bsb.add_argument("--config", metavar="FILE", help="YAML config file (default: $OFFICERAY_CONFIG)")
    from loadtests.bench_overhead import add_arguments as add_overhead_arguments

    bov = bench_sub.add_parser(
        "overhead",
        help="task latency against the ideal critical path at 1..1000 concurrent, and CPU per task",
    )
    add_overhead_arguments(bov)
    _add_loadtest_parser(sub)
    _add_dlq_parser(sub)
    return parser


def _add_loadtest_parser(sub: Any) -> None:
    from loadtests.loadtest import add_arguments

    lt = sub.add_parser(
        "loadtest",
        help="a bounded locust load test (starts the system unless --host) with report.json/html and plots",
    )
    add_arguments(lt)
    lt.add_argument(
        "--config", metavar="FILE", help="config of the system it starts (default: loadtests/stack.yaml)"
    )


def _add_dlq_parser(sub: Any) -> None:
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument(
        "--url",
        default=None,
        help="the officeray server (default: http://{serve.host}:{serve.port} of the config)",
    )
    server.add_argument("--config", metavar="FILE", help="YAML config file (default: $OFFICERAY_CONFIG)")
    dlq = sub.add_parser("dlq", help="the dead-letter queue of a running server: list, show, retry")
    dlq_sub = dlq.add_subparsers(dest="dlq", required=True)
    dl = dlq_sub.add_parser("list", parents=[server], help="the dead-lettered tasks, newest first")
    dl.add_argument("--tenant", default=None, help="only this tenant's tasks")
    dl.add_argument("--limit", type=int, default=100, help="at most this many entries (default 100)")
    dl.add_argument("--json", action="store_true", help='print one JSON object: {"entries": [...]}')
    ds = dlq_sub.add_parser("show", parents=[server], help="one dead-lettered task with its failed steps")
    ds.add_argument("task_id", help="the task's id (see `officeray dlq list`)")
    ds.add_argument("--json", action="store_true", help="print the entry as one JSON object")
    dr = dlq_sub.add_parser(
        "retry", parents=[server], help="run a dead-lettered task again from its last good checkpoint"
    )
    dr.add_argument("task_id", help="the task's id (see `officeray dlq list`)")
    dr.add_argument("--json", action="store_true", help='print {"task_id", "status"} as one JSON object')


def read_task_lines(path: Path) -> list[TaskRequest]:
    """Tasks from a JSONL file: one ``{"description": ...}`` object per line; blank lines ignored."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    requests = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            requests.append(TaskRequest.model_validate_json(line))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "line"
            raise UsageError(f"{path}:{number}: {where}: {first['msg']}") from None
    if not requests:
        raise UsageError(f"{path} holds no tasks")
    return requests


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Keep stdout clean for the JSON answer while Ray and Serve start and log."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _preview(value: Any) -> str:
    if isinstance(value, dict) and isinstance(value.get("message"), str):
        value = value["message"]  # e.g. code_analyzer's "main → … → process_data (5 hops)"
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split())
    return text if len(text) <= RESULT_PREVIEW_CHARS else text[: RESULT_PREVIEW_CHARS - 1] + "…"


def record_json(record: TaskRecord) -> dict[str, Any]:
    """The record as printed by ``--json``: the documented fields first, then the rest."""
    data = record.public_view()
    steps = [
        {
            "step_id": s["step_id"],
            "action": s["action"],
            "status": s["status"],
            "attempts": s["attempts"],
            "output": s["output"],
            "error": s["error"],
        }
        for s in data["steps"]
    ]
    head = {
        "task_id": data["task_id"],
        "status": data["status"],
        "result": data["result"],
        "error": data["error"],
        "iterations": data["iterations"],
        "steps": steps,
        "trace_id": data["trace_id"],
    }
    return {**head, **{k: v for k, v in data.items() if k not in head and k != "steps"}}


def print_summary(records: Sequence[TaskRecord], elapsed_s: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"officeray: {len(records)} task(s) in {elapsed_s:.1f}s")
    for column in ("task", "status", "iter", "steps", "secs", "result / error"):
        table.add_column(column, overflow="fold")
    for record in records:
        secs = ""
        if record.finished_at is not None:
            secs = f"{(record.finished_at - record.created_at).total_seconds():.2f}"
        ok = record.status == TaskStatus.COMPLETED
        steps = ", ".join(f"{s.step_id} {s.action} {s.status.value}" for s in record.steps)
        table.add_row(
            _preview(record.description.splitlines()[0]),
            f"[green]{record.status.value}[/]" if ok else f"[red]{record.status.value}[/]",
            str(record.iterations),
            steps,
            secs,
            _preview(record.result if ok else record.error),
        )
    Console(width=max(SUMMARY_MIN_WIDTH, shutil.get_terminal_size().columns)).print(table)


def invoking_user_workspace(cwd: Path | None = None) -> dict[str, Any]:
    """The settings ``officeray run`` and ``officeray tool`` override: the task names the invoking
    user's own folders, so a relative folder resolves against their current directory and an
    absolute one is taken as is (``workspace_confined`` off). ``officeray serve``, ``examples`` and
    batch jobs keep the configured, confined workspace."""
    return {"workspace_root": str((cwd or Path.cwd()).resolve()), "workspace_confined": False}


def _cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from cluster.runtime import LocalStack

    plan = read_plan_file(Path(args.plan)) if args.plan else None
    try:
        request = TaskRequest(description=args.task, plan=plan)
    except ValidationError as exc:
        raise UsageError(f"invalid task: {exc.errors()[0]['msg']}") from None
    if plan is not None:
        check_ready_plan(request, settings, args.plan)
    started = time.monotonic()
    with _stdout_to_stderr(), LocalStack(settings) as stack:
        (record,) = stack.run([request])
    if args.json:
        print(json.dumps(record_json(record), default=str))
    else:
        print_summary([record], time.monotonic() - started)
        if record.status == TaskStatus.COMPLETED:
            print(
                json.dumps(record.result, indent=2, default=str)
                if not isinstance(record.result, str)
                else record.result
            )
    return EXIT_OK if record.status == TaskStatus.COMPLETED else EXIT_FAILED


def read_plan_file(path: Path) -> dict[str, Any]:
    """The JSON object in ``path`` (a ready plan); UsageError when it cannot be read or is not one."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a plan is a JSON object, not {type(data).__name__}")
    return data


def check_ready_plan(request: TaskRequest, settings: Settings, source: str) -> None:
    """UsageError listing the validator's reasons when ``request``'s ready plan is refused (checked
    as the workflow will check it, against the registered tools and the config's plugins)."""
    from cluster.prepare import check_tools
    from officeray.validate import validate_plan
    from tools_sandbox.catalog import input_models

    check_tools(settings)  # imports the plugins: their tools are registered
    task_id = request.task_id or "new-task"  # the plan runs under the task's id, whatever it says
    tools = input_models()
    reasons = validate_plan(
        request.ready_plan(task_id) or {}, task_id=task_id, tools=tools, allowed_tools=request.allowed_tools
    )
    if reasons:
        raise UsageError(f"invalid plan in {source}:\n" + "\n".join(f"  - {reason}" for reason in reasons))


def _cmd_examples(args: argparse.Namespace, settings: Settings) -> int:
    from cluster.runtime import LocalStack

    requests = read_task_lines(Path(args.file))
    started = time.monotonic()
    with _stdout_to_stderr(), LocalStack(settings) as stack:
        records = stack.run(requests)
    if args.json:
        for record in records:
            print(json.dumps(record_json(record), default=str))
    else:
        print_summary(records, time.monotonic() - started)
    return EXIT_OK if all(r.status == TaskStatus.COMPLETED for r in records) else EXIT_FAILED


def tool_listing() -> list[dict[str, Any]]:
    """Every registered tool as ``officeray tools --json`` prints it, in registration order."""
    from tools_sandbox.catalog import all_tools

    return [
        {
            "name": spec.name,
            "description": spec.description,
            "runtime": spec.runtime.value,
            "risk": spec.risk.value,
            "outputs": list(spec.outputs),
            "input_schema": spec.input_model.model_json_schema(),
        }
        for spec in all_tools().values()
    ]


def _cmd_tools(args: argparse.Namespace, settings: Settings) -> int:
    from cluster.prepare import check_tools  # the plugins are imported here (no Ray)
    from tools_sandbox.catalog import get_tool
    from tools_sandbox.plugins import plugin_ref

    check_tools(settings)
    tools = tool_listing()
    if args.json:
        print(json.dumps({"tools": tools}))
        return EXIT_OK
    for index, tool in enumerate(tools):
        ref = plugin_ref(get_tool(tool["name"]))
        origin = f", plugin {ref.module}:{ref.function}" if ref is not None else ""
        if index:
            print()
        print(f"{tool['name']}  ({tool['runtime']}, risk {tool['risk']}{origin})")
        print(f"  {tool['description']}")
        print(f"  outputs: {', '.join(tool['outputs']) or '(none declared)'}")
        print(f"  input schema: {json.dumps(tool['input_schema'], sort_keys=True)}")
    return EXIT_OK


def _cmd_tool(args: argparse.Namespace, settings: Settings) -> int:
    from cluster.oneshot import ToolUsageError, parse_inputs, run_tool

    try:
        result = run_tool(settings, args.name, parse_inputs(args.input), args.timeout)
    except ToolUsageError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print(f"{result['tool']}: {result['status']} in {result['duration_ms']:.1f} ms")
        if result["error"]:
            print(f"error ({result['error']['type']}): {result['error']['message']}")
        if result["output"] is not None:
            print(json.dumps(result["output"], indent=2, default=str))
    return EXIT_OK if result["status"] == "succeeded" else EXIT_FAILED


def _cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    if args.bench == "overhead":
        from loadtests.bench_overhead import run_from_args

        return run_from_args(args)
    from loadtests.bench_format import BenchResult, emit
    from loadtests.bench_sandbox import run_bench

    emit(BenchResult.from_dict(run_bench(args.calls, run_calls=args.run_calls)), args.json)
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from cluster.runtime import LocalStack

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with LocalStack(settings, http=True):
            print(
                f"officeray is serving on http://{settings.serve.host}:{settings.serve.port} "
                "(POST /tasks, GET /tasks/{id}/status, POST /v1/tasks, GET /v1/tasks/{id}, GET /healthz); "
                "Ctrl-C to stop",
                flush=True,
            )
            while not stop.wait(SERVE_POLL_S):
                pass
            # a second Ctrl-C must not interrupt the shutdown half-way
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return EXIT_OK


def server_url(settings: Settings) -> str:
    """The URL of the server the config describes (a wildcard listen address means this machine)."""
    host = settings.serve.host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.serve.port}"


def _api_call(url: str, method: str, path: str, **kwargs: Any) -> Any:
    """One call to the server's HTTP API: the JSON answer; UsageError when the server cannot be
    reached or answers 404, ServerError for any other error."""
    import httpx

    try:
        with httpx.Client(base_url=url, timeout=DLQ_HTTP_TIMEOUT_S) as client:
            response = client.request(method, path, **kwargs)
    except httpx.InvalidURL as exc:
        raise UsageError(f"invalid --url {url!r}: {exc}") from None
    except httpx.HTTPError as exc:
        raise UsageError(
            f"cannot reach the officeray server at {url} ({type(exc).__name__}: {exc or 'no answer'}); "
            "is `officeray serve` running? (--url sets the address)"
        ) from None
    detail = _detail(response)
    if response.status_code == 404:
        raise UsageError(detail or f"{path}: not found")
    if response.is_error:
        raise ServerError(f"the server answered {response.status_code}: {detail or response.reason_phrase}")
    try:
        return response.json()
    except ValueError:
        raise ServerError(
            f"the server answered {response.status_code} with a body that is not JSON"
        ) from None


def _detail(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        return str(response.text).strip()[:500]
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return ""


def _print_dlq_table(entries: Sequence[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    if not entries:
        print("the dead-letter queue is empty")
        return
    table = Table(title=f"dead-letter queue: {len(entries)} task(s)")
    for column in ("task", "tenant", "reason", "created"):
        table.add_column(column, overflow="fold")
    for entry in entries:
        table.add_row(
            str(entry.get("task_id", "")),
            str(entry.get("tenant", "")),
            _preview(entry.get("reason") or ""),
            str(entry.get("created_at") or ""),
        )
    Console(width=max(SUMMARY_MIN_WIDTH, shutil.get_terminal_size().columns)).print(table)


def _print_dlq_entry(entry: dict[str, Any]) -> None:
    record = entry.get("record") or {}
    print(f"task:        {entry.get('task_id')}")
    print(f"tenant:      {entry.get('tenant')}")
    print(f"reason:      {entry.get('reason')}")
    print(f"created:     {entry.get('created_at')}")
    if entry.get("trace_id"):
        print(f"trace:       {entry['trace_id']}")
    description = str(entry.get("description") or record.get("description") or "")
    print(f"description: {_preview(description.splitlines()[0] if description else '')}")
    if record:
        print(f"status:      {record.get('status')} after {record.get('iterations', 0)} round(s)")
        if record.get("error"):
            print(f"error:       {record['error']}")
    step_errors = entry.get("step_errors") or []
    if step_errors:
        print("failed steps:")
        for step in step_errors:
            error = step.get("error") or {}
            print(
                f"  {step.get('step_id')} {step.get('action')} ({step.get('attempts')} attempt(s)): "
                f"{error.get('type')}: {_preview(error.get('message') or '')}"
            )
    print(f"retry with:  officeray dlq retry {entry.get('task_id')}")


def _cmd_dlq(args: argparse.Namespace, settings: Settings) -> int:
    url = (args.url or server_url(settings)).rstrip("/")
    if args.dlq == "list":
        if args.limit < 1:
            raise UsageError("--limit must be at least 1")
        params: dict[str, Any] = {"limit": args.limit}
        if args.tenant:
            params["tenant"] = args.tenant
        body = _api_call(url, "GET", "/v1/dlq", params=params)
        entries = body.get("entries", []) if isinstance(body, dict) else []
        if args.json:
            print(json.dumps({"entries": entries}, default=str))
        else:
            _print_dlq_table(entries)
        return EXIT_OK
    path = f"/v1/dlq/{quote(args.task_id, safe='')}"
    if args.dlq == "show":
        entry = _api_call(url, "GET", path)
        if args.json:
            print(json.dumps(entry, default=str))
        else:
            _print_dlq_entry(entry)
        return EXIT_OK
    answer = _api_call(url, "POST", f"{path}/retry")
    if args.json:
        print(json.dumps(answer, default=str))
    else:
        print(
            f"task {answer.get('task_id')} left the dead-letter queue and runs again ({answer.get('status')})"
        )
    return EXIT_OK


def _cmd_loadtest(args: argparse.Namespace, _settings: Settings) -> int:
    from loadtests.loadtest import run_from_args

    return run_from_args(args, args.config)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        overrides: dict[str, Any] = {}
        if args.command == "serve":
            overrides = {"serve.host": args.host, "serve.port": args.port}
        elif args.command in ("run", "tool"):
            overrides = invoking_user_workspace()
        settings = load_settings(None if args.command == "loadtest" else args.config, **overrides)
        handler = {
            "run": _cmd_run,
            "serve": _cmd_serve,
            "examples": _cmd_examples,
            "tools": _cmd_tools,
            "tool": _cmd_tool,
            "bench": _cmd_bench,
            "dlq": _cmd_dlq,
            "loadtest": _cmd_loadtest,
        }[args.command]
        return handler(args, settings)
    except (UsageError, ConfigError) as exc:
        print(f"officeray: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ServerError as exc:
        print(f"officeray: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except RuntimeError as exc:
        if type(exc).__name__ not in _ENVIRONMENT_ERRORS:
            raise
        print(f"officeray: error: {exc} (scripts/bootstrap.sh sets up Docker and the image)", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
