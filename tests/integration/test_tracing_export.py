"""Spans of one task, from every process (gateway, orchestrator, planner, runner, reviewer), reach a
loopback OTLP receiver with the task's trace id, under the caller's ``traceparent``; the trace API
answers the same spans from the trace store, as JSON and NDJSON."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from officeray.otlp_receiver import OtlpReceiver

pytestmark = pytest.mark.integration

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
EXPECTED_COMPONENTS = {"gateway", "orchestrator", "planner", "runner", "reviewer"}


def _finished(api: httpx.Client, task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    body = api.get(f"/v1/tasks/{task_id}", params={"wait_s": 30}).json()
    while body["status"] not in ("completed", "failed") and time.monotonic() < deadline:
        body = api.get(f"/v1/tasks/{task_id}", params={"wait_s": 30}).json()
    assert body["status"] == "completed", body
    return body


def _trace(api: httpx.Client, task_id: str, components: set[str]) -> dict[str, Any]:
    """The task's trace once spans of every one of ``components`` are in the trace store."""
    deadline = time.monotonic() + 30
    while True:
        trace = api.get(f"/v1/tasks/{task_id}/trace").json()
        if components <= {s["component"] for s in trace["spans"]} or time.monotonic() > deadline:
            return trace
        time.sleep(0.3)


def test_a_callers_traceparent_makes_the_task_its_child_in_otlp_and_the_trace_store(
    api: httpx.Client, otlp_receiver: OtlpReceiver
) -> None:
    traceparent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    answer = api.post(
        "/v1/tasks",
        json={"description": "Compute 2 + 3 then calculate ans * 4"},
        headers={"traceparent": traceparent},
    )
    assert answer.status_code == 202, answer.text
    task_id = answer.json()["task_id"]
    record = _finished(api, task_id)
    assert record["trace_id"] == CALLER_TRACE

    # OTLP: every process's spans, all in the caller's trace, the gateway's span under the caller's
    def complete(spans: list[Any]) -> bool:
        ours = [s for s in spans if s.trace_id == CALLER_TRACE]
        return {s.attributes.get("officeray.component") for s in ours} >= EXPECTED_COMPONENTS

    spans = [s for s in otlp_receiver.wait_for(complete, timeout_s=30) if s.trace_id == CALLER_TRACE]
    submit = next(s for s in spans if s.name == "submit")
    assert submit.parent_span_id == CALLER_SPAN
    assert submit.attributes["officeray.task_id"] == task_id
    task = next(s for s in spans if s.name == "task")
    assert task.parent_span_id == submit.span_id
    assert {s.attributes.get("officeray.task_id") for s in spans} == {task_id}
    assert {s.service_name for s in spans} == {"officeray"}
    by_component = {s.attributes["officeray.component"] for s in spans}
    assert by_component >= EXPECTED_COMPONENTS, by_component
    # the processes are distinct: the runner's and the planner's spans were made elsewhere
    instances = {s.attributes["officeray.component"]: s.resource["service.instance.id"] for s in spans}
    assert len({instances[c] for c in ("gateway", "orchestrator", "planner", "runner")}) == 4

    # the trace store answers the same spans, indexed by the task
    trace = _trace(api, task_id, EXPECTED_COMPONENTS)
    assert trace["trace_id"] == CALLER_TRACE
    stored = {s["span_id"] for s in trace["spans"]}
    assert {s.span_id for s in spans} <= stored
    lanes = {s["lane"] for s in trace["spans"]}
    assert {"gateway", "orchestrator", "planner", "validator", "reviewer"} <= lanes
    assert any(lane.startswith("runner:") for lane in lanes)
    assert [e["kind"] for e in trace["events"]][-1] == "completed"

    ndjson = api.get(f"/v1/tasks/{task_id}/trace", headers={"Accept": "application/x-ndjson"})
    assert ndjson.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in ndjson.text.splitlines()]
    assert [line["span_id"] for line in lines] == [s["span_id"] for s in trace["spans"]]


def test_a_malformed_traceparent_starts_a_new_trace(api: httpx.Client) -> None:
    answer = api.post(
        "/v1/tasks", json={"description": "Compute 1 + 1"}, headers={"traceparent": "00-zz-yy-01"}
    )
    assert answer.status_code == 202
    record = _finished(api, answer.json()["task_id"])
    assert record["trace_id"] and record["trace_id"] != CALLER_TRACE
    too_long = api.post(
        "/v1/tasks", json={"description": "Compute 1 + 1"}, headers={"traceparent": "0" * 500}
    )
    assert too_long.status_code == 422 and too_long.json()["code"]
