"""Idempotency keys: the ``idempotency_keys`` table, ``Idempotency-Key`` headers per tenant with the
task they created and the hash of the request's body."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from officeray.contracts import utcnow
from officeray.store.api import IdempotencyClaim
from officeray.store.engine import insert
from officeray.store.schema import idempotency_keys_table


class IdempotencyRepository:
    """Claims of ``idempotency_keys`` on a connection of a ``dialect`` database."""

    def __init__(self, dialect: str) -> None:
        self._dialect = dialect

    def claim_on(
        self, conn: Connection, tenant: str, key: str, body_sha256: str, task_id: str
    ) -> IdempotencyClaim:
        """Bind ``(tenant, key)`` to ``task_id`` unless it is bound already (one statement: racing
        claims bind one task)."""
        t = idempotency_keys_table
        stmt = (
            insert(self._dialect, t)
            .values(tenant=tenant, key=key, body_sha256=body_sha256, task_id=task_id, created_at=utcnow())
            .on_conflict_do_nothing(index_elements=[t.c.tenant, t.c.key])
            .returning(t.c.task_id)
        )
        if conn.execute(stmt).first() is not None:
            return IdempotencyClaim(task_id, True)
        existing = conn.execute(
            sa.select(t.c.task_id, t.c.body_sha256).where(t.c.tenant == tenant, t.c.key == key)
        ).one()
        return IdempotencyClaim(existing.task_id, existing.body_sha256 == body_sha256)
