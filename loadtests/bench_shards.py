"""The store and shard side of ``bench overhead``: where its stacks keep their state (a SQLite file
each, a given loopback database, or a throwaway PostgreSQL server this module starts), the server's
processes for the CPU accounting, and the scaling table (tasks/s and CPU per task by shard count).

The server is Debian's (``/usr/lib/postgresql/<major>/bin``), as in the store's test fixtures
(``tests/store/conftest.py``): initialised in a temporary folder, listening on 127.0.0.1 only with
trust authentication, run as the ``postgres`` user when this process is root (PostgreSQL refuses to
run as root). Unlike the tests' server it keeps PostgreSQL's durable defaults (``fsync``,
``synchronous_commit``): the benchmark measures what a durable system costs.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
PREFERRED_PG_MAJOR = "15"
PG_COMMAND_TIMEOUT_S = 60
"""Limit of one ``initdb``/``pg_ctl`` command."""
PG_START_ATTEMPTS = 3
"""Ports are picked free, then bound by the server: another process may take one in between."""
PG_MAX_CONNECTIONS = 400
"""Every process of a stack keeps a pool of connections (``officeray.store.engine``): orchestrator
shards, Serve replicas, tool runners; 400 leaves room for several shards."""
PG_GROUP = "postgres"
"""The CPU group of the PostgreSQL server's processes."""
MAX_SHARDS = 8
"""Largest orchestrator shard count accepted by ``--shards``."""
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
"""Hosts a ``--store-url`` may name: the benchmark stays on this machine."""


# -- arguments --------------------------------------------------------------------------------------


def shards_arg(text: str) -> tuple[int, ...]:
    """``--shards``: comma-separated orchestrator shard counts, 1..MAX_SHARDS, in order, no repeats."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("shards: give comma-separated shard counts, e.g. 1,2")
    values: list[int] = []
    for part in parts:
        try:
            value = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"shards: {part!r} is not an integer") from None
        if not 1 <= value <= MAX_SHARDS:
            raise argparse.ArgumentTypeError(f"shards: {value} is not between 1 and {MAX_SHARDS}")
        if value not in values:
            values.append(value)
    return tuple(values)


def store_url_arg(text: str) -> str:
    """``--store-url``: a SQLAlchemy URL of SQLite or of PostgreSQL on a loopback host."""
    import sqlalchemy as sa

    try:
        url = sa.make_url(text)
    except sa.exc.ArgumentError:
        raise argparse.ArgumentTypeError(f"store url: {text!r} is not a database URL") from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        return text
    if backend not in ("postgresql", "postgres"):
        raise argparse.ArgumentTypeError(f"store url: {backend!r} is not sqlite or postgresql")
    if (url.host or "") not in LOOPBACK_HOSTS:
        raise argparse.ArgumentTypeError(
            f"store url: host {url.host!r} is not loopback ({', '.join(sorted(LOOPBACK_HOSTS))})"
        )
    return text


def url_port(url: str, default: int = 5432) -> int | None:
    """The TCP port of a PostgreSQL URL (None for SQLite)."""
    import sqlalchemy as sa

    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return None
    return int(parsed.port or default)


def shown_url(url: str) -> str:
    """``url`` without its password, for the printed notes."""
    import sqlalchemy as sa

    return sa.make_url(url).render_as_string(hide_password=True)


# -- the server's processes -------------------------------------------------------------------------


def listening_pid(port: int, connections: Iterable[Any] | None = None) -> int | None:
    """The process that listens on TCP ``port`` of a loopback address (a PostgreSQL server's
    postmaster), or None when none is found (or its owner is not ours to see)."""
    if connections is None:
        try:
            connections = psutil.net_connections(kind="tcp")
        except psutil.Error:
            return None
    for conn in connections:
        laddr = getattr(conn, "laddr", None)
        if (
            conn.status == psutil.CONN_LISTEN
            and laddr
            and laddr.port == port
            and laddr.ip in LOOPBACK_HOSTS | {"0.0.0.0", "::"}
            and conn.pid
        ):
            return int(conn.pid)
    return None


# -- a throwaway server -----------------------------------------------------------------------------


def postgres_bindir() -> Path | None:
    """Debian's PostgreSQL server binaries, version 15 when installed, else the newest."""
    found = [Path(p) for p in glob.glob(PG_BIN_GLOB) if (Path(p) / "initdb").exists()]
    if not found:
        return None
    preferred = [p for p in found if p.parent.name == PREFERRED_PG_MAJOR]
    return (preferred or sorted(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0))[
        -1
    ]


class PostgresUnavailable(RuntimeError):
    """The throwaway server could not be set up (no binaries, or ``initdb``/``pg_ctl`` failed)."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ThrowawayPostgres:
    """A PostgreSQL cluster in a temporary folder on 127.0.0.1 for one benchmark: a context manager
    that starts it and, on exit, stops it and removes the folder. :meth:`create_database` gives each
    stack a database of its own."""

    def __init__(self, bindir: Path | None = None) -> None:
        found = bindir or postgres_bindir()
        if found is None:
            raise PostgresUnavailable(
                f"PostgreSQL server binaries not found ({PG_BIN_GLOB}/initdb): run scripts/bootstrap.sh "
                "(installs postgresql), or give --store-url"
            )
        self.bindir = found
        self.root = Path(tempfile.mkdtemp(prefix="officeray-bench-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self._as_owner: list[str] = []

    def __enter__(self) -> ThrowawayPostgres:
        try:
            if os.geteuid() == 0:
                shutil.chown(self.root, user="postgres", group="postgres")
                self._as_owner = ["runuser", "-u", "postgres", "--"]
            self._pg(
                "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
                "--no-instructions",
            )  # fmt: skip
            self._start()
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self._remove()

    def _pg(self, tool: str, *args: str) -> None:
        try:
            proc = subprocess.run(
                [*self._as_owner, str(self.bindir / tool), *args],
                capture_output=True,
                text=True,
                timeout=PG_COMMAND_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PostgresUnavailable(f"{tool} failed: {exc}") from None
        if proc.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise PostgresUnavailable(f"{tool} {' '.join(args)} failed: {proc.stdout}{proc.stderr}\n{log}")

    def _start(self) -> None:
        for attempt in range(PG_START_ATTEMPTS):
            self.port = _free_port()
            settings = {
                "listen_addresses": "'127.0.0.1'",
                "port": str(self.port),
                "max_connections": str(PG_MAX_CONNECTIONS),
                "unix_socket_directories": f"'{self.root}'",
            }
            conf = self.data / "postgresql.auto.conf"
            conf.write_text("".join(f"{name} = {value}\n" for name, value in settings.items()))
            try:
                self._pg("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30")
                return
            except PostgresUnavailable:
                if attempt == PG_START_ATTEMPTS - 1:
                    raise

    def _remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(PostgresUnavailable):
                self._pg("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "30")
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def pid(self) -> int | None:
        """The postmaster's pid (the first line of ``postmaster.pid``)."""
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; its SQLAlchemy URL."""
        import psycopg
        from psycopg import sql

        name = name or f"bench_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"


# -- where each stack keeps its state ---------------------------------------------------------------


@dataclass
class StoreChoice:
    """The store of every stack of one benchmark: a SQLite file in each stack's folder (``url`` and
    ``server`` None), the given ``url`` (every stack shares it), or a database of its own on the
    throwaway ``server``. ``server_pid`` is the PostgreSQL server whose processes are counted with the
    session's (None: SQLite, or not found)."""

    url: str | None = None
    server: ThrowawayPostgres | None = None
    server_pid: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        if self.server is not None:
            return "PostgreSQL (a throwaway server on 127.0.0.1, durable defaults)"
        if self.url is not None and url_port(self.url) is not None:
            return f"PostgreSQL at {shown_url(self.url)}"
        if self.url is not None:
            return f"SQLite at {self.url}"
        return "SQLite in a temporary folder"

    def url_for(self, state_dir: Path) -> str:
        """The store URL of the stack whose state lives in ``state_dir``."""
        if self.server is not None:
            return self.server.create_database()
        if self.url is not None:
            return self.url
        return f"sqlite:///{state_dir}/bench.db"

    def extra_roots(self) -> dict[int, str]:
        """Processes outside this process's tree whose CPU and memory count: ``{root pid: group}``."""
        return {} if self.server_pid is None else {self.server_pid: PG_GROUP}


@contextlib.contextmanager
def store_choice(url: str | None, postgres: bool) -> Iterator[StoreChoice]:
    """The :class:`StoreChoice` of ``--store-url``/``--postgres``: a throwaway server when
    ``postgres`` is set and no ``url`` is given (stopped and removed on exit)."""
    if url is None and postgres:
        with ThrowawayPostgres() as server:
            yield StoreChoice(server=server, server_pid=server.pid)
        return
    choice = StoreChoice(url=url)
    port = url_port(url) if url is not None else None
    if port is not None:
        choice.server_pid = listening_pid(port)
        if choice.server_pid is None:
            choice.notes.append(
                f"no process found listening on port {port}: the PostgreSQL server's CPU and memory "
                "are not counted"
            )
    yield choice


# -- the scaling table ------------------------------------------------------------------------------


def scaling_rows(instant_by_shards: Sequence[tuple[int, Sequence[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """One row per (shard count, instant level): throughput and CPU per task, with the
    orchestrators' and the database server's shares, and throughput against the first shard
    count's at the same level (``speedup``)."""
    first: dict[int, float] = {}
    rows = []
    for shards, levels in instant_by_shards:
        for row in levels:
            c = row["concurrency"]
            rate = row.get("tasks_per_s")
            if rate is not None:
                first.setdefault(c, rate)
            base = first.get(c)
            rows.append(
                {
                    "shards": shards,
                    "concurrency": c,
                    "tasks": row.get("tasks"),
                    "failed": row.get("failed"),
                    "tasks_per_s": rate,
                    "cpu_ms_per_task": row.get("cpu_ms_per_task"),
                    "orch_cpu_ms_per_task": row.get("orch_cpu_ms_per_task"),
                    "db_cpu_ms_per_task": row.get("db_cpu_ms_per_task"),
                    "cores_used": row.get("cores_used"),
                    "speedup": rate / base if rate is not None and base else None,
                }
            )
    return rows
