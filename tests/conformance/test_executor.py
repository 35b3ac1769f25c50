"""The executor (one plan step over a :class:`Sandbox`) and the limits it shares with the agent.

Staging a host folder (with :class:`StagingLimits`), the public ``plugin=`` keyword of
:meth:`Sandbox.call`, the catalog's ``fails_on_nonzero_exit``, the agent's standard-library-only
imports, and the Docker backend's :class:`DockerOptions`. The cases that run a call use the
``sandbox`` fixture (local and Docker).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from officeray.contracts import ErrorType, PlanStep
from officeray.tools.builtin import BUILTIN_TOOLS
from officeray.tools.catalog import ToolCatalog, builtin_catalog
from officeray.tools.spec import PluginRef, ToolSpec
from tools_sandbox._channel import AgentSandbox
from tools_sandbox.agent import limits as agent_limits
from tools_sandbox.executor import StagingError, run_step, stage_folder
from tools_sandbox.image import agent_sources, vendored_sources
from tools_sandbox.limits import StagingLimits
from tools_sandbox.sandbox import Sandbox

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

    # A spy, not a seam: "the walk never entered .venv" shows only in the folders os.walk opens
    # (the result is the same either way); threading a file-system object through stage_folder
    # for one test would cost more than this patch of the stdlib function, restored after the test.
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


def test_the_byte_limit_counts_all_files_and_stops_reading(tmp_path: Path) -> None:
    (tmp_path / "proj").mkdir()
    for name in "abcd":
        (tmp_path / "proj" / f"{name}.py").write_text("#" * 400)
    with pytest.raises(StagingError, match="1000 bytes"):
        stage_folder(tmp_path, "proj", limits=StagingLimits(max_bytes=1_000))
    assert len(stage_folder(tmp_path, "proj", limits=StagingLimits(max_bytes=1_600))) == 4


def test_the_file_limit_stops_the_walk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "proj").mkdir()
    for i in range(5):
        (tmp_path / "proj" / f"m{i}.py").write_text("")
    assert len(stage_folder(tmp_path, "proj", limits=StagingLimits(max_files=5))) == 5
    opened: list[str] = []
    real_open = os.open

    def spy(path: Any, *args: Any, **kwargs: Any) -> int:
        opened.append(os.fspath(path))
        return real_open(path, *args, **kwargs)

    # A spy, not a seam (as in test_staging_never_walks_skipped_folders): that the fifth file is
    # never read shows only in the files opened.
    monkeypatch.setattr(os, "open", spy)
    with pytest.raises(StagingError, match="4 files"):
        stage_folder(tmp_path, "proj", limits=StagingLimits(max_files=4))
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


def test_staging_limits_cannot_exceed_the_agents() -> None:
    """A larger limit would only move the refusal into the sandbox: it is a configuration error."""
    from pydantic import ValidationError

    assert StagingLimits() == StagingLimits(
        max_files=agent_limits.MAX_STAGED_FILES, max_bytes=agent_limits.MAX_STAGED_BYTES
    )
    with pytest.raises(ValidationError):
        StagingLimits(max_bytes=agent_limits.MAX_STAGED_BYTES + 1)
    with pytest.raises(ValidationError):
        StagingLimits(max_files=0)


# --- the agent needs the standard library and the image's files only ------------------------------


@pytest.fixture(scope="module")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out as the sandbox image's build context: the officeray files it ships
    (``agent_sources``) and, under ``vendor/``, pydantic and its dependencies."""
    root = tmp_path_factory.mktemp("image")
    for name, path in agent_sources() + vendored_sources():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(path.read_bytes())
    return root


def test_the_agent_and_its_tools_import_from_the_image_files_with_the_standard_library(
    image_files: Path, tmp_path: Path
) -> None:
    """The agent and every built-in tool need the standard library and the image's files only:
    ``python -S`` (no site-packages, so no installed officeray either) imports them from a copy of
    the image's files, without pydantic; the plugin runner then imports pydantic from ``vendor/``
    and runs a plugin written with the plugin API; the rest of the core is not there."""
    plugin = tmp_path / "double_probe.py"
    plugin.write_text(PLUGIN_SOURCE, encoding="utf-8")
    code = (
        f"import sys; sys.path[:0] = [{str(image_files)!r}]\n"
        "import tools_sandbox.agent.server as server\n"
        "for name in server.TOOLS:\n"
        "    server.load_tool(name)\n"
        "assert 'pydantic' not in sys.modules, 'the agent imported pydantic'\n"
        f"sys.path.insert(1, {str(image_files / 'vendor')!r})\n"
        "run = server.load_plugin_runner()\n"
        f"print(run('double_probe', 'double_it', {str(plugin)!r}, {{'n': 21}}))\n"
        "try:\n"
        "    import officeray.contracts\n"
        "except ImportError:\n"
        "    print('no core')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert proc.stdout.split("\n")[:2] == ["{'twice': 42}", "no core"], proc.stderr


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
from officeray.tools import tool


class DoubleInput(BaseModel):
    n: int


@tool(description="double n", outputs=("twice",))
def double_it(inputs: DoubleInput) -> dict:
    return {"twice": inputs.n * 2}
"""


class DoubleInput(BaseModel):
    n: int


DOUBLE_REF = PluginRef(
    "officeray_probe_double", "double_it", "/nowhere/officeray_probe_double.py", PLUGIN_SOURCE
)
"""A plugin tool's code (its source is PLUGIN_SOURCE)."""

DOUBLE_SPEC = ToolSpec(
    name="double_it", description="double n", input_model=DoubleInput, outputs=("twice",), plugin=DOUBLE_REF
)

WITH_DOUBLE = builtin_catalog().with_tools(DOUBLE_SPEC)
"""The built-ins and the ``double_it`` plugin tool (made by hand: no module to import)."""


def step_of(action: str) -> PlanStep:
    return PlanStep(step_id="s1", action=action, timeout_seconds=30, idempotency_key=f"k-{action}")


def test_call_takes_a_public_plugin_keyword() -> None:
    import inspect

    for cls in (Sandbox, AgentSandbox):
        param = inspect.signature(cls.call).parameters["plugin"]
        assert param.kind is inspect.Parameter.KEYWORD_ONLY and param.default is None


def test_run_step_sends_plugins_through_the_public_call() -> None:
    box = RecordingSandbox({"twice": 42})
    outcome = run_step(box, step_of("double_it"), {"n": 21}, Path("."), catalog=WITH_DOUBLE)
    assert outcome.error is None and outcome.output == {"twice": 42}
    assert box.calls == [
        ("double_it", {"n": 21}, {"timeout_s": 30, "files": None, "plugin": DOUBLE_REF.protocol_field()})
    ]
    run_step(box, step_of("math_calculator"), {"expression": "1+1"}, Path("."), catalog=WITH_DOUBLE)
    assert box.calls[-1][2]["plugin"] is None  # built-ins carry no plugin field


def test_run_step_knows_the_tools_of_its_catalog_only() -> None:
    box = RecordingSandbox({"twice": 42})
    outcome = run_step(box, step_of("double_it"), {"n": 21}, Path("."))  # default: the built-ins
    assert outcome.error is not None and outcome.error.type == ErrorType.BAD_INPUT
    assert outcome.error.message.startswith("unknown tool 'double_it'; registered tools: ai_tool,")
    assert box.calls == []


def test_a_plugin_runs_through_sandbox_call(sandbox: AgentSandbox) -> None:
    result = sandbox.call("double_it", {"n": 21}, timeout_s=30, plugin=DOUBLE_REF.protocol_field())
    assert result == {"twice": 42}
    outcome = run_step(sandbox, step_of("double_it"), {"n": 4}, Path("."), catalog=WITH_DOUBLE)
    assert outcome.error is None and outcome.output == {"twice": 8}


def test_python_exec_fails_on_a_nonzero_exit_because_its_spec_says_so() -> None:
    assert BUILTIN_TOOLS["python_exec"].fails_on_nonzero_exit is True
    others = [name for name, spec in BUILTIN_TOOLS.items() if spec.fails_on_nonzero_exit]
    assert others == ["python_exec"]
    box = RecordingSandbox({"stdout": "", "stderr": "boom\n", "exit_code": 3})
    outcome = run_step(box, step_of("python_exec"), {"code": "raise SystemExit(3)"}, Path("."))
    assert outcome.error is not None and outcome.error.type == ErrorType.TOOL_ERROR
    assert outcome.error.message == "program exited with code 3: boom\n"
    assert outcome.output == {"stdout": "", "stderr": "boom\n", "exit_code": 3}


def test_fails_on_nonzero_exit_is_read_from_the_spec() -> None:
    box = RecordingSandbox({"twice": 2, "exit_code": 1, "stderr": "x"})
    outcome = run_step(box, step_of("double_it"), {"n": 1}, Path("."), catalog=WITH_DOUBLE)
    assert outcome.error is None  # an exit_code key means nothing to a tool without the flag
    flagged = ToolSpec(**{**vars(DOUBLE_SPEC), "fails_on_nonzero_exit": True})
    catalog: ToolCatalog = WITH_DOUBLE.with_tools(flagged, replace=True)
    outcome = run_step(box, step_of("double_it"), {"n": 1}, Path("."), catalog=catalog)
    assert outcome.error is not None and outcome.error.type == ErrorType.TOOL_ERROR
    assert outcome.error.message == "program exited with code 1: x"


# --- the Docker backend's options --------------------------------------------------------------------


def test_docker_container_options_use_the_docker_options() -> None:
    from tools_sandbox.docker_sandbox import DockerOptions, DockerSandbox

    def container(options: DockerOptions | None = None) -> dict[str, Any]:
        return DockerSandbox("img", client=object(), options=options).container_options()

    default = container()
    assert [u for u in default["ulimits"] if u["Name"] == "nofile"] == [
        {"Name": "nofile", "Soft": 1024, "Hard": 1024}
    ]
    assert default["log_config"]["Config"] == {"max-size": "1m", "max-file": "1"}
    options = container(DockerOptions(nofile_limit=777, log_max_size="3m", log_max_files=2))
    nofile = [u for u in options["ulimits"] if u["Name"] == "nofile"]
    assert nofile == [{"Name": "nofile", "Soft": 777, "Hard": 777}]
    assert options["log_config"]["Config"] == {"max-size": "3m", "max-file": "2"}


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


def test_the_death_cause_uses_the_docker_options() -> None:
    from tools_sandbox.docker_sandbox import DockerOptions, DockerSandbox

    options = DockerOptions(death_wait_s=1.5, death_log_lines=7, death_log_chars=10)
    box = DockerSandbox("img", client=object(), options=options)
    container = DeadContainer(b"first line\n" + b"x" * 50 + b"END OF LOG")
    box._container = container
    cause = box._death_cause()
    assert container.waited == [1.5] and container.tails == [7]
    assert cause == (
        "the sandbox container exited with status 137 (the agent was killed by SIGKILL); "
        "agent stderr: END OF LOG"
    )
