"""The ``Sandbox`` interface every backend implements, and the errors it raises.

A sandbox is a long-lived, isolated place where tool calls run: a warm Docker container in
production (:mod:`tools_sandbox.docker_sandbox`), a local subprocess in unit tests
(:mod:`tools_sandbox.testing`). Both run the same stdlib-only agent (:mod:`tools_sandbox.agent`) and
speak the same JSON-lines protocol with it, so a step does not pay for ``docker run`` or
``docker exec``.

Agent protocol (one JSON object per line, one request in flight at a time)::

    host  -> agent  {"id": "r1", "op": "call", "tool": "math_calculator",
                     "inputs": {...}, "timeout_s": 30, "files": {"pkg/a.py": "..."}}
    agent -> host   {"id": "r1", "ok": true, "result": {...}}
                    {"id": "r1", "ok": false, "error": {"type": "timeout", "message": "..."}}

A call of a plugin tool (:mod:`officeray.tools.plugins`) carries the plugin's code instead of naming
a built-in tool, and no ``files``::

    host  -> agent  {"id": "r2", "op": "call", "tool": "word_count", "inputs": {...}, "timeout_s": 30,
                     "plugin": {"module": "my_plugins.text", "function": "word_count",
                                "source": "<the module's source>"}}

The agent writes ``source`` into a fresh folder of the workspace, imports it there (in the call's
worker process) and runs ``function`` with the inputs; :meth:`Sandbox.call` sends it as ``plugin=``.

Other ops: ``ping`` (result ``{"pid": ..., "version": ...}``), ``reset`` (empty the workspace and,
in a container, ``/tmp``, ``/dev/shm`` and every IPC object; kill leftover processes),
``write_file`` (``path``, ``content``) and ``read_file`` (``path`` → ``{"content": ...}``).
``files`` on a call are written under a fresh folder in the workspace first, and the tool's
staged-folder input (see :class:`officeray.tools.spec.ToolSpec`) is pointed at that folder.
A call may carry ``limits`` (``{"memory_mb", "cpu_s", "output_bytes"}``, the step's per-risk sandbox
policy): the agent puts ``RLIMIT_AS`` and ``RLIMIT_CPU`` on the call's worker process (inherited by
everything it starts) and caps the call's result at ``output_bytes``.

Staged files (``files``) are written OUTSIDE the workspace, under a fresh ``staged-*`` folder of the
agent's staging root (``$OFFICERAY_STAGING_ROOT``, ``/tmp`` in a container), made read-only, and
removed when the call ends: no later step can read them, and they never reach the task workspace.

Workspace sync ops (the task workspace, :mod:`tools_sandbox.workspace_sync`; contents are base64, so
binary files are safe):

* ``ws_list`` → ``{"epoch", "files": {path: [size, sha256]}}``: every regular file of the workspace
  (links are neither listed nor followed); ``epoch`` changes whenever the workspace is emptied
  behind the host's back (a new agent, a ``reset``), so a host may cache what the sandbox holds;
* ``ws_put`` (``files``: path -> base64) writes files (never through a link);
* ``ws_delete`` (``paths``) removes files and the folders they leave empty;
* ``ws_read`` (``path``, ``offset``, ``length``) → ``{"data": base64, "eof"}``, a chunk of a file.

``error.type`` takes the values of :class:`officeray.contracts.ErrorType`.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from officeray.contracts import ErrorType


class SandboxError(Exception):
    """The sandbox could not run the call (crashed, lost, not started). The step may be retried."""

    error_type: ErrorType = ErrorType.SANDBOX_ERROR


class ToolCallError(Exception):
    """The agent ran the call and reports a failure of the given type."""

    def __init__(self, error_type: ErrorType, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


class WorkspaceListing(NamedTuple):
    """What a sandbox's workspace holds: ``files`` (path -> ``(size, sha256)``) and its ``epoch``
    (changes whenever the workspace was emptied behind the host's back)."""

    epoch: str
    files: dict[str, tuple[int, str]]


class Sandbox(abc.ABC):
    """A warm, isolated runtime for tool calls. Use as a context manager or call start/stop."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start the sandbox and wait until its agent answers a ping."""

    @abc.abstractmethod
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
        """Run one tool call and return its result.

        ``limits`` (``memory_mb``, ``cpu_s``, ``output_bytes``) bound the call's processes and result
        (see the module docstring).

        ``files`` (relative path -> text) are staged for the tool's staged-folder input. ``plugin``
        (``{"module", "function", "source"}``, see
        :meth:`officeray.tools.spec.PluginRef.protocol_field`) makes ``tool`` a plugin tool whose
        code travels with the call (see the module docstring); it takes no ``files``.
        Raises :class:`ToolCallError` when the tool fails (``timeout`` when ``timeout_s`` passed;
        the whole process tree of the call is killed) and :class:`SandboxError` when the
        sandbox itself failed. After a ``SandboxError`` the sandbox restarts itself on the next call.
        """

    @abc.abstractmethod
    def write_file(self, path: str, content: str) -> None:
        """Write a text file inside the workspace (path relative to the workspace root)."""

    @abc.abstractmethod
    def read_file(self, path: str) -> str:
        """Read a text file from the workspace (path relative to the workspace root)."""

    def workspace_list(self) -> WorkspaceListing:
        """Every regular file of the workspace with its size and sha256, and the workspace's epoch."""
        raise NotImplementedError(f"{type(self).__name__} has no workspace sync")

    def workspace_epoch(self) -> str:
        """The workspace's epoch now (cheap: no listing); see :class:`WorkspaceListing`."""
        return self.workspace_list().epoch

    def workspace_put(self, files: Mapping[str, bytes]) -> None:
        """Write ``files`` (relative path -> bytes) into the workspace."""
        raise NotImplementedError(f"{type(self).__name__} has no workspace sync")

    def workspace_delete(self, paths: Sequence[str]) -> None:
        """Remove the files ``paths`` from the workspace (missing ones are ignored)."""
        raise NotImplementedError(f"{type(self).__name__} has no workspace sync")

    def workspace_read(self, path: str, max_bytes: int) -> bytes:
        """The bytes of one workspace file; ``ToolCallError`` ``output_limit`` past ``max_bytes``."""
        raise NotImplementedError(f"{type(self).__name__} has no workspace sync")

    @abc.abstractmethod
    def reset(self) -> None:
        """Empty the workspace (and, in a container, the scratch folders and IPC objects) and kill
        leftover processes, so that the next task sees nothing of the previous one."""

    def interrupt(self) -> None:
        """Stop the call in flight (its step was cancelled) from another thread: every process the
        call started is killed and the call raises :class:`ToolCallError` ``cancelled``; the next
        call starts clean. A backend that cannot stop a call leaves it running."""
        return None

    def clear_interrupt(self) -> None:
        """Forget an :meth:`interrupt` that came after its call ended."""
        return None

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the sandbox and release everything it holds. Safe to call twice."""

    @property
    @abc.abstractmethod
    def alive(self) -> bool:
        """Whether the sandbox is started and its agent process is running."""

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
