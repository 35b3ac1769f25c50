"""Engines and transactions: SQLite and PostgreSQL specifics, and database errors as officeray's.

* :func:`make_engine`: a SQLite file in WAL mode with a busy timeout (whose write transactions can
  start with ``BEGIN IMMEDIATE``), or a pooled PostgreSQL engine with a connect timeout;
* :func:`translated`: database failures as :class:`~officeray.errors.StoreUnavailableError` (the
  database cannot be reached now: server down, connection refused, SQLite locked past its busy
  timeout) or :class:`~officeray.errors.StoreError` (anything else);
* :func:`write_transaction`: one write transaction that, on SQLite, holds the write lock from its
  first statement (it waits up to the busy timeout for the lock instead of failing when a read
  turns into a write).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

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

SUPPORTED_BACKENDS = ("sqlite", "postgresql")

_SQLITE_UNAVAILABLE_CODES = frozenset({5, 6, 10, 14, 15})
"""SQLite primary result codes that mean "not now" rather than "wrong": BUSY, LOCKED, IOERR, CANTOPEN,
PROTOCOL."""

_SQLITE_BEGIN_OPTION = "officeray_sqlite_begin"
"""Connection execution option naming the SQLite ``BEGIN`` mode (``DEFERRED`` unless ``IMMEDIATE``)."""


def normalized_url(url: str) -> sa.URL:
    """``url`` parsed, with plain ``postgresql://`` meaning psycopg; an unsupported backend raises
    :class:`~officeray.errors.StoreError`."""
    parsed = sa.make_url(url)
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")  # the driver officeray depends on
    if parsed.get_backend_name() not in SUPPORTED_BACKENDS:
        raise StoreError(
            f"unsupported store URL scheme {parsed.drivername!r}: use sqlite:///PATH or "
            "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB"
        )
    return parsed


def make_engine(url: sa.URL, sqlite_busy_timeout_ms: int, connect_timeout_s: int) -> Engine:
    """The engine of ``url`` (see :func:`normalized_url`); a SQLite file's folder is created."""
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
        # on the driver's connection itself: SQLAlchemy's statement path would cost more than the BEGIN
        driver = conn.connection.driver_connection
        assert driver is not None  # a connection that began a transaction has its driver's
        try:
            driver.execute(f"BEGIN {mode}")
        except sqlite3.Error as exc:  # as SQLAlchemy's own statements raise it (see :func:`translated`)
            raise sa.exc.OperationalError(f"BEGIN {mode}", None, exc) from exc

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
def translated() -> Iterator[None]:
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
def read_connection(engine: Engine) -> Iterator[Connection]:
    """A connection for reads (its errors translated)."""
    with translated(), engine.connect() as conn:
        yield conn


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """One write transaction; on SQLite it holds the write lock from its first statement."""
    with translated(), engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.execution_options(**{_SQLITE_BEGIN_OPTION: "IMMEDIATE"})
        with conn.begin():
            yield conn


def insert(dialect: str, table: sa.Table) -> Any:
    """``INSERT`` into ``table`` with this backend's ``on_conflict_do_update`` /
    ``on_conflict_do_nothing``."""
    if dialect == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def insert_first(
    conn: Connection, dialect: str, table: sa.Table, keys: tuple[str, ...], **values: Any
) -> bool:
    """Insert ``values`` into ``table`` unless a row with the same ``keys`` columns exists: the first
    write wins (a person's decision, say). True when this write was the first."""
    stmt = (
        insert(dialect, table)
        .values(**values)
        .on_conflict_do_nothing(index_elements=[table.c[k] for k in keys])
        .returning(table.c[keys[0]])
    )
    return conn.execute(stmt).first() is not None
