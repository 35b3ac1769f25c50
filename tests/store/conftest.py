"""Fixtures of the store's tests: every store on the same API, and a real PostgreSQL server.

* ``store``: each implementation of :class:`~officeray.store.TaskStore` in turn: the in-memory store
  of :mod:`officeray.testing`, :class:`~officeray.store.SqlStore` on a SQLite file and on a fresh
  PostgreSQL database (marked ``integration``);
* ``url``: the URL of a SQLite file or of a fresh PostgreSQL database, for the SQL-only tests.

The server is :class:`loadtests.postgres.PostgresServer` (Debian's binaries, a temporary folder,
durability off). Without the binaries the PostgreSQL tests fail with a pointer to
``scripts/bootstrap.sh``, or are skipped when ``OFFICERAY_SKIP_POSTGRES=1``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from loadtests.postgres import MISSING_BINARIES, PostgresServer, postgres_bindir
from officeray.contracts import (
    MAX_IDEMPOTENCY_KEY_CHARS,
    MAX_STEP_ID_CHARS,
    StepResult,
    StepStatus,
    TaskRecord,
    TaskRequest,
    TaskStatus,
)
from officeray.store import SqlStore, TaskStore
from officeray.testing import InMemoryStore

SKIP_ENV = "OFFICERAY_SKIP_POSTGRES"


def require_postgres() -> Path:
    """The server binaries; fails (skips with OFFICERAY_SKIP_POSTGRES=1) when they are missing."""
    bindir = postgres_bindir()
    if bindir is not None:
        return bindir
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: {MISSING_BINARIES}")
    pytest.fail(MISSING_BINARIES)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session, stopped and removed at the end."""
    server = PostgresServer(require_postgres())
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database on the session's server (dropped after the test)."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    """A server of this test's own, which the test may stop and start."""
    server = PostgresServer(require_postgres())
    try:
        server.start()
        yield server
    finally:
        server.remove()


# -- the stores under test ----------------------------------------------------------------------------

SQL_BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.integration)]
ALL_BACKENDS = ["memory", *SQL_BACKENDS]


def _sql_url(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'officeray.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(params=SQL_BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLite file, or a fresh database on the session's PostgreSQL server."""
    return _sql_url(request, request.param, tmp_path)


@pytest.fixture(params=ALL_BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TaskStore]:
    """Each store in turn: in memory, SQLite, PostgreSQL."""
    opened: TaskStore = (
        InMemoryStore() if request.param == "memory" else SqlStore(_sql_url(request, request.param, tmp_path))
    )
    yield opened
    opened.close()


@pytest.fixture
def sql_store(url: str) -> Iterator[SqlStore]:
    """A SqlStore on ``url``."""
    opened = SqlStore(url)
    yield opened
    opened.close()


# -- what the tests store -----------------------------------------------------------------------------

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
"""The clock of the lease tests."""


def record(task_id: str = "task-1", status: TaskStatus = TaskStatus.QUEUED, **fields: Any) -> TaskRecord:
    return TaskRecord(task_id=task_id, description=f"do {task_id}", status=status, **fields)


def request_for(task_id: str, tenant: str = "default") -> TaskRequest:
    return TaskRequest(description=f"do {task_id}", task_id=task_id, tenant=tenant)


def step_result(
    key: str = "task-1:1:s1", status: StepStatus = StepStatus.SUCCEEDED, **fields: Any
) -> StepResult:
    return StepResult(step_id="s1", action="math_calculator", idempotency_key=key, status=status, **fields)


LONG_TASK_ID = "t" * 100
"""The longest task id a request may carry (TaskRequest.task_id)."""
LONG_TENANT = "a" * 100
LONG_STEP_ID = "s" * MAX_STEP_ID_CHARS
LONG_KEY = f"{LONG_TASK_ID}:1:".ljust(MAX_IDEMPOTENCY_KEY_CHARS, "k")
"""The longest step idempotency key (the embedded planner writes ``task_id:iteration:step_id``)."""
