"""``POST /v1/tasks/{id}/cancel`` over HTTP on the real stack (Ray, Serve, Docker sandboxes): a task
whose 30-second step runs ends ``cancelled`` within 2 s, the step's process is gone from the
sandbox and its runner takes the next step; a final task answers 409, another tenant's 404."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from cluster.runtime import LocalStack
from officeray.auth import Role
from tests.integration.conftest import base_url, bearer, create_key

pytestmark = pytest.mark.integration

CANCELLED_WITHIN_S = 2.0
START_TIMEOUT_S = 60.0
DONE_TIMEOUT_S = 60.0


def _plan(action: str, inputs: dict[str, Any], step_id: str = "s1") -> dict[str, Any]:
    """A one-step ready plan in the published plan schema."""
    return {
        "plan_id": f"plan-{uuid.uuid4().hex[:8]}",
        "task_id": "unknown-yet",
        "confidence": 1.0,
        "metadata": {
            "priority": 0,
            "required_tools": [action],
            "estimated_cost_tokens": 0,
            "estimated_duration_seconds": 30,
        },
        "steps": [
            {
                "step_id": step_id,
                "action": action,
                "inputs": inputs,
                "outputs_expectation": None,
                "timeout_seconds": 120,
                "parallelizable": False,
                "idempotency_key": step_id,
                "dependencies": [],
            }
        ],
    }


def _submit(api: httpx.Client, action: str, inputs: dict[str, Any]) -> str:
    created = api.post(
        "/v1/tasks", json={"description": f"cancel test: {action}", "plan": _plan(action, inputs)}
    )
    assert created.status_code == 202, created.text
    return str(created.json()["task_id"])


def _until(api: httpx.Client, task_id: str, done: Any, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        record = api.get(f"/v1/tasks/{task_id}").json()
        if done(record):
            return dict(record)
        assert time.monotonic() < deadline, f"task {task_id} is {record['status']} after {timeout_s}s"
        time.sleep(0.05)


def _running(record: dict[str, Any]) -> bool:
    return any(step["status"] == "running" for step in record["steps"])


def _final(record: dict[str, Any]) -> bool:
    return record["status"] in ("completed", "failed", "cancelled")


def _cancel_and_time(api: httpx.Client, task_id: str) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    answer = api.post(f"/v1/tasks/{task_id}/cancel")
    assert answer.status_code == 202, answer.text
    assert answer.json()["task_id"] == task_id and answer.json()["status"] == "executing"
    record = _until(api, task_id, _final, CANCELLED_WITHIN_S + 5)
    return record, time.monotonic() - started


def _sandbox_programs() -> list[str]:
    """The command lines of every process in the sandbox containers, but their agents."""
    import docker

    from tools_sandbox.docker_sandbox import SANDBOX_LABEL

    client = docker.from_env()
    commands = []
    for container in client.containers.list(filters={"label": SANDBOX_LABEL, "status": "running"}):
        try:
            processes = container.top(ps_args="-eo pid,args")["Processes"] or []
        except docker.errors.APIError:
            continue  # removed meanwhile (a cancelled step's container)
        commands += [row[-1] for row in processes if "tools_sandbox.agent" not in row[-1]]
    return commands


def test_cancel_of_a_running_30_second_sandbox_step_ends_the_task_and_kills_the_step(
    api: httpx.Client, stack: LocalStack
) -> None:
    task_id = _submit(api, "python_exec", {"code": "import time\ntime.sleep(30)\n"})
    _until(api, task_id, _running, START_TIMEOUT_S)
    time.sleep(1.0)  # the program is sleeping in the sandbox now
    assert any("python" in command for command in _sandbox_programs())

    record, took = _cancel_and_time(api, task_id)

    assert record["status"] == "cancelled" and took < CANCELLED_WITHIN_S, (
        f"{record['status']} after {took:.2f}s"
    )
    step = record["steps"][0]
    assert step["status"] == "failed" and step["error"]["type"] == "cancelled"
    assert record["error"].startswith("cancelled by ")
    events = api.get(f"/v1/tasks/{task_id}/events").json()["events"]
    kinds = [event["kind"] for event in events]
    assert kinds[0] == "accepted" and "step_started" in kinds and kinds[-1] == "cancelled"
    assert events[-1]["data"]["by"] == record["error"].removeprefix("cancelled by ")
    assert api.get(f"/v1/dlq/{task_id}").status_code == 404  # a cancelled task is not dead-lettered

    deadline = time.monotonic() + 10
    while (programs := _sandbox_programs()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert programs == [], f"left running in the sandboxes: {programs}"
    health = api.get("/healthz").json()["tool_runners"]
    assert health["idle"] == health["runners"]  # the runner is free again
    follow_up = _submit(api, "python_exec", {"code": "print(6 * 7)\n"})
    done = _until(api, follow_up, _final, DONE_TIMEOUT_S)
    assert done["status"] == "completed" and done["steps"][0]["output"]["stdout"].strip() == "42"


def test_cancel_of_a_30_second_wait_ends_the_task_within_2_seconds(api: httpx.Client) -> None:
    task_id = _submit(api, "sleep", {"seconds": 30})
    _until(api, task_id, _running, START_TIMEOUT_S)

    record, took = _cancel_and_time(api, task_id)

    assert record["status"] == "cancelled" and took < CANCELLED_WITHIN_S, (
        f"{record['status']} after {took:.2f}s"
    )
    assert record["steps"][0]["error"]["type"] == "cancelled"


def test_cancel_of_a_final_task_is_409_and_of_an_unknown_or_foreign_task_404(
    api: httpx.Client, stack: LocalStack
) -> None:
    task_id = _submit(api, "math_calculator", {"expression": "2 + 3"})
    done = _until(api, task_id, _final, DONE_TIMEOUT_S)
    again = api.post(f"/v1/tasks/{task_id}/cancel")
    assert again.status_code == 409 and again.json()["code"] == "task_final"
    assert again.json()["status"] == done["status"]

    missing = api.post("/v1/tasks/no-such-task/cancel")
    assert missing.status_code == 404 and missing.json()["code"] == "task_not_found"
    other = create_key(stack.settings.store.url, tenant="other-tenant", role=Role.USER)
    with httpx.Client(base_url=base_url(stack), headers=bearer(other), timeout=30) as stranger:
        foreign = stranger.post(f"/v1/tasks/{task_id}/cancel")
    assert foreign.status_code == 404 and foreign.json()["code"] == "task_not_found"
    assert (
        api.post(f"/v1/tasks/{task_id}/cancel", headers={"Authorization": "Bearer nope"}).status_code == 401
    )
