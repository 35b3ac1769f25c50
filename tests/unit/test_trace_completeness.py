"""Trace completeness: what a completed task's trace lacks, the trace-file index, and the whole check
against a loopback HTTP server standing in for the task API."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from loadtests.records import COMPLETION_TYPE, SAMPLES_FILE
from loadtests.traces import (
    MAX_EXAMPLES,
    check_traces,
    completed_task_ids,
    index_trace_file,
    missing_parts,
)

# --------------------------------------------------------------------------------------------------
# Synthetic traces, as the JSON-lines exporter writes them
# --------------------------------------------------------------------------------------------------


def _span(name: str, trace_id: str, **attributes: Any) -> dict[str, Any]:
    return {
        "name": name,
        "context": {"trace_id": f"0x{trace_id}", "span_id": "0x1"},
        "attributes": attributes,
    }


def _record(task_id: str, trace_id: str, steps: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    if steps is None:
        steps = [{"step_id": "s1", "action": "math_calculator", "status": "succeeded"}]
    return {
        "task_id": task_id,
        "trace_id": trace_id,
        "status": "completed",
        "steps": steps,
        "model_calls": [{"role": "planner", "tier": "embedded"}, {"role": "reviewer", "tier": "embedded"}],
    }


def _complete_spans(task_id: str, trace_id: str, steps: tuple[tuple[str, str], ...] = ()) -> list[dict]:
    steps = steps or (("s1", "math_calculator"),)
    spans = [
        _span("task", trace_id, **{"officeray.task_id": task_id}),
        _span("plan", trace_id, **{"officeray.task_id": task_id}),
        _span("model.call", trace_id, **{"officeray.role": "planner"}),
        _span("validate", trace_id),
        _span("review", trace_id),
        _span("model.call", trace_id, **{"officeray.role": "reviewer"}),
    ]
    for step_id, action in steps:
        spans += [_span(f"step {step_id}", trace_id), _span(f"tool {action}", trace_id)]
    return spans


def _without(spans: list[dict[str, Any]], name: str, role: str | None = None) -> list[dict[str, Any]]:
    return [
        s
        for s in spans
        if not (s["name"] == name and (role is None or s["attributes"].get("officeray.role") == role))
    ]


TRACE = "ab" * 16


# --------------------------------------------------------------------------------------------------
# missing_parts
# --------------------------------------------------------------------------------------------------


def test_complete_trace_misses_nothing() -> None:
    assert missing_parts(_record("t1", TRACE), _complete_spans("t1", TRACE)) == []


def test_no_task_span() -> None:
    missing = missing_parts(_record("t1", TRACE), _without(_complete_spans("t1", TRACE), "task"))
    assert missing == ["one task span for t1 (found 0)"]


def test_two_task_spans() -> None:
    spans = _complete_spans("t1", TRACE) + [_span("task", TRACE, **{"officeray.task_id": "t1"})]
    assert missing_parts(_record("t1", TRACE), spans) == ["one task span for t1 (found 2)"]


def test_task_span_of_another_task() -> None:
    spans = _without(_complete_spans("t1", TRACE), "task") + [
        _span("task", TRACE, **{"officeray.task_id": "t2"})
    ]
    assert missing_parts(_record("t1", TRACE), spans) == ["one task span for t1 (found 1)"]


@pytest.mark.parametrize("name", ["plan", "validate", "review"])
def test_missing_stage_span(name: str) -> None:
    spans = _without(_complete_spans("t1", TRACE), name)
    assert missing_parts(_record("t1", TRACE), spans) == [name]


@pytest.mark.parametrize("role", ["planner", "reviewer"])
def test_missing_model_call_of_a_role(role: str) -> None:
    spans = _without(_complete_spans("t1", TRACE), "model.call", role)
    assert missing_parts(_record("t1", TRACE), spans) == [f"model.call {role}"]


def test_model_call_without_a_role_does_not_count() -> None:
    spans = _without(_complete_spans("t1", TRACE), "model.call") + [_span("model.call", TRACE)]
    assert missing_parts(_record("t1", TRACE), spans) == ["model.call planner", "model.call reviewer"]


def test_missing_step_span_of_a_succeeded_step() -> None:
    spans = _without(_complete_spans("t1", TRACE), "step s1")
    assert missing_parts(_record("t1", TRACE), spans) == ["step s1"]


def test_missing_tool_span_of_a_succeeded_step() -> None:
    spans = _without(_complete_spans("t1", TRACE), "tool math_calculator")
    assert missing_parts(_record("t1", TRACE), spans) == ["tool math_calculator"]


@pytest.mark.parametrize("status", ["failed", "skipped"])
def test_steps_that_did_not_succeed_need_no_spans(status: str) -> None:
    record = _record(
        "t1",
        TRACE,
        steps=[
            {"step_id": "s1", "action": "math_calculator", "status": "succeeded"},
            {"step_id": "s2", "action": "sleep", "status": status},
        ],
    )
    assert missing_parts(record, _complete_spans("t1", TRACE)) == []


def test_every_missing_piece_is_listed() -> None:
    record = _record("t1", TRACE)
    missing = missing_parts(record, [_span("other", TRACE)])
    assert missing == [
        "one task span for t1 (found 0)",
        "plan",
        "validate",
        "review",
        "model.call planner",
        "model.call reviewer",
        "step s1",
        "tool math_calculator",
    ]


def test_record_without_steps() -> None:
    record = _record("t1", TRACE, steps=[])
    spans = _without(_without(_complete_spans("t1", TRACE), "step s1"), "tool math_calculator")
    assert missing_parts(record, spans) == []
    record.pop("steps")
    assert missing_parts(record, spans) == []


# --------------------------------------------------------------------------------------------------
# index_trace_file
# --------------------------------------------------------------------------------------------------


def _write_spans(path: Path, spans: list[dict[str, Any]], extra_lines: tuple[str, ...] = ()) -> Path:
    lines = [json.dumps(s) for s in spans] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_index_groups_spans_by_trace_and_tasks_by_trace(tmp_path: Path) -> None:
    a, b = "aa" * 16, "bb" * 16
    spans = (
        _complete_spans("t1", a)
        + _complete_spans("t2", b)
        + [_span("late", b, **{"officeray.task_id": "t1"})]
    )
    path = _write_spans(tmp_path / "traces.jsonl", spans, extra_lines=("{corrupt", ""))
    by_trace, traces_of_task = index_trace_file(path)
    assert set(by_trace) == {a, b}  # "0x" stripped
    assert len(by_trace[a]) == len(_complete_spans("t1", a))
    assert len(by_trace[b]) == len(_complete_spans("t2", b)) + 1
    assert traces_of_task == {"t1": {a, b}, "t2": {b}}


def test_index_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    assert index_trace_file(tmp_path / "absent.jsonl") == ({}, {})


# --------------------------------------------------------------------------------------------------
# completed_task_ids
# --------------------------------------------------------------------------------------------------


def _write_samples(out: Path, samples: list[dict[str, Any]], extra_lines: tuple[str, ...] = ()) -> None:
    lines = [json.dumps(s) for s in samples] + list(extra_lines)
    (out / SAMPLES_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _completion(task_id: str, status: str = "completed") -> dict[str, Any]:
    return {
        "t": 1.0,
        "type": COMPLETION_TYPE,
        "name": "math",
        "ms": 10.0,
        "ok": status == "completed",
        "task_id": task_id,
        "status": status,
    }


def test_completed_task_ids_reads_only_completed_task_samples(tmp_path: Path) -> None:
    _write_samples(
        tmp_path,
        [
            _completion("t1"),
            {"t": 1.0, "type": "POST", "name": "/v1/tasks", "ms": 3.0, "ok": True},
            {"t": 1.0, "type": "GET", "name": "/v1/tasks/[id]", "ms": 3.0, "ok": True, "status": "completed"},
            _completion("t2", "failed"),
            _completion("t3", "unfinished"),
            _completion("t4"),
        ],
        extra_lines=("not json",),
    )
    assert completed_task_ids(tmp_path) == ["t1", "t4"]


def test_completed_task_ids_without_a_samples_file(tmp_path: Path) -> None:
    assert completed_task_ids(tmp_path) == []


# --------------------------------------------------------------------------------------------------
# check_traces against a loopback task API
# --------------------------------------------------------------------------------------------------


class _Api:
    """``GET /v1/tasks/<id>`` and ``GET /v1/tasks/<id>/trace`` from dicts; 404 for anything else."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.traces: dict[str, dict[str, Any]] = {}
        self.paths: list[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                api.paths.append(self.path)
                parts = self.path.strip("/").split("/")
                body: dict[str, Any] | None = None
                if parts[:2] == ["v1", "tasks"] and len(parts) == 3:
                    body = api.records.get(parts[2])
                elif parts[:2] == ["v1", "tasks"] and len(parts) == 4 and parts[3] == "trace":
                    body = api.traces.get(parts[2])
                data = json.dumps(body if body is not None else {"detail": "not found"}).encode()
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Api]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    served = _Api()
    thread = threading.Thread(target=served.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield served
    finally:
        served.server.shutdown()
        served.server.server_close()
        thread.join(timeout=5)


def _trace_id(n: int) -> str:
    return f"{n:032x}"


def test_check_traces_from_a_trace_file(api: _Api, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    spans: list[dict[str, Any]] = []
    for n in (1, 2, 3, 4):
        task_id = f"t{n}"
        api.records[task_id] = _record(task_id, _trace_id(n))
        spans += _complete_spans(task_id, _trace_id(n))
    # t2 lost its review span; t3 has a span in a second trace; t5 has no record; t6 failed
    spans = [
        s for s in spans if not (s["name"] == "review" and s["context"]["trace_id"] == f"0x{_trace_id(2)}")
    ]
    spans.append(_span("step s9", _trace_id(99), **{"officeray.task_id": "t3"}))
    # t4's spans never reached the trace file
    spans = [s for s in spans if s["context"]["trace_id"] != f"0x{_trace_id(4)}"]
    trace_file = _write_spans(tmp_path / "traces.jsonl", spans)
    _write_samples(
        out,
        [
            _completion("t1"),
            _completion("t2"),
            _completion("t3"),
            _completion("t4"),
            _completion("t5"),
            _completion("t6", "failed"),
        ],
    )

    result = check_traces(out, api.url, trace_file=trace_file, limit=None)

    assert result["checked"] == 5
    assert result["complete"] == 1
    assert result["completeness"] == pytest.approx(1 / 5)
    assert result["source"] == "trace file"
    assert result["sampled"] is False
    assert result["tiers"] == ["embedded"]
    missing = {item["task_id"]: item["missing"] for item in result["incomplete"]}
    assert missing == {
        "t2": ["review"],
        "t3": ["spans of the task in 1 other trace(s)"],
        "t4": ["the whole trace"],
        "t5": ["the task record (GET /v1/tasks/{id} failed)"],
    }
    # traces came from the file, not the API
    assert not any(path.endswith("/trace") for path in api.paths)


def test_check_traces_over_the_api(api: _Api, tmp_path: Path) -> None:
    for n in (1, 2):
        task_id = f"t{n}"
        api.records[task_id] = _record(task_id, _trace_id(n))
        spans = _complete_spans(task_id, _trace_id(n))
        if n == 2:
            spans = _without(spans, "model.call", "reviewer")
        api.traces[task_id] = {"trace_id": _trace_id(n), "spans": spans}
    _write_samples(tmp_path, [_completion("t1"), _completion("t2")])

    result = check_traces(tmp_path, api.url, trace_file=None, limit=None)

    assert result["source"] == "api"
    assert (result["checked"], result["complete"]) == (2, 1)
    assert result["completeness"] == pytest.approx(0.5)
    assert result["incomplete"] == [{"task_id": "t2", "missing": ["model.call reviewer"]}]


def test_check_traces_samples_at_most_limit_tasks(api: _Api, tmp_path: Path) -> None:
    spans: list[dict[str, Any]] = []
    for n in range(30):
        task_id = f"t{n}"
        api.records[task_id] = _record(task_id, _trace_id(n))
        spans += _complete_spans(task_id, _trace_id(n))
    trace_file = _write_spans(tmp_path / "traces.jsonl", spans)
    out = tmp_path / "run"
    out.mkdir()
    _write_samples(out, [_completion(f"t{n}") for n in range(30)])

    result = check_traces(out, api.url, trace_file=trace_file, limit=7)
    assert result["sampled"] is True
    assert result["checked"] == result["complete"] == 7
    assert result["completeness"] == 1.0
    assert len([p for p in api.paths if p.startswith("/v1/tasks/")]) == 7

    # a limit at or above the number of completions checks them all, unsampled
    whole = check_traces(out, api.url, trace_file=trace_file, limit=30)
    assert whole["sampled"] is False
    assert whole["checked"] == 30


def test_check_traces_lists_a_bounded_number_of_examples(api: _Api, tmp_path: Path) -> None:
    count = MAX_EXAMPLES + 5
    _write_samples(tmp_path, [_completion(f"gone{n}") for n in range(count)])
    result = check_traces(tmp_path, api.url, trace_file=tmp_path / "absent.jsonl", limit=None)
    assert result["checked"] == count
    assert result["complete"] == 0
    assert result["completeness"] == 0.0
    assert len(result["incomplete"]) == MAX_EXAMPLES


def test_check_traces_without_completions(api: _Api, tmp_path: Path) -> None:
    result = check_traces(tmp_path, api.url, trace_file=None, limit=None)
    assert result["checked"] == 0
    assert result["completeness"] is None
    assert result["incomplete"] == []
