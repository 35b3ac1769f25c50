"""What the ``officeray`` commands and the batch job share: exit codes, the errors that map to them,
and how a task record is printed (``--json`` and the summary table).

It imports no Ray: ``--help``, usage errors and the batch job's input checks answer at once.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

from officeray.contracts import TaskRecord, TaskStatus

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

RESULT_PREVIEW_CHARS = 90
"""Longest result, error or description shown in a table cell (the rest is cut with ``…``)."""
SUMMARY_MIN_WIDTH = 140
"""Narrowest console a summary table is drawn for (wider terminals use their width)."""


class UsageError(Exception):
    """Bad command-line input: reported on stderr with exit code 2."""


class ServerError(Exception):
    """The server answered an error (other than not found): reported on stderr with exit code 1."""


def preview(value: Any) -> str:
    """``value`` on one line, at most :data:`RESULT_PREVIEW_CHARS` long."""
    if isinstance(value, dict) and isinstance(value.get("message"), str):
        value = value["message"]  # e.g. code_analyzer's "main → … → process_data (5 hops)"
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split())
    return text if len(text) <= RESULT_PREVIEW_CHARS else text[: RESULT_PREVIEW_CHARS - 1] + "…"


def console_width() -> int:
    """The width tables are drawn for: the terminal's, at least :data:`SUMMARY_MIN_WIDTH`."""
    return max(SUMMARY_MIN_WIDTH, shutil.get_terminal_size().columns)


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


def subtask_lines(view: Mapping[str, Any]) -> list[str]:
    """A decomposed task's subtask tree, one line per subtask (its child task, what it waits for, its
    status and result or error); no lines for a task that ran as one plan."""
    lines = []
    for sub in view.get("subtasks") or []:
        after = f" after {', '.join(sub.get('dependencies') or [])}" if sub.get("dependencies") else ""
        line = f"  {sub.get('subtask_id')} [{sub.get('task_id')}]{after}: {sub.get('status')}"
        if sub.get("status") == TaskStatus.COMPLETED and sub.get("result") is not None:
            line += f": {preview(sub.get('result'))}"
        elif sub.get("error"):
            line += f": {preview(sub.get('error'))}"
        lines.append(line)
    return lines


def print_summary(records: Sequence[TaskRecord], elapsed_s: float) -> None:
    """One table row per task: status, rounds, steps, seconds, and the result or the error."""
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
        if record.subtasks:  # a big task: its parts ran as child tasks
            steps = ", ".join(f"{s.subtask_id} subtask {s.status}" for s in record.subtasks)
        table.add_row(
            preview(record.description.splitlines()[0]),
            f"[green]{record.status.value}[/]" if ok else f"[red]{record.status.value}[/]",
            str(record.iterations),
            steps,
            secs,
            preview(record.result if ok else record.error),
        )
    Console(width=console_width()).print(table)
