"""The production sandbox backend: a warm, hardened Docker container running the agent.

One container per :class:`DockerSandbox`, started once and reused for many calls. The host talks to
the agent over the container's attached stdin/stdout (no ``docker exec`` per call, no port, no
Docker socket or host path inside): requests go to the agent's stdin; its stdout comes back
multiplexed (no TTY) in frames of an 8-byte header (stream type, 3 zero bytes, big-endian size) and a
payload, which :class:`DockerAttachTransport` demultiplexes. The agent's stderr is not attached; it
goes to the container log (``json-file``, capped at :data:`LOG_MAX_SIZE`) and its tail is quoted when
the agent dies.

Hardening: no network (``network_mode="none"``, only ``lo``), read-only root file system, tmpfs
``/workspace`` and ``/tmp`` (size-capped, ``nosuid,nodev``), every capability dropped,
``no-new-privileges``, user ``65534:65534`` (nobody), memory limit without swap, CPU quota, pid
limit, no core dumps. Limits come from :class:`~officeray.config.SandboxLimits` (``sandbox.limits``).

The agent itself is the container's init (PID 1; no ``--init``/``tini``): it reaps orphans, and
nothing the tools run can outlive a call or take root in the container. An init that runs as the
sandbox user would not do: ``kill(-1)`` spares PID 1, and the code a call runs (same uid) could
ptrace it and keep a foothold across calls and tasks. The agent, non-dumpable, cannot be ptraced,
and as PID 1 it ignores every signal sent from inside the container.

When the container dies (a crash, an OOM kill of the agent) the request fails with
:class:`~tools_sandbox.sandbox.SandboxError` naming the cause (an OOM kill names the memory limit)
and the next request transparently starts a new container. :meth:`DockerSandbox.stop` removes the
container.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from officeray.config import SandboxLimits
from tools_sandbox._channel import (
    STARTUP_TIMEOUT_S,
    AgentSandbox,
    ChannelProtocolError,
    Transport,
    send_all,
)
from tools_sandbox.agent.limits import READ_CHUNK_BYTES
from tools_sandbox.image import DockerUnavailable, docker_client, ensure_image
from tools_sandbox.sandbox import SandboxError

SANDBOX_LABEL = "officeray.sandbox"
"""Label on every sandbox container (``docker ps --filter label=officeray.sandbox``)."""

AGENT_COMMAND = ["python3", "-m", "tools_sandbox.agent"]
WORKSPACE = "/workspace"
SANDBOX_UID = "65534:65534"

NOFILE_LIMIT = 1024
"""``ulimit nofile`` (soft = hard) of every process in the container: bounds the descriptors (pipes,
sockets, files) one program may hold open."""

LOG_MAX_SIZE = "1m"
"""``json-file`` log driver ``max-size``: the agent's stderr kept by Docker (one file, rotated away
beyond this), so a program spamming the agent's stderr cannot fill the host's disk."""

LOG_MAX_FILES = 1
"""``json-file`` log driver ``max-file``: only the current log file is kept."""

DEATH_WAIT_S = 5.0
"""After the agent's stream ended, how long the host waits for the container to exit before it
reads its state (exit code, OOM kill) to say why the agent died."""

DEATH_LOG_LINES = 5
"""How many last lines of the agent's stderr (the container log) a death cause quotes."""

DEATH_LOG_CHARS = 1_000
"""At most this many last characters of those lines are quoted."""

MAX_FRAME_BYTES = 64 * 1024**2
"""A multiplexed frame announcing more than this is treated as a corrupt stream."""


class DockerOptions(BaseModel):
    """The Docker backend's own settings of a container, beside :class:`SandboxLimits`; each default
    is the constant of the same name above (``DockerSandbox(..., options=...)``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    nofile_limit: int = Field(default=NOFILE_LIMIT, ge=16)
    """:data:`NOFILE_LIMIT`."""
    log_max_size: str = Field(default=LOG_MAX_SIZE, pattern=r"^[0-9]+[kmg]?$")
    """:data:`LOG_MAX_SIZE` (Docker's ``json-file`` size syntax: ``1m``, ``500k``)."""
    log_max_files: int = Field(default=LOG_MAX_FILES, ge=1)
    """:data:`LOG_MAX_FILES`."""
    death_wait_s: float = Field(default=DEATH_WAIT_S, gt=0)
    """:data:`DEATH_WAIT_S`."""
    death_log_lines: int = Field(default=DEATH_LOG_LINES, ge=1)
    """:data:`DEATH_LOG_LINES`."""
    death_log_chars: int = Field(default=DEATH_LOG_CHARS, ge=1)
    """:data:`DEATH_LOG_CHARS`."""


_STDOUT = 1


class DockerAttachTransport(Transport):
    """The agent's stdin/stdout over a ``POST /containers/{id}/attach`` hijacked connection."""

    def __init__(self, attached: Any) -> None:
        self._attached = attached  # keeps the HTTP response (and so the connection) alive
        self._sock = getattr(attached, "_sock", attached)
        self._sock.setblocking(False)
        self._frames = bytearray()
        self._eof = False

    def send(self, data: bytes, deadline: float) -> None:
        send_all(data, deadline, self._sock, self._sock.send)

    def _demux(self) -> bytes:
        """stdout payload of every complete frame in the buffer (other streams are dropped)."""
        out = bytearray()
        buf = self._frames
        while len(buf) >= 8:
            size = int.from_bytes(buf[4:8], "big")
            if buf[1:4] != b"\0\0\0" or buf[0] > 2 or size > MAX_FRAME_BYTES:
                raise ChannelProtocolError(f"corrupt attach stream (frame header {bytes(buf[:8]).hex()})")
            if len(buf) < 8 + size:
                break
            if buf[0] == _STDOUT:
                out += buf[8 : 8 + size]
            del buf[: 8 + size]
        return bytes(out)

    def recv(self, deadline: float) -> bytes | None:
        while True:
            out = self._demux()
            if out:
                return out
            if self._eof:
                return b""
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select([self._sock], [], [], remaining)
            if not readable:
                return None
            try:
                chunk = self._sock.recv(READ_CHUNK_BYTES)
            except BlockingIOError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                chunk = b""
            if not chunk:
                self._eof = True
            self._frames += chunk

    def close(self) -> None:
        for obj in (self._sock, self._attached):
            with contextlib.suppress(Exception):
                obj.close()


class DockerSandbox(AgentSandbox):
    """A warm, hardened container running the agent.

    Args:
        image: the sandbox image; default: :func:`tools_sandbox.image.ensure_image` (builds it once).
        limits: resource limits (default :class:`SandboxLimits()`).
        client: a ``docker.DockerClient`` (default ``docker.from_env()``).
        startup_timeout_s: how long a new container may take to answer its first ping.
        name_prefix: container names are ``<prefix>-<8 hex>``.
        options: the Docker-specific settings (default :class:`DockerOptions()`).
    """

    def __init__(
        self,
        image: str | None = None,
        *,
        limits: SandboxLimits | None = None,
        client: Any = None,
        startup_timeout_s: float = STARTUP_TIMEOUT_S,
        name_prefix: str = "officeray-sandbox",
        options: DockerOptions | None = None,
    ) -> None:
        self.limits = limits or SandboxLimits()
        self.options = options or DockerOptions()
        super().__init__(max_output_bytes=self.limits.output_bytes, startup_timeout_s=startup_timeout_s)
        self.image = image
        self.name_prefix = name_prefix
        self._client = client
        self._container: Any = None

    @property
    def container(self) -> Any:
        """The current ``docker.models.containers.Container`` (None when not started)."""
        return self._container

    def _docker(self) -> Any:
        if self._client is None:
            try:
                self._client = docker_client()
            except DockerUnavailable as exc:
                raise SandboxError(str(exc)) from exc
        return self._client

    def container_options(self) -> dict[str, Any]:
        """The keyword arguments of ``containers.create`` (without image and name)."""
        from docker.types import LogConfig, Ulimit

        lim, opts = self.limits, self.options
        return {
            "command": AGENT_COMMAND,
            "stdin_open": True,
            "tty": False,
            "network_mode": "none",
            "read_only": True,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "user": SANDBOX_UID,
            "pids_limit": lim.pids,
            "mem_limit": f"{lim.memory_mb}m",
            "memswap_limit": f"{lim.memory_mb}m",
            "nano_cpus": int(lim.cpus * 1e9),
            "init": False,  # the agent is PID 1 (see the module docstring)
            "tmpfs": {
                WORKSPACE: f"size={lim.workspace_mb}m,mode=1777,uid=65534,gid=65534,nosuid,nodev",
                "/tmp": f"size={lim.tmp_mb}m,mode=1777,nosuid,nodev",
            },
            "shm_size": f"{lim.tmp_mb}m",
            "working_dir": WORKSPACE,
            "environment": {
                "OFFICERAY_WORKSPACE": WORKSPACE,
                "OFFICERAY_STAGING_ROOT": "/tmp",  # staged sources: outside the workspace
                "PYTHONDONTWRITEBYTECODE": "1",
                "OFFICERAY_SANDBOX_CONTAINER": "1",
                "OFFICERAY_MEMORY_LIMIT_MB": str(lim.memory_mb),
                "OFFICERAY_MAX_OUTPUT_BYTES": str(lim.output_bytes),
            },
            "labels": {SANDBOX_LABEL: "1", f"{SANDBOX_LABEL}.host_pid": str(os.getpid())},
            "ulimits": [
                Ulimit(name="core", soft=0, hard=0),
                Ulimit(name="nofile", soft=opts.nofile_limit, hard=opts.nofile_limit),
            ],
            "log_config": LogConfig(
                type="json-file",
                config={"max-size": opts.log_max_size, "max-file": str(opts.log_max_files)},
            ),
            "hostname": "sandbox",
            "auto_remove": False,
        }

    def _launch(self) -> Transport:
        client = self._docker()
        if self.image is None:
            try:
                self.image = ensure_image(client)
            except Exception as exc:
                raise SandboxError(f"cannot get the sandbox image: {exc}") from exc
        name = f"{self.name_prefix}-{uuid.uuid4().hex[:8]}"
        self._container = client.containers.create(self.image, name=name, **self.container_options())
        # Attach before start (as `docker run -i` does) so no byte of the agent's output is missed.
        attached = self._container.attach_socket(params={"stdin": 1, "stdout": 1, "stream": 1})
        transport = DockerAttachTransport(attached)
        try:
            self._container.start()
        except Exception:
            transport.close()
            raise
        return transport

    def _terminate(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            # Already gone, or the engine is unreachable: nothing left to do.
            with contextlib.suppress(Exception):
                container.remove(force=True)

    def _agent_running(self) -> bool:
        container = self._container
        if container is None:
            return False
        try:
            container.reload()
        except Exception:
            return False
        return bool(container.status == "running")

    def _death_cause(self) -> str:
        container = self._container
        if container is None:
            return "the container is gone"
        try:
            container.wait(timeout=self.options.death_wait_s)
            container.reload()
            state = container.attrs.get("State", {})
        except Exception as exc:
            return f"the container was lost ({type(exc).__name__}: {exc})"
        if state.get("OOMKilled"):
            return (
                f"out of memory: the sandbox container exceeded its memory limit of "
                f"{self.limits.memory_mb} MB and was killed"
            )
        if state.get("Running"):
            return "the agent closed its output but the container still runs"
        code = state.get("ExitCode")
        cause = f"the sandbox container exited with status {code}"
        if isinstance(code, int) and code > 128:
            with contextlib.suppress(ValueError):
                cause += f" (the agent was killed by {signal.Signals(code - 128).name})"
        if state.get("Error"):
            cause += f" ({state['Error']})"
        try:
            logs = container.logs(stdout=False, stderr=True, tail=self.options.death_log_lines)
            tail = logs.decode("utf-8", "replace").strip()
        except Exception:
            tail = ""
        return f"{cause}; agent stderr: {tail[-self.options.death_log_chars :]}" if tail else cause


def remove_sandbox_containers(client: Any = None, *, only_exited: bool = False) -> int:
    """Remove containers labelled ``officeray.sandbox`` (e.g. left by a killed host process).

    With ``only_exited`` running sandboxes (of another live process) are left alone.
    """
    client = client or docker_client()
    removed = 0
    filters: dict[str, Any] = {"label": SANDBOX_LABEL}
    if only_exited:
        filters["status"] = "exited"
    for container in client.containers.list(all=True, filters=filters):
        try:
            container.remove(force=True)
            removed += 1
        except Exception:
            pass
    return removed
