"""The operator's limits over HTTP, on the real stack: the submit rate (429 with ``Retry-After`` past
the burst, per tenant), the ceilings a request cannot raise (422 naming the ceiling), and webhook
targets the SSRF guard refuses (422)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from officeray.auth import Role
from tests.integration.conftest import THROTTLED_BURST, THROTTLED_TENANT, base_url, bearer, create_key

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
