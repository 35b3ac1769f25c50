"""The webhook outbox: the ``webhook_outbox`` and ``webhook_attempts`` tables.

A transition that a webhook announces (:func:`officeray.webhooks.webhook_event_for`) writes its
delivery in its own transaction (:meth:`OutboxRepository.put_on`), when the task's request names a
``webhook_url`` (the orchestrator fills in the tenant's default at submission). Orchestrators then
*claim* due deliveries with a lease (:meth:`OutboxRepository.claim_on`: one conditional ``UPDATE``,
so of several claimers each row goes to one), POST them, and record each attempt with the outcome
(:meth:`OutboxRepository.record_on`, fenced on the claimer's lease).

:func:`webhook_due`, :func:`webhook_target` and :func:`check_outcome` are shared with
:class:`~officeray.testing.InMemoryStore`, so both stores decide alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from officeray.contracts import TaskRecord, new_id, utcnow
from officeray.store.api import as_utc
from officeray.store.schema import tasks_table, webhook_attempts_table, webhook_outbox_table
from officeray.webhooks import (
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    webhook_body,
    webhook_event_for,
)


@dataclass(frozen=True)
class WebhookDue:
    """The webhook a transition announces, as of the write's call (before the task's request and the
    transition's event id are read in its transaction)."""

    delivery_id: str
    task_id: str
    tenant: str
    event: str
    status: str
    data: dict[str, Any]
    created_at: datetime

    def delivery(self, url: str, key_id: str | None, task_event_id: int | None) -> WebhookDelivery:
        """The delivery to ``url``, signed with ``key_id``'s secret, of the transition stored as
        event ``task_event_id``."""
        body = webhook_body(
            delivery_id=self.delivery_id,
            event=self.event,
            created_at=self.created_at,
            task_id=self.task_id,
            tenant=self.tenant,
            status=self.status,
            task_event_id=task_event_id,
            data=self.data,
        )
        return WebhookDelivery(
            delivery_id=self.delivery_id,
            task_id=self.task_id,
            tenant=self.tenant,
            event=self.event,
            url=url,
            key_id=key_id,
            body=body,
            created_at=self.created_at,
            next_attempt_at=self.created_at,
        )


def webhook_due(record: TaskRecord, kind: str, data: dict[str, Any]) -> WebhookDue | None:
    """The webhook that writing ``record`` with event ``kind``/``data`` announces, if any."""
    event = webhook_event_for(kind, record.status)
    if event is None:
        return None
    return WebhookDue(
        delivery_id=new_id("whk"),
        task_id=record.task_id,
        tenant=record.tenant,
        event=event,
        status=record.status.value,
        data=json.loads(json.dumps(data, default=str)),
        created_at=utcnow(),
    )


def webhook_target(request: dict[str, Any] | None) -> tuple[str | None, str | None]:
    """``(webhook_url, submitted_by)`` of a task's request (as JSON data; None: no request)."""
    if not request:
        return None, None
    url, key_id = request.get("webhook_url"), request.get("submitted_by")
    return (url if isinstance(url, str) and url else None), (key_id if isinstance(key_id, str) else None)


def check_outcome(status: DeliveryStatus, next_attempt_at: datetime | None) -> None:
    """ValueError unless a pending outcome has a ``next_attempt_at`` and a final one has none."""
    if DeliveryStatus(status) == DeliveryStatus.PENDING and next_attempt_at is None:
        raise ValueError("a delivery left pending needs next_attempt_at")
    if DeliveryStatus(status).is_final and next_attempt_at is not None:
        raise ValueError(f"a {status} delivery is not attempted again: next_attempt_at must be None")


def _delivery_row(delivery: WebhookDelivery) -> dict[str, Any]:
    return {
        "delivery_id": delivery.delivery_id,
        "task_id": delivery.task_id,
        "tenant": delivery.tenant,
        "event": delivery.event,
        "url": delivery.url,
        "key_id": delivery.key_id,
        "body": delivery.body,
        "status": delivery.status.value,
        "created_at": as_utc(delivery.created_at),
        "next_attempt_at": as_utc(delivery.next_attempt_at),
    }


def _utc_or_none(moment: datetime | None) -> datetime | None:
    return None if moment is None else as_utc(moment)


class OutboxRepository:
    """Reads and writes of the outbox tables on a connection."""

    @staticmethod
    def put_on(conn: Connection, due: WebhookDue, task_event_id: int | None) -> bool:
        """Write ``due``'s delivery when the task's request names a webhook URL; True when written."""
        raw = conn.execute(
            sa.select(tasks_table.c.request).where(tasks_table.c.task_id == due.task_id)
        ).scalar_one_or_none()
        url, key_id = webhook_target(json.loads(raw) if raw else None)
        if url is None:
            return False
        conn.execute(
            webhook_outbox_table.insert().values(_delivery_row(due.delivery(url, key_id, task_event_id)))
        )
        return True

    @staticmethod
    def claim_on(
        conn: Connection, owner: str, expires_at: datetime, now: datetime, limit: int
    ) -> list[WebhookDelivery]:
        """Lease to ``owner`` until ``expires_at`` the pending deliveries due at ``now`` that nobody
        holds, soonest due first, and return them."""
        t = webhook_outbox_table
        claimable = sa.and_(
            t.c.status == DeliveryStatus.PENDING.value,
            t.c.next_attempt_at <= now,
            sa.or_(t.c.lease_owner.is_(None), t.c.lease_expires_at <= now),
        )
        candidates = list(
            conn.execute(
                sa.select(t.c.delivery_id)
                .where(claimable)
                .order_by(t.c.next_attempt_at, t.c.delivery_id)
                .limit(limit)
                # PostgreSQL: claimers at once take different rows (SQLite runs one writer at a time)
                .with_for_update(skip_locked=True)
            ).scalars()
        )
        if not candidates:
            return []
        # the condition again in the UPDATE: a claimer that took a row meanwhile keeps it
        claimed = set(
            conn.execute(
                t.update()
                .where(t.c.delivery_id.in_(candidates), claimable)
                .values(lease_owner=owner, lease_expires_at=expires_at)
                .returning(t.c.delivery_id)
            ).scalars()
        )
        found = OutboxRepository._load(conn, t.c.delivery_id.in_(claimed)) if claimed else []
        return sorted(found, key=lambda d: (d.next_attempt_at or d.created_at, d.delivery_id))

    @staticmethod
    def record_on(
        conn: Connection,
        delivery_id: str,
        owner: str,
        attempt: WebhookAttempt,
        status: DeliveryStatus,
        next_attempt_at: datetime | None,
        reason: str | None,
    ) -> bool:
        """Record ``attempt`` and the delivery's new state, while ``owner`` holds its lease (False,
        nothing written, otherwise: another orchestrator took it, or it is final)."""
        t = webhook_outbox_table
        final = DeliveryStatus(status).is_final
        changed = conn.execute(
            t.update()
            .where(
                t.c.delivery_id == delivery_id,
                t.c.lease_owner == owner,
                t.c.status == DeliveryStatus.PENDING.value,
            )
            .values(
                status=DeliveryStatus(status).value,
                next_attempt_at=_utc_or_none(next_attempt_at),
                lease_owner=None,
                lease_expires_at=None,
                finished_at=as_utc(attempt.at) if final else None,
                reason=reason,
            )
        ).rowcount
        if not changed:
            return False
        conn.execute(
            webhook_attempts_table.insert().values(
                delivery_id=delivery_id,
                at=as_utc(attempt.at),
                status_code=attempt.status_code,
                error=attempt.error,
            )
        )
        return True

    @staticmethod
    def pending_count(conn: Connection) -> int:
        """Deliveries still ``pending`` (counted on the ``status`` index)."""
        t = webhook_outbox_table
        query = sa.select(sa.func.count()).select_from(t).where(t.c.status == DeliveryStatus.PENDING.value)
        return int(conn.execute(query).scalar_one())

    @staticmethod
    def deliveries(conn: Connection, task_id: str) -> list[WebhookDelivery]:
        """The task's deliveries, oldest first, with their attempts."""
        return OutboxRepository._load(conn, webhook_outbox_table.c.task_id == task_id)

    @staticmethod
    def _load(conn: Connection, where: sa.ColumnElement[bool]) -> list[WebhookDelivery]:
        t, a = webhook_outbox_table, webhook_attempts_table
        rows = conn.execute(sa.select(t).where(where).order_by(t.c.created_at, t.c.delivery_id)).all()
        ids = [row.delivery_id for row in rows]
        attempts: dict[str, list[WebhookAttempt]] = {delivery_id: [] for delivery_id in ids}
        if ids:
            for att in conn.execute(sa.select(a).where(a.c.delivery_id.in_(ids)).order_by(a.c.id)):
                attempts[att.delivery_id].append(
                    WebhookAttempt(at=as_utc(att.at), status_code=att.status_code, error=att.error)
                )
        return [
            WebhookDelivery(
                delivery_id=row.delivery_id,
                task_id=row.task_id,
                tenant=row.tenant,
                event=row.event,
                url=row.url,
                key_id=row.key_id,
                body=row.body,
                status=DeliveryStatus(row.status),
                created_at=as_utc(row.created_at),
                next_attempt_at=_utc_or_none(row.next_attempt_at),
                finished_at=_utc_or_none(row.finished_at),
                reason=row.reason,
                attempts=attempts[row.delivery_id],
            )
            for row in rows
        ]
