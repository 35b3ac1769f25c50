"""Every sandbox backend stops a call on ``interrupt`` (a cancelled step): the call raises
``cancelled`` at once, every process it started is gone, and the next call runs in a fresh agent."""

from __future__ import annotations

import os
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable

import pytest

from officeray.contracts import ErrorType
from tests.conformance.conftest import BACKENDS
from tools_sandbox._channel import AgentSandbox
from tools_sandbox.sandbox import ToolCallError

STOP_WITHIN_S = 2.0

SPAWN_AND_SLEEP = """
    import subprocess, time
    child = subprocess.Popen(["sleep", "30"])
    with open({pid_file!r}, "w") as fh:
        fh.write(str(child.pid))
    time.sleep(30)
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("kind", BACKENDS)
def test_interrupt_stops_a_running_call_and_kills_its_processes(
    kind: str, new_sandbox: Callable[..., AgentSandbox]
) -> None:
    sandbox = new_sandbox(kind)
    container = getattr(sandbox, "container", None)
    pid_file = os.path.join(tempfile.mkdtemp(prefix="officeray-interrupt-"), "child.pid")
    code = textwrap.dedent(SPAWN_AND_SLEEP.format(pid_file=pid_file if kind == "local" else "/tmp/child.pid"))
    errors: list[BaseException] = []

    def call() -> None:
        try:
            sandbox.call("python_exec", {"code": code}, timeout_s=60)
        except BaseException as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(1.0)  # the program runs (and, locally, wrote its child's pid)
    interrupted = time.monotonic()
    sandbox.interrupt()
    caller.join(STOP_WITHIN_S + 5)

    assert not caller.is_alive() and time.monotonic() - interrupted < STOP_WITHIN_S
    assert len(errors) == 1 and isinstance(errors[0], ToolCallError)
    assert errors[0].error_type == ErrorType.CANCELLED
    if kind == "local":
        with open(pid_file) as fh:
            child = int(fh.read())
        deadline = time.monotonic() + STOP_WITHIN_S
        while not _gone(child):
            assert time.monotonic() < deadline, f"the call's child {child} survived the interrupt"
            time.sleep(0.05)
    else:
        import docker.errors

        with pytest.raises(docker.errors.NotFound):
            container.reload()  # the container, and every process in it, is gone
    assert sandbox.call("math_calculator", {"expression": "2+3"}, timeout_s=30)["value"] == 5


@pytest.mark.parametrize("kind", BACKENDS)
def test_an_interrupt_before_the_call_cancels_that_call_only(
    kind: str, new_sandbox: Callable[..., AgentSandbox]
) -> None:
    sandbox = new_sandbox(kind)
    sandbox.interrupt()
    with pytest.raises(ToolCallError) as cancelled:
        sandbox.call("math_calculator", {"expression": "1+1"}, timeout_s=30)
    assert cancelled.value.error_type == ErrorType.CANCELLED
    assert sandbox.call("math_calculator", {"expression": "2+3"}, timeout_s=30)["value"] == 5
    sandbox.interrupt()
    sandbox.clear_interrupt()  # it came after its call ended: withdrawn
    assert sandbox.call("math_calculator", {"expression": "2+4"}, timeout_s=30)["value"] == 6
