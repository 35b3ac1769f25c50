"""``officeray dlq list|show|retry``: the dead-letter queue of a running server, over its HTTP API
(``GET /v1/dlq``, ``GET /v1/dlq/{id}``, ``POST /v1/dlq/{id}/retry``; admin keys).

The server and the key are found as for every client command (:mod:`cluster.cli_client`):
``--address`` (``--url`` is its older name), ``$OFFICERAY_ADDRESS``, else ``serve.host:serve.port``
of the config; ``--key``, ``$OFFICERAY_API_KEY``, else the local admin key file. Exit 0 on success,
1 when the server cannot be reached or answers an error (its ``detail`` and ``code`` printed; a task
not in the queue is a 404), 2 for bad usage.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from cluster.cli_client import connect
from cluster.cli_output import EXIT_OK, UsageError, console_width, preview
from officeray.config import Settings


def add_dlq_parser(sub: Any) -> None:
    """The ``dlq`` command and its ``list``, ``show`` and ``retry`` subcommands."""
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument(
        "--address",
        "--url",
        dest="address",
        metavar="URL",
        default=None,
        help="the officeray server (default: $OFFICERAY_ADDRESS, else http://{serve.host}:{serve.port} "
        "of the config)",
    )
    server.add_argument(
        "--key",
        metavar="KEY",
        default=None,
        help="API key (default: $OFFICERAY_API_KEY, else the local admin key file)",
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
    if args.dlq == "list" and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    with connect(args, settings) as client:
        if args.dlq == "list":
            body = client.dlq_list(args.tenant, args.limit)
            entries = body.get("entries", []) if isinstance(body, dict) else []
            if args.json:
                print(json.dumps({"entries": entries}, default=str))
            else:
                _print_dlq_table(entries)
        elif args.dlq == "show":
            entry = client.dlq_get(args.task_id)
            if args.json:
                print(json.dumps(entry, default=str))
            else:
                _print_dlq_entry(entry)
        else:
            answer = client.dlq_retry(args.task_id)
            if args.json:
                print(json.dumps(answer, default=str))
            else:
                print(
                    f"task {answer.get('task_id')} left the dead-letter queue and runs again "
                    f"({answer.get('status')})"
                )
    return EXIT_OK
