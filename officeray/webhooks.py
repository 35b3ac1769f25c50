"""Webhooks as pure logic: which transitions are announced, the signed request, the retry schedule.

A task with a ``webhook_url`` (its own, else its tenant's ``tenants.<name>.webhook_url``) gets a POST
for each of :data:`WEBHOOK_EVENTS`. The store writes a :class:`WebhookDelivery` (its *outbox* row)
in the same transaction as the transition that causes it, so no announced transition is lost and
none is announced that was not stored; the orchestrators deliver the outbox
(:mod:`actors.webhooks`), at least once, until the receiver answers 2xx or
``webhooks.max_age_s`` has passed.

The request, the same on every attempt (a receiver deduplicates by :data:`EVENT_ID_HEADER`):

* body: the JSON of :func:`webhook_body` (``id``, ``event``, ``created_at``, ``task_id``, ``tenant``,
  ``status``, ``task_event_id``, ``data``), fixed when the delivery is written;
* :data:`SIGNATURE_HEADER`: ``sha256=<hex HMAC-SHA256 of the raw body>`` keyed with the submitting
  API key's ``webhook_secret`` (:func:`sign`; a receiver checks it with :func:`verify_signature`);
* :data:`EVENT_ID_HEADER` (the delivery's id), :data:`EVENT_HEADER` (its event) and
  :data:`TIMESTAMP_HEADER` (when the event happened, Unix seconds; also ``created_at`` in the signed
  body).

Failed attempts are retried after :func:`retry_delay_s` (exponential with jitter, the random source
injected); :func:`next_attempt_at` says when, or that it is time to give up.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from officeray.config import WebhookSettings
from officeray.contracts import TaskStatus

SIGNATURE_HEADER = "X-Officeray-Signature"
EVENT_ID_HEADER = "X-Officeray-Event-Id"
EVENT_HEADER = "X-Officeray-Event"
TIMESTAMP_HEADER = "X-Officeray-Timestamp"
SIGNATURE_PREFIX = "sha256="
USER_AGENT = "officeray-webhooks/1"

APPROVAL_REQUESTED_KIND = "approval_requested"
"""The task event kind of a step that starts to wait for a person (webhook ``waiting_approval``)."""

REVIEW_ESCALATED_KIND = "review_escalated"
"""The task event kind of results that start to wait for a person's review (webhook ``waiting_review``)."""

WEBHOOK_EVENTS = ("completed", "failed", "cancelled", "waiting_approval", "waiting_review")
"""What a webhook announces: a task's end, a step that waits for approval, and results that wait
for a person's review."""

MAX_ERROR_CHARS = 500
"""Longest error text an attempt keeps."""


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    """Not delivered yet: tried again at ``next_attempt_at``."""
    DELIVERED = "delivered"
    """The receiver answered 2xx."""
    GIVEN_UP = "given_up"
    """Not delivered within ``webhooks.max_age_s``, or the target is refused (``reason`` says)."""
    NOT_SENT = "not_sent"
    """Never sent: there is nothing to sign it with (``reason`` says)."""

    @property
    def is_final(self) -> bool:
        return self != DeliveryStatus.PENDING


class WebhookAttempt(BaseModel):
    """One try at delivering: when, the receiver's HTTP status (None: no answer), and what went wrong."""

    model_config = ConfigDict(frozen=True)

    at: datetime
    status_code: int | None = None
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class WebhookDelivery(BaseModel):
    """One event to POST to one URL (an outbox row), with its attempts so far."""

    delivery_id: str
    """Also the event id the receiver sees (:data:`EVENT_ID_HEADER`, ``id`` in the body)."""
    task_id: str
    tenant: str
    event: str
    """One of :data:`WEBHOOK_EVENTS`."""
    url: str
    key_id: str | None
    """The API key that submitted the task: its ``webhook_secret`` signs the request."""
    body: str
    """The exact request body (JSON), the same on every attempt."""
    status: DeliveryStatus = DeliveryStatus.PENDING
    created_at: datetime
    next_attempt_at: datetime | None
    """When it is tried (again); None once final."""
    finished_at: datetime | None = None
    reason: str | None = None
    """Why it was given up or not sent."""
    attempts: list[WebhookAttempt] = []

    def public_view(self) -> dict[str, Any]:
        """What ``GET /v1/tasks/{id}/webhooks`` shows of it (the body as JSON, not as text)."""
        view = self.model_dump(mode="json", exclude={"body"})
        view["payload"] = json.loads(self.body)
        return view


def webhook_event_for(kind: str, status: TaskStatus | str) -> str | None:
    """The webhook event a transition announces, or None: a write that stores a final record
    (``completed``, ``failed``, ``cancelled``) or a step that starts waiting for approval."""
    status = TaskStatus(status)
    if status.is_final:
        return status.value
    if kind == APPROVAL_REQUESTED_KIND:
        return "waiting_approval"
    if kind == REVIEW_ESCALATED_KIND:
        return "waiting_review"
    return None


def webhook_body(
    *,
    delivery_id: str,
    event: str,
    created_at: datetime,
    task_id: str,
    tenant: str,
    status: str,
    task_event_id: int | None,
    data: dict[str, Any],
) -> str:
    """The request body of a delivery (compact JSON; values JSON cannot hold become strings)."""
    document = {
        "id": delivery_id,
        "event": event,
        "created_at": created_at.isoformat(),
        "task_id": task_id,
        "tenant": tenant,
        "status": status,
        "task_event_id": task_event_id,
        "data": data,
    }
    return json.dumps(document, separators=(",", ":"), default=str)


def sign(body: bytes, secret: str) -> str:
    """The :data:`SIGNATURE_HEADER` value of ``body``: ``sha256=`` and the hex HMAC-SHA256 keyed
    with ``secret``."""
    return SIGNATURE_PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, secret: str, header: object) -> bool:
    """Whether ``header`` is the signature of ``body`` under ``secret`` (constant-time compare; any
    other type or form of header is False)."""
    if not isinstance(header, str) or not header.startswith(SIGNATURE_PREFIX):
        return False
    return hmac.compare_digest(sign(body, secret).encode(), header.strip().encode())


def webhook_headers(delivery: WebhookDelivery, secret: str) -> dict[str, str]:
    """The headers of a delivery's POST, signed with ``secret``."""
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: sign(delivery.body.encode(), secret),
        EVENT_ID_HEADER: delivery.delivery_id,
        EVENT_HEADER: delivery.event,
        TIMESTAMP_HEADER: str(int(delivery.created_at.timestamp())),
    }


def retry_delay_s(failed_attempts: int, settings: WebhookSettings, rand: Callable[[], float]) -> float:
    """The wait after the ``failed_attempts``-th failed attempt (1 for the first):
    ``initial_backoff_s * backoff_coefficient ** (n - 1)``, capped at ``max_backoff_s``, less up to
    ``jitter`` of it at random (``rand()`` in [0, 1))."""
    exponent = max(0, failed_attempts - 1)
    try:
        base = settings.initial_backoff_s * settings.backoff_coefficient**exponent
    except OverflowError:
        base = settings.max_backoff_s
    base = min(base, settings.max_backoff_s)
    return base * (1.0 - settings.jitter * min(max(rand(), 0.0), 1.0))


def next_attempt_at(
    created_at: datetime,
    failed_attempts: int,
    now: datetime,
    settings: WebhookSettings,
    rand: Callable[[], float],
) -> datetime | None:
    """When to try a delivery again after its ``failed_attempts``-th failure at ``now``; None to give
    up. A delivery is retried until ``webhooks.max_age_s`` after it was written: a wait that would
    pass that moment is cut to it (one last try there), and at or past it the answer is None."""
    deadline = created_at + timedelta(seconds=settings.max_age_s)
    if now >= deadline:
        return None
    return min(now + timedelta(seconds=retry_delay_s(failed_attempts, settings, rand)), deadline)


def short_error(text: str) -> str:
    """``text`` cut to :data:`MAX_ERROR_CHARS`."""
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"
