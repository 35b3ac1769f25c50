"""Fixtures of the store's tests: every store on the same API, and a real PostgreSQL server.

* ``store``: each implementation of :class:`~officeray.store.TaskStore` in turn: the in-memory store
  of :mod:`officeray.testing`, :class:`~officeray.store.SqlStore` on a SQLite file and on a fresh
  PostgreSQL database (marked ``integration``);
* ``url``: the URL of a SQLite file or of a fresh PostgreSQL database, for the SQL-only tests.

The server is Debian's (``/usr/lib/postgresql/<major>/bin``), initialised in a temporary folder and
run as the ``postgres`` user when the tests run as root (PostgreSQL refuses to run as root). Without
the binaries the PostgreSQL tests fail with a pointer to ``scripts/bootstrap.sh``, or are skipped when
``OFFICERAY_SKIP_POSTGRES=1``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

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

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
PREFERRED_MAJOR = "15"
SKIP_ENV = "OFFICERAY_SKIP_POSTGRES"
MISSING_BINARIES = (
    f"PostgreSQL server binaries not found ({PG_BIN_GLOB}/initdb): "
    "run scripts/bootstrap.sh (installs postgresql)"
)
PG_COMMAND_TIMEOUT_S = 60
PG_START_ATTEMPTS = 3
"""Ports are picked free then bound by the server: another process may take one in between."""

SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "200",
    # a throwaway server: durability off, so tests are fast (the benchmark is run on its own)
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_bindir() -> Path | None:
    """Debian's PostgreSQL server binaries, version 15 when installed, else the newest."""
    found = [Path(p) for p in glob.glob(PG_BIN_GLOB) if (Path(p) / "initdb").exists()]
    if not found:
        return None
    preferred = [p for p in found if p.parent.name == PREFERRED_MAJOR]
    return (preferred or sorted(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0))[
        -1
    ]


def require_postgres() -> Path:
    """The server binaries; fails (skips with OFFICERAY_SKIP_POSTGRES=1) when they are missing."""
    bindir = postgres_bindir()
    if bindir is not None:
        return bindir
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: {MISSING_BINARIES}")
    pytest.fail(MISSING_BINARIES)


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder, reachable on 127.0.0.1 with trust auth."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="officeray-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self._as_owner: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, user="postgres", group="postgres")
            self._as_owner = ["runuser", "-u", "postgres", "--"]
        self._pg(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
            "--no-sync", "--no-instructions",
        )  # fmt: skip

    def _pg(self, tool: str, *args: str) -> None:
        proc = subprocess.run(
            [*self._as_owner, str(self.bindir / tool), *args],
            capture_output=True,
            text=True,
            timeout=PG_COMMAND_TIMEOUT_S,
            check=False,
        )
        if proc.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} failed: {proc.stdout}{proc.stderr}\n{log}")

    def _configure(self, port: int) -> None:
        settings = {**SERVER_SETTINGS, "port": str(port), "unix_socket_directories": f"'{self.root}'"}
        conf = self.data / "postgresql.auto.conf"
        conf.write_text("".join(f"{name} = {value}\n" for name, value in settings.items()))

    def start(self) -> None:
        """Start on the port used before, or on a free one the first time."""
        for attempt in range(PG_START_ATTEMPTS):
            if not self.port or attempt:
                self.port = free_port()
            self._configure(self.port)
            try:
                self._pg("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30")
                return
            except RuntimeError:
                if attempt == PG_START_ATTEMPTS - 1:
                    raise

    def stop(self) -> None:
        self._pg("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "30")

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError):
                self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _admin(self) -> psycopg.Connection:
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        )

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        name = name or f"officeray_{uuid.uuid4().hex[:12]}"
        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with self._admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


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
