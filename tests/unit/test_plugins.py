"""The plugin API: ``@tool`` rules, plugins in a built catalog, input schemas, load_plugins.

Plugin modules are written into a temporary folder put on ``sys.path``; ``sys.modules`` is restored
after each test. A catalog is a value (``load_plugins`` and ``build_catalog`` return a new one), so
nothing else needs restoring: there is no process-wide registry.
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
from officeray.tools import plugins
from officeray.tools.catalog import ToolCatalog, build_catalog, builtin_catalog, load_plugins
from officeray.tools.plugins import PluginError, RiskLevel, declared_tool, tool
from officeray.tools.spec import PluginRef, ToolRuntime, ToolSpec

EXAMPLE = "examples.plugins.text_tools"


@pytest.fixture(autouse=True)
def clean_modules() -> Iterator[None]:
    modules = set(sys.modules)
    yield
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
from officeray.tools import tool

class In(BaseModel):
    text: str = Field(max_length=10)
"""


def load(plugin_module: Callable[[str], str], body: str) -> tuple[str, ToolCatalog]:
    """Write a plugin module (HEADER + body) and load it: (its name, the catalog with its tools)."""
    name = plugin_module(HEADER + textwrap.dedent(body))
    return name, load_plugins([name])


# --- the example plugins -------------------------------------------------------------------------


def test_example_plugins_join_the_catalog_as_sandbox_tools() -> None:
    catalog = load_plugins([EXAMPLE])
    from examples.plugins import text_tools

    spec = catalog.get_tool("word_count")
    assert spec.runtime == ToolRuntime.SANDBOX and spec.risk == RiskLevel.LOW
    assert spec.outputs == ("words", "lines")
    assert spec.description.startswith("Count the words")
    ref = spec.plugin
    assert isinstance(ref, PluginRef)
    assert (ref.module, ref.function) == (EXAMPLE, "word_count")
    assert ref.path == text_tools.__file__
    assert ref.source == Path(text_tools.__file__).read_text(encoding="utf-8")
    assert ref.protocol_field() == {"module": EXAMPLE, "function": "word_count", "source": ref.source}
    assert catalog.get_tool("math_calculator").plugin is None
    assert "word_count" in catalog.input_models() and "slugify" in catalog
    assert list(catalog)[-2:] == ["word_count", "slugify"]  # built-ins first, then definition order
    assert "word_count" not in builtin_catalog()  # a new catalog; nothing registered anywhere else


def test_example_functions_stay_plain_functions() -> None:
    from examples.plugins.text_tools import SlugifyInput, WordCountInput, slugify, word_count

    assert word_count(WordCountInput(text="one two\nthree")) == {"words": 3, "lines": 2}
    assert slugify(SlugifyInput(text="Héllo, Wörld!")) == {"slug": "hello-world"}
    assert slugify(SlugifyInput(text="a b c", separator="_", max_length=3)) == {"slug": "a_b"}
    with pytest.raises(ValueError, match="no letters or digits"):
        slugify(SlugifyInput(text="!!!"))


def test_input_schema_is_strict_and_documented() -> None:
    spec = load_plugins([EXAMPLE]).get_tool("slugify")
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
    name, catalog = load(
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
    ref = renamed.plugin
    assert ref is not None and (ref.module, ref.function) == (name, "second")
    assert "second" not in catalog


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
    first, _ = load(
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
        load_plugins([first, second])
    alone = load_plugins([second]).get_tool("shared").plugin  # no state left behind by the first build
    assert alone is not None and alone.module == second


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


def test_the_same_function_twice_is_one_tool(plugin_module: Callable[[str], str]) -> None:
    """A module listed twice, a second name for a tool function, a plugin importing another's tool."""
    first, _ = load(
        plugin_module,
        """
        @tool(description="x")
        def shared(inputs: In) -> dict:
            return {}

        alias = shared
        """,
    )
    second = plugin_module(f"from {first} import shared\n")
    catalog = load_plugins([first, first, second])
    assert list(catalog)[-1] == "shared" and len(catalog) == len(builtin_catalog()) + 1


def test_reimporting_a_module_replaces_its_tools(plugin_module: Callable[[str], str]) -> None:
    import importlib

    name, catalog = load(
        plugin_module,
        """
        @tool(description="x")
        def again(inputs: In) -> dict:
            return {}
        """,
    )
    before = catalog.get_tool("again")
    importlib.reload(sys.modules[name])
    after = load_plugins([name]).get_tool("again")
    assert after is not before and after.plugin is not None and after.plugin.module == name
    assert catalog.get_tool("again") is before  # a built catalog never changes


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
    # load_plugins adds the working directory to the process's sys.path, as a CLI run needs: the
    # test gives it a copy to change, restored after the test (sys.path is the seam itself).
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    catalog = load_plugins([name])
    assert sys.path[-1] == str(tmp_path)
    assert "from_cwd" in catalog


def test_build_catalog_reports_plugin_and_settings_errors_as_config_errors(
    plugin_module: Callable[[str], str],
) -> None:
    bad = plugin_module(HEADER + "\n@tool(description='x')\ndef two(a: In, b: In) -> dict:\n    return {}\n")
    with pytest.raises(ConfigError, match="exactly one positional parameter"):
        build_catalog(Settings(plugins=[bad]))
    with pytest.raises(ConfigError, match="cannot import 'nope_nope'"):
        build_catalog(Settings(plugins=["nope_nope"]))
    with pytest.raises(ConfigError, match=r"tools\.http_client\.max_redirects: "):
        build_catalog(Settings(tools={"http_client": {"max_redirects": -1}}))
    with pytest.raises(ConfigError, match="tools.slugify: no tool named 'slugify' takes settings"):
        build_catalog(Settings(plugins=[EXAMPLE], tools={"slugify": {}}))
    catalog = build_catalog(Settings(plugins=[EXAMPLE]))
    assert list(catalog) == [*builtin_catalog(), "word_count", "slugify"]


def test_a_catalog_is_an_immutable_mapping() -> None:
    catalog = builtin_catalog()
    assert isinstance(catalog, ToolCatalog) and "math_calculator" in catalog
    with pytest.raises(KeyError, match="unknown tool 'nope'; registered tools: ai_tool, code_analyzer"):
        catalog.get_tool("nope")
    with pytest.raises(ValueError, match="a tool named 'sleep' is already in the catalog"):
        catalog.with_tools(catalog["sleep"])
    quick = catalog.with_tools(ToolSpec(**{**vars(catalog["sleep"]), "description": "z"}), replace=True)
    assert quick["sleep"].description == "z" and catalog["sleep"].description != "z"
    with pytest.raises(TypeError):
        catalog["sleep"] = catalog["sleep"]  # type: ignore[index]


def test_decorated_functions_carry_what_the_sandbox_needs() -> None:
    from examples.plugins.text_tools import WordCountInput, slugify, word_count

    info = declared_tool(word_count)
    assert info is not None and info.name == "word_count" and info.outputs == ("words", "lines")
    assert issubclass(info.input_model, WordCountInput) and info.where == f"{EXAMPLE}.word_count"
    assert declared_tool(slugify) is not None and declared_tool(WordCountInput) is None


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
