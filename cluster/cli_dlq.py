"""``officeray dlq list|show|retry``: the dead-letter queue of a running server, over its HTTP API.

The server is ``--url``, or ``http://{serve.host}:{serve.port}`` of the config. Exit 0 on success,
2 (:class:`~cluster.cli_output.UsageError`) when the server cannot be reached or the task is not in
the queue, 1 (:class:`~cluster.cli_output.ServerError`) when the server answers another error.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from cluster.cli_output import EXIT_OK, ServerError, UsageError, console_width, preview
from officeray.config import Settings

DLQ_HTTP_TIMEOUT_S = 30.0
"""How long ``officeray dlq`` waits for the server's answer."""


def add_dlq_parser(sub: Any) -> None:
    """The ``dlq`` command and its ``list``, ``show`` and ``retry`` subcommands."""
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
            preview(entry.get("reason") or ""),
            str(entry.get("created_at") or ""),
        )
    Console(width=console_width()).print(table)


def _print_dlq_entry(entry: dict[str, Any]) -> None:
    record = entry.get("record") or {}
    print(f"task:        {entry.get('task_id')}")
    print(f"tenant:      {entry.get('tenant')}")
    print(f"reason:      {entry.get('reason')}")
    print(f"created:     {entry.get('created_at')}")
    if entry.get("trace_id"):
        print(f"trace:       {entry['trace_id']}")
    description = str(entry.get("description") or record.get("description") or "")
    print(f"description: {preview(description.splitlines()[0] if description else '')}")
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
                f"{error.get('type')}: {preview(error.get('message') or '')}"
            )
    print(f"retry with:  officeray dlq retry {entry.get('task_id')}")


def cmd_dlq(args: argparse.Namespace, settings: Settings) -> int:
    """``officeray dlq list|show|retry``."""
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
