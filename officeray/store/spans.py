"""The trace store: the ``spans`` table, finished spans of every process of every node.

Spans arrive in batches (the trace collector writes each batch it gets in one transaction) and are
read per task (:meth:`SpanRepository.of_task`: the task's id, or its trace id for spans that carry
no task id), ordered by start. :meth:`SpanRepository.prune_on` enforces retention: an age, and a
number of spans (the oldest written go first).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from officeray.contracts import utcnow
from officeray.store.api import RECENT_SPANS_LIMIT, TASK_SPANS_LIMIT, as_utc
from officeray.store.schema import spans_table
from officeray.telemetry import SpanRecord

__all__ = ["RECENT_SPANS_LIMIT", "TASK_SPANS_LIMIT", "SpanRepository", "span_rows"]


def span_rows(spans: Sequence[SpanRecord], now: datetime | None = None) -> list[dict[str, Any]]:
    """The ``spans`` rows of ``spans`` (written at ``now``)."""
    at = as_utc(now or utcnow())
    return [
        {
            "task_id": s.task_id,
            "trace_id": s.trace_id,
            "span_id": s.span_id,
            "parent_span_id": s.parent_span_id,
            "name": s.name[:256],
            "component": s.component[:64],
            "start_ns": s.start_ns,
            "end_ns": s.end_ns,
            "status": s.status,
            "record": s.model_dump_json(),
            "created_at": at,
        }
        for s in spans
    ]


class SpanRepository:
    """Reads and writes of ``spans``."""

    @staticmethod
    def add_on(conn: Connection, rows: list[dict[str, Any]]) -> int:
        if rows:
            conn.execute(spans_table.insert(), rows)
        return len(rows)

    @staticmethod
    def of_task(conn: Connection, task_id: str, trace_id: str | None, limit: int) -> list[SpanRecord]:
        t = spans_table
        where = t.c.task_id == task_id
        if trace_id:
            where = sa.or_(where, sa.and_(t.c.trace_id == trace_id, t.c.task_id.is_(None)))
        rows = conn.execute(sa.select(t.c.record).where(where).order_by(t.c.start_ns, t.c.id).limit(limit))
        return [SpanRecord.model_validate_json(r) for r in rows.scalars()]

    @staticmethod
    def since(conn: Connection, moment: datetime, limit: int) -> list[SpanRecord]:
        t = spans_table
        rows = conn.execute(
            sa.select(t.c.record).where(t.c.created_at >= as_utc(moment)).order_by(t.c.id.desc()).limit(limit)
        )
        return [SpanRecord.model_validate_json(r) for r in rows.scalars()]

    @staticmethod
    def prune_on(conn: Connection, older_than: datetime, max_spans: int) -> int:
        """Delete spans written before ``older_than``, then the oldest beyond ``max_spans``."""
        t = spans_table
        deleted = conn.execute(t.delete().where(t.c.created_at < as_utc(older_than))).rowcount or 0
        # the id of the newest span to drop: everything up to it goes
        cut = conn.execute(sa.select(t.c.id).order_by(t.c.id.desc()).offset(max_spans).limit(1)).scalar()
        if cut is not None:
            deleted += conn.execute(t.delete().where(t.c.id <= cut)).rowcount or 0
        return deleted

    @staticmethod
    def count(conn: Connection) -> int:
        return int(conn.execute(sa.select(sa.func.count()).select_from(spans_table)).scalar_one())
