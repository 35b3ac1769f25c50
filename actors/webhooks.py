"""Webhook delivery: the loop that POSTs the store's outbox, and the SSRF decision on a target.

Each orchestrator runs a :class:`WebhookDeliverer` (started with its background loops). When woken
(:meth:`WebhookDeliverer.wake`: a task of this process queued a delivery), when a retry it scheduled
comes due, and at the latest every ``webhooks.poll_interval_s`` (deliveries queued by other
orchestrators, or left by one that died), it claims the deliveries that are due (with a lease, so of
several orchestrators one sends each delivery at a time: :meth:`~officeray.store.TaskStore.claim_webhooks`),
POSTs each one signed with the submitting key's ``webhook_secret``
(:func:`officeray.webhooks.webhook_headers`), and records the attempt with its outcome:

* a 2xx answer: ``delivered``;
* anything else (another status, a redirect, which is never followed, a timeout, no connection, a
  target the SSRF guard refuses after DNS): ``pending`` again at
  :func:`officeray.webhooks.next_attempt_at` (exponential backoff with jitter), or ``given_up``
  once ``webhooks.max_age_s`` has passed since the event;
* a URL refused without DNS (:func:`webhook_url_problem`: a scheme, a credential, an internal name
  or a non-public IP literal): ``given_up`` at once;
* no key to sign with (the task was submitted without one, or its key is gone or revoked):
  ``not_sent``.

Delivery is at least once: an orchestrator that dies after the POST and before recording it leaves
the lease to expire, and the delivery is sent again (receivers deduplicate by the event id).

The target is vetted by :func:`tools_sandbox.ssrf.check_url` (loopback, private, link-local,
metadata... refused unless the host is in ``webhooks.allow_hosts``), and the request goes to the
vetted address (the name is not resolved again), so DNS rebinding cannot redirect it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

import httpx
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from officeray.auth import ApiKeyRecord
from officeray.config import WebhookSettings
from officeray.contracts import TaskRecord, utcnow
from officeray.metrics import NO_METRICS, Metrics
from officeray.telemetry import TASK_ID_ATTR, attached, parse_traceparent, remote_parent, with_task
from officeray.urls import UrlRefused, normalise_allow_entry, parse_url
from officeray.webhooks import (
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    next_attempt_at,
    short_error,
    webhook_headers,
)
from tools_sandbox.ssrf import (
    BLOCKED_NAMES,
    Resolver,
    VettedUrl,
    blocked_reason,
    check_url,
    is_allowlisted,
    pinned_request_url,
)

logger = logging.getLogger(__name__)

LEASE_MARGIN_S = 30.0
"""A claimed delivery's lease outlasts its attempt's timeout (``webhooks.timeout_s``) by this much."""

DELIVERY_BATCH = 16
"""Deliveries one orchestrator claims and sends at once."""

WAKE_COALESCE_S = 0.05
"""How long a woken deliverer waits before it claims, so that the deliveries of tasks that end
together go out in one claim (one store transaction) rather than one each."""

NO_KEY_REASON = "no API key to sign with"
"""Why a delivery of a task submitted without an API key (or whose key is gone) is not sent."""

REVOKED_KEY_REASON = "the API key that submitted the task is revoked: no secret to sign with"


class DeliveryStore(Protocol):
    """The part of the store a :class:`WebhookDeliverer` uses."""

    async def claim_webhooks(
        self, owner: str, lease_s: float, now: datetime | None = None, limit: int = ...
    ) -> list[WebhookDelivery]: ...

    async def record_webhook_attempt(
        self,
        delivery_id: str,
        owner: str,
        attempt: WebhookAttempt,
        status: DeliveryStatus,
        next_attempt_at: datetime | None = None,
        reason: str | None = None,
    ) -> bool: ...

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None: ...

    async def get_task(self, task_id: str) -> TaskRecord | None: ...


# -- the SSRF decision (pure) -----------------------------------------------------------------------


def usable_allow_hosts(allow_hosts: Sequence[str]) -> list[str]:
    """The entries of ``allow_hosts`` that are well formed (a malformed one allows nothing)."""
    usable = []
    for entry in allow_hosts:
        try:
            normalise_allow_entry(entry)
        except ValueError:
            logger.warning("webhooks.allow_hosts entry %r is not 'host' or 'host:port': ignored", entry)
            continue
        usable.append(entry)
    return usable


def webhook_url_problem(url: object, allow_hosts: Sequence[str] = ()) -> str | None:
    """Why ``url`` may not be a webhook target, judged without DNS (what a submission is checked
    with: 422 when it answers a reason), or None.

    Refused: anything but an ``http``/``https`` URL with a host, a URL with credentials, a malformed
    host or port, internal names (``localhost``, ``*.localhost``, metadata), and IP literals that
    are not public (in any spelling: ``2130706433``, ``0x7f.1``, ``[::ffff:127.0.0.1]``), unless the
    host is in ``allow_hosts``. A name is resolved, and its addresses vetted, at each delivery
    (:func:`vet_webhook_target`)."""
    if not isinstance(url, str):
        return "the webhook URL must be a string"
    try:
        parsed = parse_url(url)
    except UrlRefused as exc:
        return exc.reason
    if is_allowlisted(parsed, usable_allow_hosts(allow_hosts)):
        return None
    if parsed.ip is None:
        if parsed.host in BLOCKED_NAMES or parsed.host.endswith(".localhost"):
            return f"host {parsed.host!r} is an internal name"
        return None
    reason = blocked_reason(parsed.ip)
    return None if reason is None else f"host {parsed.host!r} is {reason}"


def vet_webhook_target(url: str, allow_hosts: Sequence[str], resolve: Resolver | None = None) -> VettedUrl:
    """``url`` parsed, resolved (``resolve``; default: the system's resolver) and vetted by the SSRF
    guard; raises :class:`~officeray.urls.UrlRefused` naming why not."""
    return check_url(url, allow_hosts=usable_allow_hosts(allow_hosts), resolve=resolve)


# -- the delivery loop ------------------------------------------------------------------------------


class WebhookDeliverer:
    """Delivers the outbox of ``store`` as ``owner`` (an orchestrator's lease owner).

    ``transport`` (httpx) and ``resolve`` (DNS) are for tests; ``rand`` draws the jitter
    (``random.random``), ``now`` is the clock (``utcnow``) and ``sleep`` the pause of :meth:`run`
    between a wake-up and its claim (:data:`WAKE_COALESCE_S`); ``metrics`` counts the attempts by the
    state they leave the delivery in."""

    def __init__(
        self,
        store: DeliveryStore,
        settings: WebhookSettings,
        owner: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        resolve: Resolver | None = None,
        rand: Callable[[], float] = random.random,
        now: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        metrics: Metrics = NO_METRICS,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self._tracer = tracer
        self.settings = settings
        self.owner = owner
        self._transport = transport
        self._resolve = resolve
        self._rand = rand
        self._now = now
        self._sleep = sleep
        self._woken = asyncio.Event()
        self._next_retry: datetime | None = None
        """The earliest retry this deliverer scheduled and has not claimed yet."""

    def wake(self) -> None:
        """A delivery was queued in this process (a task ended): :meth:`run` claims it now rather
        than at its next poll. Call it from the thread of the loop :meth:`run` runs on."""
        self._woken.set()

    async def run(self) -> None:
        """Deliver what is due, for ever: when woken (:meth:`wake`), when a retry this deliverer
        scheduled comes due, and at the latest every ``webhooks.poll_interval_s``."""
        while True:
            self._woken.clear()  # a wake-up from here on (during the claim) runs another pass
            if self._next_retry is not None and self._next_retry <= self._now():
                self._next_retry = None
            try:
                while await self.deliver_due() == DELIVERY_BATCH:
                    pass  # a backlog: the next batch at once
            except Exception:
                logger.exception(
                    "webhook delivery failed; trying again in %ss", self.settings.poll_interval_s
                )
            if await self._idle(self.pause_s()):
                await self._sleep(WAKE_COALESCE_S)

    def pause_s(self) -> float:
        """How long :meth:`run` waits, unless woken, before its next claim: ``poll_interval_s``, or
        less when a retry this deliverer scheduled comes due sooner."""
        pause = self.settings.poll_interval_s
        if self._next_retry is not None:
            pause = min(pause, (self._next_retry - self._now()).total_seconds())
        return max(0.0, pause)

    async def _idle(self, timeout_s: float) -> bool:
        """Wait ``timeout_s`` or until woken; whether woken."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._woken.wait(), timeout_s)
        return self._woken.is_set()

    async def deliver_due(self) -> int:
        """Claim the deliveries due now and send them (at once); how many were claimed."""
        lease_s = self.settings.timeout_s + LEASE_MARGIN_S
        claimed = await self.store.claim_webhooks(self.owner, lease_s, self._now(), DELIVERY_BATCH)
        await asyncio.gather(*(self.deliver(delivery) for delivery in claimed))
        return len(claimed)

    async def deliver(self, delivery: WebhookDelivery) -> DeliveryStatus:
        """One attempt at ``delivery`` (claimed by this owner), recorded with its outcome; with a
        tracer, as a ``webhook`` span in the task's trace."""
        if self._tracer is None:
            return await self._deliver(delivery)
        record = await self.store.get_task(delivery.task_id)
        parent = None
        if record is not None:
            parent = parse_traceparent(record.trace_parent) or (
                remote_parent(record.trace_id) if record.trace_id else None
            )
        attributes: dict[str, str | int] = {
            TASK_ID_ATTR: delivery.task_id,
            "officeray.webhook.event": delivery.event,
            "officeray.webhook.delivery_id": delivery.delivery_id,
            "officeray.webhook.attempt": len(delivery.attempts) + 1,
        }
        tracer = self._tracer
        with (
            attached(with_task(delivery.task_id, parent or otel_context.Context())),
            tracer.start_as_current_span("webhook", kind=SpanKind.CLIENT, attributes=attributes) as span,
        ):
            status = await self._deliver(delivery)
            span.set_attribute("officeray.webhook.status", DeliveryStatus(status).value)
            if status != DeliveryStatus.DELIVERED:
                span.set_status(Status(StatusCode.ERROR, f"webhook {DeliveryStatus(status).value}"))
            return status

    async def _deliver(self, delivery: WebhookDelivery) -> DeliveryStatus:
        problem = webhook_url_problem(delivery.url, self.settings.allow_hosts)
        if problem is not None:
            refused = f"the webhook URL is refused: {problem}"
            return await self._record(delivery, WebhookAttempt(at=self._now(), error=refused), refused)
        secret, why_not = await self._secret(delivery.key_id)
        if secret is None:
            attempt = WebhookAttempt(at=self._now(), error=why_not)
            return await self._record(delivery, attempt, why_not, DeliveryStatus.NOT_SENT)
        attempt = await self._post(delivery, secret)
        return await self._record(delivery, attempt)

    async def _secret(self, key_id: str | None) -> tuple[str | None, str]:
        """The secret to sign with, or None and why not."""
        record = None if key_id is None else await self.store.get_api_key(key_id)
        if record is None:
            return None, NO_KEY_REASON
        if not record.active:
            return None, REVOKED_KEY_REASON
        return record.webhook_secret, ""

    async def _post(self, delivery: WebhookDelivery, secret: str) -> WebhookAttempt:
        started = self._now()
        try:
            vetted = await asyncio.to_thread(
                vet_webhook_target, delivery.url, self.settings.allow_hosts, self._resolve
            )
        except UrlRefused as exc:
            return WebhookAttempt(at=started, error=f"refused by the SSRF guard: {exc.reason}")
        headers = {**webhook_headers(delivery, secret), "Host": vetted.host_header}
        extensions = {"sni_hostname": vetted.host} if vetted.scheme == "https" else {}
        timeout_s = self.settings.timeout_s
        try:
            async with (
                asyncio.timeout(timeout_s),
                httpx.AsyncClient(
                    transport=self._transport,
                    timeout=timeout_s,
                    follow_redirects=False,  # a redirect is an answer that is not 2xx
                    trust_env=False,
                    limits=httpx.Limits(max_keepalive_connections=0),
                ) as client,
            ):
                status = await self._send(client, vetted, delivery.body.encode(), headers, extensions)
        except (TimeoutError, httpx.TimeoutException):
            return WebhookAttempt(at=started, error=f"no answer within {timeout_s:g}s")
        except httpx.HTTPError as exc:
            return WebhookAttempt(at=started, error=short_error(f"{type(exc).__name__}: {exc}"))
        if 200 <= status < 300:
            return WebhookAttempt(at=started, status_code=status)
        why = "a redirect, which is not followed" if 300 <= status < 400 else "not a 2xx answer"
        return WebhookAttempt(at=started, status_code=status, error=f"HTTP {status}: {why}")

    @staticmethod
    async def _send(
        client: httpx.AsyncClient,
        vetted: VettedUrl,
        body: bytes,
        headers: dict[str, str],
        extensions: dict[str, str],
    ) -> int:
        """POST to the first vetted address that accepts the connection; the answer's status (its
        body is not read)."""
        last: httpx.ConnectError | None = None
        for address in vetted.addresses:
            request = client.build_request(
                "POST",
                pinned_request_url(vetted, address),
                content=body,
                headers=headers,
                extensions=extensions,
            )
            try:
                response = await client.send(request, stream=True)
            except httpx.ConnectError as exc:
                last = exc
                continue
            await response.aclose()
            return response.status_code
        raise httpx.ConnectError(f"cannot connect to {vetted.url}: {last}")

    async def _record(
        self,
        delivery: WebhookDelivery,
        attempt: WebhookAttempt,
        final_reason: str | None = None,
        final: DeliveryStatus = DeliveryStatus.GIVEN_UP,
    ) -> DeliveryStatus:
        """Record ``attempt`` with what follows from it: delivered, final with ``final_reason``, or
        tried again later (given up past ``webhooks.max_age_s``)."""
        status, retry_at, reason = DeliveryStatus.DELIVERED, None, None
        if final_reason is not None:
            status, reason = final, final_reason
        elif not attempt.succeeded:
            failed = len(delivery.attempts) + 1
            retry_at = next_attempt_at(delivery.created_at, failed, self._now(), self.settings, self._rand)
            if retry_at is None:
                status = DeliveryStatus.GIVEN_UP
                reason = (
                    f"not delivered within {self.settings.max_age_s:g}s ({failed} attempts); "
                    f"last: {attempt.error}"
                )
            else:
                status = DeliveryStatus.PENDING
                if self._next_retry is None or retry_at < self._next_retry:
                    self._next_retry = retry_at
        recorded = await self.store.record_webhook_attempt(
            delivery.delivery_id, self.owner, attempt, status, retry_at, reason
        )
        self.metrics.webhook_attempted(DeliveryStatus(status).value)
        if not recorded:  # our lease ran out and another orchestrator has it now
            logger.warning("webhook %s: lease lost before its attempt was recorded", delivery.delivery_id)
        return status
