"""The host side of the agent protocol, shared by every backend.

:class:`AgentChannel` sends one request (a JSON line with a fresh id) over a :class:`Transport` and
reads the one response line back, with a deadline and a cap on the line's size, so host memory
stays bounded whatever the sandbox writes. :class:`AgentSandbox` is the part of a
:class:`~tools_sandbox.sandbox.Sandbox` that does not depend on where the agent runs: locking (one
request in flight), lazy (re)starts, the mapping of protocol errors to :class:`ToolCallError` /
:class:`SandboxError`, and killing the sandbox when it stops answering. A backend only says how to
launch the agent (and get a transport to it), how to kill it, and why it died.

Failure handling:

* the agent answers ``ok: false`` → :class:`ToolCallError` of that type; ``sandbox_error`` (e.g. an
  out-of-memory kill) raises :class:`SandboxError` instead and the sandbox is replaced;
* no answer within ``timeout_s + GRACE_S`` (the agent enforces ``timeout_s`` itself, so it is stuck)
  → the sandbox is killed and :class:`ToolCallError` ``timeout`` is raised;
* EOF (the agent or its container died) → :class:`SandboxError` naming the cause;
* :meth:`AgentSandbox.interrupt` (the step was cancelled) kills the agent with every process it
  started (the container, in Docker) → the call in flight raises :class:`ToolCallError`
  ``cancelled``;
* in every failure case the next request starts a fresh sandbox.
"""

from __future__ import annotations

import abc
import base64
import contextlib
import itertools
import json
import os
import select
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any

from officeray.contracts import ErrorType
from officeray.limits import MAX_OUTPUT_BYTES
from tools_sandbox.agent.limits import READ_CHUNK_BYTES, WORKSPACE_READ_BYTES
from tools_sandbox.sandbox import Sandbox, SandboxError, ToolCallError, WorkspaceListing

GRACE_S = 5.0
"""How much longer than a call's ``timeout_s`` the host waits for the agent's answer."""

OP_TIMEOUT_S = 60.0
"""Host deadline of the other ops (ping, reset, write_file, read_file)."""

STARTUP_TIMEOUT_S = 60.0
"""How long a new sandbox may take to answer its first ping."""

PUT_BATCH_BYTES = 16 * 1024**2
"""Most file bytes one ``ws_put`` request carries (base64 makes them 4/3 as large; the agent
accepts request lines up to 64 MiB)."""

RESPONSE_SLACK_BYTES = 1024**2
"""A response line may exceed the output cap by this much (the envelope); more is a protocol error."""


def send_all(data: bytes, deadline: float, waitable: Any, write_some: Any) -> None:
    """Write all of ``data`` to a non-blocking fd or socket before ``deadline``.

    ``waitable`` is what ``select`` waits on; ``write_some(chunk)`` writes and returns the count.
    """
    view = memoryview(data)
    while view:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ChannelTimeout
        _, writable, _ = select.select([], [waitable], [], remaining)
        if not writable:
            continue
        try:
            view = view[write_some(view[:READ_CHUNK_BYTES]) :]
        except BlockingIOError:
            continue
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ChannelClosed from exc


class ChannelClosed(Exception):
    """The agent's output stream ended (the agent or its container died)."""


class ChannelTimeout(Exception):
    """No complete response before the deadline."""


class ChannelProtocolError(Exception):
    """The agent wrote something that is not a valid response to the request."""


class Transport(abc.ABC):
    """A byte stream to and from one agent."""

    @abc.abstractmethod
    def send(self, data: bytes, deadline: float) -> None:
        """Write all of ``data``; ChannelTimeout at ``deadline``, ChannelClosed when the peer is gone."""

    @abc.abstractmethod
    def recv(self, deadline: float) -> bytes | None:
        """The next bytes of the agent's stdout: ``b""`` at EOF, None when ``deadline`` passed first."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the stream. Safe to call twice."""


class FdTransport(Transport):
    """A transport over two pipes (the agent's stdin and stdout)."""

    def __init__(self, reader: IO[bytes], writer: IO[bytes]) -> None:
        self._reader = reader
        self._writer = writer
        self._rfd = reader.fileno()
        self._wfd = writer.fileno()
        os.set_blocking(self._wfd, False)

    def send(self, data: bytes, deadline: float) -> None:
        send_all(data, deadline, self._wfd, lambda chunk: os.write(self._wfd, chunk))

    def recv(self, deadline: float) -> bytes | None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        readable, _, _ = select.select([self._rfd], [], [], remaining)
        if not readable:
            return None
        return os.read(self._rfd, READ_CHUNK_BYTES)

    def close(self) -> None:
        for stream in (self._writer, self._reader):
            with contextlib.suppress(OSError):
                stream.close()


class AgentChannel:
    """Request/response over a transport: one request in flight, responses matched by id."""

    def __init__(self, transport: Transport, max_line_bytes: int) -> None:
        self.transport = transport
        self.max_line_bytes = max_line_bytes
        self._ids = itertools.count(1)
        self._buf = bytearray()

    def at_eof(self) -> bool:
        """Whether the agent is already gone (checked without waiting, before a request is sent)."""
        try:
            data = self.transport.recv(time.monotonic() + 0.0001)
        except OSError:
            return True
        if data is None:
            return False
        if data == b"":
            return True
        raise ChannelProtocolError(f"unsolicited output from the agent: {bytes(data[:200])!r}")

    def request(self, op: str, fields: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        req_id = f"r{next(self._ids)}"
        deadline = time.monotonic() + timeout_s
        line = json.dumps({"id": req_id, "op": op, **fields}).encode() + b"\n"
        try:
            self.transport.send(line, deadline)
        except OSError as exc:
            raise ChannelClosed(str(exc)) from exc
        raw = self._read_line(deadline)
        try:
            response = json.loads(raw)
        except ValueError as exc:
            raise ChannelProtocolError(f"the agent wrote a line that is not JSON: {raw[:200]!r}") from exc
        if not isinstance(response, dict) or response.get("id") != req_id:
            raise ChannelProtocolError(f"the agent answered another request: {raw[:200]!r}")
        return response

    def _read_line(self, deadline: float) -> bytes:
        start = 0
        while True:
            nl = self._buf.find(b"\n", start)
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                return line
            if len(self._buf) > self.max_line_bytes:
                raise ChannelProtocolError(f"a response line is longer than {self.max_line_bytes} bytes")
            start = len(self._buf)
            try:
                chunk = self.transport.recv(deadline)
            except OSError as exc:
                raise ChannelClosed(str(exc)) from exc
            if chunk is None:
                raise ChannelTimeout
            if not chunk:
                raise ChannelClosed("end of stream")
            self._buf += chunk


class AgentSandbox(Sandbox):
    """The backend-independent part of a sandbox that runs :mod:`tools_sandbox.agent`.

    Subclasses implement :meth:`_launch`, :meth:`_terminate`, :meth:`_agent_running` and may refine
    :meth:`_death_cause`. The lock makes every public method safe to call from several threads (the
    requests are serialised); :meth:`stop` kills without waiting for a request in flight.
    """

    def __init__(
        self,
        *,
        max_output_bytes: int = MAX_OUTPUT_BYTES,
        startup_timeout_s: float = STARTUP_TIMEOUT_S,
        op_timeout_s: float = OP_TIMEOUT_S,
    ) -> None:
        if max_output_bytes <= 0 or startup_timeout_s <= 0 or op_timeout_s <= 0:
            raise ValueError("max_output_bytes, startup_timeout_s and op_timeout_s must be positive")
        self.max_output_bytes = max_output_bytes
        self.startup_timeout_s = startup_timeout_s
        self.op_timeout_s = op_timeout_s
        self.grace_s = GRACE_S
        """How much longer than a call's ``timeout_s`` the host waits for its answer."""
        self._lock = threading.RLock()
        self._channel: AgentChannel | None = None
        self._stopped = False
        self._interrupted = threading.Event()
        self.agent_info: dict[str, Any] = {}
        """What the agent's last start-up ping answered (pid, version, python, workspace)."""
        self.starts = 0
        """How many times an agent was launched (1 + the restarts)."""

    # -- backend hooks ------------------------------------------------------------------------------

    @abc.abstractmethod
    def _launch(self) -> Transport:
        """Start a fresh agent and return a transport to it."""

    @abc.abstractmethod
    def _terminate(self) -> None:
        """Kill the agent and release what it holds (idempotent, may run concurrently with a request)."""

    @abc.abstractmethod
    def _agent_running(self) -> bool:
        """Whether the launched agent process still runs."""

    def _death_cause(self) -> str:
        """Why the agent's stream ended, in words (called before :meth:`_terminate`)."""
        return "the agent process exited"

    # -- Sandbox ------------------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            self._stopped = False
            if self._channel is None:
                self._boot()

    def stop(self) -> None:
        self._stopped = True
        self._terminate()  # unblocks a request in flight (it sees EOF)
        with self._lock:
            self._discard()

    def interrupt(self) -> None:
        """Stop the call in flight now, or the next call when none was sent yet: the agent is killed
        with every process it started (in Docker: the container is removed), and that call raises
        :class:`ToolCallError` ``cancelled``. The call after it starts a fresh agent. Safe to call
        from another thread while a call runs; :meth:`clear_interrupt` withdraws an interrupt that
        no call took."""
        self._interrupted.set()
        self._terminate()  # the call in flight sees EOF at once

    def clear_interrupt(self) -> None:
        """Forget an :meth:`interrupt` that no call took (it came after the call ended)."""
        self._interrupted.clear()

    @property
    def alive(self) -> bool:
        return self._channel is not None and self._agent_running()

    def call(
        self,
        tool: str,
        inputs: dict[str, Any],
        *,
        timeout_s: float,
        files: dict[str, str] | None = None,
        plugin: dict[str, str] | None = None,
        limits: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or timeout_s <= 0:
            raise ValueError(f"timeout_s must be a positive number, got {timeout_s!r}")
        fields: dict[str, Any] = {"tool": tool, "inputs": inputs, "timeout_s": timeout_s}
        if files is not None:
            fields["files"] = files
        if plugin is not None:
            fields["plugin"] = plugin
        if limits:
            fields["limits"] = limits
        result = self._op("call", fields, timeout_s + self.grace_s)
        if not isinstance(result, dict):
            raise SandboxError(f"the agent returned a {type(result).__name__} result for {tool}")
        return result

    def write_file(self, path: str, content: str) -> None:
        self._op("write_file", {"path": path, "content": content}, self.op_timeout_s)

    def read_file(self, path: str) -> str:
        return str(self._op("read_file", {"path": path}, self.op_timeout_s)["content"])

    def reset(self) -> None:
        self._op("reset", {}, self.op_timeout_s)

    def workspace_list(self) -> WorkspaceListing:
        result = self._op("ws_list", {}, self.op_timeout_s)
        files = {str(path): (int(entry[0]), str(entry[1])) for path, entry in result["files"].items()}
        return WorkspaceListing(str(result["epoch"]), files)

    def workspace_epoch(self) -> str:
        return str(self.ping().get("epoch", ""))

    def workspace_put(self, files: Mapping[str, bytes]) -> None:
        batch: dict[str, str] = {}
        size = 0
        for path, data in files.items():
            if batch and size + len(data) > PUT_BATCH_BYTES:
                self._op("ws_put", {"files": batch}, self.op_timeout_s)
                batch, size = {}, 0
            batch[path] = base64.b64encode(data).decode("ascii")
            size += len(data)
        if batch:
            self._op("ws_put", {"files": batch}, self.op_timeout_s)

    def workspace_delete(self, paths: Sequence[str]) -> None:
        if paths:
            self._op("ws_delete", {"paths": list(paths)}, self.op_timeout_s)

    def workspace_read(self, path: str, max_bytes: int) -> bytes:
        chunk = min(WORKSPACE_READ_BYTES, self.max_output_bytes * 3 // 4)
        data = bytearray()
        while True:
            fields = {"path": path, "offset": len(data), "length": chunk}
            result = self._op("ws_read", fields, self.op_timeout_s)
            data += base64.b64decode(result["data"])
            if len(data) > max_bytes:
                raise ToolCallError(ErrorType.OUTPUT_LIMIT, f"{path!r} is larger than {max_bytes} bytes")
            if result["eof"]:
                return bytes(data)

    def ping(self) -> dict[str, Any]:
        """The agent's ``{"pid", "version", "python", "workspace"}`` (starts the sandbox if needed)."""
        return dict(self._op("ping", {}, self.op_timeout_s))

    # -- internals ----------------------------------------------------------------------------------

    def _boot(self) -> None:
        try:
            transport = self._launch()
        except SandboxError:
            self._terminate()
            raise
        except Exception as exc:
            self._terminate()
            raise SandboxError(f"cannot start the sandbox: {type(exc).__name__}: {exc}") from exc
        self.starts += 1
        self._channel = AgentChannel(transport, self.max_output_bytes + RESPONSE_SLACK_BYTES)
        try:
            response = self._channel.request("ping", {}, self.startup_timeout_s)
        except ChannelTimeout:
            self._discard()
            raise SandboxError(
                f"the sandbox agent did not answer within {self.startup_timeout_s:g}s"
            ) from None
        except (ChannelClosed, ChannelProtocolError) as exc:
            cause = self._death_cause() if isinstance(exc, ChannelClosed) else str(exc)
            self._discard()
            raise SandboxError(f"the sandbox agent failed to start: {cause}") from None
        if not response.get("ok"):
            self._discard()
            raise SandboxError(f"the sandbox agent refused a ping: {response.get('error')}")
        self.agent_info = dict(response.get("result") or {})

    def _discard(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.transport.close()
        self._terminate()

    def _ready_channel(self) -> AgentChannel:
        if self._stopped:
            raise SandboxError("the sandbox was stopped; call start() to use it again")
        if self._channel is not None:
            try:
                gone = self._channel.at_eof()
            except ChannelProtocolError:
                gone = True
            if gone:  # died while idle: nothing was sent yet, so restarting is safe
                self._discard()
        if self._channel is None:
            self._boot()
        assert self._channel is not None
        return self._channel

    def _request(
        self, channel: AgentChannel, op: str, fields: dict[str, Any], timeout_s: float
    ) -> dict[str, Any]:
        """``channel.request``; a request cut short by :meth:`interrupt` raises ``cancelled``."""
        try:
            return channel.request(op, fields, timeout_s)
        except (ChannelTimeout, ChannelClosed, ChannelProtocolError):
            if not self._interrupted.is_set():
                raise
            self._interrupted.clear()
            self._discard()
            raise ToolCallError(
                ErrorType.CANCELLED, f"the {op} was cancelled: its processes were killed"
            ) from None

    def _op(self, op: str, fields: dict[str, Any], timeout_s: float) -> Any:
        with self._lock:
            if op == "call" and self._interrupted.is_set():
                self._interrupted.clear()
                self._discard()  # what the interrupt killed; the next call starts afresh
                raise ToolCallError(ErrorType.CANCELLED, "the call was cancelled before it started")
            channel = self._ready_channel()
            try:
                response = self._request(channel, op, fields, timeout_s)
            except ChannelTimeout:
                self._discard()
                raise ToolCallError(
                    ErrorType.TIMEOUT,
                    f"the sandbox did not answer {op} within {timeout_s:g}s; it was killed and will restart",
                ) from None
            except ChannelClosed:
                cause = "the sandbox was stopped" if self._stopped else self._death_cause()
                self._discard()
                raise SandboxError(f"the sandbox died during {op}: {cause}") from None
            except ChannelProtocolError as exc:
                self._discard()
                raise SandboxError(f"protocol error during {op}: {exc}") from None
            if response.get("ok") is True:
                return response.get("result")
            error = response.get("error") or {}
            message = str(error.get("message", "no message"))
            try:
                error_type = ErrorType(str(error.get("type")))
            except ValueError:
                error_type = ErrorType.INTERNAL
            if error_type is ErrorType.SANDBOX_ERROR:
                self._discard()  # e.g. an OOM kill: start clean
                raise SandboxError(message)
            raise ToolCallError(error_type, message)
