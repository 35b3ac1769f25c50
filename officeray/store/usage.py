"""Tenant usage: the ``tenant_usage`` table, model tokens and cost summed per tenant over finished
tasks (one atomic ``INSERT ... ON CONFLICT`` adds a task's usage)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from officeray.contracts import ModelUsage, utcnow
from officeray.store.engine import insert
from officeray.store.schema import tenant_usage_table


class TenantUsageRepository:
    """Reads and writes of ``tenant_usage`` on a connection of a ``dialect`` database."""

    def __init__(self, dialect: str) -> None:
        self._dialect = dialect

    def add_on(self, conn: Connection, tenant: str, usage: dict[str, Any]) -> None:
        """Add ``usage`` (a :class:`~officeray.contracts.ModelUsage` dumped) to the tenant's totals."""
        t = tenant_usage_table
        stmt = insert(self._dialect, t).values(tenant=tenant, updated_at=utcnow(), **usage)
        stmt = stmt.on_conflict_do_update(
            index_elements=[t.c.tenant],
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
        row = conn.execute(sa.select(t).where(t.c.tenant == tenant)).first()
        if row is None:
            return ModelUsage()
        return ModelUsage(
            prompt_tokens=row.prompt_tokens,
            completion_tokens=row.completion_tokens,
            cost_usd=row.cost_usd,
            calls=row.calls,
        )
