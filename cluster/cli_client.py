"""The ``officeray`` commands that talk to a running server over its task API (:mod:`cluster.client`).

* ``officeray submit "TASK" [--tool NAME ...] [--plan FILE] [--webhook-url URL] [--priority N]
  [--idempotency-key K] [--json]``: submit a task, print its id (the task runs on the server).
* ``officeray get ID [--json]``: the task's status, steps, result or error.
* ``officeray watch ID``: follow the task live (the server's event stream; a dropped connection is
  resumed after the last event seen); exit 0 when it completed, 1 when it failed or was cancelled.
* ``officeray list [--status S] [--limit N] [--cursor C] [--all] [--json]``: the tenant's tasks,
  newest first; ``--all`` follows the pages to the end (``--limit`` is then the page size).
* ``officeray cancel ID``, ``officeray approve ID STEP [--reject] [--reason R]``,
  ``officeray feedback ID --rating -1|0|1 [--comment C] [--label L ...]``.
* ``officeray run --address URL "TASK"`` submits to that server and waits (long polls), printing
  what a local ``officeray run`` prints, with the same exit codes (:func:`run_remote`).

Every one takes ``--address URL`` (default ``$OFFICERAY_ADDRESS``, else the config's
``serve.host:serve.port``, i.e. ``http://127.0.0.1:8000``) and ``--key KEY`` (default
``$OFFICERAY_API_KEY``, else, for a server on this machine only, the admin key ``officeray serve``
wrote to ``auth.admin_key_file``; a server elsewhere without a key given is a usage error).

Exit codes: 0 done; 1 the server cannot be reached (the message names the address), refused the key
(401), answered another error (its ``detail`` and ``code`` are printed), or the task failed; 2 bad
usage, including a request the server found invalid (422, with the fields at fault).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cluster.cli_output import (
    EXIT_FAILED,
    EXIT_OK,
    ServerError,
    UsageError,
    console_width,
    preview,
    print_summary,
    record_json,
    subtask_lines,
)
from cluster.client import (
    ADDRESS_ENV,
    API_KEY_ENV,
    ApiError,
    ApiUnreachable,
    StreamEvent,
    TaskApiClient,
    record_from_view,
)
from cluster.keyfile import server_api_key
from officeray.config import Settings
from officeray.contracts import TaskRecord, TaskRequest, TaskStatus
from officeray.workspaces import local_artifact_target

LIST_DEFAULT_LIMIT = 20
"""Tasks ``officeray list`` shows when no ``--limit`` is given (one page)."""
WATCH_MAX_RECONNECTS = 10
"""Times in a row ``officeray watch`` reconnects to a stream that dropped before giving up (exit 1)."""
WATCH_RECONNECT_DELAY_S = 0.5
"""Pause before the first reconnection; doubled on each further one, up to
:data:`WATCH_RECONNECT_MAX_DELAY_S`."""
WATCH_RECONNECT_MAX_DELAY_S = 8.0
WATCH_RECENT_EVENTS = 8
"""Events the live view of ``officeray watch`` keeps on screen."""
WATCH_REFRESH_PER_S = 8
FEEDBACK_RATINGS = (-1, 0, 1)


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """``--address``, ``--key`` and ``--config``, as every command that talks to a server takes them."""
    parser.add_argument(
        "--address",
        metavar="URL",
        default=None,
        help=f"the officeray server (default: ${ADDRESS_ENV}, else http://{{serve.host}}:{{serve.port}} "
        "of the config: http://127.0.0.1:8000)",
    )
    parser.add_argument(
        "--key",
        metavar="KEY",
        default=None,
        help=f"API key (default: ${API_KEY_ENV}, else, for a server on this machine, the admin key file "
        "of `officeray serve`)",
    )
    parser.add_argument("--config", metavar="FILE", help="YAML config file (default: $OFFICERAY_CONFIG)")


def add_client_parsers(sub: Any) -> dict[str, Callable[[argparse.Namespace, Settings], int]]:
    """The commands of this module; answers their handlers by command name."""
    server = argparse.ArgumentParser(add_help=False)
    add_server_options(server)

    submit = sub.add_parser(
        "submit", parents=[server], help="submit a task to a running server, print its id"
    )
    submit.add_argument("task", help="the task in plain words")
    submit.add_argument(
        "--tool", action="append", metavar="NAME", help="allow only this tool (repeat for several)"
    )
    submit.add_argument("--plan", metavar="FILE", help="a ready plan (JSON, the published plan schema)")
    submit.add_argument("--webhook-url", metavar="URL", help="POST the task's final state there (signed)")
    submit.add_argument("--priority", type=int, default=None, metavar="N", help="0..1000, higher runs first")
    submit.add_argument("--idempotency-key", metavar="K", help="the same key answers the same task")
    submit.add_argument("--json", action="store_true", help='print the answer {"task_id", "status"} as JSON')

    get = sub.add_parser("get", parents=[server], help="a task's status, steps and result")
    get.add_argument("task_id", help="the task's id")
    get.add_argument("--json", action="store_true", help="print the task record as one JSON object")
    get.add_argument(
        "--artifacts", metavar="DIR", default=None, help="save the files of the task's workspace under DIR"
    )

    watch = sub.add_parser("watch", parents=[server], help="follow a task live until it ends")
    watch.add_argument("task_id", help="the task's id")

    listing = sub.add_parser("list", parents=[server], help="the tasks of your tenant, newest first")
    listing.add_argument("--status", default=None, choices=[s.value for s in TaskStatus])
    listing.add_argument("--limit", type=int, default=LIST_DEFAULT_LIMIT, metavar="N", help="tasks per page")
    listing.add_argument("--cursor", default=None, help="the page after this cursor (see next_cursor)")
    listing.add_argument("--tenant", default=None, help="only this tenant's tasks (admin keys)")
    listing.add_argument("--all", action="store_true", help="follow next_cursor to the last page")
    listing.add_argument("--json", action="store_true", help='print {"tasks": [...], "next_cursor"}')

    cancel = sub.add_parser("cancel", parents=[server], help="stop a task (it ends cancelled)")
    cancel.add_argument("task_id", help="the task's id")

    approve = sub.add_parser("approve", parents=[server], help="approve (or --reject) a step that waits")
    approve.add_argument("task_id", help="the task's id")
    approve.add_argument("step_id", help="the step that waits for approval")
    approve.add_argument("--reject", action="store_true", help="reject the step instead")
    approve.add_argument("--reason", default="", help="why (kept with the decision)")

    feedback = sub.add_parser("feedback", parents=[server], help="rate a task (-1, 0, 1)")
    feedback.add_argument("task_id", help="the task's id")
    feedback.add_argument("--rating", type=int, required=True, choices=FEEDBACK_RATINGS)
    feedback.add_argument("--comment", default=None)
    feedback.add_argument("--label", action="append", default=None, metavar="L", help="a label (repeatable)")

    return {
        "submit": cmd_submit,
        "get": cmd_get,
        "watch": cmd_watch,
        "list": cmd_list,
        "cancel": cmd_cancel,
        "approve": cmd_approve,
        "feedback": cmd_feedback,
    }


# -- where the server is, which key, and what its errors mean --


def server_url(settings: Settings) -> str:
    """The URL of the server the config describes (a wildcard listen address means this machine)."""
    host = settings.serve.host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.serve.port}"


def server_address(
    args: argparse.Namespace, settings: Settings, environ: Mapping[str, str] | None = None
) -> str:
    """``--address``, else ``$OFFICERAY_ADDRESS``, else the config's serve address."""
    env = os.environ if environ is None else environ
    explicit = getattr(args, "address", None)
    return (explicit or (env.get(ADDRESS_ENV) or "").strip() or server_url(settings)).rstrip("/")


def refusal(exc: ApiError) -> ServerError | UsageError:
    """The command's error for the server's refusal: 422 is bad usage (exit 2), the rest exit 1."""
    code = f"; code {exc.code}" if exc.code else ""
    if exc.status == 401:
        return ServerError(
            f"the server refused the API key ({exc.detail}{code}); pass --key, set ${API_KEY_ENV}, "
            "or create one with `officeray keys create`"
        )
    fields = "".join(
        f"\n  - {e.get('field', '(body)')}: {e.get('message', '')}" for e in exc.errors if isinstance(e, dict)
    )
    if exc.status == 422:
        return UsageError(f"the server refused the request: {exc.detail} (422{code}){fields}")
    wait = f"; retry in {exc.retry_after_s:g}s" if exc.retry_after_s is not None else ""
    return ServerError(f"the server answered {exc.status}{code}: {exc.detail}{wait}{fields}")


@contextlib.contextmanager
def connect(args: argparse.Namespace, settings: Settings) -> Iterator[TaskApiClient]:
    """A client of the server the command names; its errors become the command's (see :func:`refusal`)."""
    address = server_address(args, settings)
    try:
        key = server_api_key(settings, getattr(args, "key", None), address)
        with TaskApiClient(address, key) as client:
            yield client
    except ApiUnreachable as exc:
        raise ServerError(
            f"{exc}; is `officeray serve` running there? (--address or ${ADDRESS_ENV})"
        ) from None
    except ApiError as exc:
        raise refusal(exc) from None


# -- building requests --


def task_body(
    description: str,
    *,
    plan: dict[str, Any] | None = None,
    tools: list[str] | None = None,
    webhook_url: str | None = None,
    priority: int | None = None,
) -> dict[str, Any]:
    """The ``POST /v1/tasks`` body, checked here first (a bad value is a usage error before any call).
    The tenant is the key's: the body leaves it out."""
    fields: dict[str, Any] = {"description": description, "plan": plan, "allowed_tools": tools}
    if webhook_url is not None:
        fields["webhook_url"] = webhook_url
    if priority is not None:
        fields["priority"] = priority
    try:
        request = TaskRequest(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "task"
        raise UsageError(f"invalid task: {where}: {first['msg']}") from None
    return request.model_dump(mode="json", exclude_defaults=True, exclude_none=True)


def _plan(path: str | None) -> dict[str, Any] | None:
    from pathlib import Path

    from cluster.cli import read_plan_file

    return read_plan_file(Path(path)) if path else None


# -- printing --


def print_run_result(record: TaskRecord, as_json: bool, elapsed_s: float) -> int:
    """What ``officeray run`` prints for a finished task (local or remote); answers the exit code."""
    if as_json:
        print(json.dumps(record_json(record), default=str))
    else:
        print_summary([record], elapsed_s)
        if record.status == TaskStatus.COMPLETED:
            print(
                json.dumps(record.result, indent=2, default=str)
                if not isinstance(record.result, str)
                else record.result
            )
    return EXIT_OK if record.status == TaskStatus.COMPLETED else EXIT_FAILED


def _print_task(view: Mapping[str, Any]) -> None:
    print(f"task:     {view.get('task_id')}")
    print(f"status:   {view.get('status')} (iteration {view.get('iterations', 0)})")
    if view.get("current_step"):
        print(f"now:      {view['current_step']}")
    description = str(view.get("description") or "")
    print(f"task:     {preview(description.splitlines()[0] if description else '')}")
    if view.get("parent_id"):
        print(f"parent:   {view['parent_id']}")
    tree = subtask_lines(view)
    if tree:
        print("subtasks:")
        print("\n".join(tree))
    for step in view.get("steps") or []:
        line = (
            f"  {step.get('step_id')} {step.get('action')}: {step.get('status')} "
            f"({step.get('attempts', 0)} attempt(s))"
        )
        error = step.get("error")
        if error:
            line += f": {error.get('type')}: {preview(error.get('message') or '')}"
        print(line)
    if view.get("error"):
        print(f"error:    {view['error']}")
    if view.get("status") == TaskStatus.COMPLETED and view.get("result") is not None:
        result = view["result"]
        print("result:")
        print(json.dumps(result, indent=2, default=str) if not isinstance(result, str) else result)


def _task_table(tasks: Sequence[Mapping[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("task", "status", "created", "description"):
        table.add_column(column, overflow="fold")
    for task in tasks:
        description = str(task.get("description") or "")
        table.add_row(
            str(task.get("task_id", "")),
            str(task.get("status", "")),
            str(task.get("created_at") or ""),
            preview(description.splitlines()[0] if description else ""),
        )
    Console(width=console_width()).print(table)


def describe_event(event: StreamEvent) -> str:
    """One line for a streamed event: its id, kind and what it says (status, step, error)."""
    data = event.data
    kind = event.event
    details: dict[str, Any] = {}
    if isinstance(data, dict):
        kind = str(data.get("kind") or kind)
        inner = data.get("data")
        details = inner if isinstance(inner, dict) else data
    words = [f"#{event.id}" if event.id else "#-", kind]
    for key in ("status", "step_id", "action", "decision", "error", "reason"):
        value = details.get(key)
        if value not in (None, "", kind):
            words.append(f"{key}={preview(value)}")
    return " ".join(words)


def _live_view(view: Mapping[str, Any], recent: Sequence[str]) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    status = str(view.get("status", ""))
    colour = {"completed": "green", "failed": "red", "cancelled": "yellow"}.get(status, "cyan")
    head = Text.assemble(
        (f"{view.get('task_id')} ", "bold"),
        (status, f"bold {colour}"),
        f"  {view.get('current_step') or ''}",
    )
    steps = Table(box=None, show_header=True, pad_edge=False)
    for column in ("step", "action", "status", "attempts"):
        steps.add_column(column)
    for step in view.get("steps") or []:
        steps.add_row(
            str(step.get("step_id")),
            str(step.get("action")),
            str(step.get("status")),
            str(step.get("attempts", 0)),
        )
    tree = Text("\n".join(["subtasks:", *subtask_lines(view)])) if view.get("subtasks") else Text("")
    return Group(head, tree, steps, Text("\n".join(recent), style="dim"))


# -- the commands --


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    body = task_body(
        args.task,
        plan=_plan(args.plan),
        tools=args.tool,
        webhook_url=args.webhook_url,
        priority=args.priority,
    )
    with connect(args, settings) as client:
        answer = client.submit(body, idempotency_key=args.idempotency_key)
    if args.json:
        print(json.dumps(answer, default=str))
    else:
        task_id = answer.get("task_id")
        print(f"task {task_id} {answer.get('status')}; follow it with: officeray watch {task_id}")
    return EXIT_OK


def cmd_get(args: argparse.Namespace, settings: Settings) -> int:
    folder = getattr(args, "artifacts", None)
    if folder:
        check_artifact_folder(Path(folder))  # before asking the server anything
    with connect(args, settings) as client:
        view = client.get(args.task_id)
        saved = save_artifacts(client, args.task_id, Path(folder)) if folder else None
    if args.json:
        print(json.dumps(view if saved is None else {**view, "artifacts_saved": saved}, default=str))
    else:
        _print_task(view)
        if saved is not None:
            print(f"saved {len(saved)} artifact(s) under {folder}")
    return EXIT_OK


def check_artifact_folder(folder: Path) -> None:
    """Raise :class:`UsageError` when ``--artifacts`` cannot be a folder to save into: it names an
    existing file, or it (or the nearest folder above it that exists) cannot be written."""
    existing = folder
    while not existing.exists() and existing.parent != existing:
        if existing.is_symlink():  # a dangling link: mkdir would fail on it
            raise UsageError(f"--artifacts {folder}: {existing} is a broken symbolic link")
        existing = existing.parent
    if not existing.is_dir():
        what = "is not a folder" if existing == folder else f"cannot be created: {existing} is not a folder"
        raise UsageError(f"--artifacts {folder} {what}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--artifacts {folder}: {existing} is not writable")


def save_artifacts(client: TaskApiClient, task_id: str, folder: Path) -> list[str]:
    """Save every file of the task's workspace under ``folder`` (created); answers the paths saved.
    A path that would land outside ``folder`` (absolute, ``..``, through a link) is refused: the
    command fails with a usage error and saves nothing of it. A folder that is not one, or that
    cannot be written, is a usage error too (:func:`check_artifact_folder`, then any ``OSError``)."""
    check_artifact_folder(folder)
    listing = client.artifacts(task_id)
    paths = [str(entry.get("path")) for entry in listing.get("files", [])]
    with _saving(folder):
        folder.mkdir(parents=True, exist_ok=True)
    saved = []
    for path in paths:
        target = local_artifact_target(folder, path)
        if target is None:
            raise UsageError(f"refusing artifact {path!r}: it would be saved outside {folder}")
        data = client.artifact(task_id, path)
        with _saving(folder, path):
            target.parent.mkdir(parents=True, exist_ok=True)
            if local_artifact_target(folder, path) != target:  # a link appeared meanwhile
                raise UsageError(f"refusing artifact {path!r}: it would be saved outside {folder}")
            with contextlib.suppress(FileNotFoundError):
                if target.is_symlink():
                    target.unlink()
            target.write_bytes(data)
        saved.append(path)
    return saved


@contextlib.contextmanager
def _saving(folder: Path, path: str | None = None) -> Iterator[None]:
    """Local file-system errors while saving artifacts become a :class:`UsageError` naming the file."""
    try:
        yield
    except OSError as exc:
        where = folder if path is None else folder / path
        raise UsageError(f"cannot save artifacts under {folder}: {where}: {exc.strerror or exc}") from None


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    filters = {"status": args.status, "tenant": args.tenant}
    with connect(args, settings) as client:
        if args.all:
            tasks: list[dict[str, Any]] = []
            next_cursor = None
            cursor = args.cursor
            while True:
                page = client.list_tasks(limit=args.limit, cursor=cursor, **filters)
                tasks.extend(page.get("tasks") or [])
                cursor = page.get("next_cursor")
                if not cursor or not page.get("tasks"):
                    break
        else:
            page = client.list_tasks(limit=args.limit, cursor=args.cursor, **filters)
            tasks, next_cursor = list(page.get("tasks") or []), page.get("next_cursor")
    if args.json:
        print(json.dumps({"tasks": tasks, "next_cursor": next_cursor}, default=str))
        return EXIT_OK
    if not tasks:
        print("no tasks")
    else:
        _task_table(tasks, f"{len(tasks)} task(s)")
    if next_cursor:
        print(f"more: officeray list --cursor {next_cursor} (or --all)")
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    with connect(args, settings) as client:
        answer = client.cancel(args.task_id)
    print(
        f"task {answer.get('task_id', args.task_id)}: cancel requested ({answer.get('status', 'cancelling')})"
    )
    return EXIT_OK


def cmd_approve(args: argparse.Namespace, settings: Settings) -> int:
    with connect(args, settings) as client:
        answer = client.decide_approval(args.task_id, args.step_id, not args.reject, args.reason)
    decision = answer.get("decision", "rejected" if args.reject else "approved")
    print(f"task {args.task_id} step {args.step_id}: {decision} by {answer.get('decided_by', 'this key')}")
    return EXIT_OK


def cmd_feedback(args: argparse.Namespace, settings: Settings) -> int:
    with connect(args, settings) as client:
        client.feedback(args.task_id, args.rating, args.comment, args.label)
    print(f"task {args.task_id}: feedback recorded (rating {args.rating:+d})")
    return EXIT_OK


def follow_task(
    client: TaskApiClient,
    task_id: str,
    on_event: Callable[[Mapping[str, Any], StreamEvent], None],
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Follow the task's event stream until the task is final; answers its final record.

    After each event the record is read again and handed to ``on_event`` with the event. A stream
    that breaks, or ends before the task does, is opened again after the last event's id
    (``Last-Event-ID``: nothing is lost or repeated), after a pause that doubles each time; more than
    :data:`WATCH_MAX_RECONNECTS` in a row without an event raise :class:`ApiUnreachable`."""
    view = client.get(task_id)
    last_id: str | None = None
    failures = 0
    while not record_from_view(view).status.is_final:
        why = "the event stream ended before the task did"
        try:
            for event in client.events(task_id, last_event_id=last_id):
                failures = 0
                last_id = event.id or last_id
                view = client.get(task_id)
                on_event(view, event)
            view = client.get(task_id)
            if record_from_view(view).status.is_final:
                break
        except ApiUnreachable as exc:
            why = exc.reason
        failures += 1
        if failures > WATCH_MAX_RECONNECTS:
            raise ApiUnreachable(client.address, f"{why}; gave up after {WATCH_MAX_RECONNECTS} reconnections")
        sleep(min(WATCH_RECONNECT_DELAY_S * 2 ** (failures - 1), WATCH_RECONNECT_MAX_DELAY_S))
    return view


def cmd_watch(args: argparse.Namespace, settings: Settings) -> int:
    """A live view of the task (a line per event when stdout is not a terminal) until it ends."""
    from rich.console import Console
    from rich.live import Live

    console = Console()
    recent: list[str] = []
    with connect(args, settings) as client:
        live = (
            Live(console=console, refresh_per_second=WATCH_REFRESH_PER_S, transient=False)
            if console.is_terminal
            else None
        )

        def show(view: Mapping[str, Any], event: StreamEvent) -> None:
            line = describe_event(event)
            recent[:] = [*recent, line][-WATCH_RECENT_EVENTS:]
            if live is not None:
                live.update(_live_view(view, recent))
            else:
                print(line, flush=True)

        with live if live is not None else contextlib.nullcontext():
            if live is not None:
                live.update(_live_view(client.get(args.task_id), recent))
            view = follow_task(client, args.task_id, show)
    record = record_from_view(view)
    if live is None and view.get("subtasks"):  # the live view showed the tree already
        print("\n".join(["subtasks:", *subtask_lines(view)]))
    outcome = preview(record.result) if record.status == TaskStatus.COMPLETED else (record.error or "")
    print(f"task {record.task_id} {record.status.value}" + (f": {outcome}" if outcome else ""))
    return EXIT_OK if record.status == TaskStatus.COMPLETED else EXIT_FAILED


def run_remote(args: argparse.Namespace, settings: Settings) -> int:
    """``officeray run --address URL``: submit to that server, wait for the final state (long polls),
    print what a local run prints. No Ray starts here."""
    body = task_body(args.task, plan=_plan(args.plan))
    started = time.monotonic()
    with connect(args, settings) as client:
        accepted = client.submit(body)
        view = client.wait(str(accepted["task_id"]))
    return print_run_result(record_from_view(view), args.json, time.monotonic() - started)
