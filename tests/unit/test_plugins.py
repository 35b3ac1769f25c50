"""The plugin API: ``@tool`` rules, registration in the catalog, input schemas, load_plugins.

Plugin modules are written into a temporary folder put on ``sys.path``; the catalog and
``sys.modules`` are restored after each test, so no plugin leaks into other tests.
"""

from __future__ import annotations

import json
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from officeray.config import Settings
from officeray.errors import ConfigError
from tools_sandbox import catalog, plugins
from tools_sandbox.agent import server
from tools_sandbox.catalog import RiskLevel, ToolRuntime
from tools_sandbox.plugins import PluginError, PluginRef, load_plugins, plugin_ref, tool

EXAMPLE = "examples.plugins.text_tools"


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    registry = dict(catalog._REGISTRY)
    modules = set(sys.modules)
    yield
    catalog._REGISTRY.clear()
    catalog._REGISTRY.update(registry)
    for name in set(sys.modules) - modules:
        if name == EXAMPLE or name.startswith("plugin_test_"):
            del sys.modules[name]


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], str]:
    """Write a module (dedented source) under a fresh name on sys.path; returns its name."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(source: str) -> str:
        name = f"plugin_test_{uuid.uuid4().hex[:10]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        return name

    return write


HEADER = """\
from __future__ import annotations
from pydantic import BaseModel, Field
from tools_sandbox.plugins import tool

class In(BaseModel):
    text: str = Field(max_length=10)
"""


def load(plugin_module: Callable[[str], str], body: str) -> str:
    name = plugin_module(HEADER + textwrap.dedent(body))
    load_plugins([name])
    return name


# --- the example plugins -------------------------------------------------------------------------


def test_example_plugins_register_as_sandbox_tools() -> None:
    load_plugins([EXAMPLE])
    from examples.plugins import text_tools

    spec = catalog.get_tool("word_count")
    assert spec.runtime == ToolRuntime.SANDBOX and spec.risk == RiskLevel.LOW
    assert spec.outputs == ("words", "lines")
    assert spec.description.startswith("Count the words")
    ref = plugin_ref(spec)
    assert isinstance(ref, PluginRef)
    assert (ref.module, ref.function) == (EXAMPLE, "word_count")
    assert ref.path == text_tools.__file__
    assert ref.source == Path(text_tools.__file__).read_text(encoding="utf-8")
    assert ref.protocol_field() == {"module": EXAMPLE, "function": "word_count", "source": ref.source}
    assert plugin_ref(catalog.get_tool("math_calculator")) is None
    assert spec.extra[plugins.PLUGIN_EXTRA_KEY] is ref
    assert "word_count" in catalog.input_models() and "slugify" in catalog.all_tools()


def test_example_functions_stay_plain_functions() -> None:
    from examples.plugins.text_tools import SlugifyInput, WordCountInput, slugify, word_count

    assert word_count(WordCountInput(text="one two\nthree")) == {"words": 3, "lines": 2}
    assert slugify(SlugifyInput(text="Héllo, Wörld!")) == {"slug": "hello-world"}
    assert slugify(SlugifyInput(text="a b c", separator="_", max_length=3)) == {"slug": "a_b"}
    with pytest.raises(ValueError, match="no letters or digits"):
        slugify(SlugifyInput(text="!!!"))


def test_input_schema_is_strict_and_documented() -> None:
    load_plugins([EXAMPLE])
    spec = catalog.get_tool("slugify")
    schema = spec.input_model.model_json_schema()
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["text"]
    assert schema["properties"]["separator"]["pattern"] == "^[-_.]$"
    assert schema["title"] == "SlugifyInput"
    json.dumps(schema)
    assert spec.validate_inputs({"text": "x"}).model_dump() == {
        "text": "x",
        "separator": "-",
        "max_length": 80,
    }
    with pytest.raises(ValueError, match="Extra inputs"):
        spec.validate_inputs({"text": "x", "junk": 1})


def test_strict_model_is_kept_when_already_strict() -> None:
    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid")
        n: int

    assert plugins._strict(Strict) is Strict
    loose = plugins._strict(HeaderIn)
    assert loose is not HeaderIn and issubclass(loose, HeaderIn) and loose.__name__ == "HeaderIn"


class HeaderIn(BaseModel):
    text: str


# --- the decorator -------------------------------------------------------------------------------


def test_name_model_and_defaults(plugin_module: Callable[[str], str]) -> None:
    name = load(
        plugin_module,
        """
        class Other(BaseModel):
            n: int

        @tool(description="first")
        def first(inputs: In) -> dict:
            return {}

        @tool("renamed", description="  second  ", risk="high", outputs=("a", "b"), input_model=Other)
        def second(inputs) -> dict:
            return {}
        """,
    )
    first = catalog.get_tool("first")
    assert first.risk == RiskLevel.LOW and first.outputs == ()
    assert first.input_model.model_json_schema()["properties"]["text"]["maxLength"] == 10
    renamed = catalog.get_tool("renamed")
    assert renamed.description == "second" and renamed.risk == RiskLevel.HIGH
    assert renamed.outputs == ("a", "b")
    assert set(renamed.input_model.model_fields) == {"n"}
    ref = plugin_ref(renamed)
    assert ref is not None and (ref.module, ref.function) == (name, "second")
    assert "second" not in catalog.all_tools()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("wrapped = tool(description='x')(lambda inputs: {})", "lambdas"),
        (
            """
            def outer():
                @tool(description="x")
                def inner(inputs: In) -> dict:
                    return {}
            outer()
            """,
            "nested functions and closures",
        ),
        (
            """
            class Holder:
                @tool(description="x")
                def method(self, inputs: In) -> dict:
                    return {}
            """,
            "methods cannot be tools",
        ),
        (
            """
            class Holder:
                @tool(description="x")
                def method(inputs: In) -> dict:
                    return {}
            """,
            "methods cannot be tools",
        ),
        (
            """
            class Holder:
                @tool(description="x")
                @staticmethod
                def method(inputs: In) -> dict:
                    return {}
            """,
            "module-level function, not staticmethod",
        ),
        (
            """
            @tool(description="x")
            async def coro(inputs: In) -> dict:
                return {}
            """,
            "coroutines and generators",
        ),
        (
            """
            @tool(description="x")
            def gen(inputs: In):
                yield {}
            """,
            "coroutines and generators",
        ),
        (
            """
            @tool(description="x")
            def none() -> dict:
                return {}
            """,
            "exactly one positional parameter",
        ),
        (
            """
            @tool(description="x")
            def two(inputs: In, other: In) -> dict:
                return {}
            """,
            "exactly one positional parameter",
        ),
        (
            """
            @tool(description="x")
            def star(*inputs: In) -> dict:
                return {}
            """,
            "exactly one positional parameter",
        ),
        (
            """
            @tool(description="x")
            def bare(inputs) -> dict:
                return {}
            """,
            "annotate 'inputs' with a pydantic model",
        ),
        (
            """
            @tool(description="x")
            def wrong(inputs: dict) -> dict:
                return {}
            """,
            "must be a pydantic BaseModel subclass",
        ),
        (
            """
            @tool(description="x")
            def unresolved(inputs: Missing) -> dict:
                return {}
            """,
            "cannot resolve the annotation",
        ),
        (
            """
            @tool("bad name", description="x")
            def named(inputs: In) -> dict:
                return {}
            """,
            "name must be an identifier",
        ),
    ],
)
def test_decorator_refuses(plugin_module: Callable[[str], str], body: str, message: str) -> None:
    name = plugin_module(HEADER + textwrap.dedent(body))
    with pytest.raises(PluginError, match=message) as info:
        load_plugins([name])
    assert f"plugins: {name!r}" in str(info.value)
    assert not any(plugin_ref(s) and plugin_ref(s).module == name for s in catalog.all_tools().values())  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"description": ""}, "description must be a non-empty string"),
        ({"description": "x", "risk": "extreme"}, "risk must be one of low, medium, high"),
        (
            {"description": "x", "outputs": "words"},
            r"outputs must be a tuple of key names, e.g. \('words',\)",
        ),
        ({"description": "x", "outputs": ("ok", "")}, "outputs must be non-empty strings"),
    ],
)
def test_decorator_arguments_are_checked(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(PluginError, match=message):
        tool(**kwargs)


def test_functions_of_main_are_refused() -> None:
    def fn(inputs: HeaderIn) -> dict[str, Any]:
        return {}

    fn.__module__ = "__main__"
    fn.__qualname__ = "fn"
    with pytest.raises(PluginError, match="importable module"):
        tool(description="x")(fn)


def test_plugin_error_is_a_value_error() -> None:
    assert issubclass(PluginError, ValueError)


# --- names ---------------------------------------------------------------------------------------


def test_duplicate_names_are_refused(plugin_module: Callable[[str], str]) -> None:
    first = load(
        plugin_module,
        """
        @tool(description="x")
        def shared(inputs: In) -> dict:
            return {}
        """,
    )
    second = plugin_module(
        HEADER
        + textwrap.dedent(
            """
            @tool(description="y")
            def shared(inputs: In) -> dict:
                return {}
            """
        )
    )
    with pytest.raises(PluginError, match=rf"already registered \(by plugin {first}\.shared\)"):
        load_plugins([second])
    assert plugin_ref(catalog.get_tool("shared")).module == first  # type: ignore[union-attr]


def test_builtin_names_are_refused(plugin_module: Callable[[str], str]) -> None:
    name = plugin_module(
        HEADER
        + textwrap.dedent(
            """
            @tool(description="x")
            def python_exec(inputs: In) -> dict:
                return {}
            """
        )
    )
    with pytest.raises(PluginError, match=r"'python_exec' is already registered \(built in\); pass name="):
        load_plugins([name])
    assert plugin_ref(catalog.get_tool("python_exec")) is None


def test_reimporting_a_module_replaces_its_tools(plugin_module: Callable[[str], str]) -> None:
    import importlib

    name = load(
        plugin_module,
        """
        @tool(description="x")
        def again(inputs: In) -> dict:
            return {}
        """,
    )
    before = catalog.get_tool("again")
    importlib.reload(sys.modules[name])
    after = catalog.get_tool("again")
    assert after is not before and plugin_ref(after).module == name  # type: ignore[union-attr]


# --- load_plugins ----------------------------------------------------------------------------------


def test_load_plugins_errors_name_the_module(plugin_module: Callable[[str], str]) -> None:
    with pytest.raises(ImportError, match="plugins: cannot import 'no_such_plugin_module'"):
        load_plugins(["no_such_plugin_module"])
    broken = plugin_module("def oops(:\n")
    with pytest.raises(ImportError, match=rf"plugins: cannot import '{broken}': SyntaxError"):
        load_plugins([broken])
    raising = plugin_module("raise RuntimeError('boom at import')\n")
    with pytest.raises(ImportError, match="RuntimeError: boom at import"):
        load_plugins([raising])


def test_load_plugins_adds_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"plugin_test_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(
        HEADER + "\n@tool(description='x')\ndef from_cwd(inputs: In) -> dict:\n    return {}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    load_plugins([name])
    assert sys.path[-1] == str(tmp_path)
    assert "from_cwd" in catalog.all_tools()


def test_check_tools_reports_plugin_errors_as_config_errors(plugin_module: Callable[[str], str]) -> None:
    from cluster.prepare import check_tools

    bad = plugin_module(HEADER + "\n@tool(description='x')\ndef two(a: In, b: In) -> dict:\n    return {}\n")
    with pytest.raises(ConfigError, match="exactly one positional parameter"):
        check_tools(Settings(plugins=[bad]))
    with pytest.raises(ConfigError, match="cannot import 'nope_nope'"):
        check_tools(Settings(plugins=["nope_nope"]))
    check_tools(Settings(plugins=[EXAMPLE]))
    assert "slugify" in catalog.all_tools()


def test_source_limit_matches_the_agent() -> None:
    from tools_sandbox.agent import limits

    # one definition (tools_sandbox.agent.limits), imported by both sides
    assert plugins.MAX_PLUGIN_SOURCE_BYTES is limits.MAX_PLUGIN_SOURCE_BYTES
    assert server.MAX_PLUGIN_SOURCE_BYTES is limits.MAX_PLUGIN_SOURCE_BYTES
    assert tuple(level.value for level in RiskLevel) == plugins.RISK_LEVELS


def test_plugins_module_imports_no_officeray_at_top_level() -> None:
    """The agent imports tools_sandbox.plugins in the sandbox, where only stdlib + pydantic exist."""
    import subprocess

    code = (
        "import sys, builtins\n"
        "real = builtins.__import__\n"
        "def guard(name, *a, **k):\n"
        "    if name.split('.')[0] in ('officeray', 'serving', 'cluster', 'actors', 'ray', 'yaml'):\n"
        "        raise ImportError('forbidden in the sandbox: ' + name)\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guard\n"
        "import tools_sandbox.plugins, tools_sandbox.agent.server\n"
        "print('ok')\n"
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=False)
    assert proc.stdout.strip() == "ok", proc.stderr


def test_the_sandbox_doc_says_plugin_modules_are_imported_host_side() -> None:
    """A security reviewer must not read "plugins run in the sandbox" as "plugin code never runs on
    the host": the module's top-level code runs wherever ``plugins:`` is loaded."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "sandbox.md").read_text()
    text = " ".join(doc.split())
    assert "plugin **module** listed in the config's `plugins:` is **imported host side**" in text
    assert "Its top-level code (imports, module-level statements) runs in each of those processes" in text
    for importer in ("orchestrator", "tool runner", "serving app", "CLI"):
        assert importer in text
    assert "plugin **function body** runs **only in the sandbox**" in text
    assert "User code (a plan's `python_exec` program, a plugin's function) never runs host side" not in text
    assert "| PID 1 | the agent itself, not `--init`" in doc
    doc_tools = plugins.__doc__ or ""
    assert "imported **host side**" in doc_tools
