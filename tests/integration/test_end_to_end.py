"""Real tasks through Ray, Serve, the orchestrator actor, tool-runner actors and Docker sandboxes."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from cluster.cli import read_task_lines
from cluster.runtime import LocalStack
from officeray.contracts import TaskRequest, TaskStatus
from tests.integration.conftest import REPO, bearer

pytestmark = pytest.mark.integration

POLL_TIMEOUT_S = 120


def _base(stack: LocalStack) -> str:
    return f"http://127.0.0.1:{stack.settings.serve.port}"


def _wait_final(client: httpx.Client, task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while time.monotonic() < deadline:
        body = client.get(f"/v1/tasks/{task_id}").json()
        if body["status"] in ("completed", "failed"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} did not finish in {POLL_TIMEOUT_S}s")


def test_example_tasks_all_complete_with_the_right_answers(stack: LocalStack) -> None:
    requests = read_task_lines(REPO / "examples" / "tasks.jsonl")
    records = stack.run(requests)
    by_text = {r.description: r for r in records}
    for record in records:
        assert record.status == TaskStatus.COMPLETED, (record.description, record.error, record.steps)
        assert record.trace_id and record.iterations == 1
    trace = by_text["Trace the call sequence from main to process_data in examples/sample_project"]
    names = [hop.split(" ")[0] for hop in trace.result["path"]]
    assert names[0].endswith("main") and names[-1].endswith("process_data") and len(names) >= 4
    assert by_text["Compute (17 * 3 + 9) / 4"].result == 15.0
    assert by_text["Compute 6 * 7 then calculate ans / 2"].result == 21.0
    assert by_text["Run python:\nimport statistics\nprint(statistics.mean([3, 5, 10]))"].result == "6"
    parallel = by_text["Calculate 2 ** 10 and also compute 3 ** 4"]
    assert parallel.result == {"s1": 1024, "s2": 81}
    (big,) = [r for r in records if r.description.startswith("Do these:")]
    assert [(s.subtask_id, s.status) for s in big.subtasks] == [
        ("s1", "completed"),
        ("s2", "completed"),
        ("s3", "completed"),
    ]


def test_parallel_steps_run_at_the_same_time(stack: LocalStack) -> None:
    code = "import time\ntime.sleep(1.5)\nprint('done')"
    text = f"Run python:\n```python\n{code}\n```\nand also run python:\n```python\n{code}\n```"
    started = time.monotonic()
    (record,) = stack.run([TaskRequest(description=text)])
    assert record.status == TaskStatus.COMPLETED, record.error
    first, second = record.steps
    assert first.started_at and second.started_at and first.finished_at and second.finished_at
    # the two steps overlap in time: each started before the other finished
    assert first.started_at < second.finished_at and second.started_at < first.finished_at
    assert time.monotonic() - started < 60


def test_failing_program_fails_the_task_with_its_error(stack: LocalStack) -> None:
    (record,) = stack.run([TaskRequest(description="Run python:\nraise SystemExit('boom: bad data')")])
    assert record.status == TaskStatus.FAILED
    assert "boom: bad data" in (record.error or "")
    assert record.steps[0].error is not None and record.steps[0].error.type.value == "tool_error"


def test_unplannable_task_fails_with_the_phrasings_it_understands(stack: LocalStack) -> None:
    (record,) = stack.run([TaskRequest(description="Book me a flight to Lisbon")])
    assert record.status == TaskStatus.FAILED
    assert "models.planner" in (record.error or "") and record.steps == []


def test_http_api_accepts_a_task_and_reports_progress(stack: LocalStack, admin_key: str) -> None:
    with httpx.Client(base_url=_base(stack), headers=bearer(admin_key), timeout=30) as client:
        health = client.get("/healthz").json()
        assert health["status"] == "ok"
        runners = stack.settings.runners.count * stack.settings.workflow.orchestrators  # a pool per shard
        assert health["tool_runners"]["runners"] == runners and health["tool_runners"]["starting"] == 0
        created = client.post("/v1/tasks", json={"description": "What is 2 ** 10?"})
        assert created.status_code == 202, created.text
        task_id = created.json()["task_id"]
        body = _wait_final(client, task_id)
        assert body["status"] == "completed" and body["result"] == 1024
        assert body["progress"]["succeeded"] == 1 and body["progress"]["total"] == 1
        assert body["steps"][0]["action"] == "math_calculator" and body["steps"][0]["attempts"] == 1
        assert any("succeeded" in line["message"] for line in body["logs"])

        events = client.get(f"/v1/tasks/{task_id}/events").json()["events"]
        kinds = [e["kind"] for e in events]
        assert kinds[0] == "accepted" and kinds[-1] == "completed" and "step_finished" in kinds

        again = client.post("/v1/tasks", json={"description": "What is 2 ** 10?", "task_id": task_id})
        assert again.status_code == 200 and again.json()["task_id"] == task_id


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "description"),
        ({"description": ""}, "description"),
        ({"description": "x", "surprise": 1}, "surprise"),
        ({"description": "x", "max_iterations": 0}, "max_iterations"),
        ([1, 2], "(body)"),
    ],
)
def test_http_api_bad_input_gets_a_422_naming_the_field(
    stack: LocalStack, admin_key: str, body: Any, fragment: str
) -> None:
    with httpx.Client(base_url=_base(stack), headers=bearer(admin_key), timeout=30) as client:
        response = client.post("/v1/tasks", json=body)
    assert response.status_code == 422
    assert fragment in response.json()["detail"]


def test_http_api_malformed_json_and_unknown_ids(stack: LocalStack, admin_key: str) -> None:
    with httpx.Client(base_url=_base(stack), headers=bearer(admin_key), timeout=30) as client:
        bad = client.post("/v1/tasks", content=b"{not json", headers={"content-type": "application/json"})
        assert bad.status_code == 422 and "invalid task request" in bad.json()["detail"]
        missing = client.get("/v1/tasks/task-does-not-exist")
        assert missing.status_code == 404 and "not found" in missing.json()["detail"]
        assert client.get("/v1/tasks/task-does-not-exist/trace").status_code == 404


def test_every_task_is_one_trace_with_all_its_spans(stack: LocalStack, admin_key: str) -> None:
    (record,) = stack.run([TaskRequest(description="Compute 1 + 1 then calculate ans * 10")])
    assert record.status == TaskStatus.COMPLETED and record.result == 20
    expected = {"task", "plan", "validate", "step s1", "step s2", "review", "tool math_calculator"}
    with httpx.Client(base_url=_base(stack), headers=bearer(admin_key), timeout=30) as client:
        deadline = time.monotonic() + 20  # spans reach the trace store in batches
        while True:
            served = client.get(f"/v1/tasks/{record.task_id}/trace").json()
            names = [s["name"] for s in served["spans"]]
            if expected <= set(names) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
    assert expected <= set(names), names
    assert {s["trace_id"] for s in served["spans"]} == {record.trace_id}
    assert {s["task_id"] for s in served["spans"]} == {record.task_id}
    starts = [s["start_ns"] for s in served["spans"]]
    assert starts == sorted(starts)


def test_long_poll_answers_when_the_task_ends_and_sleep_steps_hold_no_sandbox(
    stack: LocalStack, admin_key: str
) -> None:
    # four parallel 1 s waits with 2 sandbox runners: host steps do not queue for a runner
    description = " and also ".join(["wait 1 second"] * 4)
    with httpx.Client(base_url=_base(stack), headers=bearer(admin_key), timeout=60) as client:
        started = time.monotonic()
        task_id = client.post("/v1/tasks", json={"description": description}).json()["task_id"]
        early = client.get(f"/v1/tasks/{task_id}", params={"wait_s": 0.2})
        assert early.status_code == 200
        assert early.json()["status"] not in ("completed", "failed")  # the long poll timed out
        body = client.get(f"/v1/tasks/{task_id}", params={"wait_s": 20}).json()
        elapsed = time.monotonic() - started
        assert body["status"] == "completed", body
        assert elapsed < 3.5, f"four parallel 1 s waits took {elapsed:.1f} s"
        slept = [step["output"]["slept_s"] for step in body["steps"]]
        assert len(slept) == 4 and all(0.99 <= s < 1.5 for s in slept), slept
        too_long = client.get(f"/v1/tasks/{task_id}", params={"wait_s": 31})
        assert too_long.status_code == 422 and "wait_s" in too_long.text
