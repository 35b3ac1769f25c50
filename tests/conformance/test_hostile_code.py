"""Bad input, named: hostile programs and malformed tool inputs, each with the outcome it must get.

``test_hostile_code`` runs one table of hostile ``python_exec`` programs through
:func:`tools_sandbox.executor.run_step`, as a tool runner would. Each row names the code, the outcome
it must get (a result, or a typed error with message fragments), and what must hold afterwards; after
every row a trivial program must still run (the sandbox still serves).

Rows run on the Docker backend (``integration``) and, only where that is harmless on a host, on the
local one: the local backend has NO isolation (it runs programs as the current user, here possibly
root, with the host's network, files and processes), so network, file-system, privilege, fork-bomb,
memory-bomb and ``kill(-1)`` rows are Docker-only. In Docker the network is ``none``: the network
rows fail inside the container and never send a packet off the machine.

``test_malformed_inputs_fail_before_anything_runs`` checks that inputs the catalog refuses never
reach a sandbox: the sandbox is never even started, and the program, which would leave a marker
file, never runs.
"""

from __future__ import annotations

import json
import textwrap
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from officeray.config import SandboxLimits
from officeray.contracts import ErrorType, PlanStep, StepOutcome
from officeray.limits import MAX_PYTHON_CODE_CHARS
from tools_sandbox._channel import AgentSandbox
from tools_sandbox.agent.tools.python_exec import MAX_STREAM_BYTES, TRUNCATION_MARKER
from tools_sandbox.executor import run_step
from tools_sandbox.testing import LocalProcessSandbox

pytestmark = pytest.mark.timeout(120)

LIMITS = SandboxLimits(memory_mb=128, pids=64)
"""Small limits, so that the bombs hit them fast."""

LOCAL, DOCKER = "local", "docker"
BOTH = (LOCAL, DOCKER)

PRELUDE = '''\
import errno, json, os, signal, socket, subprocess, sys, time
WS = os.environ["OFFICERAY_WORKSPACE"]

def attempt(fn):
    """'succeeded', or the errno name (else the exception's type name) of the OSError raised."""
    try:
        fn()
    except OSError as exc:
        return errno.errorcode.get(exc.errno, type(exc).__name__)
    return "succeeded"

def stat_of(pid):
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()
'''


@dataclass(frozen=True)
class Row:
    id: str
    code: str
    expect: tuple[str, ...]
    """Accepted outcomes: ``"ok"`` (a result) and/or :class:`ErrorType` values."""
    stdout: frozenset[str] | None = None
    """For ``ok``: every word the program printed must be one of these (and it printed some)."""
    message: tuple[str, ...] = ()
    """For an error: fragments its message must contain."""
    check: Callable[[StepOutcome], None] | None = None
    """Extra checks of the outcome."""
    then: Callable[[AgentSandbox, StepOutcome], None] | None = None
    """Checks (and clean-up) on the sandbox after the row, before the "still serves" call."""
    backends: tuple[str, ...] = (DOCKER,)
    timeout_s: int = 2
    fresh: bool = False
    """Start the row on a freshly started sandbox."""
    host_peak_mb: float | None = None
    """Most host memory (tracemalloc) the step may take."""


def attempts(*expressions: str) -> str:
    """Code printing the outcome of ``attempt(lambda: <expression>)`` for each expression, one line."""
    calls = ", ".join(f"attempt(lambda: {expr})" for expr in expressions)
    return f"print(' '.join(sorted(set([{calls}]))))"


def run_code(sandbox: AgentSandbox, code: str, timeout_s: float = 10) -> Any:
    """Run a program that prints one JSON document; return it."""
    result = sandbox.call("python_exec", {"code": textwrap.dedent(code), "stdin": ""}, timeout_s=timeout_s)
    assert result["exit_code"] == 0, result["stderr"]
    return json.loads(result["stdout"])


def _pid_is_gone(sandbox: AgentSandbox, outcome: StepOutcome) -> None:
    """The process whose pid the row printed is gone (or a zombie waiting for its reaper)."""
    assert outcome.output is not None
    pid = int(outcome.output["stdout"].split()[-1])
    probe = f"""
        import json
        try:
            with open("/proc/{pid}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            state = "gone"
        print(json.dumps(state))
    """
    deadline = time.monotonic() + 3
    while (state := run_code(sandbox, probe)) not in ("gone", "Z"):
        assert time.monotonic() < deadline, f"process {pid} outlived its step (state {state})"
        time.sleep(0.05)
    if sandbox.ping()["pid"] == 1:  # Docker: the agent (PID 1) reaped it at once
        assert state == "gone"


def _no_other_process(sandbox: AgentSandbox, _outcome: StepOutcome) -> None:
    """Docker: only the agent (PID 1), this call's worker and its program are left."""
    code = """
        import json, os
        print(json.dumps(sorted(int(p) for p in os.listdir("/proc") if p.isdigit())))
    """
    pids = run_code(sandbox, code)
    assert len(pids) == 3 and pids[0] == 1, pids


def _bomb_was_stopped_by_a_limit(outcome: StepOutcome) -> None:
    """A fork bomb ends at its timeout, fails (fork: EAGAIN at the pids limit) or is OOM-killed."""
    if outcome.error is not None and outcome.error.type == ErrorType.SANDBOX_ERROR:
        assert f"memory limit of {LIMITS.memory_mb} MB" in outcome.error.message, outcome.error
    if outcome.error is not None and outcome.error.type == ErrorType.TOOL_ERROR:
        assert "Resource temporarily unavailable" in outcome.error.message, outcome.error


def _flood_is_truncated(outcome: StepOutcome) -> None:
    assert outcome.output is not None and outcome.output["exit_code"] == 0
    marker = TRUNCATION_MARKER.format(n=MAX_STREAM_BYTES)
    assert outcome.output["stdout"] == "x" * MAX_STREAM_BYTES + marker


def _spray_is_harmless(outcome: StepOutcome) -> None:
    assert outcome.output is not None and outcome.output["stdout"].endswith("sprayed\n")


def _delete_fill(sandbox: AgentSandbox, _outcome: StepOutcome) -> None:
    inputs = {"operation": "delete", "path": "fill.bin", "content": None, "recursive": False}
    assert sandbox.call("file_operations", inputs, timeout_s=10)["deleted"] is True


def _reset_empties_tmp(sandbox: AgentSandbox, _outcome: StepOutcome) -> None:
    sandbox.reset()  # what a runner does between two tasks
    code = """
        import json, os
        print(json.dumps([os.path.exists("/tmp/leak.txt"), os.path.exists("/dev/shm/leak.txt")]))
    """
    assert run_code(sandbox, code) == [False, False]


STAGED = {"pkg/__init__.py": "", "pkg/a.py": "from pkg.b import b\n\n\ndef a():\n    return b()\n"}
STAGED["pkg/b.py"] = "def b():\n    return 1\n"


def _planted_modules_never_run(sandbox: AgentSandbox, _outcome: StepOutcome) -> None:
    # code_analyzer's first call makes the agent import it, and the stdlib modules it needs
    result = sandbox.call(
        "code_analyzer", {"folder": "x", "start_func": "a", "end_func": "b"}, timeout_s=20, files=STAGED
    )
    assert result["found"] is True
    inputs = {"operation": "list", "path": ".", "content": None, "recursive": False}
    names = [e["name"] for e in sandbox.call("file_operations", inputs, timeout_s=10)["entries"]]
    assert "difflib.py" in names and not [n for n in names if n.startswith("PLANTED")], names


PLANT = """
    for name in ("difflib", "keyword", "dataclasses", "ast", "warnings", "pathlib", "tokenize", "ctypes"):
        with open(os.path.join(WS, name + ".py"), "w") as fh:
            fh.write(f"open({WS!r} + '/PLANTED-{name}-%d' % __import__('os').getpid(), 'w')\\n")
    print("planted")
"""

PTRACE = """
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    def ptrace_attach(pid):
        if libc.ptrace(16, pid, None, None) == 0:  # PTRACE_ATTACH
            return "succeeded"
        return errno.errorcode[ctypes.get_errno()]
    worker = os.getppid()
    agent = int(stat_of(worker)[1])
    outcomes = {ptrace_attach(1), ptrace_attach(worker), ptrace_attach(agent)}
    for path, flags in (("/proc/1/mem", os.O_RDONLY), ("/proc/1/fd/0", os.O_WRONLY),
                        ("/proc/1/environ", os.O_RDONLY), ("/proc/1/root/etc/hostname", os.O_RDONLY),
                        (f"/proc/{worker}/mem", os.O_RDONLY)):
        outcomes.add(attempt(lambda: os.close(os.open(path, flags))))
    print(" ".join(sorted(outcomes)))
"""

DAEMON = """
    if os.fork() == 0:  # double fork + setsid: a daemon in a session of its own
        os.setsid()
        if os.fork() == 0:
            with open(os.path.join(WS, "daemon.pid"), "w") as fh:
                fh.write(str(os.getpid()))
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            time.sleep(60)
        os._exit(0)
    for _ in range(100):
        if os.path.exists(os.path.join(WS, "daemon.pid")):
            break
        time.sleep(0.01)
    time.sleep(0.05)
    print(open(os.path.join(WS, "daemon.pid")).read())
"""

KILL_AGENT = """
    worker = os.getppid()
    agent = int(stat_of(worker)[1])
    with open(f"/proc/{agent}/cmdline", "rb") as fh:
        is_agent = b"tools_sandbox.agent" in fh.read()
    if is_agent:  # never signal anything else (the local backend runs on the host)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGSTOP, signal.SIGKILL):
            os.kill(agent, sig)
        time.sleep(1)
        print("the agent survived")
    else:
        print("not the agent")
"""

ROWS: list[Row] = [
    # --- network (Docker: network "none", only lo) -------------------------------------------------
    Row(
        "net-connect-loopback-80",
        attempts("socket.create_connection(('127.0.0.1', 80), timeout=1)"),
        ("ok",),
        frozenset({"ECONNREFUSED"}),
    ),
    Row(
        "net-connect-1.1.1.1-53",
        attempts("socket.create_connection(('1.1.1.1', 53), timeout=1)"),
        ("ok",),
        frozenset({"ENETUNREACH"}),
    ),
    Row(
        "net-udp-1.1.1.1-53",
        attempts("socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('1.1.1.1', 53))"),
        ("ok",),
        frozenset({"ENETUNREACH"}),
    ),
    Row(
        "net-dns-lookup",
        attempts("socket.getaddrinfo('example.com', 80)", "socket.gethostbyname('example.com')"),
        ("ok",),
        frozenset({"gaierror"}),
    ),
    # --- the file system: read-only root, nothing of the host --------------------------------------
    Row("write-etc", attempts("open('/etc/x', 'w')"), ("ok",), frozenset({"EROFS"})),
    Row("write-usr-lib", attempts("open('/usr/lib/x', 'w')"), ("ok",), frozenset({"EROFS"})),
    Row(
        "write-tmp-dotdot",
        attempts("open('/tmp/../x', 'w')", "os.mkdir('/tmp/../y')"),
        ("ok",),
        frozenset({"EROFS"}),
    ),
    Row(
        "tamper-agent-code",
        attempts(
            "open('/opt/officeray/tools_sandbox/agent/server.py', 'a')",
            "os.unlink('/opt/officeray/tools_sandbox/agent/server.py')",
        ),
        ("ok",),
        frozenset({"EROFS", "EACCES"}),
    ),
    Row("read-etc-shadow", attempts("open('/etc/shadow').read()"), ("ok",), frozenset({"EACCES"})),
    Row(
        "read-agent-environ",
        attempts("open('/proc/1/environ').read()", "open(f'/proc/{os.getppid()}/environ').read()"),
        ("ok",),
        frozenset({"EACCES"}),
    ),
    Row(
        "docker-socket",
        attempts(
            "open('/var/run/docker.sock')",
            "socket.socket(socket.AF_UNIX).connect('/var/run/docker.sock')",
            "socket.socket(socket.AF_UNIX).connect('/run/docker.sock')",
        ),
        ("ok",),
        frozenset({"ENOENT"}),
    ),
    Row(
        "fill-the-workspace",
        """
        def fill():
            with open(os.path.join(WS, "fill.bin"), "wb") as fh:
                while True:
                    fh.write(b"\\0" * 2**20)
        print(attempt(fill))
        """,
        ("ok",),
        frozenset({"ENOSPC"}),
        then=_delete_fill,
    ),
    Row(
        "leave-files-in-tmp-for-the-next-task",
        "open('/tmp/leak.txt', 'w').write('x'); open('/dev/shm/leak.txt', 'w').write('x'); print('left')",
        ("ok",),
        frozenset({"left"}),
        then=_reset_empties_tmp,
    ),
    Row(
        "plant-modules-for-the-agent",
        PLANT,
        ("ok",),
        frozenset({"planted"}),
        then=_planted_modules_never_run,
        backends=BOTH,
        fresh=True,
    ),
    # --- privileges ------------------------------------------------------------------------------------
    Row(
        "setuid-root",
        attempts("os.setuid(0)", "os.setgid(0)", "os.setgroups([0])", "os.setresuid(0, 0, 0)"),
        ("ok",),
        frozenset({"EPERM"}),
    ),
    Row(
        "capabilities",
        """
        status = dict(line.split(":", 1) for line in open("/proc/self/status"))
        print(status["CapEff"].strip(), status["CapPrm"].strip(), status["NoNewPrivs"].strip(), os.getuid())
        """,
        ("ok",),
        frozenset({"0000000000000000", "1", "65534"}),
    ),
    Row("ptrace-the-agent", PTRACE, ("ok",), frozenset({"EACCES", "EPERM"})),
    # --- processes -------------------------------------------------------------------------------------
    Row(  # the pids limit stops it; 64 Pythons may also reach the memory limit first
        "fork-bomb",
        "while True:\n    os.fork()\n",
        ("timeout", "tool_error", "sandbox_error"),
        check=_bomb_was_stopped_by_a_limit,
        then=_no_other_process,
    ),
    Row(
        "fork-bomb-ignoring-errors",
        "while True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        ("timeout", "sandbox_error"),
        check=_bomb_was_stopped_by_a_limit,
        then=_no_other_process,
    ),
    Row(
        "memory-bomb",
        "data = b'x' * (1024 * 1024 * 1024)\nprint(len(data))",
        ("sandbox_error",),
        message=("memory limit", f"{LIMITS.memory_mb} MB"),
    ),
    Row("infinite-loop", "while True:\n    pass\n", ("timeout",), message=("timed out",), backends=BOTH),
    Row(
        "output-flood-50MiB",
        "for _ in range(50):\n    sys.stdout.write('x' * 2**20)\n",
        ("ok",),
        check=_flood_is_truncated,
        backends=BOTH,
        host_peak_mb=24,
    ),
    Row(
        "write-to-every-fd",
        """
        line = b'{"id": "r1", "ok": true, "result": {"forged": true}}\\n'
        for fd in range(1024):
            attempt(lambda: os.write(fd, line))
        print("sprayed")
        """,
        ("ok",),
        check=_spray_is_harmless,
        backends=BOTH,
    ),
    Row(
        "background-child-left-running",
        "child = subprocess.Popen(['sleep', '60'])\nprint(child.pid)",
        ("ok",),
        then=_pid_is_gone,
        backends=BOTH,
    ),
    Row("double-forked-daemon", DAEMON, ("ok",), then=_pid_is_gone),
    Row(
        "segfault",
        "import ctypes\nctypes.string_at(0)",
        ("tool_error",),
        message=("code -11",),
        backends=BOTH,
    ),
    Row(
        "kill-the-agent-local",
        KILL_AGENT,
        ("sandbox_error",),
        message=("died during call",),
        backends=(LOCAL,),
    ),
    Row(
        "kill-the-agent-pid1",  # PID 1 ignores every signal sent from inside its container
        textwrap.dedent(KILL_AGENT) + "os.kill(1, signal.SIGKILL)\nprint('still')\n",
        ("ok",),
        frozenset({"the", "agent", "survived", "still"}),
    ),
    Row(
        "kill-the-worker",
        "os.kill(os.getppid(), signal.SIGKILL)\ntime.sleep(5)",
        ("sandbox_error",),
        message=("died without a result", "SIGKILL"),
        backends=BOTH,
    ),
    Row(
        "kill-everything",
        "os.kill(-1, signal.SIGKILL)\ntime.sleep(5)",
        ("sandbox_error",),
        message=("died without a result",),
    ),
]


def _params() -> list[Any]:
    params = []
    for row in ROWS:
        for backend in row.backends:
            marks = [pytest.mark.integration] if backend == DOCKER else []
            params.append(pytest.param(backend, row, marks=marks, id=f"{backend}-{row.id}"))
    return params


@pytest.fixture(scope="module")
def hostile(request: pytest.FixtureRequest) -> Iterator[AgentSandbox]:
    """One sandbox per backend for the whole table (the Docker one with small limits)."""
    box: AgentSandbox
    if request.param == DOCKER:
        from tools_sandbox.docker_sandbox import DockerSandbox

        box = DockerSandbox(request.getfixturevalue("sandbox_image"), limits=LIMITS)
    else:
        box = LocalProcessSandbox()
    box.start()
    yield box
    box.stop()


def python_step(timeout_s: int) -> PlanStep:
    return PlanStep(step_id="s1", action="python_exec", timeout_seconds=timeout_s, idempotency_key="hostile")


@pytest.mark.parametrize(("hostile", "row"), _params(), indirect=["hostile"])
def test_hostile_code(hostile: AgentSandbox, row: Row, tmp_path: Path) -> None:
    if row.fresh:
        hostile.stop()
        hostile.start()
    starts = hostile.starts
    inputs = {"code": PRELUDE + textwrap.dedent(row.code), "stdin": ""}
    if row.host_peak_mb is not None:
        tracemalloc.start()
    started = time.monotonic()
    try:
        outcome = run_step(hostile, python_step(row.timeout_s), inputs, tmp_path)
        elapsed = time.monotonic() - started
        peak_mb = tracemalloc.get_traced_memory()[1] / 1024**2
    finally:
        tracemalloc.stop()

    assert elapsed < row.timeout_s + 2, f"the step took {elapsed:.2f}s"
    if row.host_peak_mb is not None:
        assert peak_mb < row.host_peak_mb, f"the host used {peak_mb:.1f} MiB"
    if outcome.error is None:
        assert "ok" in row.expect, f"expected {row.expect}, got a result: {outcome.output}"
        if row.stdout is not None:
            words = outcome.output["stdout"].split()
            assert words and set(words) <= row.stdout, outcome.output
    else:
        assert outcome.error.type in row.expect, outcome.error
        for fragment in row.message:
            assert fragment in outcome.error.message, outcome.error
    if row.check is not None:
        row.check(outcome)
    if row.then is not None:
        row.then(hostile, outcome)

    # the sandbox still serves
    follow_up = {"code": "print('still serving')", "stdin": ""}
    after = run_step(hostile, python_step(10), follow_up, tmp_path)
    assert after.ok and after.output["stdout"] == "still serving\n", after
    # a sandbox_error (and only that) replaces the sandbox
    restarted = outcome.error is not None and outcome.error.type == ErrorType.SANDBOX_ERROR
    assert hostile.starts - starts == int(restarted)


# --- malformed inputs never reach a sandbox ------------------------------------------------------------


@pytest.fixture(scope="module")
def marker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("malformed") / "it-ran"


@pytest.fixture(scope="module")
def idle_sandbox() -> Iterator[LocalProcessSandbox]:
    """Never started on purpose: any call would start it (``starts`` would become 1)."""
    box = LocalProcessSandbox()
    yield box
    box.stop()


def _mark(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('ran')\n"


MALFORMED: list[tuple[str, str, Callable[[Path], Any], str]] = [
    # (id, action, inputs given the marker path, a fragment of the error message)
    ("code-not-a-string", "python_exec", lambda m: {"code": 123}, "code"),
    ("code-null", "python_exec", lambda m: {"code": None}, "code"),
    ("code-missing", "python_exec", lambda m: {"stdin": _mark(m)}, "code"),
    ("code-empty", "python_exec", lambda m: {"code": ""}, "code"),
    ("extra-key", "python_exec", lambda m: {"code": _mark(m), "shell": True}, "shell"),
    ("stdin-not-a-string", "python_exec", lambda m: {"code": _mark(m), "stdin": 5}, "stdin"),
    (
        "code-oversized",
        "python_exec",
        lambda m: {"code": _mark(m) + "#" * MAX_PYTHON_CODE_CHARS},
        "code",
    ),
    ("unresolved-reference", "python_exec", lambda m: {"code": {"from_step": "s0"}}, "code"),
    ("inputs-not-an-object", "python_exec", lambda m: [_mark(m)], "inputs"),
    ("unknown-tool", "shell", lambda m: {"cmd": f"touch {m}"}, "unknown tool"),
    ("math-oversized", "math_calculator", lambda m: {"expression": "1+" * 600 + "1"}, "expression"),
    (
        "math-variables-wrong-type",
        "math_calculator",
        lambda m: {"expression": "x", "variables": [1]},
        "variables",
    ),
    (
        "file-write-absolute",
        "file_operations",
        lambda m: {"operation": "write", "path": str(m), "content": "ran"},
        "absolute",
    ),
    (
        "file-read-dotdot",
        "file_operations",
        lambda m: {"operation": "read", "path": "../../etc/passwd"},
        "'..'",
    ),
    ("file-no-path", "file_operations", lambda m: {"operation": "delete"}, "path"),
    ("file-bad-operation", "file_operations", lambda m: {"operation": "chmod", "path": "a"}, "operation"),
    (
        "file-content-on-read",
        "file_operations",
        lambda m: {"operation": "read", "path": "a", "content": "x"},
        "content",
    ),
    (
        "analyzer-folder-outside",
        "code_analyzer",
        lambda m: {"folder": "/etc", "start_func": "a", "end_func": "b"},
        "outside the workspace",
    ),
]


@pytest.mark.parametrize(
    ("action", "make_inputs", "fragment"), [pytest.param(*row[1:], id=row[0]) for row in MALFORMED]
)
def test_malformed_inputs_fail_before_anything_runs(
    idle_sandbox: LocalProcessSandbox,
    marker: Path,
    tmp_path: Path,
    action: str,
    make_inputs: Callable[[Path], Any],
    fragment: str,
) -> None:
    step = PlanStep(step_id="s1", action=action, timeout_seconds=5, idempotency_key="malformed")
    outcome = run_step(idle_sandbox, step, make_inputs(marker), tmp_path)
    assert outcome.error is not None and outcome.error.type == ErrorType.BAD_INPUT, outcome
    assert fragment in outcome.error.message, outcome.error.message
    assert idle_sandbox.starts == 0, "the sandbox was started: the inputs reached it"
    assert not marker.exists()


def test_the_marker_does_show_a_call(tmp_path: Path) -> None:
    """The malformed-input checks can fail: valid inputs do start the sandbox and write the marker."""
    box = LocalProcessSandbox()
    try:
        step = PlanStep(step_id="s1", action="python_exec", timeout_seconds=5, idempotency_key="valid")
        outcome = run_step(box, step, {"code": _mark(tmp_path / "it-ran")}, tmp_path)
        assert outcome.ok, outcome
        assert box.starts == 1 and (tmp_path / "it-ran").read_text() == "ran"
    finally:
        box.stop()
