"""The store and shard side of ``bench overhead``: where its stacks keep their state (a SQLite file
each, a given loopback database, or a throwaway PostgreSQL server this module starts), the server's
processes for the CPU accounting, and the scaling table (tasks/s and CPU per task by shard count).

The server is :class:`loadtests.postgres.PostgresServer`, the one the store's tests use, started
``durable``: unlike the tests' it keeps PostgreSQL's defaults (``fsync``, ``synchronous_commit``),
since the benchmark measures what a durable system costs.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from loadtests.postgres import PostgresServer, PostgresUnavailable

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


# -- where each stack keeps its state ---------------------------------------------------------------


@dataclass
class StoreChoice:
    """The store of every stack of one benchmark: a SQLite file in each stack's folder (``url`` and
    ``server`` None), the given ``url`` (every stack shares it), or a database of its own on the
    throwaway ``server``. ``server_pid`` is the PostgreSQL server whose processes are counted with the
    session's (None: SQLite, or not found)."""

    url: str | None = None
    server: PostgresServer | None = None
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
        try:
            server = PostgresServer(durable=True)
        except PostgresUnavailable as exc:
            raise PostgresUnavailable(f"{exc}; or give --store-url") from None
        with server:
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
