"""Trace completeness under load: does every completed task have one whole trace?

A completed task's trace is **complete** when, under the task record's ``trace_id``:

* there is exactly one ``task`` span, and its ``officeray.task_id`` is the task's;
* there is at least one ``plan``, ``validate`` and ``review`` span, and a ``model.call`` span for
  the planner and for the reviewer (:data:`REQUIRED_SPANS`);
* every step of the record that succeeded has its ``step <id>`` span and its ``tool <action>`` span;
* (trace file only) no span of the task (``officeray.task_id``) sits in another trace: one trace
  per task.

The local system's trace file is read once for all tasks; against a ``--host`` each sampled task's
trace is read over the API (``GET /v1/tasks/{id}/trace``). Task records come from
``GET /v1/tasks/{id}``. :func:`check_traces` returns the dict that goes into ``run.json``'s
``traces``: ``checked``, ``complete``, ``completeness`` (0..1), ``source``, ``sampled``,
``incomplete`` (a few examples with what is missing) and ``tiers`` (the model tiers that answered).
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from loadtests.records import COMPLETION_TYPE, SAMPLES_FILE
from officeray.telemetry import iter_spans

REQUIRED_SPANS = ("plan", "validate", "review")
REQUIRED_MODEL_ROLES = ("planner", "reviewer")
MAX_EXAMPLES = 10
"""Incomplete traces listed in the report (with what each misses)."""
READERS = 8
"""Parallel HTTP reads of records and traces."""
READ_TIMEOUT_S = 30.0


def _attr(span: dict[str, Any], key: str) -> Any:
    return (span.get("attributes") or {}).get(key)


def _trace_id(span: dict[str, Any]) -> str:
    return str((span.get("context") or {}).get("trace_id", "")).removeprefix("0x")


def missing_parts(record: dict[str, Any], spans: list[dict[str, Any]]) -> list[str]:
    """What the trace ``spans`` of the completed task ``record`` lacks (empty: complete)."""
    task_id = record["task_id"]
    names = [str(s.get("name", "")) for s in spans]
    missing = []
    roots = [s for s in spans if s.get("name") == "task"]
    if len(roots) != 1 or _attr(roots[0], "officeray.task_id") != task_id:
        missing.append(f"one task span for {task_id} (found {len(roots)})")
    missing += [name for name in REQUIRED_SPANS if name not in names]
    roles = {_attr(s, "officeray.role") for s in spans if s.get("name") == "model.call"}
    missing += [f"model.call {role}" for role in REQUIRED_MODEL_ROLES if role not in roles]
    for step in record.get("steps") or []:
        if step.get("status") != "succeeded":
            continue
        for name in (f"step {step['step_id']}", f"tool {step.get('action', '')}"):
            if name not in names:
                missing.append(name)
    return missing


def completed_task_ids(out: Path) -> list[str]:
    """Task ids of the run's completions that ended ``completed`` (from its samples)."""
    ids: list[str] = []
    if not (out / SAMPLES_FILE).exists():
        return ids
    with open(out / SAMPLES_FILE, encoding="utf-8") as fh:
        for line in fh:
            try:
                sample = json.loads(line)
            except ValueError:
                continue
            if sample.get("type") == COMPLETION_TYPE and sample.get("status") == "completed":
                ids.append(str(sample["task_id"]))
    return ids


def index_trace_file(path: Path) -> tuple[dict[str, list[dict[str, Any]]], dict[str, set[str]]]:
    """Spans by trace id, and the trace ids each task's spans sit in (by ``officeray.task_id``)."""
    by_trace: dict[str, list[dict[str, Any]]] = defaultdict(list)
    traces_of_task: dict[str, set[str]] = defaultdict(set)
    for span in iter_spans(path):
        trace_id = _trace_id(span)
        by_trace[trace_id].append(span)
        task_id = _attr(span, "officeray.task_id")
        if task_id:
            traces_of_task[str(task_id)].add(trace_id)
    return by_trace, traces_of_task


def _read_all(url: str, paths: Iterable[str], api_key: str | None = None) -> list[dict[str, Any] | None]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=url, timeout=READ_TIMEOUT_S, headers=headers) as client:

        def read(path: str) -> dict[str, Any] | None:
            try:
                response = client.get(path)
                return response.json() if response.status_code == 200 else None
            except (httpx.HTTPError, ValueError):
                return None

        with ThreadPoolExecutor(READERS) as pool:
            return list(pool.map(read, paths))


def check_traces(
    out: Path, url: str, *, trace_file: Path | None, limit: int | None, api_key: str | None = None
) -> dict[str, Any]:
    """Trace completeness of the run's completed tasks (all, or a random ``limit`` of them); the task
    API is read with ``api_key`` (``Authorization: Bearer``) when given."""
    ids = completed_task_ids(out)
    sampled = limit is not None and len(ids) > limit
    if sampled:
        ids = random.Random(0).sample(ids, limit or 0)
    records = _read_all(url, (f"/v1/tasks/{task_id}" for task_id in ids), api_key)
    if trace_file is not None:
        by_trace, traces_of_task = index_trace_file(trace_file)
        source = "trace file"
    else:
        served = _read_all(url, (f"/v1/tasks/{task_id}/trace" for task_id in ids), api_key)
        by_trace = {str(t.get("trace_id")): t.get("spans") or [] for t in served if t}
        traces_of_task = {}
        source = "api"
    complete, incomplete, tiers = 0, [], set()
    for task_id, record in zip(ids, records, strict=True):
        if record is None:
            missing = ["the task record (GET /v1/tasks/{id} failed)"]
        else:
            tiers |= {str(call.get("tier")) for call in record.get("model_calls") or [] if call.get("tier")}
            spans = by_trace.get(str(record.get("trace_id") or ""), [])
            missing = missing_parts(record, spans) if spans else ["the whole trace"]
            others = traces_of_task.get(task_id, set()) - {str(record.get("trace_id"))}
            if others:
                missing.append(f"spans of the task in {len(others)} other trace(s)")
        if missing:
            incomplete.append({"task_id": task_id, "missing": missing})
        else:
            complete += 1
    checked = len(ids)
    return {
        "checked": checked,
        "complete": complete,
        "completeness": complete / checked if checked else None,
        "source": source,
        "sampled": sampled,
        "incomplete": incomplete[:MAX_EXAMPLES],
        "tiers": sorted(tiers),
    }
