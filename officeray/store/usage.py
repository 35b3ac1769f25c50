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
        # Built once (building an upsert costs more CPU than running it; every finished task adds).
        self._upserts = {
            t.name: _upsert(dialect, t, keys)
            for t, keys in ((tenant_usage_table, ("tenant",)), (tenant_daily_usage_table, ("tenant", "day")))
        }

    def add_on(self, conn: Connection, tenant: str, usage: dict[str, Any], day: date) -> None:
        """Add ``usage`` (a :class:`~officeray.contracts.ModelUsage` dumped) to the tenant's totals and
        to its usage of ``day`` (UTC)."""
        now = utcnow()
        conn.execute(self._upserts[tenant_usage_table.name], {"tenant": tenant, "updated_at": now, **usage})
        conn.execute(
            self._upserts[tenant_daily_usage_table.name],
            {"tenant": tenant, "day": day, "updated_at": now, **usage},
        )

    @staticmethod
    def get(conn: Connection, tenant: str) -> ModelUsage:
        t = tenant_usage_table
        return _usage(conn.execute(sa.select(t).where(t.c.tenant == tenant)).first())

    @staticmethod
    def get_on(conn: Connection, tenant: str, day: date) -> ModelUsage:
        t = tenant_daily_usage_table
        return _usage(conn.execute(sa.select(t).where(t.c.tenant == tenant, t.c.day == day)).first())


_USAGE_COLUMNS = ("prompt_tokens", "completion_tokens", "cost_usd", "calls")


def _upsert(dialect: str, t: sa.Table, keys: tuple[str, ...]) -> Any:
    """``INSERT`` of one usage row (bound parameters: ``keys``, ``updated_at`` and the usage), adding
    to the row of the same ``keys`` when there is one."""
    stmt = insert(dialect, t).values(
        {name: sa.bindparam(name) for name in (*keys, "updated_at", *_USAGE_COLUMNS)}
    )
    return stmt.on_conflict_do_update(
        index_elements=[t.c[name] for name in keys],
        set_={
            **{name: t.c[name] + stmt.excluded[name] for name in _USAGE_COLUMNS},
            "updated_at": stmt.excluded.updated_at,
        },
    )


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
