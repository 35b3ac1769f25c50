"""The operator's limits over HTTP, on the real stack: the submit rate (429 with ``Retry-After`` past
the burst, per tenant), the ceilings a request cannot raise (422 naming the ceiling), and webhook
targets the SSRF guard refuses (422)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from officeray.auth import Role
from tests.integration.conftest import (
    BACKLOGGED_TENANT,
    THROTTLED_BURST,
    THROTTLED_TENANT,
    base_url,
    bearer,
    create_key,
)

pytestmark = pytest.mark.integration

QUICK_TASK = {"description": "Compute 1 + 1"}


@pytest.fixture(scope="module")
def throttled(stack: Any) -> httpx.Client:
    key = create_key(stack.settings.store.url, THROTTLED_TENANT, Role.USER)
    return httpx.Client(base_url=base_url(stack), headers=bearer(key), timeout=60)


def test_past_the_burst_a_tenant_gets_429_with_retry_after_and_other_tenants_do_not(
    stack: Any, throttled: httpx.Client
) -> None:
    answers = [throttled.post("/v1/tasks", json=QUICK_TASK) for _ in range(THROTTLED_BURST + 2)]
    codes = [answer.status_code for answer in answers]
    assert codes[:THROTTLED_BURST] == [202] * THROTTLED_BURST, [a.text for a in answers]
    refused = answers[THROTTLED_BURST]
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    body = refused.json()
    assert body["code"] == "rate_limited" and THROTTLED_TENANT in body["detail"]
    # the old path is limited too, and nothing refused was created
    assert throttled.post("/tasks", json=QUICK_TASK).status_code == 429
    listed = throttled.get("/v1/tasks", params={"limit": 50}).json()["tasks"]
    assert len(listed) == THROTTLED_BURST

    other = create_key(stack.settings.store.url, f"t-{uuid.uuid4().hex[:8]}", Role.USER)
    with httpx.Client(base_url=base_url(stack), headers=bearer(other), timeout=60) as http:
        assert http.post("/v1/tasks", json=QUICK_TASK).status_code == 202


def test_a_request_above_a_ceiling_is_refused_naming_it(stack: Any) -> None:
    key = create_key(stack.settings.store.url, f"c-{uuid.uuid4().hex[:8]}", Role.USER)
    with httpx.Client(base_url=base_url(stack), headers=bearer(key), timeout=60) as http:
        too_big = http.post("/v1/tasks", json={**QUICK_TASK, "token_budget": 10_000_000})
        assert too_big.status_code == 422
        body = too_big.json()
        assert body["code"] == "over_ceiling"
        assert [e["field"] for e in body["errors"]] == ["token_budget"]
        assert "200000" in body["detail"] or "200,000" in body["detail"]
        attempts = {"retry_policy": {"maximum_step_attempts": 5000}}
        refused = http.post("/v1/tasks", json={**QUICK_TASK, **attempts})
        assert refused.status_code == 422 and refused.json()["code"] == "over_ceiling"
        assert http.get("/v1/tasks").json()["tasks"] == []  # nothing was created


@pytest.mark.parametrize(
    "url",
    ["http://10.0.0.1/hook", "ftp://127.0.0.1/hook", "http://user:pw@example.com/hook", "http://[::1]:9/x"],
)
def test_a_webhook_the_ssrf_guard_refuses_is_a_422(api: httpx.Client, url: str) -> None:
    answer = api.post("/v1/tasks", json={**QUICK_TASK, "webhook_url": url})
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["code"] == "invalid_webhook_url" and body["errors"][0]["field"] == "webhook_url"


BACKLOG = 6
WAIT_S = 4


def _final(http: httpx.Client, task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        body: dict[str, Any] = http.get(f"/v1/tasks/{task_id}", params={"wait_s": 10}).json()
        if body["status"] in ("completed", "failed", "cancelled"):
            return body
    raise AssertionError(f"task {task_id} did not end")


def test_a_tenants_backlog_waits_in_its_own_queue_and_another_tenant_runs_at_once(stack: Any) -> None:
    busy = create_key(stack.settings.store.url, BACKLOGGED_TENANT, Role.USER)
    other = create_key(stack.settings.store.url, f"o-{uuid.uuid4().hex[:8]}", Role.USER)
    base = base_url(stack)
    with (
        httpx.Client(base_url=base, headers=bearer(busy), timeout=60) as backlogged,
        httpx.Client(base_url=base, headers=bearer(other), timeout=60) as http,
    ):
        backlog = [
            backlogged.post("/v1/tasks", json={"description": f"Wait {WAIT_S} seconds"}).json()["task_id"]
            for _ in range(BACKLOG)
        ]
        queued = [backlogged.get(f"/v1/tasks/{t}").json()["status"] for t in backlog]
        assert queued.count("queued") >= BACKLOG - stack.settings.workflow.orchestrators, queued
        started = time.monotonic()
        task_id = http.post("/v1/tasks", json=QUICK_TASK).json()["task_id"]
        done = _final(http, task_id)
        took = time.monotonic() - started
        assert done["status"] == "completed" and done["result"] == 2
        assert took < WAIT_S, f"the other tenant's task waited {took:.1f}s behind the backlog"
        # the backlog is still waiting its turn, one task per shard at a time
        still = [backlogged.get(f"/v1/tasks/{t}").json()["status"] for t in backlog]
        assert still.count("completed") <= stack.settings.workflow.orchestrators, still
        for task in backlog:
            backlogged.post(f"/v1/tasks/{task}/cancel")  # the stack is shared: free its slots
