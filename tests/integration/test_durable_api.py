"""The durable-task HTTP API on the real stack: idempotency keys, the dead-letter queue, approvals,
the body size limit, retry-policy validation and the 503 of an unreachable store."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from ray.exceptions import RayTaskError

from cluster.runtime import LocalStack
from officeray.auth import parse_key
from officeray.contracts import StepResult, StepStatus, TaskRecord, TaskRequest, TaskStatus
from officeray.errors import StoreUnavailableError
from serving import gateway
from serving.gateway import MAX_REQUEST_BYTES
from tests.integration.conftest import bearer
from tests.integration.stored import with_store

pytestmark = pytest.mark.integration

POLL_TIMEOUT_S = 120
CONCURRENT_POSTS = 8
FAILING_TASK = "Run python:\nraise SystemExit(3)"


def _base(stack: LocalStack) -> str:
    return f"http://127.0.0.1:{stack.settings.serve.port}"


@pytest.fixture
def client(stack: LocalStack, admin_key: str) -> Any:
    with httpx.Client(base_url=_base(stack), headers=bearer(admin_key), timeout=60) as http:
        yield http


def _tenant() -> str:
    """A tenant of its own per test, so what one test creates never shows in another's queries."""
    return f"t-{uuid.uuid4().hex[:12]}"


def _tasks_of(stack: LocalStack, tenant: str) -> list[str]:
    records = with_store(stack.settings.store.url, lambda store: store.list_tasks(limit=10_000))
    return [r.task_id for r in records if r.tenant == tenant]


def _wait_final(client: httpx.Client, task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while time.monotonic() < deadline:
        body = client.get(f"/v1/tasks/{task_id}").json()
        if body["status"] in ("completed", "failed"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} did not finish in {POLL_TIMEOUT_S}s")


def _wait_in_dlq(client: httpx.Client, task_id: str, tenant: str) -> list[dict[str, Any]]:
    """The tenant's DLQ entries once ``task_id`` is among them (dead-lettering follows the final save)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        entries = client.get("/v1/dlq", params={"tenant": tenant}).json()["entries"]
        if any(e["task_id"] == task_id for e in entries):
            return list(entries)
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} did not reach the dead-letter queue")


# -- idempotency -------------------------------------------------------------------------------------


def test_idempotency_header_returns_the_first_task(stack: LocalStack, client: httpx.Client) -> None:
    tenant, key = _tenant(), uuid.uuid4().hex
    body = {"description": "What is 6 * 7?", "tenant": tenant}
    first = client.post("/v1/tasks", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == 202, first.text
    again = client.post("/v1/tasks", json=body, headers={"Idempotency-Key": key})
    assert again.status_code == 200, again.text
    assert again.json()["task_id"] == first.json()["task_id"]
    # the same request without the header is a new task; the key alone decides
    other = client.post("/v1/tasks", json=body)
    assert other.status_code == 202 and other.json()["task_id"] != first.json()["task_id"]
    assert _wait_final(client, first.json()["task_id"])["result"] == 42
    assert sorted(_tasks_of(stack, tenant)) == sorted([first.json()["task_id"], other.json()["task_id"]])


def test_idempotency_key_in_the_body_and_in_both_places(stack: LocalStack, client: httpx.Client) -> None:
    tenant, key = _tenant(), uuid.uuid4().hex
    body = {"description": "What is 2 + 2?", "tenant": tenant, "idempotency_key": key}
    first = client.post("/v1/tasks", json=body)
    assert first.status_code == 202, first.text
    task_id = first.json()["task_id"]
    # body again, then the header with the same value, then the header alone: the same task
    assert client.post("/v1/tasks", json=body).json()["task_id"] == task_id
    both = client.post("/v1/tasks", json=body, headers={"Idempotency-Key": key})
    assert both.status_code == 200 and both.json()["task_id"] == task_id
    without = {k: v for k, v in body.items() if k != "idempotency_key"}
    header_only = client.post("/v1/tasks", json=without, headers={"Idempotency-Key": key})
    assert header_only.status_code == 200 and header_only.json()["task_id"] == task_id
    assert _tasks_of(stack, tenant) == [task_id]


def test_idempotency_key_in_header_and_body_must_agree(client: httpx.Client) -> None:
    body = {"description": "What is 2 + 2?", "tenant": _tenant(), "idempotency_key": "body-key"}
    response = client.post("/v1/tasks", json=body, headers={"Idempotency-Key": "header-key"})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "Idempotency-Key" in detail and "idempotency_key" in detail
    assert "header-key" in detail and "body-key" in detail


def test_idempotency_key_with_a_different_body_is_a_conflict(stack: LocalStack, client: httpx.Client) -> None:
    tenant, key = _tenant(), uuid.uuid4().hex
    first = client.post(
        "/v1/tasks", json={"description": "What is 1 + 1?", "tenant": tenant, "idempotency_key": key}
    )
    assert first.status_code == 202, first.text
    for changed in (
        {"description": "What is 1 + 2?"},
        {"description": "What is 1 + 1?", "max_iterations": 2},
        {"description": "What is 1 + 1?", "metadata": {"a": 1}},
    ):
        response = client.post("/v1/tasks", json={**changed, "tenant": tenant, "idempotency_key": key})
        assert response.status_code == 409, response.text
        detail = response.json()["detail"]
        assert key in detail and "was used with a different request" in detail
    assert _tasks_of(stack, tenant) == [first.json()["task_id"]]
    # keys are per tenant: the same key in another tenant is another task
    elsewhere = client.post(
        "/v1/tasks", json={"description": "What is 1 + 2?", "tenant": _tenant(), "idempotency_key": key}
    )
    assert elsewhere.status_code == 202 and elsewhere.json()["task_id"] != first.json()["task_id"]


def test_concurrent_posts_with_one_key_make_one_task(stack: LocalStack, admin_key: str) -> None:
    tenant, key = _tenant(), uuid.uuid4().hex
    body = {"description": "What is 3 ** 3?", "tenant": tenant}

    def post(_: int) -> httpx.Response:
        with httpx.Client(base_url=_base(stack), timeout=60) as http:
            return http.post("/v1/tasks", json=body, headers={"Idempotency-Key": key, **bearer(admin_key)})

    with ThreadPoolExecutor(CONCURRENT_POSTS) as pool:
        responses = list(pool.map(post, range(CONCURRENT_POSTS)))
    assert all(r.status_code in (200, 202) for r in responses), [r.text for r in responses]
    task_ids = {r.json()["task_id"] for r in responses}
    assert len(task_ids) == 1
    assert sorted(r.status_code for r in responses) == [200] * (CONCURRENT_POSTS - 1) + [202]
    assert _tasks_of(stack, tenant) == list(task_ids)


def test_a_claim_whose_task_never_got_created_is_taken_over(stack: LocalStack, client: httpx.Client) -> None:
    """A gateway that claimed a key and then failed to submit (store down, crash) does not block
    the client's retry: the same request with the same key creates the task under the claimed id."""
    tenant, key = _tenant(), uuid.uuid4().hex
    request = TaskRequest(description="What is 5 * 5?", tenant=tenant)
    dangling = f"task-{uuid.uuid4().hex[:16]}"
    claim = with_store(
        stack.settings.store.url,
        lambda store: store.claim_idempotency_key(tenant, key, request.fingerprint(), dangling),
    )
    assert claim == (dangling, True)
    body = request.model_dump(mode="json", exclude_none=True)
    retried = client.post("/v1/tasks", json=body, headers={"Idempotency-Key": key})
    assert retried.status_code == 202, retried.text
    assert retried.json()["task_id"] == dangling
    assert _wait_final(client, dangling)["result"] == 25
    different = client.post(
        "/v1/tasks", json={**body, "description": "What is 5 * 6?"}, headers={"Idempotency-Key": key}
    )
    assert different.status_code == 409


@pytest.mark.parametrize("key", ["", "k" * 201])
def test_a_bad_idempotency_header_is_a_422(client: httpx.Client, key: str) -> None:
    response = client.post(
        "/v1/tasks", json={"description": "What is 1 + 1?"}, headers={"Idempotency-Key": key}
    )
    assert response.status_code == 422
    assert "idempotency-key" in response.json()["detail"].lower()


# -- retry policy, body size -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ({"maximum_step_attempts": 0}, "retry_policy.maximum_step_attempts"),
        ({"maximum_model_calls": "many"}, "retry_policy.maximum_model_calls"),
        ({"maximum_duration_s": -1}, "retry_policy.maximum_duration_s"),
        ({"surprise": 1}, "retry_policy.surprise"),
        ("fast", "retry_policy"),
    ],
)
def test_a_bad_retry_policy_is_a_422_naming_the_field(client: httpx.Client, policy: Any, field: str) -> None:
    response = client.post("/v1/tasks", json={"description": "What is 1 + 1?", "retry_policy": policy})
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"]
    assert any(e["field"].startswith(field) for e in response.json()["errors"])


def test_a_good_retry_policy_is_accepted(client: httpx.Client) -> None:
    policy = {"maximum_step_attempts": 5, "maximum_model_calls": 4, "maximum_duration_s": 120}
    response = client.post("/v1/tasks", json={"description": "What is 9 * 9?", "retry_policy": policy})
    assert response.status_code == 202, response.text
    assert _wait_final(client, response.json()["task_id"])["result"] == 81


def test_a_body_over_the_limit_is_a_413(client: httpx.Client) -> None:
    padding = "x" * MAX_REQUEST_BYTES
    response = client.post("/v1/tasks", json={"description": "What is 1 + 1?", "metadata": {"pad": padding}})
    assert response.status_code == 413
    assert str(MAX_REQUEST_BYTES) in response.json()["detail"]

    def chunks() -> Any:  # no Content-Length: the streamed body is counted
        for _ in range(MAX_REQUEST_BYTES // 65536 + 2):
            yield b" " * 65536

    streamed = client.post("/v1/tasks", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    # just under the limit is parsed as usual (here: refused by the schema, not by size)
    near = client.post("/v1/tasks", json={"description": "x" * (MAX_REQUEST_BYTES - 1000)})
    assert near.status_code == 422 and "description" in near.json()["detail"]
    assert client.get("/healthz").status_code == 200


# -- dead-letter queue -------------------------------------------------------------------------------


def test_a_task_that_fails_for_good_is_dead_lettered_and_can_be_retried(client: httpx.Client) -> None:
    tenant = _tenant()
    created = client.post("/v1/tasks", json={"description": FAILING_TASK, "tenant": tenant})
    assert created.status_code == 202, created.text
    task_id = created.json()["task_id"]
    assert _wait_final(client, task_id)["status"] == "failed"

    entries = _wait_in_dlq(client, task_id, tenant)
    assert [e["task_id"] for e in entries] == [task_id]
    assert entries[0]["tenant"] == tenant and entries[0]["reason"] and entries[0]["created_at"]
    assert any(e["task_id"] == task_id for e in client.get("/v1/dlq").json()["entries"])
    assert client.get("/v1/dlq", params={"tenant": _tenant()}).json()["entries"] == []

    entry = client.get(f"/v1/dlq/{task_id}")
    assert entry.status_code == 200
    assert entry.json()["record"]["task_id"] == task_id and entry.json()["record"]["status"] == "failed"

    retried = client.post(f"/v1/dlq/{task_id}/retry")
    assert retried.status_code == 202, retried.text
    assert retried.json()["task_id"] == task_id and retried.json()["status"] not in ("completed", "failed")
    # it fails again (the program is the same) and is back in the queue
    assert _wait_final(client, task_id)["status"] == "failed"
    assert [e["task_id"] for e in _wait_in_dlq(client, task_id, tenant)] == [task_id]
    kinds = [e["kind"] for e in client.get(f"/v1/tasks/{task_id}/events").json()["events"]]
    assert "retried_from_dlq" in kinds


def test_dlq_unknown_ids_and_bad_queries(client: httpx.Client) -> None:
    assert client.get("/v1/dlq/task-not-there").status_code == 404
    missing = client.post("/v1/dlq/task-not-there/retry")
    assert missing.status_code == 404 and "dead-letter queue" in missing.json()["detail"]
    assert client.get("/v1/dlq", params={"limit": 0}).status_code == 422
    assert client.get("/v1/dlq", params={"tenant": "no spaces"}).status_code == 422


def test_a_completed_task_cannot_be_retried_from_the_dlq(client: httpx.Client) -> None:
    created = client.post("/v1/tasks", json={"description": "What is 4 + 4?"})
    task_id = created.json()["task_id"]
    assert _wait_final(client, task_id)["status"] == "completed"
    assert client.post(f"/v1/dlq/{task_id}/retry").status_code == 404


# -- approvals ---------------------------------------------------------------------------------------


def test_approvals_of_unknown_tasks_are_404(client: httpx.Client) -> None:
    decision = {"decision": "approve", "by": "alice"}
    response = client.post("/v1/tasks/task-not-there/approvals/s1", json=decision)
    assert response.status_code == 404 and "not found" in response.json()["detail"]
    assert client.get("/v1/tasks/task-not-there/approvals/s1").status_code == 404


def test_approving_a_step_that_does_not_wait_is_a_409(client: httpx.Client) -> None:
    created = client.post("/v1/tasks", json={"description": "What is 7 + 8?"})
    task_id = created.json()["task_id"]
    assert _wait_final(client, task_id)["status"] == "completed"
    for step_id in ("s1", "no-such-step"):
        response = client.post(
            f"/v1/tasks/{task_id}/approvals/{step_id}",
            json={"decision": "reject", "by": "bob", "reason": "no"},
        )
        assert response.status_code == 409, response.text
        assert response.json()["code"] == "approval_conflict"
        assert "not waiting for approval" in response.json()["detail"]
    # nothing was recorded
    assert client.get(f"/v1/tasks/{task_id}/approvals/s1").status_code == 404


def test_a_waiting_step_is_decided_once(stack: LocalStack, client: httpx.Client, admin_key: str) -> None:
    """The decision is stored (as decided by the key, whatever the body's ``by`` says), the
    orchestrator notified, and a second decision refused. No built-in tool needs approval with the
    default config, so the waiting task is written to the store directly; without a stored request
    no orchestrator picks it up to run it."""
    key_id = parse_key(admin_key)
    task_id = f"task-{uuid.uuid4().hex[:16]}"
    waiting = StepResult(
        step_id="s1",
        action="python_executor",
        idempotency_key=f"{task_id}:1:s1",
        status=StepStatus.WAITING_APPROVAL,
    )
    record = TaskRecord(
        task_id=task_id, description="approval probe", status=TaskStatus.WAITING_APPROVAL, steps=[waiting]
    )
    with_store(stack.settings.store.url, lambda store: store.save_task(record))
    assert client.get(f"/v1/tasks/{task_id}/approvals/s1").status_code == 404

    approved = client.post(
        f"/v1/tasks/{task_id}/approvals/s1",
        json={"decision": "approve", "by": "alice", "reason": "looks safe"},
    )
    assert approved.status_code == 200, approved.text
    body = approved.json()
    assert body["task_id"] == task_id and body["step_id"] == "s1" and body["decision"] == "approved"
    assert body["decided_by"] == key_id and body["decided_at"]

    again = client.post(f"/v1/tasks/{task_id}/approvals/s1", json={"decision": "reject", "by": "bob"})
    assert again.status_code == 409
    assert "already decided" in again.json()["detail"] and str(key_id) in again.json()["detail"]

    stored = client.get(f"/v1/tasks/{task_id}/approvals/s1")
    assert stored.status_code == 200
    assert stored.json()["decision"] == "approved" and stored.json()["reason"] == "looks safe"
    assert stored.json()["decided_by"] == key_id and stored.json()["decided_at"] == body["decided_at"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"decision": "maybe", "by": "alice"}, "decision"),
        ({"decision": "approve", "by": ""}, "by"),
        ({"decision": "approve", "by": "alice", "extra": 1}, "extra"),
    ],
)
def test_a_bad_approval_body_is_a_422(client: httpx.Client, body: dict[str, Any], field: str) -> None:
    response = client.post("/v1/tasks/task-any/approvals/s1", json=body)
    assert response.status_code == 422
    assert field in response.json()["detail"]


# -- store unavailable -------------------------------------------------------------------------------


def test_an_unreachable_store_answers_503_with_retry_after() -> None:
    """The gateway's handler, for the error raised in the gateway and for the same error raised in
    the orchestrator actor (Ray wraps it in a RayTaskError that is also a StoreUnavailableError)."""
    app = FastAPI()
    app.add_exception_handler(StoreUnavailableError, gateway._store_unavailable)

    @app.get("/local")
    async def local() -> None:
        raise StoreUnavailableError("connection refused")

    @app.get("/remote")
    async def remote() -> None:
        cause = StoreUnavailableError("database is locked")
        raise RayTaskError("submit", "Traceback (most recent call last): ...", cause).as_instanceof_cause()

    with TestClient(app) as test_client:
        for path, message in (("/local", "connection refused"), ("/remote", "database is locked")):
            response = test_client.get(path)
            assert response.status_code == 503
            assert response.headers["retry-after"] == "5"
            assert "unavailable" in response.json()["detail"] and message in response.json()["detail"]
            assert "Traceback" not in response.json()["detail"]
