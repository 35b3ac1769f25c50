"""The executor (one plan step over a :class:`Sandbox`) and the limits it shares with the agent.

Staging a host folder, the public ``plugin=`` keyword of :meth:`Sandbox.call`, the catalog's
``fails_on_nonzero_exit``, one definition per shared limit, and the named constants of the Docker
backend and the agent. The cases that run a call use the ``sandbox`` fixture (local and Docker).
"""

from __future__ import annotations

import ast
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from officeray.contracts import ErrorType, PlanStep
from tools_sandbox import catalog, executor, plugins
from tools_sandbox._channel import AgentSandbox
from tools_sandbox.agent import limits as agent_limits
from tools_sandbox.agent import server
from tools_sandbox.agent.tools import math_calculator, python_exec
from tools_sandbox.catalog import ToolSpec
from tools_sandbox.executor import StagingError, run_step, stage_folder
from tools_sandbox.plugins import PLUGIN_EXTRA_KEY, PluginRef
from tools_sandbox.sandbox import Sandbox

PACKAGE = Path(catalog.__file__).resolve().parent

# --- staging a host folder ---------------------------------------------------------------------------


def test_staging_copies_python_files_and_skips_the_rest(tmp_path: Path) -> None:
    (tmp_path / "proj/pkg").mkdir(parents=True)
    (tmp_path / "proj/pkg/a.py").write_text("def a():\n    pass\n")
    (tmp_path / "proj/.hidden.py").write_text("x = 1\n")  # a hidden *file* is staged
    (tmp_path / "proj/notes.txt").write_text("not python")
    for skipped in (".venv/lib", "node_modules/x", ".git", "pkg2/__pycache__", ".cache"):
        (tmp_path / "proj" / skipped).mkdir(parents=True)
        (tmp_path / "proj" / skipped / "mod.py").write_text("x = 1\n")
    (tmp_path / "outside.py").write_text("secret = 1\n")
    (tmp_path / "proj/link.py").symlink_to(tmp_path / "outside.py")  # inside the root: followed
    os.mkfifo(tmp_path / "proj/fifo.py")  # not a regular file: skipped, and never blocks
    assert stage_folder(tmp_path, "proj") == {
        ".hidden.py": "x = 1\n",
        "link.py": "secret = 1\n",
        "pkg/a.py": "def a():\n    pass\n",
    }


def test_staging_never_walks_skipped_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``.venv`` or ``node_modules`` may hold a hundred thousand files: the walk must not enter it."""
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj/main.py").write_text("def main():\n    pass\n")
    for skipped in (".venv/lib/python3.11/site-packages/big", "node_modules/left-pad", ".git/objects"):
        (tmp_path / "proj" / skipped).mkdir(parents=True)
        (tmp_path / "proj" / skipped / "x.py").write_text("")
    scanned: list[str] = []
    real_scandir = os.scandir

    def spy(path: Any = ".") -> Any:
        scanned.append(os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", spy)
    assert stage_folder(tmp_path, "proj") == {"main.py": "def main():\n    pass\n"}
    entered = [p for p in scanned if any(n in p for n in (".venv", "node_modules", ".git"))]
    assert scanned and not entered, entered


def test_a_huge_file_is_refused_without_being_read(tmp_path: Path) -> None:
    """The size is checked before reading: a 64 MiB .py (sparse here) must not enter memory."""
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj/a.py").write_text("def a():\n    pass\n")
    with open(tmp_path / "proj/huge.py", "wb") as fh:
        fh.truncate(8 * agent_limits.MAX_STAGED_BYTES)
    tracemalloc.start()
    try:
        with pytest.raises(StagingError, match="over the staging limit"):
            stage_folder(tmp_path, "proj")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024**2, peak


def test_the_byte_limit_counts_all_files_and_stops_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "proj").mkdir()
    for name in "abcd":
        (tmp_path / "proj" / f"{name}.py").write_text("#" * 400)
    monkeypatch.setattr(executor, "MAX_STAGED_BYTES", 1_000)
    with pytest.raises(StagingError, match="1000 bytes"):
        stage_folder(tmp_path, "proj")
    monkeypatch.setattr(executor, "MAX_STAGED_BYTES", 1_600)
    assert len(stage_folder(tmp_path, "proj")) == 4


def test_the_file_limit_stops_the_walk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "proj").mkdir()
    for i in range(5):
        (tmp_path / "proj" / f"m{i}.py").write_text("")
    monkeypatch.setattr(executor, "MAX_STAGED_FILES", 5)
    assert len(stage_folder(tmp_path, "proj")) == 5
    monkeypatch.setattr(executor, "MAX_STAGED_FILES", 4)
    opened: list[str] = []
    real_open = os.open

    def spy(path: Any, *args: Any, **kwargs: Any) -> int:
        opened.append(os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    with pytest.raises(StagingError, match="4 files"):
        stage_folder(tmp_path, "proj")
    assert len([p for p in opened if p.endswith(".py")]) == 4  # the fifth is never read


@pytest.fixture
def two_trees(tmp_path: Path) -> Path:
    """``root/`` (the workspace) with a project, and ``elsewhere/`` beside it, reachable by a symlink."""
    for tree in ("root/proj", "elsewhere"):
        (tmp_path / tree).mkdir(parents=True)
        (tmp_path / tree / "m.py").write_text(f"def {tree.replace('/', '_')}():\n    pass\n")
    (tmp_path / "root/escape").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "root/proj/nested").symlink_to(tmp_path / "elsewhere")  # a folder link: never entered
    (tmp_path / "root/proj/leak.py").symlink_to(tmp_path / "elsewhere/m.py")
    return tmp_path


CONFINED_REFUSED = [
    "..",
    "../elsewhere",
    "proj/../../elsewhere",
    "escape",
    "escape/",
    "/etc",
    "{tmp}/elsewhere",
    "{tmp}/root/escape",
    "~",
]
"""Folders that resolve out of the workspace root: refused when confined (``officeray serve``)."""


@pytest.mark.parametrize("folder", CONFINED_REFUSED)
def test_confined_staging_refuses_folders_outside_the_root(two_trees: Path, folder: str) -> None:
    folder = folder.format(tmp=two_trees)
    if folder == "~":  # not expanded when confined: a folder named "~" under the root
        with pytest.raises(StagingError, match="does not exist under"):
            stage_folder(two_trees / "root", folder)
        return
    with pytest.raises(StagingError, match="outside the workspace root"):
        stage_folder(two_trees / "root", folder)
    with pytest.raises(StagingError, match="outside the workspace root"):
        stage_folder(two_trees / "root", folder, confined=True)


def test_confined_staging_inside_the_root(two_trees: Path) -> None:
    root = two_trees / "root"
    expected = {"m.py": "def root_proj():\n    pass\n"}  # leak.py points out of the root: skipped
    assert stage_folder(root, "proj") == expected
    assert stage_folder(root, str(root / "proj")) == expected  # absolute, but inside the root
    assert stage_folder(root, "proj/../proj") == expected
    with pytest.raises(StagingError, match="does not exist under"):
        stage_folder(root, "missing")


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ("{tmp}/elsewhere", {"m.py": "def elsewhere():\n    pass\n"}),  # absolute: taken as is
        ("../elsewhere", {"m.py": "def elsewhere():\n    pass\n"}),  # relative to the root (the cwd)
        ("escape", {"m.py": "def elsewhere():\n    pass\n"}),  # the user's own symlink
        # a file linking out of the named folder is still skipped; the folder link is not entered
        ("proj", {"m.py": "def root_proj():\n    pass\n"}),
        ("{tmp}/root/proj", {"m.py": "def root_proj():\n    pass\n"}),
    ],
)
def test_unconfined_staging_takes_the_users_folder(two_trees: Path, folder: str, expected: dict) -> None:
    assert stage_folder(two_trees / "root", folder.format(tmp=two_trees), confined=False) == expected


def test_unconfined_staging_expands_home_and_reports_missing_folders(
    two_trees: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(two_trees / "elsewhere"))
    assert stage_folder(two_trees / "root", "~", confined=False) == {"m.py": "def elsewhere():\n    pass\n"}
    with pytest.raises(StagingError, match=r"folder '/no/such/dir' does not exist$"):
        stage_folder(two_trees / "root", "/no/such/dir", confined=False)
    with pytest.raises(StagingError, match=f"folder 'missing' does not exist under {two_trees / 'root'}"):
        stage_folder(two_trees / "root", "missing", confined=False)
    with pytest.raises(StagingError, match="does not exist"):
        stage_folder(two_trees / "root", str(two_trees / "root/proj/m.py"), confined=False)  # a file


def test_run_step_passes_the_confinement_setting(two_trees: Path) -> None:
    """``workspace_confined`` reaches stage_folder through run_step (as the tool runners call it)."""
    from tools_sandbox.testing import LocalProcessSandbox

    step = PlanStep(
        step_id="s1", action="code_analyzer", inputs={}, timeout_seconds=60, idempotency_key="confined"
    )
    inputs = {"folder": str(two_trees / "elsewhere"), "start_func": "elsewhere", "end_func": "elsewhere"}
    with LocalProcessSandbox() as box:
        refused = run_step(box, step, inputs, two_trees / "root")
        outcome = run_step(box, step, inputs, two_trees / "root", workspace_confined=False)
    assert refused.error is not None and refused.error.type == ErrorType.BAD_INPUT
    assert "outside the workspace root" in refused.error.message
    assert outcome.error is None, outcome.error
    assert outcome.output["found"] is True and outcome.output["path"][0]["name"] == "m.elsewhere"


# --- one definition per shared limit -----------------------------------------------------------------

SHARED = (
    "MAX_STAGED_BYTES",
    "MAX_STAGED_FILES",
    "MAX_PLUGIN_SOURCE_BYTES",
    "READ_CHUNK_BYTES",
    "MAX_OUTPUT_BYTES",
)


def _module_level_assignments() -> dict[str, list[str]]:
    """name -> the files of tools_sandbox that assign it at module level."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, ast.AnnAssign) and node.value is not None:
                targets = [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    found.setdefault(target.id, []).append(str(path.relative_to(PACKAGE)))
    return found


def test_every_shared_limit_is_defined_once() -> None:
    found = _module_level_assignments()
    for name in SHARED:
        assert found.get(name) == ["agent/limits.py"], (name, found.get(name))
    assert found.get("MAX_CODE_CHARS") == ["agent/tools/python_exec.py"]
    assert "MAX_PYTHON_CODE_CHARS" not in found  # the catalog imports python_exec's
    assert found.get("MAX_EXPRESSION_CHARS") == ["agent/tools/math_calculator.py"]


def test_host_and_agent_use_the_same_limits() -> None:
    from tools_sandbox import _channel, docker_sandbox
    from tools_sandbox.limits import SandboxLimits

    assert executor.MAX_STAGED_BYTES == server.MAX_STAGED_BYTES == agent_limits.MAX_STAGED_BYTES
    assert executor.MAX_STAGED_FILES == server.MAX_STAGED_FILES == agent_limits.MAX_STAGED_FILES
    assert plugins.MAX_PLUGIN_SOURCE_BYTES == server.MAX_PLUGIN_SOURCE_BYTES
    assert catalog.MAX_PYTHON_CODE_CHARS == python_exec.MAX_CODE_CHARS
    assert catalog.MAX_EXPRESSION_CHARS == math_calculator.MAX_EXPRESSION_CHARS
    assert _channel.READ_CHUNK_BYTES == server.READ_CHUNK_BYTES == docker_sandbox.READ_CHUNK_BYTES
    assert SandboxLimits().output_bytes == server.MAX_OUTPUT_BYTES == _channel.MAX_OUTPUT_BYTES


def test_the_agent_limits_module_imports_nothing() -> None:
    tree = ast.parse((PACKAGE / "agent/limits.py").read_text())
    imports = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    assert all(isinstance(n, ast.ImportFrom) and n.module == "__future__" for n in imports)


def test_a_folder_the_executor_stages_is_accepted_by_the_agent(tmp_path: Path) -> None:
    """At the shared byte limit exactly the executor stages and the agent accepts (local agent)."""
    from tools_sandbox.testing import LocalProcessSandbox

    (tmp_path / "proj").mkdir()
    body = "def a():\n    return b()\n\n\ndef b():\n    return 1\n"
    (tmp_path / "proj/a.py").write_text(body)
    (tmp_path / "proj/filler.py").write_text("#" * (agent_limits.MAX_STAGED_BYTES - len(body) - 1) + "\n")
    files = stage_folder(tmp_path, "proj")
    assert sum(len(t.encode()) for t in files.values()) == agent_limits.MAX_STAGED_BYTES
    step = PlanStep(
        step_id="s1",
        action="code_analyzer",
        inputs={},
        timeout_seconds=60,
        idempotency_key="stage-at-limit",
    )
    with LocalProcessSandbox() as box:
        outcome = run_step(box, step, {"folder": "proj", "start_func": "a", "end_func": "b"}, tmp_path)
    assert outcome.error is None, outcome.error
    assert outcome.output["found"] is True


# --- Sandbox.call(plugin=...) and fails_on_nonzero_exit ------------------------------------------------


class RecordingSandbox(Sandbox):
    """Not an AgentSandbox: the executor may only use the public Sandbox interface."""

    def __init__(self, result: dict[str, Any] | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        self.result = result if result is not None else {"ok": 1}

    def start(self) -> None:
        pass

    def call(
        self,
        tool: str,
        inputs: dict[str, Any],
        *,
        timeout_s: float,
        files: dict[str, str] | None = None,
        plugin: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        self.calls.append((tool, inputs, {"timeout_s": timeout_s, "files": files, "plugin": plugin}))
        return dict(self.result)

    def write_file(self, path: str, content: str) -> None:
        raise AssertionError("not used")

    def read_file(self, path: str) -> str:
        raise AssertionError("not used")

    def reset(self) -> None:
        pass

    def stop(self) -> None:
        pass

    @property
    def alive(self) -> bool:
        return True


PLUGIN_SOURCE = """
from pydantic import BaseModel
from tools_sandbox.plugins import tool


class DoubleInput(BaseModel):
    n: int


@tool(description="double n", outputs=("twice",))
def double_it(inputs: DoubleInput) -> dict:
    return {"twice": inputs.n * 2}
"""


class DoubleInput(BaseModel):
    n: int


@pytest.fixture
def double_tool(monkeypatch: pytest.MonkeyPatch) -> Iterator[PluginRef]:
    """A plugin tool in the catalog (registered by hand: its source is PLUGIN_SOURCE)."""
    ref = PluginRef(
        "officeray_probe_double", "double_it", "/nowhere/officeray_probe_double.py", PLUGIN_SOURCE
    )
    spec = ToolSpec(
        name="double_it",
        description="double n",
        input_model=DoubleInput,
        outputs=("twice",),
        extra={PLUGIN_EXTRA_KEY: ref},
    )
    monkeypatch.setitem(catalog._REGISTRY, "double_it", spec)
    yield ref


def step_of(action: str) -> PlanStep:
    return PlanStep(step_id="s1", action=action, timeout_seconds=30, idempotency_key=f"k-{action}")


def test_call_takes_a_public_plugin_keyword() -> None:
    import inspect

    for cls in (Sandbox, AgentSandbox):
        param = inspect.signature(cls.call).parameters["plugin"]
        assert param.kind is inspect.Parameter.KEYWORD_ONLY and param.default is None
    assert "plugin=" in (Sandbox.call.__doc__ or "") or "``plugin``" in (Sandbox.call.__doc__ or "")


def test_run_step_sends_plugins_through_the_public_call(double_tool: PluginRef) -> None:
    box = RecordingSandbox({"twice": 42})
    outcome = run_step(box, step_of("double_it"), {"n": 21}, Path("."))
    assert outcome.error is None and outcome.output == {"twice": 42}
    assert box.calls == [
        ("double_it", {"n": 21}, {"timeout_s": 30, "files": None, "plugin": double_tool.protocol_field()})
    ]
    run_step(box, step_of("math_calculator"), {"expression": "1+1"}, Path("."))
    assert box.calls[-1][2]["plugin"] is None  # built-ins carry no plugin field


def test_a_plugin_runs_through_sandbox_call(sandbox: AgentSandbox, double_tool: PluginRef) -> None:
    result = sandbox.call("double_it", {"n": 21}, timeout_s=30, plugin=double_tool.protocol_field())
    assert result == {"twice": 42}
    outcome = run_step(sandbox, step_of("double_it"), {"n": 4}, Path("."))
    assert outcome.error is None and outcome.output == {"twice": 8}


def test_python_exec_fails_on_a_nonzero_exit_because_its_spec_says_so() -> None:
    assert catalog.get_tool("python_exec").fails_on_nonzero_exit is True
    others = [name for name, spec in catalog.BUILTIN_TOOLS.items() if spec.fails_on_nonzero_exit]
    assert others == ["python_exec"]
    box = RecordingSandbox({"stdout": "", "stderr": "boom\n", "exit_code": 3})
    outcome = run_step(box, step_of("python_exec"), {"code": "raise SystemExit(3)"}, Path("."))
    assert outcome.error is not None and outcome.error.type == ErrorType.TOOL_ERROR
    assert outcome.error.message == "program exited with code 3: boom\n"
    assert outcome.output == {"stdout": "", "stderr": "boom\n", "exit_code": 3}


def test_fails_on_nonzero_exit_is_read_from_the_spec(
    double_tool: PluginRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = RecordingSandbox({"twice": 2, "exit_code": 1, "stderr": "x"})
    outcome = run_step(box, step_of("double_it"), {"n": 1}, Path("."))
    assert outcome.error is None  # an exit_code key means nothing to a tool without the flag
    flagged = ToolSpec(**{**vars(catalog.get_tool("double_it")), "fails_on_nonzero_exit": True})
    monkeypatch.setitem(catalog._REGISTRY, "double_it", flagged)
    outcome = run_step(box, step_of("double_it"), {"n": 1}, Path("."))
    assert outcome.error is not None and outcome.error.type == ErrorType.TOOL_ERROR
    assert outcome.error.message == "program exited with code 1: x"


# --- named limits of the Docker backend and the agent -------------------------------------------------


def test_docker_container_options_use_the_named_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    from tools_sandbox import docker_sandbox

    assert (docker_sandbox.NOFILE_LIMIT, docker_sandbox.LOG_MAX_SIZE) == (1024, "1m")
    monkeypatch.setattr(docker_sandbox, "NOFILE_LIMIT", 777)
    monkeypatch.setattr(docker_sandbox, "LOG_MAX_SIZE", "3m")
    options = docker_sandbox.DockerSandbox("img", client=object()).container_options()
    nofile = [u for u in options["ulimits"] if u["Name"] == "nofile"]
    assert nofile == [{"Name": "nofile", "Soft": 777, "Hard": 777}]
    assert options["log_config"]["Config"] == {"max-size": "3m", "max-file": "1"}


class DeadContainer:
    def __init__(self, log: bytes) -> None:
        self.log = log
        self.waited: list[float] = []
        self.tails: list[int] = []
        self.attrs = {"State": {"ExitCode": 137, "OOMKilled": False, "Running": False}}

    def wait(self, timeout: float) -> None:
        self.waited.append(timeout)

    def reload(self) -> None:
        pass

    def logs(self, *, stdout: bool, stderr: bool, tail: int) -> bytes:
        self.tails.append(tail)
        return self.log


def test_the_death_cause_uses_the_named_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    from tools_sandbox import docker_sandbox

    monkeypatch.setattr(docker_sandbox, "DEATH_WAIT_S", 1.5)
    monkeypatch.setattr(docker_sandbox, "DEATH_LOG_LINES", 7)
    monkeypatch.setattr(docker_sandbox, "DEATH_LOG_CHARS", 10)
    box = docker_sandbox.DockerSandbox("img", client=object())
    container = DeadContainer(b"first line\n" + b"x" * 50 + b"END OF LOG")
    box._container = container
    cause = box._death_cause()
    assert container.waited == [1.5] and container.tails == [7]
    assert cause == (
        "the sandbox container exited with status 137 (the agent was killed by SIGKILL); "
        "agent stderr: END OF LOG"
    )


def test_the_agent_timings_are_named() -> None:
    assert server.WORKER_EXIT_WAIT_S > 0 and server.PARENT_POLL_S > 0
    assert "WORKER_EXIT_WAIT_S" in server.Server.run_worker.__code__.co_names
    assert "PARENT_POLL_S" in server._watch_parent.__code__.co_names
    for fn in (server.Server.run_worker, server._watch_parent):
        literals = [
            node.value
            for node in ast.walk(ast.parse(_source_of(fn)))
            if isinstance(node, ast.Constant) and isinstance(node.value, float)
        ]
        assert literals in ([], [0.0]), (fn.__name__, literals)


def _source_of(fn: Any) -> str:
    import inspect
    import textwrap

    return textwrap.dedent(inspect.getsource(fn))
