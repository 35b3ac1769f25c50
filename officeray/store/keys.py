"""API keys: the ``api_keys`` table, one row per key (its argon2id hash, never the key), with its
tenant, role, webhook secret and when it was revoked."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from officeray.auth import ApiKeyRecord
from officeray.store.api import as_utc
from officeray.store.engine import insert
from officeray.store.schema import api_keys_table


def api_key_row(record: ApiKeyRecord) -> dict[str, Any]:
    """The row of ``record`` (its datetimes in UTC)."""
    return {
        "key_id": record.key_id,
        "tenant": record.tenant,
        "role": record.role.value,
        "key_hash": record.key_hash,
        "webhook_secret": record.webhook_secret,
        "name": record.name,
        "created_at": as_utc(record.created_at),
        "revoked_at": None if record.revoked_at is None else as_utc(record.revoked_at),
    }


def _record(row: Any) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=row.key_id,
        tenant=row.tenant,
        role=row.role,
        key_hash=row.key_hash,
        webhook_secret=row.webhook_secret,
        name=row.name,
        created_at=as_utc(row.created_at),
        revoked_at=None if row.revoked_at is None else as_utc(row.revoked_at),
    )


class ApiKeyRepository:
    """Keys in ``api_keys`` on a connection of a ``dialect`` database."""

    def __init__(self, dialect: str) -> None:
        self._dialect = dialect

    def create_on(self, conn: Connection, row: dict[str, Any]) -> bool:
        """Insert the key; False (nothing changed) when a key with its id exists."""
        t = api_keys_table
        stmt = (
            insert(self._dialect, t)
            .values(**row)
            .on_conflict_do_nothing(index_elements=[t.c.key_id])
            .returning(t.c.key_id)
        )
        return conn.execute(stmt).first() is not None

    @staticmethod
    def revoke_on(conn: Connection, key_id: str, now: datetime) -> bool:
        """Revoke an active key; False for an unknown or already revoked one."""
        t = api_keys_table
        stmt = t.update().where(t.c.key_id == key_id, t.c.revoked_at.is_(None)).values(revoked_at=now)
        return conn.execute(stmt).rowcount == 1

    @staticmethod
    def get(conn: Connection, key_id: str) -> ApiKeyRecord | None:
        t = api_keys_table
        row = conn.execute(sa.select(t).where(t.c.key_id == key_id)).first()
        return None if row is None else _record(row)

    @staticmethod
    def records(conn: Connection, tenant: str | None) -> list[ApiKeyRecord]:
        """Every key (revoked ones too), oldest first (ties: by id); only ``tenant``'s when given."""
        t = api_keys_table
        query = sa.select(t).order_by(t.c.created_at, t.c.key_id)
        if tenant is not None:
            query = query.where(t.c.tenant == tenant)
        return [_record(row) for row in conn.execute(query)]

    @staticmethod
    def count_active(conn: Connection) -> int:
        t = api_keys_table
        query = sa.select(sa.func.count()).select_from(t).where(t.c.revoked_at.is_(None))
        return int(conn.execute(query).scalar_one())
