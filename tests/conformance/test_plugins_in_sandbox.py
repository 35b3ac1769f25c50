"""Plugin tools run in the sandbox: the same cases against LocalProcessSandbox and DockerSandbox.

Steps go through :func:`tools_sandbox.executor.run_step` as on a tool runner; a few cases speak
the protocol directly (:func:`tools_sandbox.executor.call_plugin`) to reach the agent's own checks
(in-sandbox validation, import errors, malformed requests) past the host's.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from officeray.contracts import ErrorType, PlanStep, StepOutcome
from officeray.tools.catalog import ToolCatalog, load_plugins
from officeray.tools.spec import PluginRef
from tools_sandbox._channel import AgentSandbox
from tools_sandbox.executor import call_plugin, run_step
from tools_sandbox.sandbox import ToolCallError

pytestmark = pytest.mark.timeout(120)

EXAMPLE = "examples.plugins.text_tools"

BACKENDS = ["local", pytest.param("docker", marks=pytest.mark.integration)]

PROBE_SOURCE = '''\
"""Plugins that misbehave on purpose (written to a temporary folder by the test module)."""

from __future__ import annotations

import os
import sys
import time

from pydantic import BaseModel, Field, field_validator

from officeray.tools import tool
from tools_sandbox.plugins import tool as earlier_tool  # the plugin API's earlier import path

CALLS = 0


class Empty(BaseModel):
    pass


class Path(BaseModel):
    path: str = Field(min_length=1)


class Mark(BaseModel):
    marker: str
    n: int = Field(ge=0, le=10)


class Picky(BaseModel):
    word: str

    @field_validator("word")
    @classmethod
    def no_spaces(cls, value: str) -> str:
        if " " in value:
            raise ValueError("no spaces please")
        return value


@tool(description="How often this module's function ran in this module object", outputs=("calls",))
def probe_counter(inputs: Empty) -> dict:
    global CALLS
    CALLS += 1
    return {"calls": CALLS, "module": __name__, "file": os.path.basename(__file__)}


@tool(description="List the workspace and try to read a file", outputs=("entries",))
def probe_look(inputs: Path) -> dict:
    root = os.environ["OFFICERAY_WORKSPACE"]
    try:
        with open(os.path.join(root, inputs.path)) as fh:
            content = fh.read()
    except OSError as exc:
        content = type(exc).__name__
    return {"entries": sorted(os.listdir(root)), "content": content}


@tool(description="Write a marker file (proves whether it ran)", outputs=("written",))
def probe_mark(inputs: Mark) -> dict:
    with open(os.path.join(os.environ["OFFICERAY_WORKSPACE"], inputs.marker), "w") as fh:
        fh.write(str(inputs.n))
    return {"written": inputs.marker}


@earlier_tool(description="Written against the earlier import path", outputs=("echo",))
def probe_earlier_import(inputs: Picky) -> dict:
    return {"echo": inputs.word}


@tool(description="Raise", outputs=("never",))
def probe_raise(inputs: Empty) -> dict:
    raise RuntimeError("the plugin failed on purpose")


@tool(description="sys.exit", outputs=("never",))
def probe_exit(inputs: Empty) -> dict:
    sys.exit(3)


@tool(description="Return a list", outputs=())
def probe_list(inputs: Empty) -> dict:
    return [1, 2]  # type: ignore[return-value]


@tool(description="Return a set", outputs=())
def probe_set(inputs: Empty) -> dict:
    return {"values": {1, 2}}


@tool(description="Forget a declared output", outputs=("promised",))
def probe_missing(inputs: Empty) -> dict:
    return {"other": 1}


@tool(description="Return a model", outputs=("word",))
def probe_model(inputs: Picky) -> Picky:
    return inputs


@tool(description="Sleep forever", outputs=("never",))
def probe_sleep(inputs: Empty) -> dict:
    while True:
        time.sleep(1)


@tool(description="Which pydantic", outputs=("pydantic",))
def probe_pydantic(inputs: Empty) -> dict:
    import pydantic

    return {"pydantic": pydantic.VERSION, "file": pydantic.__file__}
'''


@pytest.fixture(scope="module")
def probes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The probe plugins' module, written to a temporary folder on ``sys.path`` (its name)."""
    folder = tmp_path_factory.mktemp("plugins")
    name = f"plugin_probe_{uuid.uuid4().hex[:8]}"
    (folder / f"{name}.py").write_text(PROBE_SOURCE, encoding="utf-8")
    sys.path.insert(0, str(folder))
    try:
        yield name
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(name, None)
        sys.modules.pop(EXAMPLE, None)


@pytest.fixture(scope="module")
def catalog(probes: str) -> ToolCatalog:
    """The built-ins, the example plugins and the probes: what a runner's catalog would hold."""
    return load_plugins([EXAMPLE, probes])


def step(action: str, timeout_s: int = 20) -> PlanStep:
    return PlanStep(step_id="s1", action=action, inputs={}, idempotency_key="k", timeout_seconds=timeout_s)


def run(
    sandbox: AgentSandbox, catalog: ToolCatalog, action: str, inputs: dict[str, Any], timeout_s: int = 20
) -> StepOutcome:
    return run_step(sandbox, step(action, timeout_s), inputs, Path("."), catalog=catalog)


def ok(outcome: StepOutcome) -> Any:
    assert outcome.error is None, outcome.error
    return outcome.output


def error(outcome: StepOutcome, error_type: ErrorType) -> str:
    assert outcome.error is not None, outcome.output
    assert outcome.error.type == error_type, outcome.error
    return outcome.error.message


def ref_of(catalog: ToolCatalog, action: str) -> PluginRef:
    ref = catalog.get_tool(action).plugin
    assert ref is not None
    return ref


def raw_call(sandbox: AgentSandbox, fields: dict[str, Any]) -> ToolCallError:
    with pytest.raises(ToolCallError) as info:
        sandbox._op("call", {"timeout_s": 20, "inputs": {}, **fields}, 30)
    return info.value


# --- running -------------------------------------------------------------------------------------


def test_example_plugins_run_in_the_sandbox(sandbox: AgentSandbox, probes: str, catalog: ToolCatalog) -> None:
    assert ok(run(sandbox, catalog, "word_count", {"text": "one two\nthree"})) == {"words": 3, "lines": 2}
    assert ok(run(sandbox, catalog, "slugify", {"text": "Héllo, Wörld!"})) == {"slug": "hello-world"}
    assert ok(run(sandbox, catalog, "slugify", {"text": "a b c", "separator": "_"})) == {"slug": "a_b_c"}


def test_a_plugin_written_against_the_earlier_import_path_still_runs(
    sandbox: AgentSandbox, probes: str, catalog: ToolCatalog
) -> None:
    assert ok(run(sandbox, catalog, "probe_earlier_import", {"word": "hi"})) == {"echo": "hi"}


def test_the_plugin_is_imported_from_the_staged_source(
    sandbox: AgentSandbox, probes: str, catalog: ToolCatalog
) -> None:
    out = ok(run(sandbox, catalog, "probe_counter", {}))
    assert out["module"] == probes and out["file"] == f"{probes}.py"
    out = ok(run(sandbox, catalog, "probe_pydantic", {}))
    assert out["pydantic"] and "plugin-" not in out["file"]


def test_every_call_gets_a_fresh_module(sandbox: AgentSandbox, probes: str, catalog: ToolCatalog) -> None:
    for _ in range(3):
        assert ok(run(sandbox, catalog, "probe_counter", {}))["calls"] == 1
    ref = ref_of(catalog, "probe_counter")
    changed = ref.source.replace('"calls": CALLS', '"calls": CALLS + 100')
    result = call_plugin(
        sandbox, "probe_counter", {}, timeout_s=20, ref=PluginRef(ref.module, ref.function, ref.path, changed)
    )
    assert result["calls"] == 101  # the new source, not a module cached from earlier calls
    assert ok(run(sandbox, catalog, "probe_counter", {}))["calls"] == 1


def test_models_are_returned_as_json(sandbox: AgentSandbox, probes: str, catalog: ToolCatalog) -> None:
    assert ok(run(sandbox, catalog, "probe_model", {"word": "fine"})) == {"word": "fine"}


# --- failures ------------------------------------------------------------------------------------


def test_bad_inputs_are_refused_before_running(
    sandbox: AgentSandbox, probes: str, catalog: ToolCatalog
) -> None:
    message = error(run(sandbox, catalog, "probe_mark", {"marker": "ran.txt", "n": 99}), ErrorType.BAD_INPUT)
    assert message.startswith("probe_mark inputs: n:")
    error(run(sandbox, catalog, "probe_mark", {"marker": "ran.txt", "n": 1, "junk": 1}), ErrorType.BAD_INPUT)
    error(run(sandbox, catalog, "slugify", {"text": ""}), ErrorType.BAD_INPUT)
    message = error(run(sandbox, catalog, "probe_model", {"word": "two words"}), ErrorType.BAD_INPUT)
    assert "no spaces please" in message
    with pytest.raises(ToolCallError):
        sandbox.read_file("ran.txt")  # never ran


def test_inputs_are_validated_again_in_the_sandbox(
    sandbox: AgentSandbox, probes: str, catalog: ToolCatalog
) -> None:
    with pytest.raises(ToolCallError) as info:
        call_plugin(
            sandbox,
            "probe_mark",
            {"marker": "ran.txt", "n": 99},
            timeout_s=20,
            ref=ref_of(catalog, "probe_mark"),
        )
    assert info.value.error_type == ErrorType.BAD_INPUT
    assert "probe_mark inputs: n: Input should be less than or equal to 10" in info.value.message
    with pytest.raises(ToolCallError):
        sandbox.read_file("ran.txt")


def test_an_exception_is_a_tool_error(sandbox: AgentSandbox, probes: str, catalog: ToolCatalog) -> None:
    message = error(run(sandbox, catalog, "probe_raise", {}), ErrorType.TOOL_ERROR)
    assert message == f"probe_raise ({probes}.probe_raise) raised RuntimeError: the plugin failed on purpose"
    message = error(run(sandbox, catalog, "slugify", {"text": "!!!"}), ErrorType.TOOL_ERROR)
    assert "ValueError: '!!!' has no letters or digits" in message
    assert "SystemExit: 3" in error(run(sandbox, catalog, "probe_exit", {}), ErrorType.TOOL_ERROR)
    assert ok(run(sandbox, catalog, "word_count", {"text": "still alive"}))["words"] == 2


def test_bad_results_are_tool_errors(sandbox: AgentSandbox, probes: str, catalog: ToolCatalog) -> None:
    assert "returned list; a plugin must return a dict" in error(
        run(sandbox, catalog, "probe_list", {}), ErrorType.TOOL_ERROR
    )
    assert "not JSON" in error(run(sandbox, catalog, "probe_set", {}), ErrorType.TOOL_ERROR)
    message = error(run(sandbox, catalog, "probe_missing", {}), ErrorType.TOOL_ERROR)
    assert "did not return its declared outputs: promised" in message


def test_a_plugin_that_runs_too_long_times_out(
    sandbox: AgentSandbox, probes: str, catalog: ToolCatalog
) -> None:
    error(run(sandbox, catalog, "probe_sleep", {}, timeout_s=1), ErrorType.TIMEOUT)
    assert ok(run(sandbox, catalog, "word_count", {"text": "a"}))["words"] == 1


def test_import_errors_are_bad_input_naming_the_module(sandbox: AgentSandbox, probes: str) -> None:
    cases = [
        ("import no_such_module_anywhere\n", "ModuleNotFoundError"),
        ("def broken(:\n", "SyntaxError"),
        ("raise RuntimeError('at import')\n", "RuntimeError: at import"),
    ]
    if type(sandbox).__name__ == "DockerSandbox":  # the local backend sees the host's packages
        cases.append(("import officeray.contracts\n", "No module named 'officeray.contracts'"))
    for source, what in cases:
        ref = PluginRef("my_plugins.broken", "fn", "/nowhere/broken.py", source)
        with pytest.raises(ToolCallError) as info:
            call_plugin(sandbox, "broken_tool", {}, timeout_s=20, ref=ref)
        assert info.value.error_type == ErrorType.BAD_INPUT
        assert "cannot import plugin module 'my_plugins.broken' in the sandbox" in info.value.message
        assert what in info.value.message
    ref = PluginRef("my_plugins.empty", "fn", "/nowhere/empty.py", "x = 1\n")
    with pytest.raises(ToolCallError) as info:
        call_plugin(sandbox, "empty_tool", {}, timeout_s=20, ref=ref)
    assert info.value.error_type == ErrorType.BAD_INPUT
    assert "has no @tool function named 'fn'" in info.value.message


def test_a_plugin_cannot_shadow_a_sandbox_module(
    sandbox: AgentSandbox, probes: str, catalog: ToolCatalog
) -> None:
    ref = ref_of(catalog, "probe_counter")
    for module in ("json", "tools_sandbox.plugin_call", "officeray.tools.plugins"):
        with pytest.raises(ToolCallError) as info:
            call_plugin(
                sandbox,
                "probe_counter",
                {},
                timeout_s=20,
                ref=PluginRef(module, ref.function, ref.path, ref.source),
            )
        assert info.value.error_type == ErrorType.BAD_INPUT and "clashes" in info.value.message


def test_malformed_plugin_requests_are_bad_input(
    sandbox: AgentSandbox, probes: str, catalog: ToolCatalog
) -> None:
    good = ref_of(catalog, "probe_counter").protocol_field()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"tool": "probe_counter", "plugin": "nope"}, "exactly module, function and source"),
        ({"tool": "probe_counter", "plugin": {**good, "extra": 1}}, "exactly module, function and source"),
        ({"tool": "probe_counter", "plugin": {**good, "module": "a..b"}}, "not a dotted module name"),
        ({"tool": "probe_counter", "plugin": {**good, "function": "a-b"}}, "not an identifier"),
        ({"tool": "probe_counter", "plugin": {**good, "source": 5}}, "source must be a string"),
        ({"tool": "probe_counter", "plugin": {**good, "source": "#" * (1024**2 + 1)}}, "larger than"),
        ({"tool": "math_calculator", "plugin": good}, "is a built-in tool"),
        ({"tool": "bad name", "plugin": good}, "must be an identifier"),
        ({"tool": "probe_counter", "plugin": good, "files": {"a.py": ""}}, "takes no staged files"),
        ({"tool": "probe_counter", "plugin": good, "inputs": [1]}, "inputs must be a JSON object"),
        ({"tool": "probe_counter", "plugin": good, "timeout_s": 0}, "timeout_s must be a number"),
    ]
    for fields, message in cases:
        err = raw_call(sandbox, fields)
        assert err.error_type == ErrorType.BAD_INPUT and message in err.message, (fields, err)


# --- isolation -----------------------------------------------------------------------------------


def test_a_plugin_cannot_see_another_tasks_files(
    sandbox: AgentSandbox, probes: str, catalog: ToolCatalog
) -> None:
    sandbox.reset()
    sandbox.write_file("task_a_secret.txt", "secret of task A")
    seen = ok(run(sandbox, catalog, "probe_look", {"path": "task_a_secret.txt"}))
    assert seen["content"] == "secret of task A"  # the same task sees its own files
    sandbox.reset()  # what the tool runner does before a step of another task
    seen = ok(run(sandbox, catalog, "probe_look", {"path": "task_a_secret.txt"}))
    assert seen["content"] == "FileNotFoundError"
    assert len(seen["entries"]) == 1 and seen["entries"][0].startswith("plugin-")  # its own source only


def test_the_staged_source_is_removed_after_the_call(
    sandbox: AgentSandbox, probes: str, catalog: ToolCatalog
) -> None:
    sandbox.reset()
    ok(run(sandbox, catalog, "word_count", {"text": "x"}))
    error(run(sandbox, catalog, "probe_raise", {}), ErrorType.TOOL_ERROR)
    error(run(sandbox, catalog, "probe_sleep", {}, timeout_s=1), ErrorType.TIMEOUT)
    seen = ok(run(sandbox, catalog, "probe_look", {"path": "x"}))
    assert len(seen["entries"]) == 1 and seen["entries"][0].startswith("plugin-")  # its own only


@pytest.mark.parametrize("kind", BACKENDS)
def test_workspace_files_cannot_shadow_pydantic(
    new_sandbox: Any, probes: str, catalog: ToolCatalog, kind: str
) -> None:
    box = new_sandbox(kind)
    box.write_file("pydantic.py", "raise SystemExit('the workspace shadowed pydantic')\n")
    box.write_file("typing_extensions.py", "raise SystemExit('the workspace shadowed typing_extensions')\n")
    out = ok(run(box, catalog, "probe_pydantic", {}))  # the first plugin call: the agent imports pydantic now
    assert out["pydantic"] and not out["file"].startswith(box.ping()["workspace"])
