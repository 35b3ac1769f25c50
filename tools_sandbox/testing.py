"""A fake sandbox backend for tests: the agent as a local subprocess.

:class:`LocalProcessSandbox` runs ``python -m tools_sandbox.agent`` on this machine, with a private
temporary workspace, and speaks the same protocol over pipes as the Docker backend does over the
container's stdio. It exercises the agent (timeouts, process-tree kills, output caps, workspace
confinement) without Docker.

FOR TESTS ONLY: it provides NO isolation beyond the agent's own checks. Tool code (``python_exec``
above all) runs as the current user, with the network, the host file system and no memory, CPU or
process limits. Never use it for untrusted input.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from officeray.limits import MAX_OUTPUT_BYTES
from tools_sandbox._channel import STARTUP_TIMEOUT_S, AgentSandbox, FdTransport, Transport

_SOURCE_ROOT = str(Path(__file__).resolve().parent.parent)
"""The folder that holds the ``tools_sandbox`` package (put on the agent's PYTHONPATH)."""


class LocalProcessSandbox(AgentSandbox):
    """The agent in a local subprocess (tests only, no isolation: see the module docstring).

    Args:
        python: the interpreter that runs the agent (default: this one).
        max_output_bytes: the output cap, passed to the agent.
        startup_timeout_s: how long the agent may take to answer its first ping.
        inherit_stderr: pass the agent's diagnostics to this process's stderr (else they are dropped).

    The workspace is a fresh temporary folder per agent process (:attr:`workspace`), removed when
    the agent is replaced or the sandbox stops. After the agent died, the next request starts a new one.
    """

    def __init__(
        self,
        *,
        python: str = sys.executable,
        max_output_bytes: int = MAX_OUTPUT_BYTES,
        startup_timeout_s: float = STARTUP_TIMEOUT_S,
        inherit_stderr: bool = True,
    ) -> None:
        super().__init__(max_output_bytes=max_output_bytes, startup_timeout_s=startup_timeout_s)
        self.python = python
        self.inherit_stderr = inherit_stderr
        self.workspace: str | None = None
        self.staging: str | None = None
        """The agent's staging root (staged sources go there, outside the workspace)."""
        self._proc: subprocess.Popen[bytes] | None = None

    def _launch(self) -> Transport:
        self.workspace = tempfile.mkdtemp(prefix="officeray-sandbox-")
        self.staging = tempfile.mkdtemp(prefix="officeray-staging-")
        pythonpath = os.pathsep.join(p for p in (_SOURCE_ROOT, os.environ.get("PYTHONPATH")) if p)
        env = {
            **os.environ,
            "PYTHONPATH": pythonpath,
            "PYTHONDONTWRITEBYTECODE": "1",
            "OFFICERAY_WORKSPACE": self.workspace,
            "OFFICERAY_STAGING_ROOT": self.staging,
            "OFFICERAY_MAX_OUTPUT_BYTES": str(self.max_output_bytes),
        }
        for name in ("OFFICERAY_SANDBOX_CONTAINER", "OFFICERAY_MEMORY_LIMIT_MB"):
            env.pop(name, None)  # container-only behaviour (kill(-1)!) must never run on a host
        self._proc = subprocess.Popen(
            [self.python, "-m", "tools_sandbox.agent"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None if self.inherit_stderr else subprocess.DEVNULL,
            cwd=_SOURCE_ROOT,
            env=env,
            start_new_session=True,
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        return FdTransport(self._proc.stdout, self._proc.stdin)

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        for folder in (self.workspace, self.staging):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        self.workspace = self.staging = None

    def _agent_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _death_cause(self) -> str:
        proc = self._proc
        if proc is None:
            return "the agent process is gone"
        try:
            code = proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return "the agent closed its output but still runs"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = str(-code)
            return f"the agent process was killed by {name}"
        return f"the agent process exited with status {code}"
