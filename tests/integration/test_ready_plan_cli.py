"""``officeray run --plan FILE "TASK"``: the ready plan runs on a local cluster without the planner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.conftest import require_docker
from tests.integration.test_cli import _officeray

pytestmark = pytest.mark.integration


def test_run_with_a_ready_plan_completes_without_the_planner(tmp_path: Path) -> None:
    require_docker()
    plan = {
        "plan_id": "from-a-file",
        "task_id": "written-before-the-task-existed",
        "metadata": {"priority": 0, "required_tools": ["math_calculator"]},
        "steps": [
            {"step_id": "s1", "action": "math_calculator", "inputs": {"expression": "6 * 7"},
             "idempotency_key": "s1"},
        ],
    }  # fmt: skip
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan), encoding="utf-8")

    proc = _officeray("run", "--plan", str(path), "Six times seven", "--json", tmp_path=tmp_path)

    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout)
    assert record["status"] == "completed" and record["result"] == 42
    assert [call["role"] for call in record["model_calls"]] == ["reviewer"]
    assert record["plan"]["plan_id"] == "from-a-file" and record["plan"]["task_id"] == record["task_id"]
