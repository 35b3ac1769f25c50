"""Escalation to a person on the shared stack (Ray, Serve, two orchestrator shards, Docker runners): a
task submitted with ``require_sign_off`` runs, and the embedded reviewer escalates its results; the
task waits in ``waiting_review`` with the proposed result, a user key may not decide it (403), an
approver key of its tenant accepts it over HTTP, and the task completes with that result."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from officeray.auth import Role
from tests.integration.conftest import base_url, bearer, create_key

pytestmark = pytest.mark.integration

TENANT = "signoff"
WAIT_S = 180.0
POLL_S = 0.5


def _until_status(http: httpx.Client, task_id: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while True:
        record: dict[str, Any] = http.get(f"/v1/tasks/{task_id}").raise_for_status().json()
        if record["status"] == status:
            return record
        assert record["status"] not in ("completed", "failed", "cancelled"), record.get("error")
        assert time.monotonic() < deadline, f"task {task_id} is {record['status']}, not {status}"
        time.sleep(POLL_S)


def test_a_task_that_asks_for_sign_off_waits_until_an_approver_accepts_it(stack: Any) -> None:
    url = stack.settings.store.url
    user, approver = create_key(url, TENANT, Role.USER), create_key(url, TENANT, Role.APPROVER)
    with (
        httpx.Client(base_url=base_url(stack), headers=bearer(user), timeout=60) as as_user,
        httpx.Client(base_url=base_url(stack), headers=bearer(approver), timeout=60) as as_approver,
    ):
        submitted = as_user.post(
            "/v1/tasks",
            json={"description": "Compute (17 * 3 + 9) / 4", "require_sign_off": True},
        )
        assert submitted.status_code == 202, submitted.text
        task_id = submitted.json()["task_id"]

        waiting = _until_status(as_user, task_id, "waiting_review")
        pending = waiting["review_pending"]
        assert pending["iteration"] == 1 and "sign-off" in pending["reason"]
        assert pending["proposed_output"] is not None and waiting["result"] is None
        listed = as_user.get("/v1/reviews").raise_for_status().json()
        assert task_id in [r["task_id"] for r in listed["reviews"]]

        refused = as_user.post(f"/v1/tasks/{task_id}/review", json={"decision": "accept"})
        assert refused.status_code == 403, refused.text
        assert refused.json()["code"] == "forbidden"

        decided = as_approver.post(f"/v1/tasks/{task_id}/review", json={"decision": "accept"})
        assert decided.status_code == 200, decided.text
        assert decided.json()["decision"] == "accept"

        final = _until_status(as_user, task_id, "completed")
        assert final["result"] == pending["proposed_output"] and final["review_pending"] is None
        kinds = [
            e["kind"] for e in as_user.get(f"/v1/tasks/{task_id}/events").raise_for_status().json()["events"]
        ]
        assert kinds.index("review_escalated") < kinds.index("review_decided") < kinds.index("completed")
        again = as_approver.post(
            f"/v1/tasks/{task_id}/review", json={"decision": "reject", "feedback": "late"}
        )
        assert again.status_code == 409 and again.json()["code"] == "not_waiting_review"
