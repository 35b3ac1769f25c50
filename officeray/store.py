"""Durable task state with SQLAlchemy Core: a SQLite file by default, PostgreSQL by URL.

Tables:

* ``tasks``: one row per task; the full :class:`~officeray.contracts.TaskRecord` as JSON plus the
  columns that are queried (status, timestamps) and the :class:`~officeray.contracts.TaskRequest`;
* ``task_events``: every transition of a task, in order (accepted, planned, validated, step
  started/finished, reviewed, final);
* ``step_results``: each step's result under its plan ``idempotency_key``;
* ``tenant_usage``: model tokens and cost summed per tenant over finished tasks;
* ``task_leases``: which orchestrator runs which unfinished task, until when;
* ``dlq``: the dead-letter queue, tasks given up on, with the reason and the full record;
* ``idempotency_keys``: ``Idempotency-Key`` headers per tenant, with the task they created;
* ``approvals``: the first decision (approved or rejected) on a step that waits for a human, keyed
  by the task and the step's idempotency key;
* ``schema_migrations``: which of :data:`MIGRATIONS` this database has had, and when.

The schema is changed only by :data:`MIGRATIONS`, applied in order by :func:`migrate` when a store is
opened, inside one transaction that holds the database's write lock (``pg_advisory_xact_lock`` on
PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so processes that open a fresh database at once migrate
it once. A database newer than this code is refused with :class:`~officeray.errors.StoreError`.

Every insert-or-update is one ``INSERT ... ON CONFLICT`` statement, so concurrent writers never race
into an integrity error; on SQLite every write transaction starts with ``BEGIN IMMEDIATE`` (it waits
up to the busy timeout for the write lock instead of failing when a read turns into a write).

A database that cannot be reached (server down, connection refused, SQLite locked past its busy
timeout) raises :class:`~officeray.errors.StoreUnavailableError` from every method; callers answer
503 with ``Retry-After``. Other database failures raise :class:`~officeray.errors.StoreError`.

The workflow writes each transition here before it acts on it, *fenced* on its task's lease
(``owner``: written only while that owner holds the lease, checked in the write's transaction, so a
run that lost its task to another orchestrator never overwrites the newer record), and the end of a
run (final record, dead-letter entry, tenant usage) in one transaction (``finish_task``).

Methods come in pairs: ``*_sync`` (for tools that are not async) and ``async`` wrappers that run it
in a thread, so an orchestrator's event loop is never blocked by the database. Time-dependent
methods (leases) take ``now`` so tests control the clock; it defaults to
:func:`~officeray.contracts.utcnow`. Run ``python -m officeray.store --bench [--url URL]`` to measure
the cost of one task transition.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import queue
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from officeray.contracts import (
    ModelUsage,
    StepResult,
    StepStatus,
    TaskRecord,
    TaskRequest,
    TaskStatus,
    utcnow,
)
from officeray.errors import StoreError, StoreUnavailableError

SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite writer waits for another process's lock before failing (then
:class:`~officeray.errors.StoreUnavailableError`)."""

POSTGRES_CONNECT_TIMEOUT_S = 5
"""How long opening a PostgreSQL connection may take before the store counts as unavailable (libpq's
``connect_timeout``, whole seconds, at least 2). A ``connect_timeout`` in the URL takes precedence."""

POSTGRES_POOL_SIZE = 5
"""Connections each process keeps open to PostgreSQL."""

POSTGRES_MAX_OVERFLOW = 10
"""Extra connections a process may open under load, beyond :data:`POSTGRES_POOL_SIZE`."""

POSTGRES_POOL_TIMEOUT_S = 10.0
"""How long a caller waits for a free pooled connection before the store counts as unavailable."""

POSTGRES_POOL_RECYCLE_S = 1800
"""Pooled connections older than this are reopened (proxies and servers drop idle ones)."""

CLAIM_BATCH_SIZE = 200
"""Leases taken per statement by :meth:`SqlStore.claimable_unfinished` (SQLite limits bound values)."""

SUPPORTED_BACKENDS = ("sqlite", "postgresql")

_SQLITE_UNAVAILABLE_CODES = frozenset({5, 6, 10, 14, 15})
"""SQLite primary result codes that mean "not now" rather than "wrong": BUSY, LOCKED, IOERR, CANTOPEN,
PROTOCOL."""

_SQLITE_BEGIN_OPTION = "officeray_sqlite_begin"
"""Connection execution option naming the SQLite ``BEGIN`` mode (``DEFERRED`` unless ``IMMEDIATE``)."""

_MIGRATION_LOCK_KEY = int.from_bytes(b"ofcrmigr", "big")
"""PostgreSQL advisory lock held while migrating (any constant that other code does not use)."""

APPROVAL_DECISIONS = ("approved", "rejected")
ApprovalDecision = Literal["approved", "rejected"]

_FINAL_STATUSES = (TaskStatus.COMPLETED.value, TaskStatus.FAILED.value)

_KEY_CHARS = 256
"""Width of the columns that hold a step's idempotency key (at most
:data:`~officeray.contracts.MAX_IDEMPOTENCY_KEY_CHARS`); task ids and tenants (at most 100 characters,
:class:`~officeray.contracts.TaskRequest`) fit the 128 of theirs. SQLite does not enforce widths,
PostgreSQL does: a value over its column's width is a :class:`~officeray.errors.StoreError` there."""


# --------------------------------------------------------------------------------------------------
# Schema. Each table is built by a function named after the migration that created (or last changed)
# it; a migration that changes a table adds a new function and keeps the old one for older migrations.
# --------------------------------------------------------------------------------------------------


def _tasks_v1(md: sa.MetaData) -> sa.Table:
    return sa.Table(
        "tasks",
        md,
        sa.Column("task_id", sa.String(128), primary_key=True),
        sa.Column("status", sa.String(32), nullable=False, index=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("record", sa.Text, nullable=False),
        sa.Column("request", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def _task_events_v1(md: sa.MetaData) -> sa.Table:
    return sa.Table(
        "task_events",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(128), nullable=False, index=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )


def _step_results_v1(md: sa.MetaData) -> sa.Table:
    return sa.Table(
        "step_results",
        md,
        sa.Column("idempotency_key", sa.String(256), primary_key=True),
        sa.Column("task_id", sa.String(128), nullable=False, index=True),
        sa.Column("step_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("result", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def _tenant_usage_v1(md: sa.MetaData) -> sa.Table:
    return sa.Table(
        "tenant_usage",
        md,
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False, default=0),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False, default=0),
        sa.Column("cost_usd", sa.Float, nullable=False, default=0.0),
        sa.Column("calls", sa.BigInteger, nullable=False, default=0),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def _task_leases_v2(md: sa.MetaData) -> sa.Table:
    return sa.Table(
        "task_leases",
        md,
        sa.Column("task_id", sa.String(128), primary_key=True),
        sa.Column("owner", sa.String(256), nullable=False, index=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )


def _dlq_v2(md: sa.MetaData) -> sa.Table:
    return sa.Table(
        "dlq",
        md,
        sa.Column("task_id", sa.String(128), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False, index=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("trace_id", sa.String(64), nullable=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("record", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    )


def _idempotency_keys_v2(md: sa.MetaData) -> sa.Table:
    return sa.Table(
        "idempotency_keys",
        md,
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("key", sa.String(256), primary_key=True),
        sa.Column("body_sha256", sa.String(64), nullable=False),
        sa.Column("task_id", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def _approvals_v2(md: sa.MetaData) -> sa.Table:
    return sa.Table(
        "approvals",
        md,
        sa.Column("task_id", sa.String(128), primary_key=True),
        sa.Column("step_id", sa.String(64), primary_key=True),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("decided_by", sa.String(256), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
    )


def _approvals_v3(md: sa.MetaData) -> sa.Table:
    """``step_id`` holds the step's idempotency key (a decision belongs to one round's step), up to
    :data:`~officeray.contracts.MAX_IDEMPOTENCY_KEY_CHARS` long; version 2 held 64 characters."""
    return sa.Table(
        "approvals",
        md,
        sa.Column("task_id", sa.String(128), primary_key=True),
        sa.Column("step_id", sa.String(_KEY_CHARS), primary_key=True),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("decided_by", sa.String(256), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
    )


def _schema_migrations(md: sa.MetaData) -> sa.Table:
    return sa.Table(
        "schema_migrations",
        md,
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
    )


metadata = sa.MetaData()
"""The current schema, for queries (never ``create_all``: :data:`MIGRATIONS` own the schema)."""

tasks_table = _tasks_v1(metadata)
events_table = _task_events_v1(metadata)
step_results_table = _step_results_v1(metadata)
tenant_usage_table = _tenant_usage_v1(metadata)
leases_table = _task_leases_v2(metadata)
dlq_table = _dlq_v2(metadata)
idempotency_keys_table = _idempotency_keys_v2(metadata)
approvals_table = _approvals_v3(metadata)
migrations_table = _schema_migrations(metadata)


# --------------------------------------------------------------------------------------------------
# Migrations
# --------------------------------------------------------------------------------------------------


def _migration_1(conn: Connection) -> None:
    md = sa.MetaData()
    for build in (_tasks_v1, _task_events_v1, _step_results_v1, _tenant_usage_v1):
        build(md)
    # checkfirst: a database made by create_all before explicit migrations is adopted as it is...
    md.create_all(conn, checkfirst=True)
    # ...except that the oldest of them have no tasks.request
    if "request" not in {column["name"] for column in sa.inspect(conn).get_columns("tasks")}:
        conn.execute(sa.text("ALTER TABLE tasks ADD COLUMN request TEXT"))


def _migration_2(conn: Connection) -> None:
    md = sa.MetaData()
    for build in (_task_leases_v2, _dlq_v2, _idempotency_keys_v2, _approvals_v2):
        build(md)
    md.create_all(conn, checkfirst=False)


def _migration_3(conn: Connection) -> None:
    # PostgreSQL enforces VARCHAR lengths (widening one is a catalog change, no table rewrite); SQLite
    # neither enforces them nor alters a column's type, so its approvals table is left as it is.
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text(f"ALTER TABLE approvals ALTER COLUMN step_id TYPE VARCHAR({_KEY_CHARS})"))


Migration = tuple[int, str, Callable[[Connection], None]]

MIGRATIONS: tuple[Migration, ...] = (
    (1, "tasks, task_events, step_results, tenant_usage", _migration_1),
    (2, "task_leases, dlq, idempotency_keys, approvals", _migration_2),
    (3, "approvals.step_id holds a step's idempotency key: VARCHAR(256)", _migration_3),
)
"""Every schema change, oldest first: ``(version, description, apply(conn))``. Append only; never edit
or reorder an entry that has shipped."""

SCHEMA_VERSION = MIGRATIONS[-1][0]
"""The schema this code reads and writes."""


def _applied_versions(conn: Connection) -> set[int]:
    if not sa.inspect(conn).has_table(migrations_table.name):
        return set()
    return set(conn.execute(sa.select(migrations_table.c.version)).scalars())


def _refuse_newer(engine: Engine, applied: set[int]) -> None:
    newest = max(applied, default=0)
    if newest > SCHEMA_VERSION:
        where = engine.url.render_as_string(hide_password=True)
        raise StoreError(
            f"the database at {where} has schema version {newest}, newer than this officeray knows "
            f"({SCHEMA_VERSION}); upgrade officeray on this machine"
        )


def migrate(engine: Engine, target: int | None = None) -> int:
    """Apply the migrations this database lacks, up to ``target`` (default: all); return its version.

    The check and the changes run in one transaction that first takes the database's write lock, so
    of several processes opening a fresh database at once, one migrates and the others find it done.
    Raises :class:`~officeray.errors.StoreError` for a database newer than :data:`SCHEMA_VERSION`.
    :class:`SqlStore` calls it on open; a SQLite engine made elsewhere lacks the store's
    ``BEGIN IMMEDIATE`` (and pysqlite then runs DDL outside the transaction).
    """
    target = SCHEMA_VERSION if target is None else target
    with _translated(), engine.connect() as conn:  # fast path: nothing to do, no write lock taken
        applied = _applied_versions(conn)
    _refuse_newer(engine, applied)
    if all(version in applied for version, _, _ in MIGRATIONS if version <= target):
        return max(applied, default=0)
    with _write_transaction(engine) as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK_KEY)))
        migrations_table.create(conn, checkfirst=True)
        applied = _applied_versions(conn)  # again, under the lock: another process may have migrated
        _refuse_newer(engine, applied)
        for version, description, apply in MIGRATIONS:
            if version in applied or version > target:
                continue
            apply(conn)
            conn.execute(
                migrations_table.insert().values(
                    version=version, description=description, applied_at=utcnow()
                )
            )
            applied.add(version)
    return max(applied, default=0)


# --------------------------------------------------------------------------------------------------
# Engines, transactions, errors
# --------------------------------------------------------------------------------------------------


def _normalized_url(url: str) -> sa.URL:
    parsed = sa.make_url(url)
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")  # the driver officeray depends on
    if parsed.get_backend_name() not in SUPPORTED_BACKENDS:
        raise StoreError(
            f"unsupported store URL scheme {parsed.drivername!r}: use sqlite:///PATH or "
            "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB"
        )
    return parsed


def _make_engine(url: sa.URL, sqlite_busy_timeout_ms: int, connect_timeout_s: int) -> Engine:
    if url.get_backend_name() == "postgresql":
        connect_args = {} if "connect_timeout" in url.query else {"connect_timeout": connect_timeout_s}
        return sa.create_engine(
            url,
            pool_pre_ping=True,
            pool_size=POSTGRES_POOL_SIZE,
            max_overflow=POSTGRES_MAX_OVERFLOW,
            pool_timeout=POSTGRES_POOL_TIMEOUT_S,
            pool_recycle=POSTGRES_POOL_RECYCLE_S,
            connect_args=connect_args,
        )
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        url, connect_args={"check_same_thread": False, "timeout": sqlite_busy_timeout_ms / 1000}
    )

    @sa.event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
        # pysqlite's own transaction handling would not let a transaction start with BEGIN IMMEDIATE
        # (nor hold DDL): it is turned off, and SQLAlchemy's "begin" event below emits BEGIN.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(sqlite_busy_timeout_ms)}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _sqlite_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(_SQLITE_BEGIN_OPTION, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _is_unavailable(exc: sa.exc.DBAPIError) -> bool:
    if exc.connection_invalidated or isinstance(exc, sa.exc.InterfaceError):
        return True
    if not isinstance(exc, sa.exc.OperationalError):
        return False
    code = getattr(exc.orig, "sqlite_errorcode", None)
    if code is None:  # PostgreSQL: connection failures, shutdowns, lock and serialization timeouts
        return True
    return (code & 0xFF) in _SQLITE_UNAVAILABLE_CODES


@contextmanager
def _translated() -> Iterator[None]:
    """Database failures as officeray errors: unavailable (transient) or not."""
    try:
        yield
    except sa.exc.TimeoutError as exc:  # no free pooled connection
        raise StoreUnavailableError(f"store unavailable: {exc}") from exc
    except sa.exc.DBAPIError as exc:
        detail = str(exc.orig).strip() or type(exc.orig).__name__
        if _is_unavailable(exc):
            raise StoreUnavailableError(f"store unavailable: {detail}") from exc
        raise StoreError(f"store error: {detail}") from exc


@contextmanager
def _write_transaction(engine: Engine) -> Iterator[Connection]:
    """One write transaction; on SQLite it holds the write lock from its first statement."""
    with _translated(), engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.execution_options(**{_SQLITE_BEGIN_OPTION: "IMMEDIATE"})
        with conn.begin():
            yield conn


def _upsert(engine: Engine, table: sa.Table) -> Any:
    """``INSERT`` with ``on_conflict_do_update`` / ``on_conflict_do_nothing`` for this backend."""
    if engine.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def _utc(moment: datetime | None) -> datetime:
    """An aware UTC datetime (``utcnow()`` for None; a naive one is taken as UTC). SQLite stores
    datetimes without their offset, so every value bound for comparison is UTC."""
    if moment is None:
        return utcnow()
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _iso(moment: datetime) -> str:
    return _utc(moment).isoformat()


_TASK_ROW_COLUMNS = ("task_id", "status", "description", "record", "created_at", "updated_at")


def _task_row(record: TaskRecord) -> dict[str, Any]:
    """The ``tasks`` row of ``record`` as of now (``updated_at``); the caller's record is not changed."""
    now = utcnow()
    return {
        "task_id": record.task_id,
        "status": record.status.value,
        "description": record.description,
        "record": record.model_copy(update={"updated_at": now}).model_dump_json(),  # a shallow copy
        "created_at": _utc(record.created_at),
        "updated_at": now,
    }


_STEP_ROW_COLUMNS = ("idempotency_key", "task_id", "step_id", "status", "result", "updated_at")


def _step_row(task_id: str, result: StepResult) -> dict[str, Any]:
    return {
        "idempotency_key": result.idempotency_key,
        "task_id": task_id,
        "step_id": result.step_id,
        "status": result.status.value,
        "result": result.model_dump_json(),
        "updated_at": utcnow(),
    }


def _new_task_row(record: TaskRecord, request: TaskRequest) -> dict[str, Any]:
    return {
        "task_id": record.task_id,
        "status": record.status.value,
        "description": record.description,
        "record": record.model_dump_json(),
        "request": request.model_dump_json(),
        "created_at": _utc(record.created_at),
        "updated_at": record.updated_at,
    }


def _event_row(task_id: str, kind: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"task_id": task_id, "kind": kind, "data": json.dumps(data, default=str), "at": utcnow()}


def _dlq_row(record: TaskRecord, reason: str) -> dict[str, Any]:
    return {
        "task_id": record.task_id,
        "tenant": record.tenant,
        "reason": reason,
        "trace_id": record.trace_id,
        "description": record.description,
        "record": record.model_dump_json(),
        "created_at": utcnow(),
    }


def _finish_rows(record: TaskRecord, kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """What the end of a run writes (see :meth:`SqlStore.finish_task_sync`), as of now."""
    if not record.status.is_final:
        raise ValueError(f"the end of a run needs a final record, not a {record.status.value} one")
    failed = record.status == TaskStatus.FAILED
    return {
        "row": _task_row(record),
        "event": _event_row(record.task_id, kind, data),
        "dead_letter": _dlq_row(record, record.error or "failed") if failed else None,
        "usage": record.usage.model_dump() if record.usage.calls else None,
        "tenant": record.tenant,
    }


def _task_ids_match(column: sa.Column[str], single: bool) -> sa.ColumnElement[bool]:
    """``column = :task_id`` (``single``) or ``column IN :task_ids``."""
    if single:
        return column == sa.bindparam("task_id")
    return column.in_(sa.bindparam("task_ids", expanding=True))


def _fenced(work: _Work, row: dict[str, Any], owner: str | None) -> _Job:
    """``work`` on the task of its ``tasks`` ``row``, fenced on ``owner``'s lease when given."""
    return work if owner is None else _Fenced(row["task_id"], owner, work)


def _lease_row(task_id: str, owner: str, ttl_s: float, now: datetime) -> dict[str, Any]:
    """The ``task_leases`` row of a lease taken at ``now`` for ``ttl_s`` seconds."""
    return {"task_id": task_id, "owner": owner, "expires_at": now + _positive_ttl(ttl_s)}


def _positive_ttl(ttl_s: float) -> timedelta:
    if ttl_s <= 0:
        raise ValueError(f"ttl_s must be positive, not {ttl_s}")
    return timedelta(seconds=ttl_s)


# --------------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------------


GROUP_COMMIT_MAX_WRITES = 256
"""Most writes committed together in one transaction by the async API's writer thread."""

_Work = Callable[[Connection], Any]


@dataclass(frozen=True)
class _Fenced:
    """A write that runs only while ``owner`` holds the lease on ``task_id``; otherwise it is skipped
    and answers False (see :func:`_run_in_order`)."""

    task_id: str
    owner: str
    work: _Work


@dataclass(frozen=True)
class _LeaseChange:
    """A write that takes or gives up the lease on ``task_id``: fenced writes of that task after it
    in its transaction read the lease again."""

    task_id: str
    work: _Work


_Job = _Work | _Fenced | _LeaseChange
_Holders = Callable[[Connection, list[str]], dict[str, str]]
"""``holders(conn, task_ids)``: who holds the lease of each of ``task_ids`` that has one."""
_Queued = tuple[_Job, "asyncio.Future[Any]", asyncio.AbstractEventLoop]


def _run_in_order(conn: Connection, jobs: Sequence[_Job], holders: _Holders) -> list[Any]:
    """Run ``jobs`` in order in ``conn``'s transaction and return their results.

    Fences cost one look-up per transaction, not one per write: before any job runs, the leases of
    every fenced job's task are read at once (``holders``; on PostgreSQL their rows are locked first,
    in one order, so writers of the same tasks never wait for each other in a cycle). A task's lease
    is read again for its fenced jobs after a job that changed it.
    """
    fenced = sorted({job.task_id for job in jobs if isinstance(job, _Fenced)})
    held = holders(conn, fenced) if fenced else {}
    changed: set[str] = set()
    results: list[Any] = []
    for job in jobs:
        if isinstance(job, _Fenced):
            if job.task_id in changed:
                changed.discard(job.task_id)
                held.pop(job.task_id, None)
                held.update(holders(conn, [job.task_id]))
            results.append(job.work(conn) if held.get(job.task_id) == job.owner else False)
        elif isinstance(job, _LeaseChange):
            results.append(job.work(conn))
            changed.add(job.task_id)
        else:
            results.append(job(conn))
    return results


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller gave up (cancelled); the write itself happened or not, as it went
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class _GroupCommitter:
    """Group commit for the async API's writes: a writer thread takes every write waiting and
    commits them in ONE transaction, in the order they were submitted, then wakes each caller.

    Each caller still awaits its own write's commit (a transition is stored before it is acted
    on); what is shared is the transaction's begin/commit (on PostgreSQL, its fsync) and the
    thread hand-off, and the lease look-up of the batch's fenced writes (:func:`_run_in_order`).
    When a batch fails on a statement's error (not on an unreachable store), the transaction is
    rolled back and its writes run again one transaction each, so only the bad one fails.
    """

    def __init__(self, engine: Engine, holders: _Holders) -> None:
        self._engine = engine
        self._holders = holders
        self._queue: queue.SimpleQueue[_Queued | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, work: _Job) -> asyncio.Future[Any]:
        """Queue ``work(conn)``; the future gets its result once its transaction committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._ensure_thread()
        self._queue.put((work, future, loop))
        return future

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="officeray-store-writer", daemon=True)
                self._thread.start()

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < GROUP_COMMIT_MAX_WRITES:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(item)
            self._commit(batch)

    def _commit(self, batch: list[_Queued]) -> None:
        try:
            with _write_transaction(self._engine) as conn:
                results = _run_in_order(conn, [job for job, _, _ in batch], self._holders)
        except StoreUnavailableError as exc:
            for _, future, loop in batch:
                loop.call_soon_threadsafe(_resolve, future, None, exc)
        except Exception as exc:
            if len(batch) > 1:
                for item in batch:
                    self._commit([item])
            else:
                _, future, loop = batch[0]
                loop.call_soon_threadsafe(_resolve, future, None, exc)
        else:
            for (_, future, loop), result in zip(batch, results, strict=True):
                loop.call_soon_threadsafe(_resolve, future, result, None)


class SqlStore:
    """The store behind every process of a deployment; safe to open from several processes.

    ``url``: ``sqlite:///PATH`` (the folder is created) or ``postgresql+psycopg://...`` (plain
    ``postgresql://`` means the same). Opening applies missing :data:`MIGRATIONS`.
    """

    def __init__(
        self,
        url: str,
        *,
        sqlite_busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS,
        connect_timeout_s: int = POSTGRES_CONNECT_TIMEOUT_S,
    ) -> None:
        self.url = url
        self._engine = _make_engine(_normalized_url(url), sqlite_busy_timeout_ms, connect_timeout_s)
        self._backend = self._engine.dialect.name
        try:
            migrate(self._engine)
        except BaseException:
            self._engine.dispose()
            raise
        # Built once: building an upsert costs more CPU than running it (hot path: every transition).
        upsert = self._insert(tasks_table).values({name: sa.bindparam(name) for name in _TASK_ROW_COLUMNS})
        self._save_task_upsert = upsert.on_conflict_do_update(
            index_elements=[tasks_table.c.task_id],
            set_={name: upsert.excluded[name] for name in ("status", "description", "record", "updated_at")},
        )
        results = self._insert(step_results_table).values(
            {name: sa.bindparam(name) for name in _STEP_ROW_COLUMNS}
        )
        self._step_result_upsert = results.on_conflict_do_update(
            index_elements=[step_results_table.c.idempotency_key],
            set_={name: results.excluded[name] for name in _STEP_ROW_COLUMNS[1:]},
            # a recorded success is final: a stale run's later failure never replaces it
            where=step_results_table.c.status != StepStatus.SUCCEEDED.value,
        )
        self._writer = _GroupCommitter(self._engine, self._lease_holders)
        self._event_insert = events_table.insert().values(
            {name: sa.bindparam(name) for name in ("task_id", "kind", "data", "at")}
        )
        # the leases of fenced writes, by whether there is one task (most batches: ``= :task_id``
        # costs less than an expanding ``IN``) or several
        self._leases_of = {
            single: sa.select(leases_table.c.task_id, leases_table.c.owner).where(
                _task_ids_match(leases_table.c.task_id, single)
            )
            for single in (True, False)
        }
        self._lock_task_rows = {
            single: sa.select(tasks_table.c.task_id)
            .where(_task_ids_match(tasks_table.c.task_id, single))
            .order_by(tasks_table.c.task_id)  # one order for all writers
            .with_for_update(key_share=True)  # FOR NO KEY UPDATE: the lock the upsert takes anyway
            for single in (True, False)
        }

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with _translated(), self._engine.connect() as conn:
            yield conn

    def _write(self) -> AbstractContextManager[Connection]:
        return _write_transaction(self._engine)

    def _insert(self, table: sa.Table) -> Any:
        return _upsert(self._engine, table)

    def schema_version_sync(self) -> int:
        """The newest migration this database has had."""
        with self._read() as conn:
            return max(_applied_versions(conn), default=0)

    # -- tasks, events, step results, usage ------------------------------------------------------

    def save_task_sync(self, record: TaskRecord) -> None:
        """Insert or replace the task's record (its ``created_at`` and request are kept)."""
        self._write_now(partial(self._task_row_on, row=_task_row(record)))

    def save_transition_sync(
        self, record: TaskRecord, kind: str, data: dict[str, Any], *, owner: str | None = None
    ) -> bool:
        """The record and its transition event in ONE transaction: both are stored or neither.

        With ``owner``, the write is *fenced*: it happens only while ``owner`` holds the task's lease,
        checked in the same transaction; False (nothing written) when another owner took the lease or
        nobody holds it. A lease that expired but that nobody took is still ``owner``'s. True when
        written.
        """
        row, event = _task_row(record), _event_row(record.task_id, kind, data)
        written: bool = self._write_now(
            _fenced(partial(self._transition_on, row=row, event=event), row, owner)
        )
        return written

    def _write_now(self, work: _Job) -> Any:
        """``work(conn)`` in its own write transaction, on this thread (the ``*_sync`` API)."""
        with self._write() as conn:
            return _run_in_order(conn, [work], self._lease_holders)[0]

    def _task_row_on(self, conn: Connection, row: dict[str, Any]) -> None:
        conn.execute(self._save_task_upsert, row)

    def _transition_on(self, conn: Connection, row: dict[str, Any], event: dict[str, Any]) -> bool:
        conn.execute(self._save_task_upsert, row)
        conn.execute(self._event_insert, event)
        return True

    def _lease_holders(self, conn: Connection, task_ids: list[str]) -> dict[str, str]:
        """Who holds the lease of each of ``task_ids`` (that has one), for fenced writes in this
        transaction.

        SQLite runs one write transaction at a time. On PostgreSQL the tasks' rows are locked first
        (in one order) and the leases read after (READ COMMITTED: a later statement sees what
        committed before it), so a run that took a task over before the lock is seen here, and the
        writes of one that takes it over later wait for this transaction: an old owner never
        overwrites the new one's record.
        """
        single = len(task_ids) == 1
        params: dict[str, Any] = {"task_id": task_ids[0]} if single else {"task_ids": task_ids}
        if self._backend == "postgresql":
            conn.execute(self._lock_task_rows[single], params)
        return {row.task_id: row.owner for row in conn.execute(self._leases_of[single], params)}

    def finish_task_sync(
        self, record: TaskRecord, kind: str, data: dict[str, Any], *, owner: str | None = None
    ) -> bool:
        """The end of a task's run in ONE transaction: its final record and event (as
        :meth:`save_transition_sync`, fenced on ``owner``'s lease when given), the dead-letter entry
        of a failed task (its error as the reason) and its model usage added to its tenant's. All of
        it is stored or none; False (nothing written) when ``owner`` does not hold the lease."""
        written: bool = self._write_now(self._finish_job(record, kind, data, owner))
        return written

    def _finish_job(self, record: TaskRecord, kind: str, data: dict[str, Any], owner: str | None) -> _Job:
        rows = _finish_rows(record, kind, data)
        return _fenced(partial(self._finish_on, **rows), rows["row"], owner)

    def _finish_on(
        self,
        conn: Connection,
        row: dict[str, Any],
        event: dict[str, Any],
        dead_letter: dict[str, Any] | None,
        usage: dict[str, Any] | None,
        tenant: str,
    ) -> bool:
        self._transition_on(conn, row, event)
        if dead_letter is not None:
            self._dead_letter_on(conn, dead_letter)
        if usage is not None:
            self._usage_on(conn, tenant, usage)
        return True

    def create_task_sync(self, record: TaskRecord, request: TaskRequest) -> bool:
        """Insert a new task atomically; False when a task with that id already exists."""
        with self._write() as conn:
            return self._create_on(conn, _new_task_row(record, request))

    def _create_on(self, conn: Connection, row: dict[str, Any]) -> bool:
        stmt = (
            self._insert(tasks_table)
            .values(**row)
            .on_conflict_do_nothing(index_elements=[tasks_table.c.task_id])
            .returning(tasks_table.c.task_id)  # a row when inserted (INSERT rowcounts are not portable)
        )
        return conn.execute(stmt).first() is not None

    def unfinished_sync(self) -> list[tuple[TaskRecord, TaskRequest]]:
        """Tasks not in a final state, with their requests (what a restarted orchestrator resumes).
        Takes no lease: orchestrators that share a store use :meth:`claimable_unfinished_sync`."""
        query = (
            sa.select(tasks_table.c.record, tasks_table.c.request)
            .where(tasks_table.c.status.not_in(_FINAL_STATUSES))
            .order_by(tasks_table.c.created_at)
        )
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [
            (TaskRecord.model_validate_json(row.record), TaskRequest.model_validate_json(row.request))
            for row in rows
            if row.request
        ]

    def get_task_sync(self, task_id: str) -> TaskRecord | None:
        with self._read() as conn:
            raw = conn.execute(
                sa.select(tasks_table.c.record).where(tasks_table.c.task_id == task_id)
            ).scalar_one_or_none()
        return None if raw is None else TaskRecord.model_validate_json(raw)

    def get_request_sync(self, task_id: str) -> TaskRequest | None:
        """The request the task was created with (None for an unknown task or one saved without it)."""
        with self._read() as conn:
            raw = conn.execute(
                sa.select(tasks_table.c.request).where(tasks_table.c.task_id == task_id)
            ).scalar_one_or_none()
        return None if raw is None else TaskRequest.model_validate_json(raw)

    def list_tasks_sync(self, status: TaskStatus | None = None, limit: int = 100) -> list[TaskRecord]:
        query = sa.select(tasks_table.c.record).order_by(tasks_table.c.created_at.desc()).limit(limit)
        if status is not None:
            query = query.where(tasks_table.c.status == status.value)
        with self._read() as conn:
            return [TaskRecord.model_validate_json(raw) for raw in conn.execute(query).scalars()]

    def append_event_sync(self, task_id: str, kind: str, data: dict[str, Any]) -> None:
        self._write_now(partial(self._event_on, event=_event_row(task_id, kind, data)))

    def _event_on(self, conn: Connection, event: dict[str, Any]) -> None:
        conn.execute(self._event_insert, event)

    def events_sync(self, task_id: str) -> list[dict[str, Any]]:
        query = sa.select(events_table).where(events_table.c.task_id == task_id).order_by(events_table.c.id)
        with self._read() as conn:
            return [
                {"kind": row.kind, "data": json.loads(row.data), "at": _iso(row.at)}
                for row in conn.execute(query)
            ]

    def save_step_result_sync(self, task_id: str, result: StepResult) -> None:
        """Insert or replace the result stored under ``result.idempotency_key``."""
        self._write_now(partial(self._step_on, row=_step_row(task_id, result)))

    def _step_on(self, conn: Connection, row: dict[str, Any]) -> None:
        conn.execute(self._step_result_upsert, row)

    def get_step_result_sync(self, idempotency_key: str) -> StepResult | None:
        with self._read() as conn:
            raw = conn.execute(
                sa.select(step_results_table.c.result).where(
                    step_results_table.c.idempotency_key == idempotency_key
                )
            ).scalar_one_or_none()
        return None if raw is None else StepResult.model_validate_json(raw)

    def add_tenant_usage_sync(self, tenant: str, usage: ModelUsage) -> None:
        """Add ``usage`` to the tenant's totals (one atomic statement)."""
        with self._write() as conn:
            self._usage_on(conn, tenant, usage.model_dump())

    def _usage_on(self, conn: Connection, tenant: str, usage: dict[str, Any]) -> None:
        t = tenant_usage_table
        stmt = self._insert(t).values(tenant=tenant, updated_at=utcnow(), **usage)
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

    def tenant_usage_sync(self, tenant: str) -> ModelUsage:
        t = tenant_usage_table
        with self._read() as conn:
            row = conn.execute(sa.select(t).where(t.c.tenant == tenant)).first()
        if row is None:
            return ModelUsage()
        return ModelUsage(
            prompt_tokens=row.prompt_tokens,
            completion_tokens=row.completion_tokens,
            cost_usd=row.cost_usd,
            calls=row.calls,
        )

    # -- leases: one runner per task among many orchestrators -------------------------------------

    def _lease_upsert(self, rows: Sequence[dict[str, Any]], owner: str, now: datetime) -> Any:
        """Take each row's lease if it is absent, expired or ``owner``'s; RETURNING the ids taken."""
        t = leases_table
        stmt = self._insert(t).values(list(rows))
        return stmt.on_conflict_do_update(
            index_elements=[t.c.task_id],
            set_={"owner": stmt.excluded.owner, "expires_at": stmt.excluded.expires_at},
            where=sa.or_(t.c.expires_at <= now, t.c.owner == owner),
        ).returning(t.c.task_id)

    def acquire_lease_sync(self, task_id: str, owner: str, ttl_s: float, now: datetime | None = None) -> bool:
        """Take or extend the lease on ``task_id`` until ``now + ttl_s``: True when it is ``owner``'s
        now (it was absent, expired, or already ``owner``'s), False when another owner holds it."""
        now = _utc(now)
        acquired: bool = self._write_now(
            partial(self._acquire_on, row=_lease_row(task_id, owner, ttl_s, now), now=now)
        )
        return acquired

    def _acquire_on(self, conn: Connection, row: dict[str, Any], now: datetime) -> bool:
        return conn.execute(self._lease_upsert([row], row["owner"], now)).first() is not None

    def renew_leases_sync(self, owner: str, ttl_s: float, now: datetime | None = None) -> int:
        """Extend every lease still held by ``owner`` to ``now + ttl_s``; return how many. A lease that
        expired but that no one else took is still ``owner``'s and is renewed too."""
        now = _utc(now)
        t = leases_table
        with self._write() as conn:
            return int(
                conn.execute(
                    t.update().where(t.c.owner == owner).values(expires_at=now + _positive_ttl(ttl_s))
                ).rowcount
            )

    def release_lease_sync(self, task_id: str, owner: str) -> bool:
        """Give the lease up; False when ``owner`` did not hold it (another's lease is left alone)."""
        with self._write() as conn:
            return self._release_on(conn, task_id, owner)

    def _release_on(self, conn: Connection, task_id: str, owner: str) -> bool:
        t = leases_table
        return bool(conn.execute(t.delete().where(t.c.task_id == task_id, t.c.owner == owner)).rowcount)

    def lease_owner_sync(self, task_id: str, now: datetime | None = None) -> str | None:
        """Who holds the lease on ``task_id``; None when absent or expired at ``now``."""
        t = leases_table
        query = sa.select(t.c.owner).where(t.c.task_id == task_id, t.c.expires_at > _utc(now))
        with self._read() as conn:
            owner: str | None = conn.execute(query).scalar_one_or_none()
        return owner

    def claimable_unfinished_sync(
        self, owner: str, ttl_s: float, now: datetime | None = None, limit: int = 1000
    ) -> list[tuple[TaskRecord, TaskRequest]]:
        """Unfinished tasks whose lease is absent or expired, oldest first, each leased to ``owner``
        until ``now + ttl_s`` before it is returned: orchestrators that call this at once get disjoint
        tasks (a lease is taken by one conditional upsert; the loser's condition fails)."""
        now = _utc(now)
        expires_at = now + _positive_ttl(ttl_s)
        t, lease = tasks_table, leases_table
        candidates = (
            sa.select(t.c.task_id)
            .select_from(t.outerjoin(lease, lease.c.task_id == t.c.task_id))
            .where(
                t.c.status.not_in(_FINAL_STATUSES),
                t.c.request.is_not(None),
                sa.or_(lease.c.task_id.is_(None), lease.c.expires_at <= now),
            )
            .order_by(t.c.created_at, t.c.task_id)  # one order for all: no deadlock between claimers
            .limit(limit)
        )
        claimed: list[str] = []
        with self._write() as conn:
            ids = list(conn.execute(candidates).scalars())
            for start in range(0, len(ids), CLAIM_BATCH_SIZE):
                rows = [
                    {"task_id": task_id, "owner": owner, "expires_at": expires_at}
                    for task_id in ids[start : start + CLAIM_BATCH_SIZE]
                ]
                claimed.extend(conn.execute(self._lease_upsert(rows, owner, now)).scalars())
            if not claimed:
                return []
            found = conn.execute(
                sa.select(t.c.task_id, t.c.record, t.c.request)
                .where(t.c.task_id.in_(claimed))
                # a task that became final between the candidate scan and the lease is not resumed
                .where(t.c.status.not_in([TaskStatus.COMPLETED.value, TaskStatus.FAILED.value]))
                .order_by(t.c.created_at, t.c.task_id)
            ).all()
            finished = set(claimed) - {row.task_id for row in found}
            if finished:  # and its lease is given back at once
                conn.execute(
                    lease.delete().where(lease.c.task_id.in_(finished)).where(lease.c.owner == owner)
                )
        return [
            (TaskRecord.model_validate_json(row.record), TaskRequest.model_validate_json(row.request))
            for row in found
        ]

    # -- dead-letter queue ------------------------------------------------------------------------

    def dead_letter_sync(self, record: TaskRecord, reason: str) -> None:
        """Put the task in the dead-letter queue (again: its entry is replaced, ``created_at`` too)."""
        self._write_now(partial(self._dead_letter_on, row=_dlq_row(record, reason)))

    def _dead_letter_on(self, conn: Connection, row: dict[str, Any]) -> None:
        t = dlq_table
        stmt = self._insert(t).values(**row)
        stmt = stmt.on_conflict_do_update(
            index_elements=[t.c.task_id],
            set_={
                name: stmt.excluded[name]
                for name in ("tenant", "reason", "trace_id", "description", "record", "created_at")
            },
        )
        conn.execute(stmt)

    @staticmethod
    def _dlq_entry(row: Any) -> dict[str, Any]:
        return {
            "task_id": row.task_id,
            "tenant": row.tenant,
            "reason": row.reason,
            "trace_id": row.trace_id,
            "created_at": _iso(row.created_at),
            "description": row.description,
        }

    def dlq_list_sync(self, tenant: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Dead-lettered tasks, newest first: task_id, tenant, reason, trace_id, created_at (ISO 8601,
        UTC), description."""
        t = dlq_table
        query = sa.select(
            t.c.task_id, t.c.tenant, t.c.reason, t.c.trace_id, t.c.created_at, t.c.description
        ).order_by(t.c.created_at.desc(), t.c.task_id)
        if tenant is not None:
            query = query.where(t.c.tenant == tenant)
        with self._read() as conn:
            return [self._dlq_entry(row) for row in conn.execute(query.limit(limit))]

    def dlq_get_sync(self, task_id: str) -> dict[str, Any] | None:
        """One dead-lettered task: the :meth:`dlq_list_sync` fields plus ``record`` (the full task
        record as JSON data), ``plan`` (its last plan, or None) and ``step_errors`` (the steps that
        failed: step_id, action, attempts, error)."""
        with self._read() as conn:
            row = conn.execute(sa.select(dlq_table).where(dlq_table.c.task_id == task_id)).first()
        if row is None:
            return None
        record = TaskRecord.model_validate_json(row.record)
        entry = self._dlq_entry(row)
        entry["record"] = record.model_dump(mode="json")
        entry["plan"] = None if record.plan is None else record.plan.model_dump(mode="json")
        entry["step_errors"] = [
            {
                "step_id": step.step_id,
                "action": step.action,
                "attempts": step.attempts,
                "error": step.error.model_dump(mode="json"),
            }
            for step in record.steps
            if step.error is not None
        ]
        return entry

    def dlq_remove_sync(self, task_id: str) -> bool:
        """Take the task out of the dead-letter queue; False when it was not there."""
        with self._write() as conn:
            return bool(conn.execute(dlq_table.delete().where(dlq_table.c.task_id == task_id)).rowcount)

    # -- idempotency keys -------------------------------------------------------------------------

    def claim_idempotency_key_sync(
        self, tenant: str, key: str, body_sha256: str, task_id: str
    ) -> tuple[str, bool]:
        """Bind ``(tenant, key)`` to ``task_id`` unless it is bound already, atomically.

        Returns ``(task_id, True)`` for the first claim, and ``(existing_task_id, same_body)`` for
        every later one, where ``same_body`` says whether the body hashes match. A caller knows its
        claim created the binding when the returned id is its own ``task_id``.
        """
        with self._write() as conn:
            return self._claim_on(conn, tenant, key, body_sha256, task_id)

    def _claim_on(
        self, conn: Connection, tenant: str, key: str, body_sha256: str, task_id: str
    ) -> tuple[str, bool]:
        t = idempotency_keys_table
        stmt = (
            self._insert(t)
            .values(tenant=tenant, key=key, body_sha256=body_sha256, task_id=task_id, created_at=utcnow())
            .on_conflict_do_nothing(index_elements=[t.c.tenant, t.c.key])
            .returning(t.c.task_id)
        )
        if conn.execute(stmt).first() is not None:
            return task_id, True
        existing = conn.execute(
            sa.select(t.c.task_id, t.c.body_sha256).where(t.c.tenant == tenant, t.c.key == key)
        ).one()
        return existing.task_id, existing.body_sha256 == body_sha256

    # -- approvals --------------------------------------------------------------------------------

    def decide_approval_sync(
        self,
        task_id: str,
        step_id: str,
        decision: ApprovalDecision,
        decided_by: str,
        reason: str | None = None,
    ) -> bool:
        """Record the decision on a step that waits for approval; False when one was recorded before
        (the first decision wins)."""
        if decision not in APPROVAL_DECISIONS:
            raise ValueError(f"decision must be one of {APPROVAL_DECISIONS}, not {decision!r}")
        t = approvals_table
        stmt = (
            self._insert(t)
            .values(
                task_id=task_id,
                step_id=step_id,
                decision=decision,
                decided_by=decided_by,
                reason=reason,
                decided_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=[t.c.task_id, t.c.step_id])
            .returning(t.c.task_id)
        )
        with self._write() as conn:
            return conn.execute(stmt).first() is not None

    def get_approval_sync(self, task_id: str, step_id: str) -> dict[str, Any] | None:
        """The decision on a step: task_id, step_id, decision, decided_by, reason, decided_at (ISO)."""
        t = approvals_table
        with self._read() as conn:
            row = conn.execute(sa.select(t).where(t.c.task_id == task_id, t.c.step_id == step_id)).first()
        if row is None:
            return None
        return {
            "task_id": row.task_id,
            "step_id": row.step_id,
            "decision": row.decision,
            "decided_by": row.decided_by,
            "reason": row.reason,
            "decided_at": _iso(row.decided_at),
        }

    # -- async API (the workflow's Store port) --------------------------------------------------

    # The hot writes serialize their record when called, on the caller's thread, and return the
    # awaitable of the write: the caller may change the record meanwhile (the Store port's
    # contract), and serializing costs less than a deep copy. They go through the group committer.

    def save_task(self, record: TaskRecord) -> Awaitable[None]:
        return self._writer.submit(partial(self._task_row_on, row=_task_row(record)))

    def save_transition(
        self, record: TaskRecord, kind: str, data: dict[str, Any], *, owner: str | None = None
    ) -> Awaitable[bool]:
        row, event = _task_row(record), _event_row(record.task_id, kind, data)
        return self._writer.submit(_fenced(partial(self._transition_on, row=row, event=event), row, owner))

    def finish_task(
        self, record: TaskRecord, kind: str, data: dict[str, Any], *, owner: str | None = None
    ) -> Awaitable[bool]:
        return self._writer.submit(self._finish_job(record, kind, data, owner))

    def create_task(self, record: TaskRecord, request: TaskRequest) -> Awaitable[bool]:
        return self._writer.submit(partial(self._create_on, row=_new_task_row(record, request)))

    async def create_leased_task(
        self, record: TaskRecord, request: TaskRequest, owner: str, ttl_s: float
    ) -> bool:
        """Take the lease on the new task and insert it, in one transaction: True when both
        happened; False (and nothing changed) when another owner holds the lease or the task exists."""
        now = utcnow()
        lease = _lease_row(record.task_id, owner, ttl_s, now)
        work = partial(self._create_leased_on, lease=lease, now=now, row=_new_task_row(record, request))
        created: bool = await self._writer.submit(_LeaseChange(record.task_id, work))
        return created

    def _create_leased_on(
        self, conn: Connection, lease: dict[str, Any], now: datetime, row: dict[str, Any]
    ) -> bool:
        if not self._acquire_on(conn, lease, now):
            return False
        if self._create_on(conn, row):
            return True
        self._release_on(conn, lease["task_id"], lease["owner"])  # it existed: leave its lease as it was
        return False

    async def unfinished(self) -> list[tuple[TaskRecord, TaskRequest]]:
        return await asyncio.to_thread(self.unfinished_sync)

    async def get_task(self, task_id: str) -> TaskRecord | None:
        return await asyncio.to_thread(self.get_task_sync, task_id)

    async def get_request(self, task_id: str) -> TaskRequest | None:
        return await asyncio.to_thread(self.get_request_sync, task_id)

    def append_event(self, task_id: str, kind: str, data: dict[str, Any]) -> Awaitable[None]:
        return self._writer.submit(partial(self._event_on, event=_event_row(task_id, kind, data)))

    def save_step_result(self, task_id: str, result: StepResult) -> Awaitable[None]:
        return self._writer.submit(partial(self._step_on, row=_step_row(task_id, result)))

    async def get_step_result(self, idempotency_key: str) -> StepResult | None:
        return await asyncio.to_thread(self.get_step_result_sync, idempotency_key)

    async def events(self, task_id: str) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.events_sync, task_id)

    def add_tenant_usage(self, tenant: str, usage: ModelUsage) -> Awaitable[None]:
        return self._writer.submit(partial(self._usage_on, tenant=tenant, usage=usage.model_dump()))

    async def tenant_usage(self, tenant: str) -> ModelUsage:
        return await asyncio.to_thread(self.tenant_usage_sync, tenant)

    async def acquire_lease(
        self, task_id: str, owner: str, ttl_s: float, now: datetime | None = None
    ) -> bool:
        moment = _utc(now)
        row = _lease_row(task_id, owner, ttl_s, moment)
        work = partial(self._acquire_on, row=row, now=moment)
        acquired: bool = await self._writer.submit(_LeaseChange(task_id, work))
        return acquired

    async def renew_leases(self, owner: str, ttl_s: float, now: datetime | None = None) -> int:
        return await asyncio.to_thread(self.renew_leases_sync, owner, ttl_s, now)

    async def release_lease(self, task_id: str, owner: str) -> bool:
        work = partial(self._release_on, task_id=task_id, owner=owner)
        released: bool = await self._writer.submit(_LeaseChange(task_id, work))
        return released

    async def lease_owner(self, task_id: str, now: datetime | None = None) -> str | None:
        return await asyncio.to_thread(self.lease_owner_sync, task_id, now)

    async def claimable_unfinished(
        self, owner: str, ttl_s: float, now: datetime | None = None, limit: int = 1000
    ) -> list[tuple[TaskRecord, TaskRequest]]:
        return await asyncio.to_thread(self.claimable_unfinished_sync, owner, ttl_s, now, limit)

    async def dead_letter(self, record: TaskRecord, reason: str) -> None:
        await asyncio.to_thread(self.dead_letter_sync, record.model_copy(deep=True), reason)

    async def dlq_list(self, tenant: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.dlq_list_sync, tenant, limit)

    async def dlq_get(self, task_id: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self.dlq_get_sync, task_id)

    async def dlq_remove(self, task_id: str) -> bool:
        return await asyncio.to_thread(self.dlq_remove_sync, task_id)

    async def claim_idempotency_key(
        self, tenant: str, key: str, body_sha256: str, task_id: str
    ) -> tuple[str, bool]:
        work = partial(self._claim_on, tenant=tenant, key=key, body_sha256=body_sha256, task_id=task_id)
        claimed: tuple[str, bool] = await self._writer.submit(work)
        return claimed

    async def decide_approval(
        self,
        task_id: str,
        step_id: str,
        decision: ApprovalDecision,
        decided_by: str,
        reason: str | None = None,
    ) -> bool:
        return await asyncio.to_thread(
            self.decide_approval_sync, task_id, step_id, decision, decided_by, reason
        )

    async def get_approval(self, task_id: str, step_id: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self.get_approval_sync, task_id, step_id)

    async def schema_version(self) -> int:
        return await asyncio.to_thread(self.schema_version_sync)

    def close(self) -> None:
        self._writer.close()
        self._engine.dispose()


# --------------------------------------------------------------------------------------------------
# python -m officeray.store --bench [--url URL]: the write cost of one task transition
# --------------------------------------------------------------------------------------------------

BENCH_TRANSITIONS = 500
"""Transitions timed per backend by ``--bench`` (after :data:`BENCH_WARMUP` untimed ones)."""

BENCH_WARMUP = 20


def _bench(url: str, transitions: int) -> tuple[float, float]:
    """p50 and p95 milliseconds of ``save_task_sync`` + ``append_event_sync`` (one transition) on
    ``url``; the rows written are deleted afterwards."""
    store = SqlStore(url)
    prefix = f"bench-{uuid.uuid4().hex[:12]}"
    statuses = list(TaskStatus)
    timings: list[float] = []
    try:
        for i in range(BENCH_WARMUP + transitions):
            record = TaskRecord(
                task_id=f"{prefix}-{i // len(statuses)}",
                description="benchmark task",
                status=statuses[i % len(statuses)],
            )
            started = time.perf_counter()
            store.save_task_sync(record)
            store.append_event_sync(record.task_id, record.status.value, {"status": record.status.value})
            if i >= BENCH_WARMUP:
                timings.append((time.perf_counter() - started) * 1000)
        with store._write() as conn:
            for table in (tasks_table, events_table):
                conn.execute(table.delete().where(table.c.task_id.startswith(prefix)))
    finally:
        store.close()
    cuts = statistics.quantiles(timings, n=100)
    return cuts[49], cuts[94]


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m officeray.store", description="officeray's store")
    parser.add_argument("--bench", action="store_true", help="time one task transition (save + event)")
    parser.add_argument("--url", help="also time this store (a PostgreSQL URL)")
    parser.add_argument("--transitions", type=int, default=BENCH_TRANSITIONS)
    args = parser.parse_args(argv)
    if not args.bench:
        parser.print_help()
        return 2
    with tempfile.TemporaryDirectory(prefix="officeray-bench-") as folder:
        targets = [("sqlite (file, WAL)", f"sqlite:///{folder}/bench.db")]
        if args.url:
            targets.append((sa.make_url(args.url).render_as_string(hide_password=True), args.url))
        print(f"one transition = save_task + append_event, {args.transitions} timed")
        for name, url in targets:
            p50, p95 = _bench(url, args.transitions)
            print(f"{name}: p50 {p50:.2f} ms  p95 {p95:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
