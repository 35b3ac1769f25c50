"""A throwaway PostgreSQL server on 127.0.0.1: the store's tests and ``bench overhead --postgres``.

The server is Debian's (``/usr/lib/postgresql/<major>/bin``, version 15 when installed, else the
newest), initialised in a temporary folder, listening on 127.0.0.1 only with trust authentication,
run as the ``postgres`` user when this process is root (PostgreSQL refuses to run as root).
``durable=False`` (the tests) turns ``fsync``, ``synchronous_commit`` and full-page writes off;
``durable=True`` (the benchmark) keeps PostgreSQL's defaults: it measures what a durable system costs.
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
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
PREFERRED_PG_MAJOR = "15"
PG_COMMAND_TIMEOUT_S = 60
"""Limit of one ``initdb``/``pg_ctl`` command."""
PG_START_ATTEMPTS = 3
"""Ports are picked free, then bound by the server: another process may take one in between."""
PG_MAX_CONNECTIONS = 400
"""Every process of a stack keeps a pool of connections (``officeray.store.engine``): orchestrator
shards, Serve replicas, tool runners; 400 leaves room for several shards, or many tests."""
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
"""What a server that need not survive a crash of this machine turns off (``durable=False``)."""
MISSING_BINARIES = (
    f"PostgreSQL server binaries not found ({PG_BIN_GLOB}/initdb): run scripts/bootstrap.sh "
    "(installs postgresql)"
)


class PostgresUnavailable(RuntimeError):
    """The server could not be set up or driven (no binaries, or ``initdb``/``pg_ctl`` failed)."""


def postgres_bindir() -> Path | None:
    """Debian's PostgreSQL server binaries, version 15 when installed, else the newest."""
    found = [Path(p) for p in glob.glob(PG_BIN_GLOB) if (Path(p) / "initdb").exists()]
    if not found:
        return None
    preferred = [p for p in found if p.parent.name == PREFERRED_PG_MAJOR]
    newest = sorted(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return (preferred or newest)[-1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder, reachable on 127.0.0.1 with trust auth,
    initialised when made. :meth:`start`, :meth:`stop` (and start again), :meth:`remove`; as a context
    manager it is started on entry and removed on exit."""

    def __init__(self, bindir: Path | None = None, *, durable: bool = False) -> None:
        found = bindir or postgres_bindir()
        if found is None:
            raise PostgresUnavailable(MISSING_BINARIES)
        self.bindir = found
        self.durable = durable
        self.root = Path(tempfile.mkdtemp(prefix="officeray-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self._as_owner: list[str] = []
        try:
            if os.geteuid() == 0:
                shutil.chown(self.root, user="postgres", group="postgres")
                self._as_owner = ["runuser", "-u", "postgres", "--"]
            no_sync = [] if durable else ["--no-sync"]
            self._pg(
                "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
                *no_sync, "--no-instructions",
            )  # fmt: skip
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    def __enter__(self) -> PostgresServer:
        try:
            self.start()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.remove()

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

    def _configure(self, port: int) -> None:
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(port),
            "max_connections": str(PG_MAX_CONNECTIONS),
            "unix_socket_directories": f"'{self.root}'",
            **({} if self.durable else FAST_SETTINGS),
        }
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
            except PostgresUnavailable:
                if attempt == PG_START_ATTEMPTS - 1:
                    raise

    def stop(self) -> None:
        self._pg("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "30")

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(PostgresUnavailable):
                self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def pid(self) -> int | None:
        """The postmaster's pid (the first line of ``postmaster.pid``)."""
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def _admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        )

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; its SQLAlchemy URL."""
        name = name or f"officeray_{uuid.uuid4().hex[:12]}"
        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with self._admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
