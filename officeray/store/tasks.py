"""Tasks and their events: the ``tasks`` and ``task_events`` tables.

``tasks`` holds one row per task: the full :class:`~officeray.contracts.TaskRecord` as JSON, the
columns that are queried (status, timestamps) and the :class:`~officeray.contracts.TaskRequest` it was
created with. ``task_events`` holds every transition of a task, in order.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from officeray.contracts import FeedEvent, TaskEvent, TaskRecord, TaskRequest, TaskStatus, utcnow
from officeray.store.api import ResumableTask, TaskCursor, as_utc
from officeray.store.engine import insert
from officeray.store.schema import events_table, tasks_table

FINAL_STATUSES = tuple(status.value for status in TaskStatus if status.is_final)

_ROW_COLUMNS = ("task_id", "status", "tenant", "description", "record", "created_at", "updated_at")
_NEW_ROW_COLUMNS = (*_ROW_COLUMNS, "request")
"""The columns of :func:`new_task_row`."""
_REPLACED_COLUMNS = ("status", "description", "record", "updated_at")
"""What saving a known task changes (its ``created_at`` and request are kept)."""


def task_row(record: TaskRecord) -> dict[str, Any]:
    """The ``tasks`` row of ``record`` as of now (``updated_at``); the caller's record is not changed."""
    now = utcnow()
    return {
        "task_id": record.task_id,
        "status": record.status.value,
        "tenant": record.tenant,
        "description": record.description,
        "record": record.model_copy(update={"updated_at": now}).model_dump_json(),  # a shallow copy
        "created_at": as_utc(record.created_at),
        "updated_at": now,
    }


def new_task_row(record: TaskRecord, request: TaskRequest) -> dict[str, Any]:
    """The ``tasks`` row of a task created with ``request``."""
    return {
        "task_id": record.task_id,
        "status": record.status.value,
        "tenant": record.tenant,
        "description": record.description,
        "record": record.model_dump_json(),
        "request": request.model_dump_json(),
        "created_at": as_utc(record.created_at),
        "updated_at": record.updated_at,
    }


def event_row(task_id: str, kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """The ``task_events`` row of one transition, as of now (values JSON cannot hold become strings)."""
    return {"task_id": task_id, "kind": kind, "data": json.dumps(data, default=str), "at": utcnow()}


def _resumable(rows: Any) -> list[ResumableTask]:
    return [
        ResumableTask(
            TaskRecord.model_validate_json(row.record), TaskRequest.model_validate_json(row.request)
        )
        for row in rows
        if row.request
    ]


class TaskRepository:
    """Reads and writes of ``tasks`` and ``task_events`` on a connection of a ``dialect`` database."""

    def __init__(self, dialect: str) -> None:
        self._dialect = dialect
        # Built once: building an upsert costs more CPU than running it (hot path: every transition).
        upsert = insert(dialect, tasks_table).values({name: sa.bindparam(name) for name in _ROW_COLUMNS})
        self._save = upsert.on_conflict_do_update(
            index_elements=[tasks_table.c.task_id],
            set_={name: upsert.excluded[name] for name in _REPLACED_COLUMNS},
        )
        self._create = (  # built once: every submitted task
            insert(dialect, tasks_table)
            .values({name: sa.bindparam(name) for name in _NEW_ROW_COLUMNS})
            .on_conflict_do_nothing(index_elements=[tasks_table.c.task_id])
            .returning(tasks_table.c.task_id)  # a row when inserted (INSERT rowcounts are not portable)
        )
        self._event_insert = events_table.insert().values(
            {name: sa.bindparam(name) for name in ("task_id", "kind", "data", "at")}
        )

    # -- writes ---------------------------------------------------------------------------------------

    def save_on(self, conn: Connection, row: dict[str, Any]) -> None:
        conn.execute(self._save, row)

    def transition_on(self, conn: Connection, row: dict[str, Any], event: dict[str, Any]) -> bool:
        """The record and its event (True: what a fenced write answers when it was written)."""
        conn.execute(self._save, row)
        conn.execute(self._event_insert, event)
        return True

    def transitions_on(self, conn: Connection, writes: list[tuple[dict[str, Any], ...]]) -> None:
        """Several ``(row, event)`` transitions, in order: one ``executemany`` per statement (the
        records, then the events; a task's later record replaces its earlier one)."""
        # a task's last record only: one statement must not change a row twice (PostgreSQL refuses)
        last = {write[0]["task_id"]: write[0] for write in writes}
        conn.execute(self._save, list(last.values()))
        conn.execute(self._event_insert, [write[1] for write in writes])

    def create_on(self, conn: Connection, row: dict[str, Any]) -> bool:
        """Insert a new task (a :func:`new_task_row`); False when one with that id exists."""
        return conn.execute(self._create, row).first() is not None

    def event_on(self, conn: Connection, event: dict[str, Any]) -> int:
        """Insert one event; its id."""
        inserted = conn.execute(self._event_insert, event).inserted_primary_key
        if inserted is None:  # not for a single-row insert with an autoincrement key
            raise RuntimeError("the database answered no id for the new event")
        return int(inserted[0])

    # -- reads ----------------------------------------------------------------------------------------

    @staticmethod
    def get(conn: Connection, task_id: str) -> TaskRecord | None:
        raw = conn.execute(
            sa.select(tasks_table.c.record).where(tasks_table.c.task_id == task_id)
        ).scalar_one_or_none()
        return None if raw is None else TaskRecord.model_validate_json(raw)

    @staticmethod
    def get_request(conn: Connection, task_id: str) -> TaskRequest | None:
        raw = conn.execute(
            sa.select(tasks_table.c.request).where(tasks_table.c.task_id == task_id)
        ).scalar_one_or_none()
        return None if raw is None else TaskRequest.model_validate_json(raw)

    @staticmethod
    def list_records(
        conn: Connection,
        status: TaskStatus | None,
        limit: int,
        tenant: str | None = None,
        created_after: datetime | None = None,
        cursor: TaskCursor | None = None,
    ) -> list[TaskRecord]:
        t = tasks_table
        query = sa.select(t.c.record).order_by(t.c.created_at.desc(), t.c.task_id.desc()).limit(limit)
        if status is not None:
            query = query.where(t.c.status == status.value)
        if tenant is not None:
            query = query.where(t.c.tenant == tenant)
        if created_after is not None:
            query = query.where(t.c.created_at > as_utc(created_after))
        if cursor is not None:
            moment = as_utc(cursor.created_at)
            query = query.where(
                sa.or_(
                    t.c.created_at < moment, sa.and_(t.c.created_at == moment, t.c.task_id < cursor.task_id)
                )
            )
        return [TaskRecord.model_validate_json(raw) for raw in conn.execute(query).scalars()]

    @staticmethod
    def unfinished(conn: Connection) -> list[ResumableTask]:
        query = (
            sa.select(tasks_table.c.record, tasks_table.c.request)
            .where(tasks_table.c.status.not_in(FINAL_STATUSES))
            .order_by(tasks_table.c.created_at)
        )
        return _resumable(conn.execute(query).all())

    @staticmethod
    def resumable(conn: Connection, task_ids: list[str]) -> list[ResumableTask]:
        """Those of ``task_ids`` that are still unfinished, oldest first."""
        t = tasks_table
        rows = conn.execute(
            sa.select(t.c.record, t.c.request)
            .where(t.c.task_id.in_(task_ids), t.c.status.not_in(FINAL_STATUSES))
            .order_by(t.c.created_at, t.c.task_id)
        ).all()
        return _resumable(rows)

    @staticmethod
    def events(conn: Connection, task_id: str, after_id: int | None = None) -> list[TaskEvent]:
        e = events_table
        query = sa.select(e).where(e.c.task_id == task_id).order_by(e.c.id)
        if after_id is not None:
            query = query.where(e.c.id > after_id)
        return [
            TaskEvent(id=row.id, kind=row.kind, data=json.loads(row.data), at=row.at)
            for row in conn.execute(query)
        ]

    @staticmethod
    def event_feed(conn: Connection, after_id: int | None, tenant: str | None, limit: int) -> list[FeedEvent]:
        """Events of every task (of ``tenant``'s), in id order: the first ``limit`` after ``after_id``,
        or the last ``limit`` without it (read newest first by the primary key, then turned round)."""
        e, t = events_table, tasks_table
        query = sa.select(e, t.c.tenant).join(t, t.c.task_id == e.c.task_id)
        if tenant is not None:
            query = query.where(t.c.tenant == tenant)
        if after_id is None:
            rows = list(reversed(conn.execute(query.order_by(e.c.id.desc()).limit(limit)).all()))
        else:
            rows = list(conn.execute(query.where(e.c.id > after_id).order_by(e.c.id).limit(limit)).all())
        return [
            FeedEvent(
                id=row.id,
                task_id=row.task_id,
                tenant=row.tenant,
                kind=row.kind,
                data=json.loads(row.data),
                at=row.at,
            )
            for row in rows
        ]
