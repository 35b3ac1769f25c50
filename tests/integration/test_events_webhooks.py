"""Live events and webhooks on the real stack (Ray + Serve on loopback, local sandboxes):

* a client follows a task's server-sent events, loses its gateway replica (killed; Serve starts
  another) half-way, reconnects with ``Last-Event-ID`` and ends with exactly the task's events: none
  lost, none twice, in order, the same as the JSON list;
* a webhook receiver (a loopback HTTP server here) that answers 500 twice still gets the task's
  ``completed`` event, three times the same event id and body, each with a valid signature; the
  attempts show at ``GET /v1/tasks/{id}/webhooks``.

Retries are fast through settings (``webhooks.initial_backoff_s``), loopback is allowed through
``webhooks.allow_hosts``: both set for the package's stack by ``integration_settings``."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import httpx_sse
import pytest
import ray

from cluster.runtime import LocalStack
from officeray.auth import ApiKeyRecord, Role, mint_key
from officeray.store import SqlStore
from officeray.webhooks import EVENT_ID_HEADER, SIGNATURE_HEADER, verify_signature

pytestmark = pytest.mark.integration

STEP_S = 1.5
"""Each sleep step of the followed task: long enough to lose the gateway in the middle of it."""
STEPS = 4
REPLICA_BACK_TIMEOUT_S = 90
TASK_TIMEOUT_S = 120
WEBHOOK_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def events_stack(stack: LocalStack) -> LocalStack:
    """The package's stack: its settings (:func:`~tests.integration.conftest.integration_settings`)
    allow loopback webhooks and retry them after 0.3 s, 0.6 s... (one stack per test run: a second
    one in the same process would end the first one's Ray)."""
    return stack


@pytest.fixture(scope="module")
def key(events_stack: LocalStack) -> tuple[str, ApiKeyRecord]:
    """A user key of a tenant of its own, stored where the gateway looks for keys."""
    plain, record = mint_key(f"t-{uuid.uuid4().hex[:10]}", Role.USER)

    async def store_it() -> None:
        store = SqlStore(events_stack.settings.store.url)
        try:
            assert await store.create_api_key(record)
        finally:
            store.close()

    asyncio.run(store_it())
    return plain, record


@pytest.fixture
def client(events_stack: LocalStack, key: tuple[str, ApiKeyRecord]) -> Iterator[httpx.Client]:
    base = f"http://127.0.0.1:{events_stack.settings.serve.port}"
    with httpx.Client(base_url=base, timeout=60, headers={"Authorization": f"Bearer {key[0]}"}) as http:
        yield http


def _sleep_plan(steps: int, seconds: float) -> dict[str, Any]:
    """A ready plan of ``steps`` sleeps, one after another."""
    return {
        "plan_id": f"plan-{uuid.uuid4().hex[:8]}",
        "task_id": "unknown-yet",
        "confidence": 1.0,
        "metadata": {"priority": 0, "required_tools": ["sleep"], "estimated_cost_tokens": 0},
        "steps": [
            {
                "step_id": f"s{i}",
                "action": "sleep",
                "inputs": {"seconds": seconds},
                "outputs_expectation": None,
                "timeout_seconds": 60,
                "parallelizable": False,
                "idempotency_key": f"sleep-{i}",
                "dependencies": [f"s{i - 1}"] if i > 1 else [],
            }
            for i in range(1, steps + 1)
        ],
    }


def _submit(client: httpx.Client, body: dict[str, Any]) -> str:
    created = client.post("/v1/tasks", json=body)
    assert created.status_code == 202, created.text
    return str(created.json()["task_id"])


def _wait_final(client: httpx.Client, task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + TASK_TIMEOUT_S
    while time.monotonic() < deadline:
        body = client.get(f"/v1/tasks/{task_id}", params={"wait_s": 10}).json()
        if body["status"] in ("completed", "failed", "cancelled"):
            return dict(body)
    raise AssertionError(f"task {task_id} did not finish in {TASK_TIMEOUT_S}s")


def _follow(
    client: httpx.Client, task_id: str, last_id: str | None, stop_after: int | None = None
) -> list[tuple[int, str, dict[str, Any]]]:
    """The stream's events ``(id, kind, event JSON)``, resuming after ``last_id``; stops reading after
    ``stop_after`` events (the connection is dropped), else at the stream's end."""
    headers = {"Accept": "text/event-stream"} | ({"Last-Event-ID": last_id} if last_id else {})
    seen: list[tuple[int, str, dict[str, Any]]] = []
    with httpx_sse.connect_sse(client, "GET", f"/v1/tasks/{task_id}/events", headers=headers) as source:
        assert source.response.status_code == 200, source.response.read()
        assert source.response.headers["content-type"].startswith("text/event-stream")
        for sse in source.iter_sse():
            if not sse.id or not sse.data:
                continue  # the reconnect advice
            seen.append((int(sse.id), sse.event, json.loads(sse.data)))
            if stop_after is not None and len(seen) >= stop_after:
                break
    return seen


def _kill_gateway_replicas() -> int:
    """Kill every replica of the Gateway deployment (Serve's controller starts new ones)."""
    killed = 0
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["name"].startswith("SERVE_REPLICA::") and "Gateway" in actor["name"]:
            ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
            killed += 1
    return killed


def _wait_gateway_back(client: httpx.Client, task_id: str) -> None:
    deadline = time.monotonic() + REPLICA_BACK_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if client.get(f"/v1/tasks/{task_id}/events").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"no gateway replica answered within {REPLICA_BACK_TIMEOUT_S}s")


def test_sse_resumes_across_a_gateway_replica_restart_without_loss_or_duplicates(
    client: httpx.Client,
) -> None:
    task_id = _submit(client, {"description": "sleep a while", "plan": _sleep_plan(STEPS, STEP_S)})
    first = _follow(client, task_id, None, stop_after=3)
    assert len(first) == 3
    assert _kill_gateway_replicas() >= 1
    _wait_gateway_back(client, task_id)
    rest = _follow(client, task_id, str(first[-1][0]))
    streamed = first + rest
    listed = client.get(f"/v1/tasks/{task_id}/events").json()["events"]
    assert [event for _, _, event in streamed] == listed  # nothing lost, nothing twice
    assert all((event["id"], event["kind"]) == (i, kind) for i, kind, event in streamed)
    ids = [event_id for event_id, _, _ in streamed]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert streamed[-1][1] == "completed" and streamed[-1][2]["data"]["status"] == "completed"
    assert len(streamed) > STEPS  # at least one transition per step
    # a stream opened after the end sends what is left after the given id, and ends
    assert _follow(client, task_id, str(ids[-2])) == streamed[-1:]
    assert _follow(client, task_id, str(ids[-1])) == []


class _Receiver(ThreadingHTTPServer):
    """A webhook receiver on loopback: answers each POST with the next status of ``statuses``
    (then 204) and keeps ``(headers, body)`` of each."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class _ReceiverHandler(BaseHTTPRequestHandler):
    server: _Receiver

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with self.server.lock:
            self.server.received.append((dict(self.headers.items()), body))
            status = self.server.statuses.pop(0) if self.server.statuses else 204
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Quiet."""


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    server = _Receiver([500, 500])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_webhook_receiver_that_fails_twice_gets_the_signed_event(
    client: httpx.Client, key: tuple[str, ApiKeyRecord], receiver: _Receiver
) -> None:
    plan = _sleep_plan(1, 0.1)
    task_id = _submit(client, {"description": "nap", "plan": plan, "webhook_url": receiver.url})
    assert _wait_final(client, task_id)["status"] == "completed"
    deadline = time.monotonic() + WEBHOOK_TIMEOUT_S
    while len(receiver.received) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(receiver.received) == 3, receiver.received
    secret = key[1].webhook_secret
    event_ids = {headers[EVENT_ID_HEADER] for headers, _ in receiver.received}
    assert len(event_ids) == 1 and len({body for _, body in receiver.received}) == 1
    for headers, body in receiver.received:
        assert verify_signature(body, secret, headers[SIGNATURE_HEADER])
    payload = json.loads(receiver.received[0][1])
    assert (payload["task_id"], payload["event"], payload["id"]) == (task_id, "completed", event_ids.pop())
    deliveries = client.get(f"/v1/tasks/{task_id}/webhooks").json()["deliveries"]
    deadline = time.monotonic() + 10  # the last attempt is recorded just after the answer
    while deliveries[0]["status"] != "delivered" and time.monotonic() < deadline:
        time.sleep(0.1)
        deliveries = client.get(f"/v1/tasks/{task_id}/webhooks").json()["deliveries"]
    [delivery] = deliveries
    assert delivery["status"] == "delivered" and delivery["url"] == receiver.url
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 500, 204]
    assert delivery["payload"] == payload


def test_events_and_webhooks_of_another_tenants_task_are_not_found(
    events_stack: LocalStack, client: httpx.Client
) -> None:
    other_plain, other = mint_key(f"t-{uuid.uuid4().hex[:10]}", Role.USER)

    async def store_it() -> None:
        store = SqlStore(events_stack.settings.store.url)
        try:
            await store.create_api_key(other)
        finally:
            store.close()

    asyncio.run(store_it())
    task_id = _submit(client, {"description": "nap", "plan": _sleep_plan(1, 0.1)})
    stranger = {"Authorization": f"Bearer {other_plain}"}
    for path in (f"/v1/tasks/{task_id}/webhooks", f"/v1/tasks/{task_id}/events"):
        answer = client.get(path, headers=stranger)
        assert answer.status_code == 404 and answer.json()["code"] == "task_not_found"
    bad = client.get(f"/v1/tasks/{task_id}/events", headers={"Last-Event-ID": "soon"})
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_last_event_id"
