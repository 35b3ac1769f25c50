"""Webhooks: the signature, the retry schedule, the SSRF decision on a target (a table of hostile
URLs), and the delivery loop against a receiver behind an httpx mock transport with the in-memory
store."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from actors.webhooks import (
    NO_KEY_REASON,
    REVOKED_KEY_REASON,
    WebhookDeliverer,
    vet_webhook_target,
    webhook_url_problem,
)
from officeray.auth import ApiKeyRecord, Role, mint_key
from officeray.config import WebhookSettings
from officeray.contracts import TaskRecord, TaskRequest, TaskStatus
from officeray.testing import InMemoryStore
from officeray.urls import UrlRefused
from officeray.webhooks import (
    EVENT_HEADER,
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    DeliveryStatus,
    next_attempt_at,
    retry_delay_s,
    sign,
    verify_signature,
    webhook_event_for,
)

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

# -- signing -------------------------------------------------------------------------------------------

BODY = b'{"id":"whk-1","event":"completed"}'
SECRET = "top-secret"
SIGNATURE = "sha256=10824257d8eeaf2b0fa8a336e41e34fe91c36539add7e98a75a6bb0e85b62865"
"""``openssl dgst -sha256 -hmac top-secret`` of :data:`BODY`."""


def test_the_signature_is_the_hex_hmac_sha256_of_the_raw_body() -> None:
    assert sign(BODY, SECRET) == SIGNATURE
    assert verify_signature(BODY, SECRET, SIGNATURE)


@pytest.mark.parametrize(
    ("body", "secret", "header"),
    [
        (BODY + b" ", SECRET, SIGNATURE),  # the body changed
        (BODY, "other-secret", SIGNATURE),
        (BODY, SECRET, SIGNATURE.upper()),
        (BODY, SECRET, SIGNATURE.removeprefix("sha256=")),  # no scheme
        (BODY, SECRET, "sha1=" + SIGNATURE.removeprefix("sha256=")),
        (BODY, SECRET, SIGNATURE[:-1]),
        (BODY, SECRET, ""),
        (BODY, SECRET, None),
        (BODY, SECRET, 12345),
        (BODY, SECRET, "sha256=" + "0" * 64),
    ],
)
def test_a_wrong_signature_is_refused(body: bytes, secret: str, header: object) -> None:
    assert not verify_signature(body, secret, header)


# -- which transitions are announced -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "event"),
    [
        ("completed", TaskStatus.COMPLETED, "completed"),
        ("failed", TaskStatus.FAILED, "failed"),
        ("cancelled", TaskStatus.CANCELLED, "cancelled"),
        ("approval_requested", TaskStatus.WAITING_APPROVAL, "waiting_approval"),
        ("approval_decided", TaskStatus.EXECUTING, None),
        ("step_finished", TaskStatus.EXECUTING, None),
        ("planned", TaskStatus.PLANNING, None),
        ("retried_from_dlq", TaskStatus.QUEUED, None),
    ],
)
def test_webhook_events(kind: str, status: TaskStatus, event: str | None) -> None:
    assert webhook_event_for(kind, status) == event


# -- the retry schedule --------------------------------------------------------------------------------

POLICY = WebhookSettings(initial_backoff_s=10, backoff_coefficient=2, max_backoff_s=300, jitter=0.5)


def test_backoff_grows_exponentially_up_to_its_cap() -> None:
    no_jitter = [retry_delay_s(n, POLICY, lambda: 0.0) for n in range(1, 9)]
    assert no_jitter == [10, 20, 40, 80, 160, 300, 300, 300]
    assert retry_delay_s(10_000, POLICY, lambda: 0.0) == 300  # no overflow


def test_jitter_takes_off_up_to_its_fraction_of_the_wait() -> None:
    assert retry_delay_s(3, POLICY, lambda: 0.999999) == pytest.approx(20.0, abs=1e-3)
    assert retry_delay_s(3, POLICY, lambda: 0.5) == 30.0
    # a random source out of [0, 1) cannot push the wait outside [wait * (1 - jitter), wait]
    assert retry_delay_s(3, POLICY, lambda: 7.0) == 20.0
    assert retry_delay_s(3, POLICY, lambda: -3.0) == 40.0


def test_retries_go_on_for_max_age_then_stop() -> None:
    settings = WebhookSettings(max_age_s=3600, initial_backoff_s=10, max_backoff_s=900, jitter=0.5)
    now, failed, attempts = T0, 0, [T0]
    while True:
        failed += 1
        later = next_attempt_at(T0, failed, now, settings, lambda: 0.3)
        if later is None:
            break
        assert later > now
        now = later
        attempts.append(now)
    assert attempts[-1] == T0 + timedelta(seconds=3600)  # one last try at the deadline, not past it
    assert 5 < len(attempts) < 20
    assert next_attempt_at(T0, 1, T0 + timedelta(hours=2), settings, lambda: 0.0) is None


def test_the_schedule_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        WebhookSettings(max_age_s=60)  # at least an hour
    with pytest.raises(ValueError):
        WebhookSettings(jitter=1.5)
    with pytest.raises(ValueError):
        WebhookSettings(backoff_coefficient=0.5)


# -- the SSRF decision ---------------------------------------------------------------------------------

ALLOWED_URLS = [
    "https://hooks.example.com/officeray",
    "http://hooks.example.com:8080/a?b=c",
    "https://93.184.216.34/hook",
    "https://[2606:2800:220:1:248:1893:25c8:1946]/hook",
]

HOSTILE_URLS = [
    "http://127.0.0.1/",
    "http://127.1/",
    "http://2130706433/",  # 127.0.0.1 in decimal
    "http://017700000001/",  # ...in octal
    "http://0x7f.0.0.1/",  # ...in hex
    "http://0/",
    "http://0.0.0.0:8000/",
    "http://10.1.2.3/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",  # CGNAT
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://100.100.100.200/",
    "http://[::1]/",
    "http://[::]/",
    "http://[::ffff:127.0.0.1]/",  # IPv4-mapped loopback
    "http://[::ffff:a9fe:a9fe]/",  # IPv4-mapped metadata
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 metadata
    "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
    "http://[fd00:ec2::254]/",
    "http://[fe80::1]/",
    "http://[fe80::1%25eth0]/",  # zone id
    "http://[fc00::1]/",
    "http://localhost:8080/",
    "http://LOCALHOST./",
    "http://api.localhost/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://user:pass@hooks.example.com/",  # credentials
    "http://hooks.example.com@127.0.0.1/",  # userinfo trick
    "http://127.0.0.1\\@hooks.example.com/",
    "http://hooks.example.com%2f@127.0.0.1/",
    "http://1.2.3.08/",  # looks numeric, is not an address
    "http://256.1.1.1/",
    "http://hooks.example.com:99999/",
    "http:///no-host",
    "http:hooks.example.com",
    "ftp://hooks.example.com/",
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_",
    "javascript:alert(1)",
    "data:text/plain,hi",
    "//hooks.example.com/",
    "",
    "http://hooks.example.com/\r\nX-Injected: 1",
    "http://hooks .example.com/",
    "https://" + "a" * 9000 + ".com/",
]


@pytest.mark.parametrize("url", ALLOWED_URLS)
def test_public_targets_are_allowed(url: str) -> None:
    assert webhook_url_problem(url) is None


@pytest.mark.parametrize("url", HOSTILE_URLS)
def test_hostile_targets_are_refused_with_a_reason(url: str) -> None:
    problem = webhook_url_problem(url)
    assert isinstance(problem, str) and problem


@pytest.mark.parametrize("value", [None, 42, b"http://hooks.example.com/", ["http://a.com/"]])
def test_a_target_that_is_not_text_is_refused(value: object) -> None:
    assert webhook_url_problem(value) == "the webhook URL must be a string"


def test_allow_hosts_opens_loopback_for_that_host_and_port_only() -> None:
    assert webhook_url_problem("http://127.0.0.1:9999/hook", ["127.0.0.1"]) is None
    assert webhook_url_problem("http://127.0.0.1:9999/hook", ["127.0.0.1:9999"]) is None
    assert webhook_url_problem("http://127.0.0.1:9998/hook", ["127.0.0.1:9999"]) is not None
    assert webhook_url_problem("http://[::1]:9999/hook", ["::1"]) is None
    assert webhook_url_problem("http://10.0.0.1/hook", ["127.0.0.1"]) is not None
    # the allowlist opens the host, never another scheme or credentials
    assert webhook_url_problem("file:///etc/passwd", ["127.0.0.1"]) is not None
    assert webhook_url_problem("http://u:p@127.0.0.1/", ["127.0.0.1"]) is not None
    # a malformed entry allows nothing (and breaks nothing)
    assert webhook_url_problem("http://127.0.0.1/", ["http://127.0.0.1/", "a@b"]) is not None


def _resolver(*addresses: str) -> Callable[[str, int], list[str]]:
    return lambda host, port: list(addresses)


def test_a_name_is_vetted_by_the_addresses_it_resolves_to() -> None:
    vetted = vet_webhook_target("https://hooks.example.com/x", [], _resolver("93.184.216.34"))
    assert vetted.addresses == ("93.184.216.34",) and vetted.host == "hooks.example.com"
    for private in ("10.0.0.5", "127.0.0.1", "169.254.169.254", "::1", "::ffff:10.0.0.1"):
        with pytest.raises(UrlRefused):
            vet_webhook_target("https://hooks.example.com/x", [], _resolver("93.184.216.34", private))
    # a name an allowlist opens may resolve to loopback
    assert vet_webhook_target("http://hook.test/x", ["hook.test"], _resolver("127.0.0.1")).addresses == (
        "127.0.0.1",
    )


# -- delivery -----------------------------------------------------------------------------------------

HOOK = "http://127.0.0.1:9/hook"
FAST = WebhookSettings(allow_hosts=["127.0.0.1"], initial_backoff_s=5, jitter=0.0, timeout_s=2)


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Receiver:
    """An httpx mock transport answering from a script of statuses; records each request."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.requests: list[httpx.Request] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        status = self.statuses.pop(0)
        headers = {"Location": "http://127.0.0.1:9/elsewhere"} if 300 <= status < 400 else {}
        return httpx.Response(status, headers=headers)

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)


async def _hooked_task(store: InMemoryStore, task_id: str, key: ApiKeyRecord | None, url: str = HOOK) -> None:
    request = TaskRequest(
        description="x", task_id=task_id, webhook_url=url, submitted_by=None if key is None else key.key_id
    )
    await store.create_task(TaskRecord(task_id=task_id, description="x"), request)
    done = TaskRecord(task_id=task_id, description="x", status=TaskStatus.COMPLETED)
    await store.finish_task(done, "completed", {"status": "completed", "error": None})


async def _key(store: InMemoryStore) -> ApiKeyRecord:
    _, record = mint_key("default", Role.USER)
    await store.create_api_key(record)
    return record


def _deliverer(
    store: InMemoryStore, receiver: Receiver, clock: Clock, settings: WebhookSettings = FAST
) -> WebhookDeliverer:
    return WebhookDeliverer(
        store, settings, "orchestrator-0", transport=receiver.transport, now=clock, rand=lambda: 0.0
    )


async def test_a_receiver_that_fails_twice_gets_the_same_signed_event_the_third_time() -> None:
    store, clock, receiver = InMemoryStore(), Clock(), Receiver(500, 500, 204)
    key = await _key(store)
    await _hooked_task(store, "t1", key)
    deliverer = _deliverer(store, receiver, clock)
    clock.advance(1)
    assert await deliverer.deliver_due() == 1
    assert await deliverer.deliver_due() == 0  # not due before its backoff
    clock.advance(5)  # initial_backoff_s
    assert await deliverer.deliver_due() == 1
    clock.advance(9)
    assert await deliverer.deliver_due() == 0
    clock.advance(1)  # 5 * 2
    assert await deliverer.deliver_due() == 1
    [delivery] = await store.webhook_deliveries("t1")
    assert delivery.status == DeliveryStatus.DELIVERED
    assert [a.status_code for a in delivery.attempts] == [500, 500, 204]
    assert delivery.attempts[0].error == "HTTP 500: not a 2xx answer"
    ids = {r.headers[EVENT_ID_HEADER] for r in receiver.requests}
    bodies = {r.content for r in receiver.requests}
    assert ids == {delivery.delivery_id} and len(bodies) == 1  # the same event each time
    for request in receiver.requests:
        assert verify_signature(request.content, key.webhook_secret, request.headers[SIGNATURE_HEADER])
        assert request.headers[EVENT_HEADER] == "completed"
        assert request.headers[TIMESTAMP_HEADER] == str(int(delivery.created_at.timestamp()))
        assert request.method == "POST" and request.headers["content-type"] == "application/json"
    payload = json.loads(receiver.requests[0].content)
    assert (payload["id"], payload["task_id"], payload["event"]) == (delivery.delivery_id, "t1", "completed")


async def test_a_redirect_is_a_failure_and_is_not_followed() -> None:
    store, clock, receiver = InMemoryStore(), Clock(), Receiver(302)
    await _hooked_task(store, "t1", await _key(store))
    clock.advance(1)
    await _deliverer(store, receiver, clock).deliver_due()
    [delivery] = await store.webhook_deliveries("t1")
    assert len(receiver.requests) == 1 and str(receiver.requests[0].url) == HOOK
    assert delivery.status == DeliveryStatus.PENDING and delivery.attempts[0].status_code == 302
    assert "redirect" in (delivery.attempts[0].error or "")


async def test_without_a_key_to_sign_with_nothing_is_sent() -> None:
    store, clock, receiver = InMemoryStore(), Clock(), Receiver()
    await _hooked_task(store, "anonymous", None)
    revoked = await _key(store)
    await store.revoke_api_key(revoked.key_id)
    await _hooked_task(store, "revoked", revoked)
    gone = await _key(store)
    await _hooked_task(store, "gone", gone.model_copy(update={"key_id": "0" * 12}))
    clock.advance(1)
    assert await _deliverer(store, receiver, clock).deliver_due() == 3
    assert receiver.requests == []
    for task_id, reason in [
        ("anonymous", NO_KEY_REASON),
        ("revoked", REVOKED_KEY_REASON),
        ("gone", NO_KEY_REASON),
    ]:
        [delivery] = await store.webhook_deliveries(task_id)
        assert (delivery.status, delivery.reason) == (DeliveryStatus.NOT_SENT, reason)
        assert delivery.attempts[0].status_code is None


async def test_a_refused_target_is_given_up_without_a_request() -> None:
    store, clock, receiver = InMemoryStore(), Clock(), Receiver()
    await _hooked_task(store, "t1", await _key(store), url="http://169.254.169.254/latest/meta-data/")
    clock.advance(1)
    await _deliverer(store, receiver, clock).deliver_due()
    [delivery] = await store.webhook_deliveries("t1")
    assert receiver.requests == []
    assert delivery.status == DeliveryStatus.GIVEN_UP
    assert "cloud metadata" in (delivery.reason or "")


async def test_a_delivery_is_given_up_after_max_age() -> None:
    store, clock = InMemoryStore(), Clock()
    receiver = Receiver(*[503] * 100)
    await _hooked_task(store, "t1", await _key(store))
    settings = FAST.model_copy(update={"max_backoff_s": 1200.0})
    deliverer = _deliverer(store, receiver, clock, settings)
    for _ in range(100):
        clock.advance(1200)
        await deliverer.deliver_due()
    [delivery] = await store.webhook_deliveries("t1")
    assert delivery.status == DeliveryStatus.GIVEN_UP
    assert "not delivered within 21600s" in (delivery.reason or "")
    assert delivery.attempts[-1].at - delivery.created_at >= timedelta(seconds=FAST.max_age_s)
    assert len(receiver.requests) == len(delivery.attempts) < 100


async def test_a_receiver_that_does_not_answer_in_time_is_retried() -> None:
    store, clock = InMemoryStore(), Clock()

    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("no answer", request=request)

    await _hooked_task(store, "t1", await _key(store))
    clock.advance(1)
    deliverer = WebhookDeliverer(store, FAST, "o", transport=httpx.MockTransport(hang), now=clock)
    await deliverer.deliver_due()
    [delivery] = await store.webhook_deliveries("t1")
    assert delivery.status == DeliveryStatus.PENDING
    assert delivery.attempts[0].error == "no answer within 2s"


async def test_each_attempt_is_a_webhook_span_in_the_tasks_trace() -> None:
    from officeray.testing import in_memory_tracer

    store, clock, receiver = InMemoryStore(), Clock(), Receiver(500, 204)
    key = await _key(store)
    await _hooked_task(store, "t1", key)
    record = await store.get_task("t1")
    assert record is not None
    record.trace_id, record.trace_parent = "ab" * 16, f"00-{'ab' * 16}-{'cd' * 8}-01"
    await store.save_task(record)
    tracer, spans = in_memory_tracer()
    deliverer = WebhookDeliverer(
        store, FAST, "o", transport=receiver.transport, now=clock, rand=lambda: 0.0, tracer=tracer
    )
    clock.advance(1)
    assert await deliverer.deliver_due() == 1
    clock.advance(5)
    assert await deliverer.deliver_due() == 1
    first, second = spans.get_finished_spans()
    for span in (first, second):
        assert span.name == "webhook"
        assert format(span.context.trace_id, "032x") == "ab" * 16
        assert span.parent is not None and format(span.parent.span_id, "016x") == "cd" * 8
        assert span.attributes is not None and span.attributes["officeray.task_id"] == "t1"
    assert first.attributes is not None and second.attributes is not None
    assert (
        first.attributes["officeray.webhook.attempt"],
        second.attributes["officeray.webhook.attempt"],
    ) == (1, 2)
    assert (first.status.is_ok, first.attributes["officeray.webhook.status"]) == (False, "pending")
    assert second.attributes["officeray.webhook.status"] == "delivered"


# -- when the loop claims -------------------------------------------------------------------------------

SLOW_POLL = FAST.model_copy(update={"poll_interval_s": 60.0})
"""A poll that never comes within a test: whatever is delivered was woken for."""


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _received(receiver: Receiver, count: int, within_s: float) -> bool:
    deadline = asyncio.get_running_loop().time() + within_s
    while len(receiver.requests) < count and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    return len(receiver.requests) >= count


async def test_a_woken_deliverer_sends_at_once_and_an_idle_one_waits_for_its_poll() -> None:
    store, receiver = InMemoryStore(), Receiver(204, 204)
    key = await _key(store)
    deliverer = WebhookDeliverer(store, SLOW_POLL, "orchestrator-0", transport=receiver.transport)
    running = asyncio.create_task(deliverer.run())
    try:
        await asyncio.sleep(0.05)  # the first pass found nothing; now it waits for its (slow) poll
        await _hooked_task(store, "t1", key)
        assert not await _received(receiver, 1, within_s=0.3)  # queued, nobody woke it: not yet
        deliverer.wake()
        assert await _received(receiver, 1, within_s=2.0)
        await _hooked_task(store, "t2", key)
        deliverer.wake()
        assert await _received(receiver, 2, within_s=2.0)
    finally:
        await _stop(running)
    assert [d.status for d in await store.webhook_deliveries("t2")] == [DeliveryStatus.DELIVERED]


async def test_wake_ups_during_a_claim_are_not_lost_and_coalesce() -> None:
    store, receiver = InMemoryStore(), Receiver(204, 204, 204)
    key = await _key(store)
    deliverer = WebhookDeliverer(store, SLOW_POLL, "orchestrator-0", transport=receiver.transport)
    running = asyncio.create_task(deliverer.run())
    try:
        await asyncio.sleep(0.05)
        for task_id in ("t1", "t2", "t3"):  # tasks that end together: one wake-up each
            await _hooked_task(store, task_id, key)
            deliverer.wake()
        assert await _received(receiver, 3, within_s=2.0)
    finally:
        await _stop(running)


async def test_the_pause_is_the_poll_or_less_when_a_retry_it_scheduled_comes_due_sooner() -> None:
    store, clock, receiver = InMemoryStore(), Clock(), Receiver(500, 204)
    key = await _key(store)
    await _hooked_task(store, "t1", key)
    deliverer = _deliverer(store, receiver, clock, SLOW_POLL)
    assert deliverer.pause_s() == 60.0  # nothing scheduled: the poll
    clock.advance(1)
    assert await deliverer.deliver_due() == 1  # 500: a retry in initial_backoff_s (5 s, no jitter)
    assert deliverer.pause_s() == pytest.approx(5.0)
    clock.advance(2)
    assert deliverer.pause_s() == pytest.approx(3.0)
    clock.advance(4)
    assert deliverer.pause_s() == 0.0  # overdue: claim now
