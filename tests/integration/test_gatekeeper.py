"""The gatekeeper end to end on the shared stack: in a tenant with the default approval levels, a
high-risk step (python_exec) waits in ``waiting_approval`` until an approver's key decides it; code
that opens a socket is denied before it runs; every decision is a ``gatekeeper`` event of the task."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from officeray.auth import Role
from tests.integration.conftest import GUARDED_TENANT, base_url, bearer, create_key

pytestmark = pytest.mark.integration

TASK_TIMEOUT_S = 120.0


def _plan(code: str) -> dict[str, Any]:
    return {
        "plan_id": "gate",
        "task_id": "gate",
        "metadata": {"priority": 0, "required_tools": ["python_exec"]},
        "steps": [
            {"step_id": "s1", "action": "python_exec", "inputs": {"code": code}, "idempotency_key": "s1"}
        ],
    }


def _until(client: httpx.Client, task_id: str, statuses: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + TASK_TIMEOUT_S
    while time.monotonic() < deadline:
        body: dict[str, Any] = client.get(f"/v1/tasks/{task_id}").json()
        if body["status"] in statuses:
            return body
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} never reached {statuses}")


def _events(client: httpx.Client, task_id: str, kind: str) -> list[dict[str, Any]]:
    events = client.get(f"/v1/tasks/{task_id}/events").json()["events"]
    return [event["data"] for event in events if event["kind"] == kind]


@pytest.fixture(scope="module")
def guarded(stack: Any) -> tuple[httpx.Client, httpx.Client, str]:
    """Clients of the guarded tenant: a user's (submits) and an approver's, and the approver key."""
    url = stack.settings.store.url
    user_key = create_key(url, GUARDED_TENANT, Role.USER)
    approver_key = create_key(url, GUARDED_TENANT, Role.APPROVER)
    return (
        httpx.Client(base_url=base_url(stack), headers=bearer(user_key), timeout=60),
        httpx.Client(base_url=base_url(stack), headers=bearer(approver_key), timeout=60),
        approver_key,
    )


def test_a_high_risk_step_waits_until_an_approver_decides(
    guarded: tuple[httpx.Client, httpx.Client, str],
) -> None:
    user, approver, _ = guarded
    submitted = user.post(
        "/v1/tasks", json={"description": "Print a greeting", "plan": _plan("print('hi there')")}
    )
    assert submitted.status_code in (200, 201, 202), submitted.text
    task_id = submitted.json()["task_id"]

    waiting = _until(user, task_id, {"waiting_approval"})
    assert waiting["steps"][0]["status"] == "waiting_approval"
    (gate,) = _events(user, task_id, "gatekeeper")
    assert gate["verdict"] == "approval" and gate["risk"] == "high" and gate["rule"] == "risk_level"
    assert gate["step_id"] == "s1" and gate["action"] == "python_exec"
    (asked,) = _events(user, task_id, "approval_requested")
    assert asked["risk"] == "high" and "python_exec" in asked["reason"]

    # a user of the tenant may not decide; its approver may
    assert user.post(f"/v1/tasks/{task_id}/approvals/s1", json={"decision": "approve"}).status_code == 403
    decided = approver.post(f"/v1/tasks/{task_id}/approvals/s1", json={"decision": "approve", "reason": "ok"})
    assert decided.status_code == 200, decided.text

    done = _until(user, task_id, {"completed", "failed"})
    assert done["status"] == "completed", done.get("error")
    assert done["steps"][0]["output"]["stdout"].strip() == "hi there"
    (audit,) = _events(user, task_id, "approval_decided")
    assert audit["decision"] == "approved"


def test_code_that_opens_a_socket_is_denied_before_it_runs(
    guarded: tuple[httpx.Client, httpx.Client, str],
) -> None:
    user, _, _ = guarded
    code = "import socket\nsocket.create_connection(('example.com', 80))\nprint('sent')"
    submitted = user.post("/v1/tasks", json={"description": "Send a ping", "plan": _plan(code)})
    assert submitted.status_code in (200, 201, 202), submitted.text
    task_id = submitted.json()["task_id"]

    done = _until(user, task_id, {"completed", "failed"})
    assert done["status"] == "failed"
    gates = _events(user, task_id, "gatekeeper")
    denied = [g for g in gates if g["verdict"] == "deny"]
    assert denied and denied[0]["rule"] == "python_network" and "socket" in denied[0]["reason"]
    finished = [e for e in _events(user, task_id, "step_finished") if e["step_id"] == "s1"]
    assert finished and finished[0]["step_status"] == "failed"
    assert not _events(user, task_id, "step_started") or all(
        e["step_id"] != "s1" for e in _events(user, task_id, "step_started")
    )  # never ran
    assert "denied by the gatekeeper" in (done.get("error") or "") or any(
        (s.get("error") or {}).get("type") == "denied" for s in done["steps"]
    ), done
