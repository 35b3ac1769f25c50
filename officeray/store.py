"""Durable task state with SQLAlchemy Core: a SQLite file by default, any SQLAlchemy URL otherwise.

Tables:

* ``tasks``: one row per task; the full :class:`~officeray.contracts.TaskRecord` as JSON plus the
  columns that are queried (status, timestamps);
* ``task_events``: every transition of a task, in order (accepted, planned, validated, step
  started/finished, reviewed, final);
* ``step_results``: each step's result under its plan ``idempotency_key``;
* ``tenant_usage``: model tokens and cost summed per tenant over finished tasks.

The workflow writes each transition here before it acts on it. Methods are ``async`` (the work
runs in a thread) so an orchestrator's event loop is never blocked by the database.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from officeray.contracts import ModelUsage, StepResult, TaskRecord, TaskRequest, TaskStatus, utcnow

SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite writer waits for another process's lock before failing."""

SCHEMA_VERSION = 1

metadata = sa.MetaData()

tasks_table = sa.Table(
    "tasks",
    metadata,
    sa.Column("task_id", sa.String(128), primary_key=True),
    sa.Column("status", sa.String(32), nullable=False, index=True),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("record", sa.Text, nullable=False),
    sa.Column("request", sa.Text, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

events_table = sa.Table(
    "task_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task_id", sa.String(128), nullable=False, index=True),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)

step_results_table = sa.Table(
    "step_results",
    metadata,
    sa.Column("idempotency_key", sa.String(256), primary_key=True),
    sa.Column("task_id", sa.String(128), nullable=False, index=True),
    sa.Column("step_id", sa.String(64), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("result", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

tenant_usage_table = sa.Table(
    "tenant_usage",
    metadata,
    sa.Column("tenant", sa.String(128), primary_key=True),
    sa.Column("prompt_tokens", sa.BigInteger, nullable=False, default=0),
    sa.Column("completion_tokens", sa.BigInteger, nullable=False, default=0),
    sa.Column("cost_usd", sa.Float, nullable=False, default=0.0),
    sa.Column("calls", sa.BigInteger, nullable=False, default=0),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

schema_table = sa.Table("schema_version", metadata, sa.Column("version", sa.Integer, nullable=False))


def _make_engine(url: str) -> Engine:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    )

    @sa.event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine


class SqlStore:
    """The store behind every process of a deployment; safe to open from several processes."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine = _make_engine(url)
        metadata.create_all(self._engine)
        with self._engine.begin() as conn:
            if conn.execute(sa.select(sa.func.count()).select_from(schema_table)).scalar_one() == 0:
                conn.execute(schema_table.insert().values(version=SCHEMA_VERSION))

    # -- sync API (used by the async wrappers and by tools that are not async) -----------------

    def save_task_sync(self, record: TaskRecord) -> None:
        record.updated_at = utcnow()
        row = {
            "status": record.status.value,
            "description": record.description,
            "record": record.model_dump_json(),
            "updated_at": record.updated_at,
        }
        with self._engine.begin() as conn:
            updated = conn.execute(
                tasks_table.update().where(tasks_table.c.task_id == record.task_id).values(**row)
            ).rowcount
            if not updated:
                conn.execute(
                    tasks_table.insert().values(task_id=record.task_id, created_at=record.created_at, **row)
                )

    def create_task_sync(self, record: TaskRecord, request: TaskRequest) -> bool:
        """Insert a new task atomically; False when a task with that id already exists."""
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    tasks_table.insert().values(
                        task_id=record.task_id,
                        status=record.status.value,
                        description=record.description,
                        record=record.model_dump_json(),
                        request=request.model_dump_json(),
                        created_at=record.created_at,
                        updated_at=record.updated_at,
                    )
                )
        except sa.exc.IntegrityError:
            return False
        return True

    def unfinished_sync(self) -> list[tuple[TaskRecord, TaskRequest]]:
        """Tasks not in a final state, with their requests (what a restarted orchestrator resumes)."""
        final = [TaskStatus.COMPLETED.value, TaskStatus.FAILED.value]
        query = (
            sa.select(tasks_table.c.record, tasks_table.c.request)
            .where(tasks_table.c.status.not_in(final))
            .order_by(tasks_table.c.created_at)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            (TaskRecord.model_validate_json(row.record), TaskRequest.model_validate_json(row.request))
            for row in rows
            if row.request
        ]

    def get_task_sync(self, task_id: str) -> TaskRecord | None:
        with self._engine.connect() as conn:
            raw = conn.execute(
                sa.select(tasks_table.c.record).where(tasks_table.c.task_id == task_id)
            ).scalar_one_or_none()
        return None if raw is None else TaskRecord.model_validate_json(raw)

    def list_tasks_sync(self, status: TaskStatus | None = None, limit: int = 100) -> list[TaskRecord]:
        query = sa.select(tasks_table.c.record).order_by(tasks_table.c.created_at.desc()).limit(limit)
        if status is not None:
            query = query.where(tasks_table.c.status == status.value)
        with self._engine.connect() as conn:
            return [TaskRecord.model_validate_json(raw) for raw in conn.execute(query).scalars()]

    def append_event_sync(self, task_id: str, kind: str, data: dict[str, Any]) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                events_table.insert().values(
                    task_id=task_id, kind=kind, data=json.dumps(data, default=str), at=utcnow()
                )
            )

    def events_sync(self, task_id: str) -> list[dict[str, Any]]:
        query = sa.select(events_table).where(events_table.c.task_id == task_id).order_by(events_table.c.id)
        with self._engine.connect() as conn:
            return [
                {"kind": row.kind, "data": json.loads(row.data), "at": row.at.isoformat()}
                for row in conn.execute(query)
            ]

    def save_step_result_sync(self, task_id: str, result: StepResult) -> None:
        row = {
            "task_id": task_id,
            "step_id": result.step_id,
            "status": result.status.value,
            "result": result.model_dump_json(),
            "updated_at": utcnow(),
        }
        with self._engine.begin() as conn:
            updated = conn.execute(
                step_results_table.update()
                .where(step_results_table.c.idempotency_key == result.idempotency_key)
                .values(**row)
            ).rowcount
            if not updated:
                conn.execute(
                    step_results_table.insert().values(idempotency_key=result.idempotency_key, **row)
                )

    def get_step_result_sync(self, idempotency_key: str) -> StepResult | None:
        with self._engine.connect() as conn:
            raw = conn.execute(
                sa.select(step_results_table.c.result).where(
                    step_results_table.c.idempotency_key == idempotency_key
                )
            ).scalar_one_or_none()
        return None if raw is None else StepResult.model_validate_json(raw)

    def add_tenant_usage_sync(self, tenant: str, usage: ModelUsage) -> None:
        t = tenant_usage_table
        with self._engine.begin() as conn:
            updated = conn.execute(
                t.update()
                .where(t.c.tenant == tenant)
                .values(
                    prompt_tokens=t.c.prompt_tokens + usage.prompt_tokens,
                    completion_tokens=t.c.completion_tokens + usage.completion_tokens,
                    cost_usd=t.c.cost_usd + usage.cost_usd,
                    calls=t.c.calls + usage.calls,
                    updated_at=utcnow(),
                )
            ).rowcount
            if not updated:
                conn.execute(t.insert().values(tenant=tenant, updated_at=utcnow(), **usage.model_dump()))

    def tenant_usage_sync(self, tenant: str) -> ModelUsage:
        t = tenant_usage_table
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.tenant == tenant)).first()
        if row is None:
            return ModelUsage()
        return ModelUsage(
            prompt_tokens=row.prompt_tokens,
            completion_tokens=row.completion_tokens,
            cost_usd=row.cost_usd,
            calls=row.calls,
        )

    # -- async API (the workflow's Store port) --------------------------------------------------

    async def save_task(self, record: TaskRecord) -> None:
        await asyncio.to_thread(self.save_task_sync, record.model_copy(deep=True))

    async def create_task(self, record: TaskRecord, request: TaskRequest) -> bool:
        return await asyncio.to_thread(self.create_task_sync, record.model_copy(deep=True), request)

    async def unfinished(self) -> list[tuple[TaskRecord, TaskRequest]]:
        return await asyncio.to_thread(self.unfinished_sync)

    async def get_task(self, task_id: str) -> TaskRecord | None:
        return await asyncio.to_thread(self.get_task_sync, task_id)

    async def append_event(self, task_id: str, kind: str, data: dict[str, Any]) -> None:
        await asyncio.to_thread(self.append_event_sync, task_id, kind, data)

    async def save_step_result(self, task_id: str, result: StepResult) -> None:
        await asyncio.to_thread(self.save_step_result_sync, task_id, result)

    async def events(self, task_id: str) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.events_sync, task_id)

    async def add_tenant_usage(self, tenant: str, usage: ModelUsage) -> None:
        await asyncio.to_thread(self.add_tenant_usage_sync, tenant, usage)

    async def tenant_usage(self, tenant: str) -> ModelUsage:
        return await asyncio.to_thread(self.tenant_usage_sync, tenant)

    def close(self) -> None:
        self._engine.dispose()
