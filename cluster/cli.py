"""The ``officeray`` command line (the console script ``officeray = "cluster.cli:main"``).

* ``officeray run "TASK" [--plan FILE] [--approve] [--json] [--config FILE]``: one task on an embedded
  local Ray cluster; exit 0 when it completed, 1 when it failed, 2 for bad usage. ``--plan`` runs a
  ready plan (a JSON file in the published plan schema) instead of asking the planner first; an
  invalid one is refused with the validator's reasons (exit 2) before anything starts. Folders the
  task names are the invoking user's: relative to the current directory, or absolute
  (``workspace_confined`` off). Nobody is there to approve a step the gatekeeper holds for approval:
  ``--approve`` approves each (audited as decided by ``officeray run --approve``), else it is
  rejected at once with a message naming ``--approve``.
* ``officeray serve [--host 127.0.0.1] [--port 8000] [--config FILE]``: Ray + the Serve app with the
  HTTP API; blocks until interrupted.
* ``officeray examples [FILE] [--approve] [--config FILE]``: every task of ``examples/tasks.jsonl``
  end to end, with a per-task summary (``--approve`` as for ``run``).
* ``officeray tools [--json] [--config FILE]``: every registered tool (the built-ins and the config's
  ``plugins:``) with its runtime, risk, description, outputs and input JSON schema.
* ``officeray tool NAME --input JSON [--timeout S] [--json]``: one tool call as a plan step would
  run it; exit 0 succeeded, 1 failed, 2 bad usage. Folders as for ``run``.
* ``officeray dlq list|show|retry``: the dead-letter queue of a running server (:mod:`cluster.cli_dlq`).
* ``officeray keys create|list|revoke``: API keys in the configured store (:mod:`cluster.cli_keys`).
* ``officeray submit|get|watch|list|cancel|approve|feedback``, and ``officeray run --address URL``:
  a running server over its task API, no Ray started here (:mod:`cluster.cli_client`).
* ``officeray trace TASK_ID [--address URL]``: a task's timeline in the terminal, one row per
  component (:mod:`cluster.cli_trace`).
* ``officeray memory search|delete|rebuild|stats``: the memory of a running server
  (:mod:`cluster.cli_memory`).
* ``officeray --version``: the installed package's version.

Commands of outer packages are found through the ``officeray.commands`` entry-point group
(:data:`COMMANDS_GROUP`), so this module imports none of them: ``loadtests`` adds ``officeray
loadtest`` and ``officeray bench sandbox|overhead`` (:mod:`loadtests.commands`).

Ray, Serve and the sandbox are imported only inside the commands: ``--help`` and usage errors
answer at once. Exit codes and the errors behind them: :mod:`cluster.cli_output`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from cluster.cli_client import add_client_parsers, add_server_options, print_run_result, run_remote
from cluster.cli_dlq import add_dlq_parser, cmd_dlq
from cluster.cli_keys import add_keys_parser, cmd_keys
from cluster.cli_memory import add_memory_parser, cmd_memory
from cluster.cli_output import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    ServerError,
    UsageError,
    print_summary,
    record_json,
)
from cluster.cli_review import add_review_parser, cmd_review
from cluster.cli_trace import add_trace_parser, cmd_trace
from officeray.config import Settings, load_settings
from officeray.contracts import TaskRequest, TaskStatus
from officeray.errors import ConfigError

if TYPE_CHECKING:
    from officeray.tools.catalog import ToolCatalog

DEFAULT_EXAMPLES = Path("examples/tasks.jsonl")
SERVE_POLL_S = 1.0
"""How often ``officeray serve`` checks whether it was asked to stop (SIGINT or SIGTERM)."""

COMMANDS_GROUP = "officeray.commands"
"""Entry-point group of the commands other packages add. Each entry is a function ``add(subparsers)``
that adds its subparser(s) with ``subparsers.add_parser`` and sets, with ``set_defaults``, the
:data:`RUN_COMMAND` default of each to a function ``run(args) -> exit code``. Such a command loads
its own settings; :func:`main` reports its usage, configuration and environment errors as it does
for the built-in commands."""

RUN_COMMAND = "run_command"
"""The ``argparse`` default an added command sets to its function (see :data:`COMMANDS_GROUP`)."""

_ENVIRONMENT_ERRORS = frozenset({"DockerUnavailable", "ImageBuildError"})
"""Errors of the machine's set-up (raised by tools_sandbox.image) reported as a message, not a traceback."""

Handler = Callable[[argparse.Namespace, Settings], int]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="officeray", description="Run agentic tasks on Ray.")
    parser.add_argument("--version", action="version", version=f"officeray {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one task on a local Ray cluster and print the result")
    run.add_argument("task", help="the task in plain words")
    run.add_argument(
        "--plan",
        metavar="FILE",
        help="a ready plan (JSON, the published plan schema) to run instead of asking the planner",
    )
    run.add_argument("--json", action="store_true", help="print the final task record as one JSON object")
    _add_approve_option(run)
    # --address: submit to that server and wait, instead of starting a local Ray instance
    add_server_options(run)

    srv = sub.add_parser("serve", help="start Ray and the HTTP API, and block")
    srv.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    srv.add_argument("--port", type=int, default=None, help="port to listen on (default 8000)")
    srv.add_argument("--config", metavar="FILE", help="YAML config file (default: $OFFICERAY_CONFIG)")

    ex = sub.add_parser("examples", help="run the example tasks end to end and print a summary")
    ex.add_argument("file", nargs="?", default=str(DEFAULT_EXAMPLES), help="JSONL file of tasks")
    ex.add_argument("--json", action="store_true", help="print one task record per line")
    _add_approve_option(ex)
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

    add_dlq_parser(sub)
    add_keys_parser(sub)
    add_trace_parser(sub)
    add_review_parser(sub)
    add_memory_parser(sub)
    _CLIENT_HANDLERS.update(add_client_parsers(sub))
    _add_extension_commands(sub)
    return parser


_CLIENT_HANDLERS: dict[str, Handler] = {}


def _add_approve_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--approve",
        action="store_true",
        help="approve every step that needs approval (high risk: python_exec, POST, deletes), audited as "
        "decided by 'officeray run --approve'; without it such a step is rejected at once, as nobody "
        "is there to approve it",
    )


def unattended_approvals(args: argparse.Namespace) -> dict[str, Any]:
    """The settings override of a local run (``run``, ``examples``): nobody is there to approve, so
    steps that need approval are approved (``--approve``) or rejected at once."""
    if getattr(args, "address", None):
        if args.approve:
            raise UsageError("--approve applies to a local run; on a server, use `officeray approve`")
        return {}
    return {"workflow.approvals.unattended": "approve" if args.approve else "reject"}


"""The commands of :mod:`cluster.cli_client`, by name (filled by :func:`_parser`)."""


def _version() -> str:
    try:
        return importlib.metadata.version("officeray")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def _add_extension_commands(sub: Any) -> None:
    """The commands registered in the :data:`COMMANDS_GROUP` entry-point group, in their order.

    One that cannot be loaded (its package is broken, or it takes a name already used) is left out
    with a warning on stderr: the other commands keep working.
    """
    for entry in importlib.metadata.entry_points(group=COMMANDS_GROUP):
        try:
            entry.load()(sub)
        except Exception as exc:  # whatever an outer package raises, the built-in commands still work
            print(
                f"officeray: warning: command {entry.name!r} ({entry.value}) could not be added: "
                f"{type(exc).__name__}: {exc}",
                file=sys.stderr,
            )


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


def invoking_user_workspace(cwd: Path | None = None) -> dict[str, Any]:
    """The settings ``officeray run`` and ``officeray tool`` override: the task names the invoking
    user's own folders, so a relative folder resolves against their current directory and an
    absolute one is taken as is (``workspace_confined`` off). ``officeray serve``, ``examples`` and
    batch jobs keep the configured, confined workspace."""
    return {"workspace_root": str((cwd or Path.cwd()).resolve()), "workspace_confined": False}


def _cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    if args.address:  # a running server: no Ray here
        return run_remote(args, settings)
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
    return print_run_result(record, args.json, time.monotonic() - started)


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
    from officeray.tools.catalog import build_catalog
    from officeray.validate import validate_plan

    catalog = build_catalog(settings)  # imports the plugins: their tools join the catalog
    task_id = request.task_id or "new-task"  # the plan runs under the task's id, whatever it says
    tools = catalog.input_models()
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


def tool_listing(catalog: ToolCatalog) -> list[dict[str, Any]]:
    """Every tool of ``catalog`` as ``officeray tools --json`` prints it, in registration order."""
    return [
        {
            "name": spec.name,
            "description": spec.description,
            "runtime": spec.runtime.value,
            "risk": spec.risk.value,
            "outputs": list(spec.outputs),
            "input_schema": spec.input_model.model_json_schema(),
        }
        for spec in catalog.values()
    ]


def _cmd_tools(args: argparse.Namespace, settings: Settings) -> int:
    from officeray.gatekeeper import STEP_RISK_NOTES
    from officeray.tools.catalog import build_catalog

    catalog = build_catalog(settings)  # the plugins are imported here (no Ray)
    tools = tool_listing(catalog)
    if args.json:
        print(json.dumps({"tools": tools}))
        return EXIT_OK
    for index, tool in enumerate(tools):
        ref = catalog[tool["name"]].plugin
        origin = f", plugin {ref.module}:{ref.function}" if ref is not None else ""
        if index:
            print()
        print(f"{tool['name']}  ({tool['runtime']}, risk {tool['risk']}{origin})")
        print(f"  {tool['description']}")
        if tool["name"] in STEP_RISK_NOTES and ref is None:
            print(f"  risk per step: {STEP_RISK_NOTES[tool['name']]}")
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


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from cluster.keyfile import prepare_first_key

    # before anything starts: the first admin key on loopback, a refusal elsewhere while no key exists
    notice = prepare_first_key(settings)
    if notice is not None:
        print(notice, flush=True)
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


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command: an added one (:data:`RUN_COMMAND`) or a built-in with its settings."""
    added: Callable[[argparse.Namespace], int] | None = getattr(args, RUN_COMMAND, None)
    if added is not None:
        return added(args)
    overrides: dict[str, Any] = {}
    if args.command == "serve":
        overrides = {"serve.host": args.host, "serve.port": args.port}
    elif args.command in ("run", "tool"):
        overrides = invoking_user_workspace()
    if args.command in ("run", "examples"):
        overrides.update(unattended_approvals(args))
    settings = load_settings(args.config, **overrides)
    handlers: dict[str, Handler] = {
        "run": _cmd_run,
        "serve": _cmd_serve,
        "examples": _cmd_examples,
        "tools": _cmd_tools,
        "tool": _cmd_tool,
        "dlq": cmd_dlq,
        "keys": cmd_keys,
        "trace": cmd_trace,
        "review": cmd_review,
        "memory": cmd_memory,
        **_CLIENT_HANDLERS,
    }
    return handlers[args.command](args, settings)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
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
