"""Usage and configuration errors answer with a message and exit code 2, before Ray starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster import cli
from cluster.jobs import batch


def test_run_without_a_task_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["run"])
    assert exc.value.code == 2
    assert "task" in capsys.readouterr().err


def test_unknown_command_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["fly"])
    assert exc.value.code == 2


def test_missing_config_file_exits_2_with_its_name(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = cli.main(["run", "Compute 1 + 1", "--config", str(tmp_path / "nope.yaml")])
    assert code == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_bad_config_value_exits_2_naming_the_key(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("workflow:\n  max_iterations: 0\nsandbox:\n  backend: vm\n")
    code = cli.main(["run", "Compute 1 + 1", "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 2
    assert "workflow.max_iterations" in err and "sandbox.backend" in err


def test_serve_with_a_bad_port_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--port", "70000"]) == 2
    assert "port" in capsys.readouterr().err


def test_blank_task_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "   "]) == 2
    assert "invalid task" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("", "holds no tasks"),
        ("{not json}\n", ":1:"),
        (json.dumps({"description": "ok"}) + "\n" + json.dumps({"text": "x"}) + "\n", ":2:"),
    ],
)
def test_batch_bad_input_exits_2_with_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, fragment: str
) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(content)
    assert batch.main([str(tasks), "--out", str(tmp_path / "out.jsonl")]) == 2
    assert fragment in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()


def test_record_json_puts_the_documented_fields_first() -> None:
    from officeray.contracts import TaskRecord

    data = cli.record_json(TaskRecord(task_id="t1", description="d"))
    assert list(data)[:7] == ["task_id", "status", "result", "error", "iterations", "steps", "trace_id"]


@pytest.fixture
def local_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    """``officeray tool`` on the local fake sandbox (the Docker path is in tests/integration)."""
    monkeypatch.setenv("OFFICERAY_SANDBOX__BACKEND", "local")


def test_tool_prints_one_step_result_and_exits_0(
    local_sandbox: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["tool", "python_exec", "--input", json.dumps({"code": "print(6 * 7)"}), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    assert result["status"] == "succeeded" and result["error"] is None
    assert result["output"] == {"stdout": "42\n", "stderr": "", "exit_code": 0}
    assert result["duration_ms"] > 0


def test_tool_failure_exits_1_with_the_typed_error(
    local_sandbox: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        [
            "tool",
            "python_exec",
            "--input",
            '{"code": "import time; time.sleep(30)"}',
            "--timeout",
            "1",
            "--json",
        ]
    )
    result = json.loads(capsys.readouterr().out)
    assert code == 1
    assert result["status"] == "failed" and result["error"]["type"] == "timeout"


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["tool", "send_email", "--input", "{}"], "unknown tool 'send_email'"),
        (["tool", "math_calculator", "--input", "{oops"], "not valid JSON"),
        (["tool", "math_calculator", "--input", "[1]"], "must be a JSON object"),
        (["tool", "math_calculator", "--input", '{"expression": 1}'], "expression"),
        (["tool", "math_calculator", "--input", '{"expression": "1", "x": 2}'], "x: Extra inputs"),
        (["tool", "math_calculator", "--input", '{"expression": "1"}', "--timeout", "-1"], "--timeout"),
    ],
)
def test_tool_bad_usage_exits_2_before_anything_runs(
    local_sandbox: None, capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str
) -> None:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert fragment in captured.err and captured.out == ""


def test_bench_overhead_is_a_cli_command_and_bad_levels_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    from cluster.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["bench", "overhead", "--levels", "0"])
    assert exc.value.code == 2
    assert "--levels" in capsys.readouterr().err


# -- commands of outer packages (the officeray.commands entry points) ----------------------------------

EXTENSION = """
import argparse


def add(sub):
    hello = sub.add_parser("hello", help="an added command")
    hello.add_argument("--code", type=int, default=0)
    hello.set_defaults(run_command=run)


def run(args: argparse.Namespace) -> int:
    print("hello from an added command")
    return args.code
"""


@pytest.fixture
def installed_extension(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A distribution on sys.path, as pip would install it, registering one good and one broken command."""
    (tmp_path / "officeray_test_extension.py").write_text(EXTENSION, encoding="utf-8")
    info = tmp_path / "officeray_test_extension-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: officeray-test-extension\nVersion: 0.1\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(
        f"[{cli.COMMANDS_GROUP}]\n"
        "hello = officeray_test_extension:add\n"
        "broken = officeray_no_such_module:add\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))


def test_loadtest_and_bench_come_from_the_entry_points_of_loadtests() -> None:
    import importlib.metadata

    entries = {e.name: e.value for e in importlib.metadata.entry_points(group=cli.COMMANDS_GROUP)}
    assert entries["loadtest"] == "loadtests.commands:add_loadtest"
    assert entries["bench"] == "loadtests.commands:add_bench"


def test_an_added_command_runs_with_its_exit_code_and_a_broken_one_is_reported(
    installed_extension: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["hello", "--code", "3"]) == 3
    captured = capsys.readouterr()
    assert captured.out == "hello from an added command\n"
    assert "officeray: warning: command 'broken' (officeray_no_such_module:add) could not be added" in (
        captured.err
    )
    assert cli.main(["tools", "--json"]) == 0  # the built-in commands still work
