"""Tenant usage: the ``tenant_usage`` table, model tokens and cost summed per tenant over finished
tasks, and ``tenant_daily_usage``, the same per tenant and UTC day (one atomic ``INSERT ... ON
CONFLICT`` each adds a task's usage; both in the caller's transaction)."""

from __future__ import annotations

from datetime import date
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from officeray.contracts import ModelUsage, utcnow
from officeray.store.engine import insert
from officeray.store.schema import tenant_daily_usage_table, tenant_usage_table


class TenantUsageRepository:
    """Reads and writes of ``tenant_usage`` and ``tenant_daily_usage`` on a connection of a ``dialect``
    database."""

    def __init__(self, dialect: str) -> None:
        self._dialect = dialect

    def add_on(self, conn: Connection, tenant: str, usage: dict[str, Any], day: date) -> None:
        """Add ``usage`` (a :class:`~officeray.contracts.ModelUsage` dumped) to the tenant's totals and
        to its usage of ``day`` (UTC)."""
        self._add(conn, tenant_usage_table, {"tenant": tenant}, usage)
        self._add(conn, tenant_daily_usage_table, {"tenant": tenant, "day": day}, usage)

    def _add(self, conn: Connection, t: sa.Table, key: dict[str, Any], usage: dict[str, Any]) -> None:
        stmt = insert(self._dialect, t).values(**key, updated_at=utcnow(), **usage)
        stmt = stmt.on_conflict_do_update(
            index_elements=[t.c[name] for name in key],
            set_={
                "prompt_tokens": t.c.prompt_tokens + stmt.excluded.prompt_tokens,
                "completion_tokens": t.c.completion_tokens + stmt.excluded.completion_tokens,
                "cost_usd": t.c.cost_usd + stmt.excluded.cost_usd,
                "calls": t.c.calls + stmt.excluded.calls,
                "updated_at": stmt.excluded.updated_at,
            },
        )
        conn.execute(stmt)

    @staticmethod
    def get(conn: Connection, tenant: str) -> ModelUsage:
        t = tenant_usage_table
        return _usage(conn.execute(sa.select(t).where(t.c.tenant == tenant)).first())

    @staticmethod
    def get_on(conn: Connection, tenant: str, day: date) -> ModelUsage:
        t = tenant_daily_usage_table
        return _usage(conn.execute(sa.select(t).where(t.c.tenant == tenant, t.c.day == day)).first())


def _usage(row: sa.Row[Any] | None) -> ModelUsage:
    """A usage row as :class:`ModelUsage` (zero when there is none)."""
    if row is None:
        return ModelUsage()
    return ModelUsage(
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        cost_usd=row.cost_usd,
        calls=row.calls,
    )
