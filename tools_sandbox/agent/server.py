"""The in-sandbox agent: reads JSON-lines requests on stdin, answers on stdout.

STDLIB ONLY: this module runs inside the sandbox image (a bare Debian ``python3`` or
``python:3.11-slim``), beside the stdlib-only :mod:`officeray.limits` (the limits it shares with the
core's tool models). The image also ships pydantic and the plugin API (:mod:`officeray.tools`), for
plugin tools only: they are imported (with :mod:`tools_sandbox.plugin_call`) at the first plugin
call, never by the built-in tools. The protocol is described in :mod:`tools_sandbox.sandbox`.

Design
------
* The agent is single-threaded and serves one request at a time.
* Each ``call`` runs the tool in a forked *worker* process that starts its own session (and so its
  own process group). The worker sends its result back through a pipe, which the agent reads in
  chunks, stopping one byte past the output cap. When ``timeout_s`` passes, every process of the
  worker's session is killed (``SIGKILL``) and the call answers ``timeout``.
* The protocol streams are moved off fds 0/1 at start-up: fd 1 then points at stderr and fd 0 at
  ``/dev/null``, so a stray ``print`` (in the agent or in a tool) can never corrupt the protocol,
  and a worker never holds the protocol pipes (the host sees EOF as soon as the agent dies).
* Plugin calls (a ``call`` with a ``plugin`` field: ``{"module", "function", "source"}``) write the
  source into a fresh ``plugin-*`` folder of the workspace; the worker imports it from there under
  its module name and runs it through :func:`tools_sandbox.plugin_call.call_in_sandbox`. The agent
  itself never imports a plugin, so every call gets a fresh module in a fresh process.
* At start-up the agent drops the start-up directory (``/workspace`` in a container) from
  ``sys.path``: no file a tool writes into the workspace can shadow a module the agent imports later.
* Inside a container (``OFFICERAY_SANDBOX_CONTAINER=1``, set by the Docker backend) the agent
  also kills every other process it may signal after each call (``kill(-1, SIGKILL)``: the init
  process and the agent itself are spared), so nothing a call started outlives it, and it watches
  the memory cgroup's ``oom_kill`` counter to report an out-of-memory kill as ``sandbox_error``.
  The Docker backend runs the agent as the container's init (PID 1, no ``tini``): the kernel then
  drops every signal the code sends it, ``kill(-1)`` spares it, and every orphan is reparented to it,
  so after each call it kills and reaps until no other process is left. ``reset`` also empties
  the container's ``/tmp`` and ``/dev/shm`` and removes every SysV IPC object (shared memory,
  message queue, semaphore set) and POSIX message queue of the container's IPC namespace
  (:func:`clear_ipc`): they outlive the processes that made them.
* The agent makes itself non-dumpable (``prctl(PR_SET_DUMPABLE, 0)``; inherited by the workers,
  reset by ``exec``): the code a call runs has the same uid, but can neither ptrace the agent nor
  open its ``/proc/<pid>/mem`` or ``/proc/<pid>/fd/*`` (the protocol pipes).

Diagnostics go to stderr only.

Why one file of this length: the in-container agent is standard library only and is shipped into
the image as few files as possible; its protocol loop, limits and process control belong together.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import hashlib
import importlib
import json
import os
import re
import resource
import select
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from typing import Any, NoReturn

from officeray.limits import MAX_OUTPUT_BYTES, MAX_PLUGIN_SOURCE_BYTES
from tools_sandbox.agent.errors import ToolFailure, ToolInputError
from tools_sandbox.agent.limits import (
    MAX_STAGED_BYTES,
    MAX_STAGED_FILES,
    MAX_WORKSPACE_FILES,
    READ_CHUNK_BYTES,
    WORKSPACE_READ_BYTES,
)
from tools_sandbox.agent.workspace import DEFAULT_ROOT, ROOT_ENV, check_relative, confine, is_inside

AGENT_VERSION = "1"
"""Protocol version reported by ``ping``."""

MAX_REQUEST_BYTES = 64 * 1024**2
"""Longest request line accepted (staged files travel inside the request)."""

MAX_FILE_BYTES = 32 * 1024**2
"""Largest file ``write_file`` accepts."""

MAX_TIMEOUT_S = 24 * 3600.0
"""Largest ``timeout_s`` a call may ask for."""

STRAY_REAP_S = 2.0
"""How long (container init only) the agent waits for killed strays to be gone after a call."""

WORKER_EXIT_WAIT_S = 5.0
"""After killing the session of a worker that gave no complete result (timeout, over the output
cap, crash), how long the agent waits for the worker's exit status (to name the signal that killed it)."""

PARENT_POLL_S = 0.5
"""Outside a container: how often a worker checks that the agent is still alive (if not, it kills
its own session and exits, so no call outlives a dead local agent)."""

KILL_GRACE_S = 0.25
"""Extra time the agent gives a tool that enforces the timeout itself (python_exec) before killing it."""

MAX_MESSAGE_CHARS = 4_000
"""Error messages are cut to this length."""

STAGING_ENV = "OFFICERAY_STAGING_ROOT"
"""Environment variable naming the folder (outside the workspace) where staged sources go; default:
the system's temporary folder (``/tmp`` in a container, emptied by ``reset``)."""

CALL_LIMIT_FIELDS = frozenset({"memory_mb", "cpu_s", "output_bytes"})
"""What a call's ``limits`` field may set (the step's per-risk sandbox policy)."""

CPU_HARD_GRACE_S = 1
"""``RLIMIT_CPU``: the hard limit (SIGKILL) is this much above the soft one (SIGXCPU)."""

PLUGIN_FIELDS = frozenset({"module", "function", "source"})
_IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

ERROR_TYPES = frozenset(
    {"timeout", "tool_error", "bad_input", "output_limit", "sandbox_error", "dependency_failed", "internal"}
)
"""The values of ``officeray.contracts.ErrorType`` (not importable here: pydantic is not installed)."""


class AgentError(Exception):
    """A failure answered as ``{"type": error_type, "message": ...}``."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


def bad_input(message: str) -> AgentError:
    return AgentError("bad_input", message)


# --------------------------------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------------------------------


class ToolEntry:
    """How the agent runs one tool: which function, which inputs, which input is a staged folder."""

    def __init__(
        self,
        module: str,
        function: str,
        required: tuple[str, ...],
        optional: tuple[str, ...] = (),
        *,
        staged_input: str | None = None,
        takes_timeout: bool = False,
    ) -> None:
        self.module = module
        self.function = function
        self.required = required
        self.optional = optional
        self.staged_input = staged_input
        self.takes_timeout = takes_timeout


TOOLS: dict[str, ToolEntry] = {
    "python_exec": ToolEntry(
        "tools_sandbox.agent.tools.python_exec", "run", ("code",), ("stdin",), takes_timeout=True
    ),
    "math_calculator": ToolEntry(
        "tools_sandbox.agent.tools.math_calculator", "evaluate", ("expression",), ("variables",)
    ),
    "code_analyzer": ToolEntry(
        "tools_sandbox.agent.tools.code_analyzer",
        "analyze",
        ("folder", "start_func", "end_func"),
        staged_input="folder",
    ),
    "file_operations": ToolEntry(
        "tools_sandbox.agent.tools.file_operations", "run", ("operation", "path"), ("content", "recursive")
    ),
}
"""The dispatch table. ``staged_input`` must agree with the spec's ``staged_folder_input``
(:data:`officeray.tools.builtin.BUILTIN_TOOLS`)."""

_loaded: dict[str, Callable[..., Any]] = {}


def load_tool(name: str) -> Callable[..., Any]:
    """Import a tool's function (once; the forked workers inherit it)."""
    fn = _loaded.get(name)
    if fn is None:
        entry = TOOLS[name]
        try:
            module = importlib.import_module(entry.module)
        except ImportError as exc:
            raise AgentError("internal", f"tool {name!r} is not available in this sandbox: {exc}") from None
        fn = getattr(module, entry.function)
        _loaded[name] = fn
    return fn


_plugin_runner: Callable[..., Any] | None = None


def load_plugin_runner() -> Callable[..., Any]:
    """:func:`tools_sandbox.plugin_call.call_in_sandbox`, imported once (with pydantic) by the agent.

    The forked workers inherit the imported modules, so a plugin call does not pay for importing
    pydantic; the plugin module itself is imported in the worker only.
    """
    global _plugin_runner
    if _plugin_runner is None:
        try:
            plugins = importlib.import_module("tools_sandbox.plugin_call")
        except ImportError as exc:
            raise AgentError(
                "internal", f"plugin tools are not available in this sandbox (pydantic is missing?): {exc}"
            ) from None
        _plugin_runner = plugins.call_in_sandbox
    return _plugin_runner


# --------------------------------------------------------------------------------------------------
# Workspace
# --------------------------------------------------------------------------------------------------


class Workspace:
    """The folder every file operation is confined to."""

    def __init__(self, root: str) -> None:
        os.makedirs(root, exist_ok=True)
        self.root = os.path.realpath(root)

    def contains(self, real: str) -> bool:
        return is_inside(self.root, real)

    def resolve(self, path: Any, what: str = "path") -> str:
        """The real absolute path of ``path`` (relative to the root), refusing anything that escapes
        (see :func:`tools_sandbox.agent.workspace.confine`, shared with the file_operations tool)."""
        try:
            return confine(self.root, path, what)
        except ToolInputError as exc:
            raise bad_input(exc.message) from None

    def fresh_dir(self, prefix: str) -> str:
        return tempfile.mkdtemp(prefix=prefix, dir=self.root)

    def clear(self) -> int:
        return clear_folder(self.root)


def clear_folder(folder: str) -> int:
    """Remove everything in ``folder`` (not the folder); returns how many entries were removed."""
    removed = 0
    for name in os.listdir(folder):
        full = os.path.join(folder, name)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full, onerror=_force_remove)
        else:
            os.unlink(full)
        removed += 1
    return removed


def _force_remove(func: Callable[..., Any], path: str, _exc: object) -> None:
    """rmtree error handler: make the parent writable/searchable again and retry once."""
    parent = os.path.dirname(path)
    for target in (parent, path):
        with contextlib.suppress(OSError):
            os.chmod(target, 0o700)
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        func(path)


def write_text(ws: Workspace, path: Any, content: Any, what: str = "path") -> int:
    if not isinstance(content, str):
        raise bad_input("content must be a string")
    data = content.encode("utf-8", "surrogatepass")
    if len(data) > MAX_FILE_BYTES:
        raise bad_input(f"{path!r} is {len(data)} bytes; files are limited to {MAX_FILE_BYTES} bytes")
    real = ws.resolve(path, what)
    if real == ws.root or os.path.isdir(real):
        raise bad_input(f"{what} {path!r} is a directory")
    try:
        os.makedirs(os.path.dirname(real), exist_ok=True)
        fd = os.open(real, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    except OSError as exc:
        error_type = "tool_error" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO) else "bad_input"
        raise AgentError(error_type, f"cannot write {path!r}: {exc.strerror}") from None
    return len(data)


def read_text(ws: Workspace, path: Any, limit: int) -> str:
    real = ws.resolve(path)
    if os.path.isdir(real):
        raise bad_input(f"path {path!r} is a directory")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise bad_input(f"no such file in the workspace: {path!r}") from None
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise AgentError("output_limit", f"{path!r} is larger than the output limit of {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise AgentError("tool_error", f"{path!r} is not UTF-8 text") from None


def list_workspace(root: str) -> dict[str, list[Any]]:
    """Every regular file under ``root`` (symbolic links and special files are left out, and never
    followed): relative POSIX path -> ``[size, sha256]``. More than :data:`MAX_WORKSPACE_FILES`
    files answer ``output_limit``."""
    found: dict[str, list[Any]] = {}
    for dirpath, dirnames, filenames in os.walk(root):  # symlinked folders are not entered
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            try:
                fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue  # a symbolic link (ELOOP), gone meanwhile, or unreadable
            with os.fdopen(fd, "rb") as fh:
                if not _is_regular(fd):
                    continue
                digest = hashlib.sha256()
                size = 0
                while chunk := fh.read(READ_CHUNK_BYTES):
                    digest.update(chunk)
                    size += len(chunk)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            found[rel] = [size, digest.hexdigest()]
            if len(found) > MAX_WORKSPACE_FILES:
                raise AgentError("output_limit", f"the workspace holds more than {MAX_WORKSPACE_FILES} files")
    return found


def _is_regular(fd: int) -> bool:
    import stat

    return stat.S_ISREG(os.fstat(fd).st_mode)


def _decode_b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise bad_input(f"{what}: content must be base64 text")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise bad_input(f"{what}: content is not valid base64") from None


def put_files(ws: Workspace, files: Any) -> int:
    """Write ``files`` (relative path -> base64 bytes) into the workspace; how many bytes in all."""
    if not isinstance(files, dict):
        raise bad_input("files must be a JSON object mapping relative paths to base64 content")
    decoded = {path: _decode_b64(content, f"file {path!r}") for path, content in files.items()}
    total = 0
    for path, data in decoded.items():
        if len(data) > MAX_FILE_BYTES:
            raise bad_input(f"{path!r} is {len(data)} bytes; files are limited to {MAX_FILE_BYTES} bytes")
        real = _unresolved_target(ws, path)
        if os.path.isdir(real) and not os.path.islink(real):
            shutil.rmtree(real, onerror=_force_remove)  # the file replaces a folder of that name
        try:
            os.makedirs(os.path.dirname(real), exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(real)  # never write through a link, nor into a file a process holds open
            fd = os.open(real, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        except OSError as exc:
            error_type = "tool_error" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO) else "bad_input"
            raise AgentError(error_type, f"cannot write {path!r}: {exc.strerror}") from None
        total += len(data)
    return total


def _unresolved_target(ws: Workspace, path: Any) -> str:
    """The absolute path of ``path`` with its folder resolved (and confined) but not its last
    component: a link there is itself what a write replaces or a delete removes, never its target."""
    try:
        rel = check_relative(path, "path")
    except ToolInputError as exc:
        raise bad_input(exc.message) from None
    parent = ws.resolve(os.path.dirname(rel.rstrip("/")) or ".")
    name = os.path.basename(rel.rstrip("/"))
    if name in ("", ".", ".."):
        raise bad_input(f"path {path!r} does not name a file")
    return os.path.join(parent, name)


def delete_files(ws: Workspace, paths: Any) -> int:
    """Remove the files ``paths`` (missing ones are ignored) and the folders they leave empty."""
    if not isinstance(paths, list):
        raise bad_input("paths must be a JSON list of relative paths")
    removed = 0
    for path in paths:
        target = _unresolved_target(ws, path)
        parent = os.path.dirname(target)
        if os.path.isdir(target) and not os.path.islink(target):
            continue  # only files are synced; a folder of that name is left alone
        try:
            os.unlink(target)
            removed += 1
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise AgentError("tool_error", f"cannot delete {path!r}: {exc.strerror}") from None
        folder = parent
        while folder != ws.root:
            try:
                os.rmdir(folder)
            except OSError:
                break  # not empty
            folder = os.path.dirname(folder)
    return removed


def read_chunk(ws: Workspace, path: Any, offset: Any, length: Any) -> dict[str, Any]:
    """``length`` bytes (at most :data:`WORKSPACE_READ_BYTES`) of a workspace file from ``offset``,
    base64; ``eof`` when the file ends within them."""
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise bad_input("offset must be a non-negative integer")
    if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
        raise bad_input("length must be a positive integer")
    real = ws.resolve(path)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise bad_input(f"no such file in the workspace: {path!r}") from None
    except OSError as exc:
        raise bad_input(f"cannot read {path!r}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        if not _is_regular(fd):
            raise bad_input(f"{path!r} is not a regular file")
        fh.seek(offset)
        want = min(length, WORKSPACE_READ_BYTES)
        data = fh.read(want + 1)
    return {"data": base64.b64encode(data[:want]).decode("ascii"), "eof": len(data) <= want}


def _as_int(value: Any) -> int:
    """``value`` when it is an int (not a bool), else 0 (which the caller's check refuses)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def check_call_limits(raw: Any) -> dict[str, int]:
    """A call's ``limits`` field: ``{"memory_mb", "cpu_s", "output_bytes"}``, each a positive int."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not set(raw) <= CALL_LIMIT_FIELDS:
        raise bad_input(f"limits must be a JSON object with some of {sorted(CALL_LIMIT_FIELDS)}")
    for name, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise bad_input(f"limits.{name} must be a positive integer")
    return dict(raw)


def apply_call_limits(limits: dict[str, int]) -> None:
    """In the call's worker: ``RLIMIT_AS`` (memory_mb) and ``RLIMIT_CPU`` (cpu_s), inherited by every
    process the call starts. A limit is only ever lowered."""
    for name, which, value in (
        ("memory_mb", resource.RLIMIT_AS, limits.get("memory_mb", 0) * 1024**2),
        ("cpu_s", resource.RLIMIT_CPU, limits.get("cpu_s", 0)),
    ):
        if not value:
            continue
        _soft, hard = resource.getrlimit(which)
        extra = CPU_HARD_GRACE_S if name == "cpu_s" else 0
        new_hard = value + extra if hard == resource.RLIM_INFINITY else min(hard, value + extra)
        resource.setrlimit(which, (min(value, new_hard), new_hard))


# --------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------


def _proc_stat(pid: str) -> tuple[int, int, str] | None:
    """(pgid, sid, state) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    try:
        return int(fields[2]), int(fields[3]), fields[0]
    except (IndexError, ValueError):
        return None


def kill_session(sid: int) -> int:
    """SIGKILL every process of session ``sid`` (and its group), repeating while new ones appear."""
    killed = 0
    me = os.getpid()
    for _ in range(10):
        found = 0
        try:
            pids = [p for p in os.listdir("/proc") if p.isdigit()]
        except OSError:
            pids = []
        for pid in pids:
            if int(pid) == me:
                continue
            stat = _proc_stat(pid)
            if stat is None or stat[2] == "Z":
                continue
            pgid, psid, _state = stat
            if psid == sid or pgid == sid:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                    found += 1
                except OSError:
                    pass
        with contextlib.suppress(OSError):
            os.killpg(sid, signal.SIGKILL)
        killed += found
        if not found:
            break
    return killed


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pgid, signal.SIGKILL)


def in_container() -> bool:
    return os.environ.get("OFFICERAY_SANDBOX_CONTAINER") == "1"


def kill_strays() -> None:
    """Inside a container: kill every process this one may signal (init and the agent are spared).

    When the agent is the container's init (PID 1, the Docker backend), every orphan is its child:
    it then repeats the kill and reaps until no other process is left (or :data:`STRAY_REAP_S`
    passed), so nothing a call started outlives it, not even as a zombie holding a pid.
    """
    if not in_container():
        return
    deadline = time.monotonic() + STRAY_REAP_S
    pause = 0.0001
    while True:
        with contextlib.suppress(OSError):
            os.kill(-1, signal.SIGKILL)
        if os.getpid() != 1:
            return
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return  # no child left: every process but this one is gone
        if time.monotonic() >= deadline:
            print("officeray agent: stray processes survived SIGKILL", file=sys.stderr)
            return
        time.sleep(pause)
        pause = min(pause * 2, 0.01)


SCRATCH_DIRS = ("/tmp", "/dev/shm")
"""Container only: shared scratch folders emptied by ``reset`` with the workspace."""


def clear_scratch() -> int:
    """Inside a container: empty :data:`SCRATCH_DIRS` (never on a host: they are the host's)."""
    if not in_container():
        return 0
    return sum(clear_folder(folder) for folder in SCRATCH_DIRS if os.path.isdir(folder))


SYSV_IPC_DIR = "/proc/sysvipc"
"""Where the kernel lists the SysV IPC objects of the caller's IPC namespace (one file per kind)."""

SYSV_IPC_KINDS = ("shm", "msg", "sem")
"""The SysV IPC object kinds (file names under :data:`SYSV_IPC_DIR`) that ``reset`` removes."""

MQUEUE_DIR = "/dev/mqueue"
"""Where the POSIX message queues of the IPC namespace are visible (Docker mounts it)."""

IPC_RMID = 0
"""The ``cmd`` of ``shmctl``/``msgctl``/``semctl`` that removes an object (``<sys/ipc.h>``)."""


def sysv_ipc_ids(kind: str) -> list[int]:
    """The ids of every SysV IPC object of ``kind`` (``shm``, ``msg``, ``sem``) in this IPC namespace."""
    try:
        with open(os.path.join(SYSV_IPC_DIR, kind)) as fh:
            rows = fh.read().splitlines()[1:]  # the first line is the header
    except OSError:
        return []  # no SysV IPC in this kernel: nothing to remove
    ids = []
    for row in rows:
        fields = row.split()
        if len(fields) > 1 and fields[1].isdigit():
            ids.append(int(fields[1]))  # columns: key, id, perms, ...
    return ids


def _remove_sysv_ipc(libc: Any, kind: str, ipc_id: int) -> None:
    if kind == "shm":
        rc = libc.shmctl(ipc_id, IPC_RMID, None)
    elif kind == "msg":
        rc = libc.msgctl(ipc_id, IPC_RMID, None)
    else:
        rc = libc.semctl(ipc_id, 0, IPC_RMID)
    if rc != 0:
        import ctypes  # loaded already by _libc

        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.EIDRM):  # EINVAL/EIDRM: already removed
            raise OSError(err, f"cannot remove SysV {kind} object {ipc_id}: {os.strerror(err)}")


def clear_ipc() -> int:
    """Inside a container: remove every IPC object of its IPC namespace; how many were removed.

    SysV shared memory segments, message queues and semaphore sets, and POSIX message queues, are
    kernel objects that outlive the process that made them (POSIX shared memory and semaphores are
    files in ``/dev/shm``, emptied by :func:`clear_scratch`). A program of one task could leave a
    secret in one for the next task: ``reset`` removes them all (``IPC_RMID``, through ``ctypes``;
    every object was made by the sandbox uid, so the agent may remove it). Runs after
    :func:`kill_strays`, so no process is left to hold a segment attached or make new objects.
    Never on a host: those would be the host's objects. An object that cannot be removed fails the
    reset with ``sandbox_error``, and the host then replaces the container.
    """
    if not in_container():
        return 0
    removed = 0
    try:
        for kind in SYSV_IPC_KINDS:
            ids = sysv_ipc_ids(kind)
            if ids:
                libc = _libc()
                for ipc_id in ids:
                    _remove_sysv_ipc(libc, kind, ipc_id)
                    removed += 1
        if os.path.ismount(MQUEUE_DIR):
            removed += clear_folder(MQUEUE_DIR)
    except OSError as exc:
        raise AgentError(
            "sandbox_error", f"reset could not remove the IPC objects of the sandbox: {exc}"
        ) from None
    left = {kind: len(ids) for kind in SYSV_IPC_KINDS if (ids := sysv_ipc_ids(kind))}
    if left:  # e.g. a segment still attached by a process kill_strays could not kill
        raise AgentError("sandbox_error", f"reset left SysV IPC objects in the sandbox: {left}")
    return removed


_libc_handle: Any = None


def _libc() -> Any:
    """The C library through ``ctypes`` (with ``errno``), loaded once; OSError when unavailable."""
    global _libc_handle
    if _libc_handle is None:
        try:
            import ctypes

            _libc_handle = ctypes.CDLL(None, use_errno=True)
        except Exception as exc:
            raise OSError(errno.ENOSYS, f"ctypes cannot load the C library: {exc}") from None
    return _libc_handle


PR_SET_DUMPABLE = 4


def set_dumpable(on: bool) -> bool:
    """``prctl(PR_SET_DUMPABLE)``. A non-dumpable process cannot be ptraced, nor its
    ``/proc/<pid>/{mem,fd,environ}`` opened, by other processes of the same user (the code a call
    runs) without ``CAP_SYS_PTRACE``. Inherited by fork, reset by exec. False when unavailable."""
    try:
        return int(_libc().prctl(PR_SET_DUMPABLE, int(on), 0, 0, 0)) == 0
    except Exception:
        return False


def _reap(pid: int, deadline: float) -> int | None:
    """waitpid with a deadline; returns the raw status or None if the child is still running."""
    pause = 0.0001
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return 0
        if done:
            return status
        if time.monotonic() >= deadline:
            return None
        time.sleep(pause)
        pause = min(pause * 2, 0.01)


class OomWatch:
    """The memory cgroup's ``oom_kill`` counter (container only), to tell an OOM kill from a crash."""

    FILES = ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control")

    def __init__(self) -> None:
        limit = os.environ.get("OFFICERAY_MEMORY_LIMIT_MB")
        self.limit_mb = limit
        self.path = None
        if limit:
            self.path = next((p for p in self.FILES if os.path.exists(p)), None)

    def count(self) -> int:
        if self.path is None:
            return 0
        try:
            with open(self.path) as fh:
                for line in fh:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def message(self) -> str:
        return (
            f"out of memory: the call exceeded the sandbox memory limit of {self.limit_mb} MB and was "
            "killed by the kernel OOM killer"
        )


# --------------------------------------------------------------------------------------------------
# The worker (forked child)
# --------------------------------------------------------------------------------------------------


def _encode_error(error_type: str, message: str) -> bytes:
    if error_type not in ERROR_TYPES:
        error_type = "tool_error"
    return b"E" + json.dumps({"type": error_type, "message": message[:MAX_MESSAGE_CHARS]}).encode()


def _watch_parent(parent: int) -> None:
    """Worker thread: if the agent dies, kill this worker's whole session."""
    while True:
        time.sleep(PARENT_POLL_S)
        if os.getppid() != parent:
            kill_session(os.getpid())
            os._exit(1)


def _worker(
    server: Server, fn: Callable[..., Any], kwargs: dict[str, Any], write_fd: int, parent: int
) -> NoReturn:
    code = 0
    try:
        os.setsid()
        apply_call_limits(server.call_limits)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        server.close_protocol_fds()
        os.chdir(server.workspace.root)
        undumpable = set_dumpable(True)  # /proc/self/* is root-owned while non-dumpable
        try:
            with open("/proc/self/oom_score_adj", "w") as fh:  # be the OOM killer's first choice
                fh.write("1000")
        except OSError:
            pass
        if undumpable:
            set_dumpable(False)
        if os.environ.get("OFFICERAY_SANDBOX_CONTAINER") != "1":  # in a container, it all dies with the agent
            threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
        try:
            result = fn(**kwargs)
            payload = b"R" + json.dumps(result).encode()
            if len(payload) - 1 > server.call_output:
                payload = _encode_error(
                    "output_limit",
                    f"the result is {len(payload) - 1} bytes; the limit is {server.call_output} bytes",
                )
        except ToolFailure as exc:
            payload = _encode_error(str(getattr(exc, "error_type", "tool_error")), str(exc))
        except RecursionError:
            payload = _encode_error("tool_error", "maximum recursion depth exceeded")
        except MemoryError:
            payload = _encode_error("tool_error", "out of memory")
        except Exception as exc:  # an unexpected bug of the tool
            traceback.print_exc(file=sys.stderr)
            payload = _encode_error("internal", f"{type(exc).__name__}: {exc}")
        view = memoryview(payload + b"\n")  # the newline marks a complete payload
        while view:
            view = view[os.write(write_fd, view) :]
        os.close(write_fd)  # EOF for the agent now, before the (slower) process exit
    except BaseException:  # noqa: B036 - nothing may escape a forked child
        code = 1
    finally:
        os._exit(code)


# --------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------


class Server:
    def __init__(self, proto_in: int, proto_out: int, workspace: str) -> None:
        self.proto_in = proto_in
        self.proto_out = proto_out
        self.workspace = Workspace(workspace)
        self.max_output = _env_int("OFFICERAY_MAX_OUTPUT_BYTES", MAX_OUTPUT_BYTES)
        self.call_output = self.max_output
        """The output cap of the call in flight (its ``limits.output_bytes``, at most ``max_output``)."""
        self.call_limits: dict[str, int] = {}
        """The ``limits`` of the call in flight (applied in its worker)."""
        self.staging_root = os.path.realpath(os.environ.get(STAGING_ENV) or tempfile.gettempdir())
        """Where staged sources go: outside the workspace (see :meth:`stage_files`)."""
        self.epoch = uuid.uuid4().hex
        """Changes whenever the workspace is emptied behind the host's back (a new agent, ``reset``)."""
        self.oom = OomWatch()
        self._rbuf = bytearray()
        self._zombies: list[int] = []

    # -- protocol io --------------------------------------------------------------------------

    def close_protocol_fds(self) -> None:
        for fd in (self.proto_in, self.proto_out):
            with contextlib.suppress(OSError):
                os.close(fd)

    def read_request(self) -> bytes | None:
        """One request line (without the newline), None at EOF; raises for an over-long line."""
        overflow = False
        while True:
            nl = self._rbuf.find(b"\n")
            if nl >= 0:
                line = bytes(self._rbuf[:nl])
                del self._rbuf[: nl + 1]
                if overflow:
                    raise bad_input(f"request line longer than {MAX_REQUEST_BYTES} bytes")
                return line
            if len(self._rbuf) > MAX_REQUEST_BYTES:
                overflow = True
                self._rbuf.clear()
            chunk = os.read(self.proto_in, READ_CHUNK_BYTES)
            if not chunk:
                return None
            self._rbuf += chunk

    def send(self, data: bytes) -> None:
        view = memoryview(data + b"\n")
        while view:
            view = view[os.write(self.proto_out, view) :]

    def answer_ok(self, req_id: Any, result: Any = None, raw: bytes | None = None) -> None:
        body = raw if raw is not None else json.dumps(result).encode()
        self.send(b'{"id": ' + json.dumps(req_id).encode() + b', "ok": true, "result": ' + body + b"}")

    def answer_error(self, req_id: Any, error_type: str, message: str) -> None:
        error = {"type": error_type, "message": message[:MAX_MESSAGE_CHARS]}
        self.send(json.dumps({"id": req_id, "ok": False, "error": error}).encode())

    # -- main loop ------------------------------------------------------------------------------

    def serve(self) -> int:
        while True:
            req_id: Any = None
            try:
                line = self.read_request()
                if line is None:
                    return 0
                try:
                    request = json.loads(line)
                except ValueError as exc:
                    raise bad_input(f"malformed request (not JSON): {exc}") from None
                if not isinstance(request, dict):
                    raise bad_input("malformed request: not a JSON object")
                req_id = request.get("id")
                raw = self.handle(request)
                self.answer_ok(req_id, raw=raw)
            except AgentError as exc:
                self.answer_error(req_id, exc.error_type, exc.message)
            except Exception as exc:
                print(f"officeray agent: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
                self.answer_error(req_id, "internal", f"{type(exc).__name__}: {exc}")

    def handle(self, request: dict[str, Any]) -> bytes:
        """Run one request; returns the result's JSON."""
        op = request.get("op")
        if op == "call":
            return self.op_call(request)
        if op == "ping":
            info = {
                "pid": os.getpid(),
                "version": AGENT_VERSION,
                "python": sys.version.split()[0],
                "workspace": self.workspace.root,
                "epoch": self.epoch,
            }
            return json.dumps(info).encode()
        if op == "reset":
            kill_strays()  # first: no process may still hold (or recreate) what is removed next
            removed = self.workspace.clear() + clear_scratch() + clear_ipc()
            self.epoch = uuid.uuid4().hex
            return json.dumps({"removed": removed}).encode()
        if op == "write_file":
            size = write_text(self.workspace, request.get("path"), request.get("content"))
            return json.dumps({"bytes": size}).encode()
        if op == "read_file":
            content = read_text(self.workspace, request.get("path"), self.max_output)
            return json.dumps({"content": content}).encode()
        if op == "ws_list":
            self.reap_zombies()
            return json.dumps({"epoch": self.epoch, "files": list_workspace(self.workspace.root)}).encode()
        if op == "ws_put":
            return json.dumps({"bytes": put_files(self.workspace, request.get("files"))}).encode()
        if op == "ws_delete":
            return json.dumps({"removed": delete_files(self.workspace, request.get("paths"))}).encode()
        if op == "ws_read":
            length = min(_as_int(request.get("length")), self.max_output * 3 // 4)
            chunk = read_chunk(self.workspace, request.get("path"), request.get("offset"), length)
            return json.dumps(chunk).encode()
        raise bad_input(
            f"unknown op {op!r}; expected call, ping, reset, write_file, read_file, ws_list, ws_put, "
            "ws_delete or ws_read"
        )

    # -- call -------------------------------------------------------------------------------------

    def _check_call(self, request: dict[str, Any]) -> tuple[str, ToolEntry, dict[str, Any], float]:
        tool = request.get("tool")
        if not isinstance(tool, str) or tool not in TOOLS:
            raise bad_input(f"unknown tool {tool!r}; known tools: {', '.join(sorted(TOOLS))}")
        entry = TOOLS[tool]
        inputs = request.get("inputs", {})
        if not isinstance(inputs, dict):
            raise bad_input("inputs must be a JSON object")
        inputs = dict(inputs)
        if request.get("files") is not None and entry.staged_input:
            inputs.setdefault(entry.staged_input, ".")
        unknown = sorted(set(inputs) - set(entry.required) - set(entry.optional))
        missing = [k for k in entry.required if k not in inputs]
        if unknown or missing:
            raise bad_input(f"{tool}: unknown inputs {unknown}, missing inputs {missing}")
        return tool, entry, inputs, _check_timeout(request)

    def stage_files(self, files: Any) -> str:
        """Write ``files`` under a fresh ``staged-*`` folder of :attr:`staging_root` (outside the
        workspace: no later step's tool can read them, and they never reach the task's workspace),
        make it read-only, and return its absolute path. The caller removes it after the call
        (:meth:`unstage`)."""
        if not isinstance(files, dict):
            raise bad_input("files must be a JSON object mapping relative paths to text")
        if len(files) > MAX_STAGED_FILES:
            raise bad_input(f"{len(files)} files staged; the limit is {MAX_STAGED_FILES}")
        total = 0
        for path, content in files.items():
            if not isinstance(content, str):
                raise bad_input(f"staged file {path!r}: content must be a string")
            total += len(content.encode("utf-8", "surrogatepass"))
        if total > MAX_STAGED_BYTES:
            raise bad_input(f"{total} bytes staged; the limit is {MAX_STAGED_BYTES} bytes")
        for path in files:
            try:
                check_relative(path, "staged file")
            except ToolInputError as exc:
                raise bad_input(exc.message) from None
        os.makedirs(self.staging_root, exist_ok=True)
        folder = tempfile.mkdtemp(prefix="staged-", dir=self.staging_root)
        try:
            staged = Workspace(folder)
            for path, content in files.items():
                write_text(staged, path, content, what="staged file")
            make_read_only(staged.root)
        except BaseException:
            self.unstage(folder)
            raise
        return staged.root

    @staticmethod
    def unstage(folder: str) -> None:
        """Remove a staged folder (made writable again first)."""
        with contextlib.suppress(OSError):
            if os.path.islink(folder):
                os.unlink(folder)
            else:
                shutil.rmtree(folder, onerror=_force_remove)

    def op_call(self, request: dict[str, Any]) -> bytes:
        if request.get("plugin") is not None:
            return self.op_call_plugin(request)
        tool, entry, inputs, timeout = self._check_call(request)
        limits = check_call_limits(request.get("limits"))
        staged: str | None = None
        if entry.staged_input:
            if request.get("files") is not None:
                staged = inputs[entry.staged_input] = self.stage_files(request["files"])
            else:
                self.workspace.resolve(inputs[entry.staged_input], entry.staged_input)
        elif request.get("files"):
            raise bad_input(f"tool {tool!r} takes no staged files")
        try:
            fn = load_tool(tool)
            if entry.takes_timeout:
                inputs["timeout_s"] = timeout
            return self.run_call(
                tool, fn, inputs, timeout + (KILL_GRACE_S if entry.takes_timeout else 0.0), limits
            )
        finally:
            if staged is not None:
                self.unstage(staged)

    def _check_plugin_call(
        self, request: dict[str, Any]
    ) -> tuple[str, dict[str, str], dict[str, Any], float]:
        tool = request.get("tool")
        if not isinstance(tool, str) or not _IDENTIFIER_RE.match(tool):
            raise bad_input(f"plugin tool name {tool!r} must be an identifier of at most 64 characters")
        if tool in TOOLS:
            raise bad_input(f"{tool!r} is a built-in tool; a plugin call cannot replace it")
        plugin = request["plugin"]
        if not isinstance(plugin, dict) or set(plugin) != PLUGIN_FIELDS:
            raise bad_input("plugin must be a JSON object with exactly module, function and source")
        module, function, source = plugin["module"], plugin["function"], plugin["source"]
        if not isinstance(module, str) or not _MODULE_RE.match(module) or len(module) > 300:
            raise bad_input(f"plugin module {module!r} is not a dotted module name")
        if not isinstance(function, str) or not function.isidentifier():
            raise bad_input(f"plugin function {function!r} is not an identifier")
        if not isinstance(source, str):
            raise bad_input("plugin source must be a string")
        if len(source.encode("utf-8", "surrogatepass")) > MAX_PLUGIN_SOURCE_BYTES:
            raise bad_input(f"plugin {module!r}: the source is larger than {MAX_PLUGIN_SOURCE_BYTES} bytes")
        if request.get("files") is not None:
            raise bad_input(f"plugin tool {tool!r} takes no staged files")
        inputs = request.get("inputs", {})
        if not isinstance(inputs, dict):
            raise bad_input("inputs must be a JSON object")
        return (
            tool,
            {"module": module, "function": function, "source": source},
            inputs,
            _check_timeout(request),
        )

    def op_call_plugin(self, request: dict[str, Any]) -> bytes:
        """Stage the plugin's source, run it in a worker (see the module docstring), remove the source."""
        tool, plugin, inputs, timeout = self._check_plugin_call(request)
        limits = check_call_limits(request.get("limits"))
        runner = load_plugin_runner()
        folder = self.workspace.fresh_dir("plugin-")
        try:
            rel = os.path.relpath(folder, self.workspace.root)
            filename = plugin["module"].rpartition(".")[2] + ".py"
            write_text(self.workspace, os.path.join(rel, filename), plugin["source"], what="plugin source")
            kwargs = {
                "module_name": plugin["module"],
                "function": plugin["function"],
                "source_path": os.path.join(folder, filename),
                "inputs": inputs,
            }
            return self.run_call(tool, runner, kwargs, timeout, limits)
        finally:
            with contextlib.suppress(OSError):  # the plugin may have removed or replaced it
                if os.path.islink(folder):
                    os.unlink(folder)
                else:
                    shutil.rmtree(folder, onerror=_force_remove)

    def run_call(
        self,
        tool: str,
        fn: Callable[..., Any],
        kwargs: dict[str, Any],
        timeout: float,
        limits: dict[str, int] | None = None,
    ) -> bytes:
        """Run ``fn(**kwargs)`` in a worker under ``limits`` (see :func:`check_call_limits`); then
        kill strays and report an OOM kill."""
        self.reap_zombies()
        oom_before = self.oom.count()
        failure: AgentError | None = None
        limits = limits or {}
        self.call_limits = limits
        self.call_output = min(self.max_output, limits.get("output_bytes", self.max_output))
        try:
            raw = self.run_worker(tool, fn, kwargs, timeout)
        except AgentError as exc:
            failure = exc
        finally:
            self.call_limits, self.call_output = {}, self.max_output
        kill_strays()
        if self.oom.count() > oom_before:  # an OOM kill explains any other outcome
            raise AgentError("sandbox_error", self.oom.message())
        if failure is not None:
            raise failure
        return raw

    def run_worker(self, tool: str, fn: Callable[..., Any], kwargs: dict[str, Any], timeout: float) -> bytes:
        read_fd, write_fd = os.pipe()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _worker(self, fn, kwargs, write_fd, os.getppid())
        os.close(write_fd)
        deadline = time.monotonic() + timeout
        chunks: list[bytes] = []
        size = 0
        limit = self.call_output + 2  # the R/E tag and the final newline
        failure: AgentError | None = None
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    failure = AgentError(
                        "timeout", f"{tool} timed out after {timeout:g}s; its process tree was killed"
                    )
                    break
                ready, _, _ = select.select([read_fd], [], [], remaining)
                if not ready:
                    continue
                chunk = os.read(read_fd, READ_CHUNK_BYTES)
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    failure = AgentError(
                        "output_limit", f"{tool} produced more than {self.call_output} bytes of result"
                    )
                    break
                chunks.append(chunk)
        finally:
            os.close(read_fd)
        payload = b"".join(chunks)
        complete = failure is None and payload[:1] in (b"R", b"E") and payload.endswith(b"\n")
        if complete:
            # The worker closed the pipe as its last act: kill its group (stragglers) and do not
            # wait for its exit; the zombie is reaped at the next request.
            _kill_group(pid)
            if _reap(pid, 0.0) is None:
                self._zombies.append(pid)
        else:  # timeout, over the cap or a crash: every process of the call, then the exit status
            kill_session(pid)
            status = _reap(pid, time.monotonic() + WORKER_EXIT_WAIT_S)
        if failure is not None:
            raise failure
        if not complete:
            raise self._died(tool, status)
        if payload[:1] == b"R":
            return payload[1:-1]
        error = json.loads(payload[1:])
        raise AgentError(error["type"], error["message"])

    def _died(self, tool: str, status: int | None) -> AgentError:
        """The error of a worker that died without a result (over its CPU time: ``timeout``)."""
        if status is not None and os.WIFSIGNALED(status) and os.WTERMSIG(status) in _CPU_SIGNALS:
            cpu = self.call_limits.get("cpu_s")
            return AgentError("timeout", f"{tool} used up its CPU-time limit of {cpu}s and was killed")
        return AgentError("sandbox_error", f"the {tool} process died without a result ({_describe(status)})")

    def reap_zombies(self) -> None:
        """Collect the exit status of finished workers (see :meth:`run_worker`)."""
        self._zombies = [pid for pid in self._zombies if _reap(pid, 0.0) is None]


def _check_timeout(request: dict[str, Any]) -> float:
    timeout = request.get("timeout_s")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= MAX_TIMEOUT_S:
        raise bad_input(f"timeout_s must be a number in (0, {MAX_TIMEOUT_S:g}]")
    return float(timeout)


_CPU_SIGNALS = (signal.SIGXCPU,)
"""What kills a process over ``RLIMIT_CPU`` (SIGKILL at the hard limit is not told apart)."""


def make_read_only(root: str) -> None:
    """Files 0o444, folders 0o555 under (and including) ``root``."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(dirpath, name), 0o444, follow_symlinks=False)
        for name in dirnames:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(dirpath, name), 0o555, follow_symlinks=False)
    os.chmod(root, 0o555)


def _describe(status: int | None) -> str:
    if status is None:
        return "still running"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"killed by {name}"
    return f"exit status {os.WEXITSTATUS(status)}"


def _env_int(name: str, default: int) -> int:
    try:
        value = int(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value > 0 else default


def self_check() -> int:
    """Import every tool, and the plugin runner (pydantic); print a JSON report."""
    report: dict[str, str] = {}
    for name in TOOLS:
        try:
            load_tool(name)
            report[name] = "ok"
        except Exception as exc:
            report[name] = f"{type(exc).__name__}: {exc}"
    try:
        load_plugin_runner()
        report["(plugins)"] = "ok"
    except AgentError as exc:
        report["(plugins)"] = exc.message
    print(json.dumps({"python": sys.version.split()[0], "tools": report}))
    return 0 if all(v == "ok" for v in report.values()) else 1


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--self-check"]:
        return self_check()
    if args:
        print("usage: python3 -m tools_sandbox.agent [--self-check]", file=sys.stderr)
        return 2
    # `python3 -m` put the start-up directory (the workspace, in a container) first on sys.path:
    # drop it, so that no file written into the workspace shadows a module imported later.
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
    # Move the protocol streams off fds 0/1 (see the module docstring).
    sys.stdout.flush()
    proto_in = os.dup(0)
    proto_out = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    if os.getpid() == 1:  # the container's init: no handler, so the kernel drops signals sent from inside
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    if not set_dumpable(False) and in_container():
        print("officeray agent: WARNING: cannot make the agent non-dumpable", file=sys.stderr)
    server = Server(proto_in, proto_out, os.environ.get(ROOT_ENV) or DEFAULT_ROOT)
    try:
        return server.serve()
    except (BrokenPipeError, KeyboardInterrupt):
        return 0
