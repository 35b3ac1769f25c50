"""``officeray memory search|delete|rebuild|stats``: the memory of a running server, over its HTTP API.

* ``officeray memory search "TEXT" [--k N] [--outcome completed|failed|cancelled] [--tenant T]
  [--json]``: the remembered task attempts of the key's tenant nearest to ``TEXT``, best first
  (``GET /v1/memory/search``): a table of score, outcome, task, description and lesson.
* ``officeray memory delete ENTRY_ID``, ``officeray memory delete --task TASK_ID``, ``officeray memory
  delete --tenant T``: forget one entry, a task's entries, or all of a tenant's (``DELETE
  /v1/memory/{id}``, ``DELETE /v1/tasks/{id}/memory``, ``DELETE /v1/memory?tenant=``).
* ``officeray memory rebuild [--json]`` (admin key): rebuild every tenant's index from the store
  (``POST /v1/memory/rebuild``); ``officeray memory stats [--json]`` (admin key): the encoder and
  each tenant's index.

The server and the key are found as for every client command (:mod:`cluster.cli_client`):
``--address``, ``$OFFICERAY_ADDRESS``, else ``serve.host:serve.port`` of the config; ``--key`` (or
``--api-key``), ``$OFFICERAY_API_KEY``, else the local admin key file. ``--json`` prints exactly one
JSON object, the server's answer. Exit 0 on success; 1 when the server cannot be reached or answers
an error (its ``detail`` and ``code`` printed: an unknown entry is a 404, a server without a memory a
503 ``memory_off``) or a rebuild did not happen; 2 for bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, get_args

from cluster.cli_client import add_server_options, connect
from cluster.cli_output import EXIT_FAILED, EXIT_OK, UsageError, console_width, preview
from officeray.config import Settings
from officeray.contracts import MemoryOutcome
from officeray.memory.entries import MAX_QUERY_CHARS, MAX_SEARCH_K

SEARCH_DEFAULT_K = 5
"""Hits ``officeray memory search`` asks for unless ``--k`` says otherwise."""

SCORE_DIGITS = 3
"""Decimals of a hit's score in the table."""


def add_memory_parser(sub: Any) -> None:
    """The ``memory`` command and its ``search``, ``delete``, ``rebuild`` and ``stats`` subcommands."""
    server = argparse.ArgumentParser(add_help=False)
    add_server_options(server)
    server.add_argument("--api-key", dest="key", metavar="KEY", default=None, help="the same as --key")
    memory = sub.add_parser("memory", help="the memory of a running server: search, delete, rebuild, stats")
    memory_sub = memory.add_subparsers(dest="memory", required=True)

    search = memory_sub.add_parser(
        "search", parents=[server], help="remembered tasks of your tenant nearest to a text, best first"
    )
    search.add_argument("text", help="what to look for (a task in plain words)")
    search.add_argument(
        "-k", "--k", dest="k", type=int, default=SEARCH_DEFAULT_K, metavar="N",
        help=f"at most N hits, 1 to {MAX_SEARCH_K} (default {SEARCH_DEFAULT_K})",
    )  # fmt: skip
    search.add_argument("--outcome", choices=get_args(MemoryOutcome), default=None, help="only these")
    search.add_argument("--tenant", default=None, help="search this tenant's memory (admin keys)")
    search.add_argument("--json", action="store_true", help='print {"query", "tenant", "hits": [...]}')

    delete = memory_sub.add_parser(
        "delete",
        parents=[server],
        help="forget one entry, a task's entries (--task) or a tenant's (--tenant)",
    )
    delete.add_argument("entry_id", nargs="?", default=None, help="the entry's id (see `memory search`)")
    delete.add_argument("--task", metavar="TASK_ID", default=None, help="forget every entry of this task")
    delete.add_argument("--tenant", metavar="T", default=None, help="forget every entry of this tenant")
    delete.add_argument("--json", action="store_true", help="print the server's answer as one JSON object")

    rebuild = memory_sub.add_parser(
        "rebuild", parents=[server], help="rebuild every tenant's index from the store (admin key)"
    )
    rebuild.add_argument("--json", action="store_true", help="print the rebuild report as one JSON object")

    stats = memory_sub.add_parser("stats", parents=[server], help="the encoder and each index (admin key)")
    stats.add_argument("--json", action="store_true", help="print the figures as one JSON object")


def search_request(text: str, k: int) -> str:
    """The query of ``memory search``, checked before any call (UsageError: exit 2)."""
    if not text.strip():
        raise UsageError("the search text is blank")
    if len(text) > MAX_QUERY_CHARS:
        raise UsageError(f"the search text is {len(text)} characters long; at most {MAX_QUERY_CHARS}")
    if not 1 <= k <= MAX_SEARCH_K:
        raise UsageError(f"--k must be between 1 and {MAX_SEARCH_K} (got {k})")
    return text


def delete_target(entry_id: str | None, task: str | None, tenant: str | None) -> tuple[str, str]:
    """What ``memory delete`` forgets, ``(kind, id)``: exactly one of an entry, ``--task``,
    ``--tenant`` (UsageError otherwise)."""
    given = [
        (kind, value) for kind, value in (("entry", entry_id), ("task", task), ("tenant", tenant)) if value
    ]
    if len(given) != 1:
        raise UsageError("memory delete takes exactly one of ENTRY_ID, --task TASK_ID or --tenant T")
    return given[0]


def print_hits(answer: dict[str, Any]) -> None:
    """The hits of a search as a table: score, outcome, task, description, lesson."""
    from rich.console import Console
    from rich.table import Table

    hits: Sequence[dict[str, Any]] = answer.get("hits") or []
    tenant = answer.get("tenant", "")
    if not hits:
        print(f"no remembered task of tenant {tenant} matches {preview(answer.get('query', ''))!r}")
        return
    table = Table(title=f"memory of tenant {tenant}: {len(hits)} hit(s), best first")
    for column in ("score", "outcome", "task", "description", "lesson", "entry"):
        table.add_column(column, overflow="fold")
    for hit in hits:
        outcome = str(hit.get("outcome", ""))
        colour = "green" if outcome == "completed" else "red" if outcome == "failed" else "yellow"
        score = hit.get("score")
        table.add_row(
            f"{score:.{SCORE_DIGITS}f}" if isinstance(score, int | float) else "",
            f"[{colour}]{outcome}[/]",
            str(hit.get("task_id", "")),
            preview(hit.get("description") or ""),
            preview(hit.get("lesson") or ""),
            str(hit.get("entry_id", "")),
        )
    Console(width=console_width()).print(table)


def _print_stats(stats: dict[str, Any]) -> None:
    state = "on" if stats.get("on") else f"off ({stats.get('off_reason') or 'disabled'})"
    print(f"memory:   {state}")
    print(f"encoder:  {stats.get('encoder')} ({stats.get('dim')} dimensions)")
    print(f"indexes:  {stats.get('index_dir') or '(in memory only)'}")
    for tenant, index in (stats.get("tenants") or {}).items():
        print(f"  {tenant}: {index.get('entries')} entries ({index.get('kind')})")


def _forgotten(kind: str, target: str, answer: dict[str, Any]) -> str:
    deleted = answer.get("deleted", 0)
    if kind == "entry":
        return f"forgot memory entry {target}"
    return f"forgot {deleted} memory entr{'y' if deleted == 1 else 'ies'} of {kind} {target}"


def cmd_memory(args: argparse.Namespace, settings: Settings) -> int:
    """``officeray memory search|delete|rebuild|stats``."""
    if args.memory == "search":
        search_request(args.text, args.k)
    target = delete_target(args.entry_id, args.task, args.tenant) if args.memory == "delete" else None
    exit_code = EXIT_OK
    with connect(args, settings) as client:
        if args.memory == "search":
            answer = client.memory_search(args.text, args.k, args.outcome, args.tenant)
        elif target is not None:
            kind, value = target
            if kind == "entry":
                answer = client.memory_delete_entry(value)
            elif kind == "task":
                answer = client.memory_delete_task(value)
            else:
                answer = client.memory_delete_tenant(value)
        elif args.memory == "rebuild":
            answer = client.memory_rebuild()
            exit_code = EXIT_OK if answer.get("rebuilt") else EXIT_FAILED
        else:
            answer = client.memory_stats()
    if args.json:
        print(json.dumps(answer, default=str))
    elif args.memory == "search":
        print_hits(answer)
    elif target is not None:
        print(_forgotten(*target, answer))
    elif args.memory == "rebuild":
        _print_rebuild(answer)
    else:
        _print_stats(answer)
    return exit_code


def _print_rebuild(report: dict[str, Any]) -> None:
    if not report.get("rebuilt"):
        reason = report.get("reason") or "the server did not say why"
        print(f"officeray: error: the memory was not rebuilt: {reason}", file=sys.stderr)
        return
    print(
        f"rebuilt {report.get('entries')} of {report.get('stored')} stored entries in "
        f"{report.get('tenants')} tenant index(es) with encoder {report.get('encoder')} "
        f"in {report.get('took_s')}s"
    )
