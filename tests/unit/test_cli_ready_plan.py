"""``officeray run --plan FILE``: a plan that cannot run is refused (exit 2, with the validator's
reasons) before Ray starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster import cli


def _plan_file(tmp_path: Path, plan: object) -> str:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan), encoding="utf-8")
    return str(path)


def test_an_invalid_plan_exits_2_with_the_reasons(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = {
        "plan_id": "p1",
        "task_id": "anything",
        "steps": [
            {"step_id": "s1", "action": "teleport", "idempotency_key": "k1"},
            {"step_id": "s2", "action": "math_calculator", "inputs": {}, "idempotency_key": "k2",
             "dependencies": ["s9"]},
        ],
    }  # fmt: skip
    path = _plan_file(tmp_path, plan)
    code = cli.main(["run", "--plan", path, "Compute something"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"invalid plan in {path}:" in err
    assert "unknown action 'teleport'" in err and "'s9'" in err and "expression" in err


@pytest.mark.parametrize(
    ("content", "fragment"),
    [("{not json", "is not JSON"), ("[1, 2]", "a plan is a JSON object, not list")],
)
def test_a_plan_file_that_is_not_a_json_object_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, fragment: str
) -> None:
    path = tmp_path / "plan.json"
    path.write_text(content, encoding="utf-8")
    assert cli.main(["run", "--plan", str(path), "Compute 1 + 1"]) == 2
    assert fragment in capsys.readouterr().err


def test_a_missing_plan_file_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--plan", str(tmp_path / "nope.json"), "Compute 1 + 1"]) == 2
    assert "nope.json" in capsys.readouterr().err
