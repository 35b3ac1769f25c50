"""The dead-letter queue: the ``dlq`` table, tasks given up on, with the reason and the full record."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from officeray.contracts import DlqDetail, DlqEntry, TaskRecord, utcnow
from officeray.store.engine import insert
from officeray.store.schema import dlq_table

_REPLACED_COLUMNS = ("tenant", "reason", "trace_id", "description", "record", "created_at")
_LISTED = (
    dlq_table.c.task_id,
    dlq_table.c.tenant,
    dlq_table.c.reason,
    dlq_table.c.trace_id,
    dlq_table.c.created_at,
    dlq_table.c.description,
)


def dlq_row(record: TaskRecord, reason: str) -> dict[str, Any]:
    """The ``dlq`` row of ``record`` dead-lettered now for ``reason``."""
    return {
        "task_id": record.task_id,
        "tenant": record.tenant,
        "reason": reason,
        "trace_id": record.trace_id,
        "description": record.description,
        "record": record.model_dump_json(),
        "created_at": utcnow(),
    }


def _entry(row: Any) -> DlqEntry:
    return DlqEntry(
        task_id=row.task_id,
        tenant=row.tenant,
        reason=row.reason,
        trace_id=row.trace_id,
        created_at=row.created_at,
        description=row.description,
    )


class DlqRepository:
    """Reads and writes of ``dlq`` on a connection of a ``dialect`` database."""

    def __init__(self, dialect: str) -> None:
        self._dialect = dialect

    def put_on(self, conn: Connection, row: dict[str, Any]) -> None:
        """Insert the entry, or replace the task's entry (``created_at`` too)."""
        t = dlq_table
        stmt = insert(self._dialect, t).values(**row)
        stmt = stmt.on_conflict_do_update(
            index_elements=[t.c.task_id], set_={name: stmt.excluded[name] for name in _REPLACED_COLUMNS}
        )
        conn.execute(stmt)

    @staticmethod
    def remove_on(conn: Connection, task_id: str) -> bool:
        return bool(conn.execute(dlq_table.delete().where(dlq_table.c.task_id == task_id)).rowcount)

    @staticmethod
    def entries(conn: Connection, tenant: str | None, limit: int) -> list[DlqEntry]:
        t = dlq_table
        query = sa.select(*_LISTED).order_by(t.c.created_at.desc(), t.c.task_id)
        if tenant is not None:
            query = query.where(t.c.tenant == tenant)
        return [_entry(row) for row in conn.execute(query.limit(limit))]

    @staticmethod
    def size(conn: Connection) -> int:
        return int(conn.execute(sa.select(sa.func.count()).select_from(dlq_table)).scalar_one())

    @staticmethod
    def get(conn: Connection, task_id: str) -> DlqDetail | None:
        row = conn.execute(sa.select(dlq_table).where(dlq_table.c.task_id == task_id)).first()
        if row is None:
            return None
        return DlqDetail.of(_entry(row), TaskRecord.model_validate_json(row.record))
