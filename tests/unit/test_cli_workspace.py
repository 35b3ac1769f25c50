"""Which folders a command may name: ``officeray run`` / ``tool`` take the invoking user's folders
(relative to the current directory, or absolute); ``officeray serve`` keeps the confined workspace."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cluster import cli
from officeray.config import Settings


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project outside the current directory of the test: main -> run -> process_data."""
    root = tmp_path / "project"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg/__init__.py").write_text("")
    (root / "pkg/b.py").write_text("def process_data():\n    pass\n")
    (root / "pkg/a.py").write_text(
        "from pkg.b import process_data\n\n\ndef main():\n    run()\n\n\ndef run():\n    process_data()\n"
    )
    return root


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the command from a directory that is neither the project nor above it; local sandbox."""
    cwd = tmp_path / "somewhere/else"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("OFFICERAY_SANDBOX__BACKEND", "local")
    return cwd


def test_invoking_user_workspace_is_the_resolved_cwd_unconfined(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert cli.invoking_user_workspace(tmp_path / "link") == {
        "workspace_root": str((tmp_path / "real").resolve()),
        "workspace_confined": False,
    }


def _tool(folder: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    inputs = {"folder": folder, "start_func": "main", "end_func": "process_data"}
    code = cli.main(["tool", "code_analyzer", "--input", json.dumps(inputs), "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_tool_takes_an_absolute_folder_from_another_cwd(
    project: Path, elsewhere: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, result = _tool(str(project), capsys)
    assert code == 0, result
    assert [hop["name"] for hop in result["output"]["path"]] == [
        "pkg.a.main",
        "pkg.a.run",
        "pkg.b.process_data",
    ]


def test_tool_resolves_a_relative_folder_against_the_cwd(
    project: Path, elsewhere: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, result = _tool("../../project", capsys)
    assert code == 0, result
    assert result["output"]["found"] is True
    code, result = _tool("project", capsys)  # not under the cwd
    assert code == 1
    assert result["error"]["type"] == "bad_input"
    assert result["error"]["message"] == f"folder 'project' does not exist under {elsewhere.resolve()}"


def _settings_seen(monkeypatch: pytest.MonkeyPatch, command: str, argv: list[str]) -> Settings:
    """The settings a command's handler receives. The handler itself is replaced: the real ``run``
    and ``serve`` start Ray (tests/integration/test_cli.py runs them end to end)."""
    seen: list[Settings] = []

    def handler(_args: Any, settings: Settings) -> int:
        seen.append(settings)
        return 0

    monkeypatch.setattr(cli, f"_cmd_{command}", handler)
    assert cli.main(argv) == 0
    return seen[0]


def test_run_is_unconfined_at_the_cwd_and_serve_stays_confined(
    elsewhere: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"workspace_root: {tmp_path}\n")
    run = _settings_seen(monkeypatch, "run", ["run", "Trace ...", "--config", str(config)])
    assert run.workspace_confined is False
    assert run.workspace_root == elsewhere.resolve()
    serve = _settings_seen(monkeypatch, "serve", ["serve", "--config", str(config)])
    assert serve.workspace_confined is True
    assert serve.workspace_root == tmp_path
