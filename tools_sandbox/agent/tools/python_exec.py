"""The ``python_exec`` tool: run a Python program in the task workspace.

STDLIB ONLY (runs inside the sandbox). The program is written to a fresh ``exec-*`` folder of the
workspace (its ``HOME``), removed when the call ends, and runs as ``python3 -I -B -X utf8 main.py``
with the workspace root as working directory (so a file it writes by a relative path is in the task
workspace, where the next steps find it), in its own process group; when ``timeout_s`` passes the whole group
(the program and every child it started) is killed. stdout and stderr are each kept up to
:data:`MAX_STREAM_BYTES` (the rest is read and dropped, so the program is never blocked on a full
pipe). A non-zero exit code is a result, not an error: the caller decides what it means.

The program sees ``OFFICERAY_WORKSPACE`` (the workspace root) in its environment.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from officeray.limits import MAX_PYTHON_CODE_CHARS as MAX_CODE_CHARS
from tools_sandbox.agent.errors import ToolFailure, ToolInputError


def _remove_folder(folder: str) -> None:
    """Remove the program's folder (made writable again where the program locked it)."""

    def force(func: Any, path: str, _exc: object) -> None:
        for target in (os.path.dirname(path), path):
            with contextlib.suppress(OSError):
                os.chmod(target, 0o700)
        with contextlib.suppress(OSError):
            func(path)

    with contextlib.suppress(OSError):
        shutil.rmtree(folder, onerror=force)


MAX_STREAM_BYTES = 1024**2
"""stdout and stderr are each cut to this many bytes in the result."""

MAX_STDIN_BYTES = 16 * 1024**2
"""Largest stdin accepted."""

TRUNCATION_MARKER = "\n[... output truncated at {n} bytes]"

_READ_BYTES = 64 * 1024
_POLL_S = 0.1


class PythonExecTimeout(ToolFailure):
    error_type = "timeout"


def _workspace() -> str:
    root = os.environ.get("OFFICERAY_WORKSPACE", "/workspace")
    os.makedirs(root, exist_ok=True)
    return os.path.realpath(root)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pgid, signal.SIGKILL)


def _decode(data: bytearray, total: int) -> str:
    text = bytes(data).decode("utf-8", "replace")
    if total > len(data):
        text += TRUNCATION_MARKER.format(n=len(data))
    return text


def _pump(proc: subprocess.Popen[bytes], deadline: float | None) -> tuple[bytearray, bytearray, int, int]:
    """Read both pipes until EOF (or the deadline); keep the first MAX_STREAM_BYTES of each.

    Once the program itself has exited, what is already in the pipes is read and the rest is not
    waited for (a background child may hold the pipes open; it is killed with the group).
    """
    assert proc.stdout is not None and proc.stderr is not None
    bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    totals = dict.fromkeys(bufs, 0)
    open_fds = list(bufs)
    exited = False
    while open_fds:
        if exited:
            wait = 0.0
        else:
            wait = _POLL_S if deadline is None else min(_POLL_S, deadline - time.monotonic())
            if wait <= 0:
                raise PythonExecTimeout("")
        ready, _, _ = select.select(open_fds, [], [], wait)
        if not ready and exited:
            break
        for fd in ready:
            chunk = os.read(fd, _READ_BYTES)
            if not chunk:
                open_fds.remove(fd)
                continue
            totals[fd] += len(chunk)
            room = MAX_STREAM_BYTES - len(bufs[fd])
            if room > 0:
                bufs[fd] += chunk[:room]
        if not ready and proc.poll() is not None:
            exited = True
    out, err = proc.stdout.fileno(), proc.stderr.fileno()
    return bufs[out], bufs[err], totals[out], totals[err]


def run(code: str, stdin: str = "", *, timeout_s: float | None = None) -> dict[str, Any]:
    """Run ``code`` with ``stdin``; returns ``{"stdout", "stderr", "exit_code"}``."""
    if not isinstance(code, str) or not code.strip():
        raise ToolInputError("code must be a non-empty string")
    if len(code) > MAX_CODE_CHARS:
        raise ToolInputError(f"code is {len(code)} characters; the limit is {MAX_CODE_CHARS}")
    if not isinstance(stdin, str):
        raise ToolInputError("stdin must be a string")
    stdin_bytes = stdin.encode("utf-8", "surrogatepass")
    if len(stdin_bytes) > MAX_STDIN_BYTES:
        raise ToolInputError(f"stdin is {len(stdin_bytes)} bytes; the limit is {MAX_STDIN_BYTES}")
    if timeout_s is not None and timeout_s <= 0:
        raise ToolInputError("timeout_s must be positive")
    workspace = _workspace()
    try:
        folder = tempfile.mkdtemp(prefix="exec-", dir=workspace)
        script = os.path.join(folder, "main.py")
        with open(script, "w", encoding="utf-8", errors="surrogatepass") as fh:
            fh.write(code)
        stdin_path = os.path.join(folder, ".stdin")
        with open(stdin_path, "wb") as fh:
            fh.write(stdin_bytes)
    except OSError as exc:  # e.g. the workspace is full
        raise ToolFailure(f"cannot write the program to the workspace: {exc.strerror or exc}") from None
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": folder,
        "LANG": "C.UTF-8",
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
        "OFFICERAY_WORKSPACE": workspace,
    }
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with open(stdin_path, "rb") as stdin_fh:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", "-X", "utf8", script],
            stdin=stdin_fh,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workspace,
            env=env,
            process_group=0,
        )
    try:
        out, err, out_total, err_total = _pump(proc, deadline)
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            exit_code = proc.wait(wait)
        except subprocess.TimeoutExpired:
            raise PythonExecTimeout("") from None
    except PythonExecTimeout:
        raise PythonExecTimeout(
            f"python_exec timed out after {timeout_s:g}s; the program and its children were killed"
        ) from None
    finally:
        _kill_group(proc.pid)  # children the program left behind die with the call
        proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        _remove_folder(folder)
    return {"stdout": _decode(out, out_total), "stderr": _decode(err, err_total), "exit_code": exit_code}
