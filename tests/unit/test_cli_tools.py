"""``officeray tools``: every registered tool, built-ins and the config's plugins, without Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster import cli
from officeray.tools.builtin import BUILTIN_TOOLS

EXAMPLE = "examples.plugins.text_tools"
KEYS = {"name", "description", "runtime", "risk", "outputs", "input_schema"}


@pytest.fixture(autouse=True)
def clean_modules() -> Iterator[None]:
    yield
    sys.modules.pop(EXAMPLE, None)


@pytest.fixture
def plugin_config(tmp_path: Path) -> Path:
    config = tmp_path / "officeray.yaml"
    config.write_text(f'plugins: ["{EXAMPLE}"]\n', encoding="utf-8")
    return config


def listed(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, dict[str, Any]]:
    assert cli.main(["tools", "--json", *argv]) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1  # one JSON object
    data = json.loads(out)
    assert set(data) == {"tools"}
    return {tool["name"]: tool for tool in data["tools"]}


def test_json_lists_every_builtin_with_its_schema(capsys: pytest.CaptureFixture[str]) -> None:
    tools = listed(capsys)
    assert list(tools)[: len(BUILTIN_TOOLS)] == list(BUILTIN_TOOLS)
    for name, spec in BUILTIN_TOOLS.items():
        tool = tools[name]
        assert set(tool) == KEYS
        assert tool["description"] == spec.description
        assert tool["runtime"] == spec.runtime.value and tool["risk"] == spec.risk.value
        assert tool["outputs"] == list(spec.outputs)
        assert tool["input_schema"] == spec.input_model.model_json_schema()
    assert tools["math_calculator"]["runtime"] == "sandbox"
    assert tools["python_exec"]["risk"] == "high"  # model-written code (issue 17)
    assert tools["ai_tool"]["runtime"] == "host" and tools["ai_tool"]["outputs"] == ["answer"]
    assert "prompt" in tools["ai_tool"]["input_schema"]["properties"]


def test_json_includes_the_configured_plugins(
    capsys: pytest.CaptureFixture[str], plugin_config: Path
) -> None:
    tools = listed(capsys, "--config", str(plugin_config))
    assert list(tools)[-2:] == ["word_count", "slugify"]
    slugify = tools["slugify"]
    assert slugify["runtime"] == "sandbox" and slugify["risk"] == "low" and slugify["outputs"] == ["slug"]
    schema = slugify["input_schema"]
    assert schema["required"] == ["text"] and schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"text", "separator", "max_length"}


def test_text_listing(capsys: pytest.CaptureFixture[str], plugin_config: Path) -> None:
    assert cli.main(["tools", "--config", str(plugin_config)]) == 0
    out = capsys.readouterr().out
    assert "math_calculator  (sandbox, risk low)" in out
    assert "ai_tool  (host, risk low)" in out
    assert f"word_count  (sandbox, risk low, plugin {EXAMPLE}:word_count)" in out
    assert "  outputs: words, lines" in out
    assert BUILTIN_TOOLS["code_analyzer"].description in out
    schema_lines = [line for line in out.splitlines() if line.startswith("  input schema: ")]
    assert len(schema_lines) == len(BUILTIN_TOOLS) + 2
    for line in schema_lines:
        json.loads(line.removeprefix("  input schema: "))


def test_a_bad_plugin_is_a_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text('plugins: ["no_such_plugin_module"]\n', encoding="utf-8")
    assert cli.main(["tools", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "officeray: error:" in err and "cannot import 'no_such_plugin_module'" in err


def test_tools_does_not_start_ray() -> None:
    code = (
        "import sys\n"
        "from cluster import cli\n"
        "assert cli.main(['tools', '--json']) == 0\n"
        "print('ray' in sys.modules, file=sys.stderr)\n"
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "False"
    assert json.loads(proc.stdout)["tools"]
