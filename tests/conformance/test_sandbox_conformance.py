"""One behaviour, every backend: the same cases run against LocalProcessSandbox and DockerSandbox.

The ``sandbox`` fixture (conftest.py) is parametrized over ``local`` (always) and ``docker``
(``integration``; fails when Docker is unreachable unless OFFICERAY_SKIP_DOCKER=1). The Docker-only
cases at the end check the container's isolation (network, read-only root, user, capabilities,
memory and process limits).
"""

from __future__ import annotations

import json
import textwrap
import threading
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from officeray.config import SandboxLimits
from officeray.contracts import ErrorType
from officeray.tools.builtin import BUILTIN_TOOLS
from officeray.tools.spec import ToolRuntime
from tools_sandbox._channel import AgentSandbox
from tools_sandbox.agent import server
from tools_sandbox.agent.tools.python_exec import MAX_STREAM_BYTES
from tools_sandbox.sandbox import SandboxError, ToolCallError

pytestmark = pytest.mark.timeout(120)


def run_py(sandbox: AgentSandbox, code: str, *, stdin: str = "", timeout_s: float = 20) -> dict[str, Any]:
    return sandbox.call("python_exec", {"code": textwrap.dedent(code), "stdin": stdin}, timeout_s=timeout_s)


def py_json(sandbox: AgentSandbox, code: str) -> Any:
    """Run code that prints one JSON document; return it (failing on a non-zero exit)."""
    result = run_py(sandbox, code)
    assert result["exit_code"] == 0, result["stderr"]
    return json.loads(result["stdout"])


def call_error(sandbox: AgentSandbox, tool: str, inputs: dict[str, Any], **kwargs: Any) -> ToolCallError:
    with pytest.raises(ToolCallError) as info:
        sandbox.call(tool, inputs, timeout_s=kwargs.pop("timeout_s", 20), **kwargs)
    return info.value


# --- basics ------------------------------------------------------------------------------------------


def test_agent_tool_table_matches_the_catalog() -> None:
    in_sandbox = {name: spec for name, spec in BUILTIN_TOOLS.items() if spec.runtime == ToolRuntime.SANDBOX}
    assert set(server.TOOLS) == set(in_sandbox)
    for name, spec in in_sandbox.items():
        assert server.TOOLS[name].staged_input == spec.staged_folder_input


def test_limits_are_validated() -> None:
    assert SandboxLimits().output_bytes == server.MAX_OUTPUT_BYTES
    for bad in ({"memory_mb": 0}, {"cpus": 0}, {"pids": -1}, {"workspace_mb": 0}, {"nope": 1}):
        with pytest.raises(ValueError):
            SandboxLimits(**bad)


def test_ping_and_start(sandbox: AgentSandbox) -> None:
    assert sandbox.alive
    info = sandbox.ping()
    assert info["version"] == server.AGENT_VERSION
    assert isinstance(info["pid"], int)
    sandbox.start()  # idempotent
    assert sandbox.alive


def test_math_call(sandbox: AgentSandbox) -> None:
    assert sandbox.call("math_calculator", {"expression": "2+3"}, timeout_s=10)["value"] == 5


def test_unknown_tool_and_inputs_are_bad_input(sandbox: AgentSandbox) -> None:
    assert call_error(sandbox, "no_such_tool", {}).error_type == ErrorType.BAD_INPUT
    err = call_error(sandbox, "math_calculator", {"expression": "1", "junk": 2})
    assert err.error_type == ErrorType.BAD_INPUT and "junk" in err.message


def test_python_exec_streams_and_stdin(sandbox: AgentSandbox) -> None:
    code = """
        import sys
        data = sys.stdin.read()
        print(data.upper(), end="")
        print("to stderr é", file=sys.stderr)
    """
    result = run_py(sandbox, code, stdin="hello\n")
    assert result == {"stdout": "HELLO\n", "stderr": "to stderr é\n", "exit_code": 0}


def test_non_zero_exit_is_a_result(sandbox: AgentSandbox) -> None:
    assert run_py(sandbox, "raise SystemExit(3)")["exit_code"] == 3
    result = run_py(sandbox, "raise ValueError('boom')")
    assert result["exit_code"] == 1
    assert "ValueError: boom" in result["stderr"]


def _from_host_after(delay_s: float, action: Callable[[], object]) -> None:
    timer = threading.Timer(delay_s, action)
    timer.daemon = True
    timer.start()


# --- timeouts ----------------------------------------------------------------------------------------

SPAWN_AND_HANG = """
    import os, subprocess, time
    child = subprocess.Popen(["sleep", "100"])
    with open(os.path.join(os.environ["OFFICERAY_WORKSPACE"], "child.pid"), "w") as fh:
        fh.write(str(child.pid))
    time.sleep(100)
"""

PROCESS_STATE = """
    import json
    try:
        with open("/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        state = "gone"
    print(json.dumps(state))
"""


def test_timeout_kills_the_process_tree(sandbox: AgentSandbox) -> None:
    started = time.monotonic()
    err = call_error(sandbox, "python_exec", {"code": textwrap.dedent(SPAWN_AND_HANG)}, timeout_s=1)
    elapsed = time.monotonic() - started
    assert err.error_type == ErrorType.TIMEOUT
    assert elapsed < 1 + 2, f"the timeout error took {elapsed:.2f}s"
    pid = int(sandbox.read_file("child.pid"))
    deadline = time.monotonic() + 3
    while (state := py_json(sandbox, PROCESS_STATE.format(pid=pid))) not in ("gone", "Z"):
        assert time.monotonic() < deadline, f"the child {pid} survived the timeout (state {state})"
        time.sleep(0.1)
    assert sandbox.call("math_calculator", {"expression": "2+3"}, timeout_s=10)["value"] == 5


def test_cpu_bound_timeout(sandbox: AgentSandbox) -> None:
    started = time.monotonic()
    err = call_error(sandbox, "python_exec", {"code": "while True:\n    pass\n"}, timeout_s=1)
    assert err.error_type == ErrorType.TIMEOUT
    assert time.monotonic() - started < 3


def test_stuck_agent_is_killed_by_the_host_deadline(sandbox: AgentSandbox) -> None:
    pid = sandbox.ping()["pid"]
    starts = sandbox.starts
    saved, sandbox.grace_s = sandbox.grace_s, 0.5
    code = f"import os, signal\nos.kill({pid}, signal.SIGSTOP)\n"
    if pid == 1:  # Docker: the agent is the container's init; signals from inside are dropped
        code = "import time\ntime.sleep(0.5)\n"
        _from_host_after(0.2, lambda: sandbox.container.kill(signal="SIGSTOP"))  # type: ignore[attr-defined]
    try:
        started = time.monotonic()
        err = call_error(sandbox, "python_exec", {"code": code}, timeout_s=1)
        assert err.error_type == ErrorType.TIMEOUT
        assert time.monotonic() - started < 1 + 0.5 + 2
    finally:
        sandbox.grace_s = saved
    assert sandbox.call("math_calculator", {"expression": "2+3"}, timeout_s=10)["value"] == 5
    assert sandbox.starts == starts + 1


# --- output limits -----------------------------------------------------------------------------------


def test_output_is_capped(sandbox: AgentSandbox) -> None:
    tracemalloc.start()
    try:
        result = run_py(sandbox, "import sys\nsys.stdout.write('x' * (20 * 1024 * 1024))\n")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    marker = f"\n[... output truncated at {MAX_STREAM_BYTES} bytes]"
    assert result["exit_code"] == 0
    assert result["stdout"] == "x" * MAX_STREAM_BYTES + marker
    assert peak < 24 * 1024**2, f"the host used {peak / 1024**2:.1f} MiB for a capped result"


def test_result_over_the_output_limit_is_refused(sandbox: AgentSandbox) -> None:
    # Each stream keeps 1 MiB, but \x01 is escaped as \u0001 in JSON: the result is ~12 MiB > 10 MiB.
    code = "import sys\nsys.stdout.write('\\x01' * 2**20)\nsys.stderr.write('\\x01' * 2**20)\n"
    err = call_error(sandbox, "python_exec", {"code": code})
    assert err.error_type == ErrorType.OUTPUT_LIMIT
    run_py(
        sandbox,
        "import os\nopen(os.environ['OFFICERAY_WORKSPACE'] + '/big.txt', 'w').write('y' * 11 * 2**20)",
    )
    with pytest.raises(ToolCallError) as info:
        sandbox.read_file("big.txt")
    assert info.value.error_type == ErrorType.OUTPUT_LIMIT


# --- files -------------------------------------------------------------------------------------------


def test_write_and_read_file(sandbox: AgentSandbox) -> None:
    sandbox.write_file("notes/a.txt", "héllo\nwörld")
    assert sandbox.read_file("notes/a.txt") == "héllo\nwörld"
    code = "import os\nprint(open(os.path.join(os.environ['OFFICERAY_WORKSPACE'], 'notes/a.txt')).read())"
    assert run_py(sandbox, code)["stdout"] == "héllo\nwörld\n"


@pytest.mark.parametrize("path", ["../etc/passwd", "/etc/passwd", "notes/../../etc/passwd", ""])
def test_path_traversal_is_refused(sandbox: AgentSandbox, path: str) -> None:
    with pytest.raises(ToolCallError) as info:
        sandbox.read_file(path)
    assert info.value.error_type == ErrorType.BAD_INPUT
    with pytest.raises(ToolCallError) as info:
        sandbox.write_file(path or "../x", "x")
    assert info.value.error_type == ErrorType.BAD_INPUT


def test_symlink_escape_is_refused(sandbox: AgentSandbox) -> None:
    code = """
        import os
        ws = os.environ["OFFICERAY_WORKSPACE"]
        for name, target in (("root-link", "/"), ("passwd-link", "/etc/passwd"), ("up-link", "..")):
            if not os.path.lexists(os.path.join(ws, name)):
                os.symlink(target, os.path.join(ws, name))
    """
    assert run_py(sandbox, code)["exit_code"] == 0
    for path in ("root-link/etc/passwd", "passwd-link", "up-link/etc/passwd"):
        with pytest.raises(ToolCallError) as info:
            sandbox.read_file(path)
        assert info.value.error_type == ErrorType.BAD_INPUT, path
    with pytest.raises(ToolCallError) as info:
        sandbox.write_file("root-link/tmp/escaped.txt", "x")
    assert info.value.error_type == ErrorType.BAD_INPUT


def test_reset_empties_the_workspace(sandbox: AgentSandbox) -> None:
    sandbox.write_file("keep/me.txt", "x")
    run_py(
        sandbox,
        "import os\nos.makedirs('locked/inner')\nopen('locked/inner/f', 'w').close()\nos.chmod('locked', 0)",
    )
    sandbox.reset()
    with pytest.raises(ToolCallError):
        sandbox.read_file("keep/me.txt")
    listing = py_json(
        sandbox, "import json, os\nprint(json.dumps(os.listdir(os.environ['OFFICERAY_WORKSPACE'])))"
    )
    assert len(listing) == 1 and listing[0].startswith("exec-"), listing  # only this call's own folder


# --- staged files --------------------------------------------------------------------------------------

STAGED = {
    "pkg/__init__.py": "",
    "pkg/a.py": "from pkg.b import b\n\n\ndef a():\n    return b()\n",
    "pkg/b.py": "def b():\n    return 1\n",
}


def test_staged_files_for_code_analyzer(sandbox: AgentSandbox) -> None:
    inputs = {"folder": "ignored", "start_func": "a", "end_func": "b"}
    result = sandbox.call("code_analyzer", inputs, timeout_s=20, files=STAGED)
    assert result["found"] is True
    assert [step["name"].rsplit(".", 1)[-1] for step in result["path"]] == ["a", "b"]
    # staged outside the workspace and removed after the call: a later step finds nothing of it
    staged = py_json(
        sandbox,
        "import glob, json\nfound = glob.glob('**/*.py', recursive=True) + glob.glob('/tmp/staged-*')\n"
        "print(json.dumps([p for p in found if not p.startswith('exec-')]))",  # (this program's own)
    )
    assert staged == []
    assert sandbox.workspace_list().files == {}
    staging = getattr(sandbox, "staging", None)
    if staging is not None:  # the local backend's staging root
        import os

        assert os.listdir(staging) == []


@pytest.mark.parametrize("path", ["../evil.py", "/abs.py", "pkg/../../evil.py"])
def test_staged_paths_are_confined(sandbox: AgentSandbox, path: str) -> None:
    inputs = {"folder": "x", "start_func": "a", "end_func": "b"}
    err = call_error(sandbox, "code_analyzer", inputs, files={path: "def a():\n    pass\n"})
    assert err.error_type == ErrorType.BAD_INPUT


def test_code_analyzer_folder_outside_the_workspace_is_refused(sandbox: AgentSandbox) -> None:
    err = call_error(sandbox, "code_analyzer", {"folder": "/etc", "start_func": "a", "end_func": "b"})
    assert err.error_type == ErrorType.BAD_INPUT


# --- file_operations -----------------------------------------------------------------------------------


def file_op(sandbox: AgentSandbox, operation: str, path: str, **extra: Any) -> dict[str, Any]:
    """A file_operations call with every input, as the executor sends it after validation."""
    inputs = {"operation": operation, "path": path, "content": None, "recursive": False, **extra}
    return sandbox.call("file_operations", inputs, timeout_s=10)


def file_op_error(sandbox: AgentSandbox, operation: str, path: str, **extra: Any) -> ToolCallError:
    with pytest.raises(ToolCallError) as info:
        file_op(sandbox, operation, path, **extra)
    return info.value


def test_file_operations_write_read_list_delete(sandbox: AgentSandbox) -> None:
    text = "héllo\nwörld"
    written = file_op(sandbox, "write", "fo/notes/a.txt", content=text)
    assert written == {"operation": "write", "path": "fo/notes/a.txt", "bytes": len(text.encode())}
    assert file_op(sandbox, "read", "fo/notes/a.txt") == {
        "operation": "read",
        "path": "fo/notes/a.txt",
        "content": text,
        "bytes": len(text.encode()),
    }
    assert sandbox.read_file("fo/notes/a.txt") == text  # the agent's own op sees the same file
    listing = file_op(sandbox, "list", "fo", recursive=True)
    assert listing["truncated"] is False
    assert listing["entries"] == [
        {"name": "notes", "type": "dir", "bytes": None},
        {"name": "notes/a.txt", "type": "file", "bytes": len(text.encode())},
    ]
    assert file_op(sandbox, "delete", "fo/notes/a.txt") == {
        "operation": "delete",
        "path": "fo/notes/a.txt",
        "deleted": True,
    }
    err = file_op_error(sandbox, "read", "fo/notes/a.txt")
    assert err.error_type == ErrorType.TOOL_ERROR and "no such file" in err.message
    assert file_op_error(sandbox, "delete", "fo").error_type == ErrorType.BAD_INPUT  # not empty
    file_op(sandbox, "delete", "fo", recursive=True)
    assert file_op_error(sandbox, "list", "fo").error_type == ErrorType.TOOL_ERROR
    assert file_op_error(sandbox, "delete", ".", recursive=True).error_type == ErrorType.BAD_INPUT


@pytest.mark.parametrize(
    ("operation", "path"),
    [
        ("read", "../etc/passwd"),
        ("read", "/etc/passwd"),
        ("read", "fo/../../etc/passwd"),
        ("list", "/"),
        ("list", ".."),
        ("write", "/tmp/escaped.txt"),
        ("write", "../escaped.txt"),
        ("delete", "/etc/passwd"),
        ("delete", "a\x00b"),
    ],
)
def test_file_operations_traversal_is_refused(sandbox: AgentSandbox, operation: str, path: str) -> None:
    extra = {"content": "pwned"} if operation == "write" else {}
    err = file_op_error(sandbox, operation, path, **extra)
    assert err.error_type == ErrorType.BAD_INPUT, err.message


def test_file_operations_symlink_escape_is_refused(sandbox: AgentSandbox) -> None:
    code = """
        import os
        ws = os.environ["OFFICERAY_WORKSPACE"]
        os.makedirs(os.path.join(ws, "fo-links"), exist_ok=True)
        for name, target in (("root", "/"), ("passwd", "/etc/passwd"), ("up", "../.."),
                             ("tmp-new", "/tmp/officeray-fo-escape.txt")):
            if not os.path.lexists(os.path.join(ws, "fo-links", name)):
                os.symlink(target, os.path.join(ws, "fo-links", name))
    """
    assert run_py(sandbox, code)["exit_code"] == 0
    attempts: list[tuple[str, str, dict[str, Any]]] = [
        ("read", "fo-links/root/etc/passwd", {}),
        ("read", "fo-links/passwd", {}),
        ("read", "fo-links/up/etc/passwd", {}),
        ("list", "fo-links/root", {}),
        ("write", "fo-links/passwd", {"content": "pwned"}),
        ("write", "fo-links/root/tmp/officeray-fo-escape.txt", {"content": "pwned"}),
        ("write", "fo-links/tmp-new", {"content": "pwned"}),
        ("delete", "fo-links/passwd", {}),
        ("delete", "fo-links/root/tmp", {"recursive": True}),
    ]
    for operation, path, extra in attempts:
        err = file_op_error(sandbox, operation, path, **extra)
        assert err.error_type == ErrorType.BAD_INPUT and "escapes the workspace" in err.message, path
    check = """
        import json, os
        print(json.dumps([os.path.exists("/tmp/officeray-fo-escape.txt"),
                          open("/etc/passwd").read().startswith("root:")]))
    """
    assert py_json(sandbox, check) == [False, True]
    names = [e["name"] for e in file_op(sandbox, "list", "fo-links")["entries"]]
    assert names == ["passwd", "root", "tmp-new", "up"]  # the links are listed, never followed
    file_op(sandbox, "delete", "fo-links", recursive=True)


# --- crashes -------------------------------------------------------------------------------------------


def test_agent_crash_fails_the_call_and_the_next_call_works(sandbox: AgentSandbox) -> None:
    pid = sandbox.ping()["pid"]
    starts = sandbox.starts
    code = f"import os, time\nos.kill({pid}, 9)\ntime.sleep(5)"
    if pid == 1:  # Docker: the code cannot kill the agent (PID 1); kill the container from the host
        code = "import time\ntime.sleep(5)"
        _from_host_after(0.3, lambda: sandbox.container.kill())  # type: ignore[attr-defined]
    with pytest.raises(SandboxError):
        run_py(sandbox, code)
    assert sandbox.call("math_calculator", {"expression": "2+3"}, timeout_s=10)["value"] == 5
    assert sandbox.starts == starts + 1
    assert sandbox.alive


def test_stop_is_idempotent_and_restartable(
    sandbox: AgentSandbox, new_sandbox: Callable[..., AgentSandbox]
) -> None:
    box = new_sandbox("docker" if type(sandbox).__name__ == "DockerSandbox" else "local")
    box.stop()
    box.stop()
    assert not box.alive
    with pytest.raises(SandboxError):
        box.ping()
    box.start()
    assert box.call("math_calculator", {"expression": "2+3"}, timeout_s=10)["value"] == 5
    box.stop()


# --- Docker only -----------------------------------------------------------------------------------------

docker_only = pytest.mark.integration


@docker_only
def test_docker_has_no_network(docker_sandbox: AgentSandbox) -> None:
    code = """
        import json, socket
        outcomes = {}
        for host, port in (("127.0.0.1", 9), ("1.1.1.1", 53), ("10.0.0.1", 80)):
            try:
                socket.create_connection((host, port), timeout=1).close()
                outcomes[host] = "connected"
            except OSError as exc:
                outcomes[host] = type(exc).__name__
        print(json.dumps({"outcomes": outcomes, "interfaces": [n for _, n in socket.if_nameindex()]}))
    """
    report = py_json(docker_sandbox, code)
    assert report["interfaces"] == ["lo"]
    assert "connected" not in report["outcomes"].values(), report


@docker_only
def test_docker_root_is_read_only_and_user_is_nobody(docker_sandbox: AgentSandbox) -> None:
    code = """
        import errno, json, os
        writable = {}
        for folder in ("/", "/etc", "/opt/officeray", "/usr", "/workspace", "/tmp"):
            try:
                with open(os.path.join(folder, ".probe"), "w"):
                    pass
                os.unlink(os.path.join(folder, ".probe"))
                writable[folder] = True
            except OSError as exc:
                writable[folder] = errno.errorcode[exc.errno]
        status = dict(line.split(":", 1) for line in open("/proc/self/status"))
        print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "writable": writable,
                          "cap_eff": status["CapEff"].strip(), "cap_bnd": status["CapBnd"].strip(),
                          "no_new_privs": status["NoNewPrivs"].strip()}))
    """
    report = py_json(docker_sandbox, code)
    assert (report["uid"], report["gid"]) == (65534, 65534)
    assert report["writable"]["/workspace"] is True and report["writable"]["/tmp"] is True
    for folder in ("/", "/etc", "/opt/officeray", "/usr"):
        assert report["writable"][folder] == "EROFS", report
    assert int(report["cap_eff"], 16) == 0 and int(report["cap_bnd"], 16) == 0
    assert report["no_new_privs"] == "1"


@docker_only
def test_docker_pids_limit(docker_sandbox: AgentSandbox) -> None:
    code = """
        import json, subprocess
        started = []
        try:
            for _ in range(300):
                started.append(subprocess.Popen(["sleep", "30"]))
        except OSError as exc:
            print(json.dumps({"started": len(started), "error": type(exc).__name__}))
        else:
            print(json.dumps({"started": len(started), "error": None}))
    """
    report = py_json(docker_sandbox, code)
    assert report["error"] is not None and report["started"] < SandboxLimits().pids, report
    assert docker_sandbox.call("math_calculator", {"expression": "2+3"}, timeout_s=10)["value"] == 5


@docker_only
def test_docker_oom_names_the_limit_and_recovers(new_sandbox: Callable[..., AgentSandbox]) -> None:
    box = new_sandbox("docker", limits=SandboxLimits(memory_mb=64))
    with pytest.raises(SandboxError) as info:
        run_py(box, "data = b'x' * (128 * 1024 * 1024)\nprint(len(data))")
    message = str(info.value)
    assert "memory" in message and "64 MB" in message, message
    assert box.call("math_calculator", {"expression": "2+3"}, timeout_s=10)["value"] == 5


# --- workspace sync ops and per-call limits ----------------------------------------------------------


def test_workspace_put_list_read_delete_binary_safe(sandbox: AgentSandbox) -> None:
    import hashlib

    blob = bytes(range(256)) * 10
    sandbox.workspace_put({"notes.txt": b"hello", "deep/dir/blob.bin": blob})
    listing = sandbox.workspace_list()
    assert listing.files == {
        "notes.txt": (5, hashlib.sha256(b"hello").hexdigest()),
        "deep/dir/blob.bin": (len(blob), hashlib.sha256(blob).hexdigest()),
    }
    assert sandbox.workspace_read("deep/dir/blob.bin", 1 << 20) == blob
    assert (
        sandbox.call("file_operations", {"operation": "read", "path": "notes.txt"}, timeout_s=10)["content"]
        == "hello"
    )
    with pytest.raises(ToolCallError) as info:
        sandbox.workspace_read("deep/dir/blob.bin", 100)
    assert info.value.error_type == ErrorType.OUTPUT_LIMIT
    sandbox.workspace_delete(["deep/dir/blob.bin", "missing.txt"])
    assert set(sandbox.workspace_list().files) == {"notes.txt"}
    # the emptied folders went too
    assert py_json(sandbox, "import os, json\nprint(json.dumps(os.path.exists('deep')))") is False


def test_workspace_epoch_changes_on_reset(sandbox: AgentSandbox) -> None:
    sandbox.workspace_put({"a.txt": b"1"})
    before = sandbox.workspace_list()
    assert sandbox.workspace_list().epoch == before.epoch
    sandbox.reset()
    after = sandbox.workspace_list()
    assert after.files == {} and after.epoch != before.epoch


def test_workspace_links_are_not_listed_nor_written_through(sandbox: AgentSandbox) -> None:
    py_json(sandbox, "import os, json\nos.symlink('/etc/passwd', 'link')\nprint(json.dumps(1))")
    assert "link" not in sandbox.workspace_list().files
    sandbox.workspace_put({"link": b"replaced"})  # replaces the link itself, never its target
    assert sandbox.workspace_read("link", 100) == b"replaced"


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a/../../x", ""])
def test_workspace_ops_refuse_escaping_paths(sandbox: AgentSandbox, path: str) -> None:
    for attempt in (
        lambda: sandbox.workspace_put({path: b"x"}),
        lambda: sandbox.workspace_read(path, 100),
        lambda: sandbox.workspace_delete([path]),
    ):
        with pytest.raises(ToolCallError) as info:
            attempt()
        assert info.value.error_type == ErrorType.BAD_INPUT


def test_call_limits_cap_the_output(sandbox: AgentSandbox) -> None:
    code = "print('x' * 5000)"
    err = call_error(sandbox, "python_exec", {"code": code, "stdin": ""}, limits={"output_bytes": 2048})
    assert err.error_type == ErrorType.OUTPUT_LIMIT
    assert run_py(sandbox, code)["exit_code"] == 0  # the next call has the sandbox's own cap


def test_call_limits_cap_memory_and_cpu(sandbox: AgentSandbox) -> None:
    result = sandbox.call(
        "python_exec",
        {
            "code": "import resource\nprint(resource.getrlimit(resource.RLIMIT_AS)[0] // 2**20,"
            " resource.getrlimit(resource.RLIMIT_CPU)[0])",
            "stdin": "",
        },
        timeout_s=20,
        limits={"memory_mb": 1024, "cpu_s": 30},
    )
    assert result["stdout"].split() == ["1024", "30"]
    big = sandbox.call(
        "python_exec",
        {"code": "x = bytearray(800 * 2**20)\nprint(len(x))", "stdin": ""},
        timeout_s=20,
        limits={"memory_mb": 256},
    )
    assert big["exit_code"] != 0 and "MemoryError" in big["stderr"]


def test_call_limits_are_checked(sandbox: AgentSandbox) -> None:
    for bad in ({"memory_mb": 0}, {"cpu_s": True}, {"nope": 1}):
        err = call_error(sandbox, "math_calculator", {"expression": "1"}, limits=bad)
        assert err.error_type == ErrorType.BAD_INPUT
