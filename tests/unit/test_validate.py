"""Plan validation: each bad plan is refused with a reason a planner (or a person) can act on."""

from __future__ import annotations

from typing import Any

import pytest

from officeray.contracts import Plan
from officeray.testing import make_plan
from officeray.validate import parse_plan, validate_plan
from tools_sandbox.catalog import BUILTIN_TOOLS

TOOLS = {name: spec.input_model for name, spec in BUILTIN_TOOLS.items()}
TASK = "task-1"


def calc(step_id: str, expression: str = "1 + 1", **extra: Any) -> dict[str, Any]:
    return {"step_id": step_id, "action": "math_calculator", "inputs": {"expression": expression}, **extra}


def raw_plan(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "plan_id": "p1",
        "task_id": TASK,
        "confidence": 0.9,
        "steps": [
            {
                "step_id": "s1",
                "action": "math_calculator",
                "inputs": {"expression": "1 + 1"},
                "idempotency_key": "k1",
            }
        ],
    }
    data.update(changes)
    return data


BAD_PLANS = [
    pytest.param(
        make_plan(TASK, [calc("s1"), calc("s1")]),
        None,
        "step id 's1' is used more than once",
        id="duplicate-ids",
    ),
    pytest.param(
        make_plan(TASK, [calc("s1", dependencies=["ghost"])]),
        None,
        "step s1 depends on unknown step 'ghost'",
        id="unknown-dependency",
    ),
    pytest.param(
        make_plan(TASK, [calc("s1", dependencies=["s1"])]),
        None,
        "step s1 depends on itself",
        id="self-dependency",
    ),
    pytest.param(
        make_plan(
            TASK,
            [
                calc("s1", dependencies=["s3"]),
                calc("s2", dependencies=["s1"]),
                calc("s3", dependencies=["s2"]),
            ],
        ),
        None,
        "dependencies form a cycle: s1 -> s3 -> s2 -> s1",
        id="cycle-shows-path",
    ),
    pytest.param(
        make_plan(TASK, [calc("s1"), calc("s2", dependencies=["s1", "s1"])]),
        None,
        "step s2 lists a dependency twice",
        id="duplicate-dependency",
    ),
    pytest.param(
        make_plan(TASK, [{"step_id": "s1", "action": "send_email", "inputs": {"q": "x"}}]),
        None,
        "step s1: unknown action 'send_email'; registered tools: " + ", ".join(sorted(TOOLS)),
        id="unknown-action-lists-tools",
    ),
    pytest.param(
        make_plan(TASK, [{"step_id": "s1", "action": "python_exec", "inputs": {"code": "print(1)"}}]),
        ["math_calculator"],
        "step s1: tool 'python_exec' is not allowed for this task",
        id="tool-not-allowed",
    ),
    pytest.param(
        make_plan(TASK, [{"step_id": "s1", "action": "math_calculator", "inputs": {}}]),
        None,
        "step s1 inputs.expression: Field required",
        id="inputs-missing-key",
    ),
    pytest.param(
        make_plan(TASK, [{"step_id": "s1", "action": "python_exec", "inputs": {"code": "1", "shell": True}}]),
        None,
        "step s1 inputs.shell: Extra inputs are not permitted",
        id="inputs-extra-key",
    ),
    pytest.param(
        make_plan(TASK, [{"step_id": "s1", "action": "math_calculator", "inputs": {"expression": 42}}]),
        None,
        "step s1 inputs.expression: Input should be a valid string",
        id="inputs-wrong-type",
    ),
    pytest.param(
        make_plan(
            TASK,
            [
                {"step_id": "s1", "action": "python_exec", "inputs": {"code": "print(5)"}},
                {
                    "step_id": "s2",
                    "action": "python_exec",
                    "inputs": {"code": "print(input())", "stdin": {"from_step": "s1", "path": "stdout"}},
                },
            ],
        ),
        None,
        "step s2 uses the output of 's1' but does not list it in dependencies",
        id="reference-not-in-dependencies",
    ),
    pytest.param(
        make_plan("other-task", [calc("s1")]),
        None,
        "plan.task_id is 'other-task', expected 'task-1'",
        id="task-id-mismatch",
    ),
    pytest.param(
        raw_plan(confidence=2.0),
        None,
        "plan.confidence: Input should be less than or equal to 1",
        id="schema-confidence",
    ),
    pytest.param(
        raw_plan(steps=[]), None, "plan.steps: List should have at least 1 item", id="schema-empty-steps"
    ),
    pytest.param(
        raw_plan(plan_id=None),
        None,
        "plan.plan_id: Input should be a valid string",
        id="schema-null-plan-id",
    ),
    pytest.param(
        {k: v for k, v in raw_plan().items() if k != "task_id"},
        None,
        "plan.task_id: Field required",
        id="schema-missing-task-id",
    ),
    pytest.param(
        raw_plan(steps=[{"step_id": "s1", "action": "math_calculator", "inputs": {"expression": "1"}}]),
        None,
        "plan.steps.0.idempotency_key: Field required",
        id="schema-step-missing-key",
    ),
    pytest.param(
        raw_plan(extra_field=1), None, "plan.extra_field: Extra inputs are not permitted", id="schema-extra"
    ),
]


@pytest.mark.parametrize(("plan", "allowed", "expected"), BAD_PLANS)
def test_bad_plan_is_refused_with_reason(plan: Plan | dict, allowed: list[str] | None, expected: str) -> None:
    reasons = validate_plan(plan, task_id=TASK, tools=TOOLS, allowed_tools=allowed)
    assert reasons, "the plan should have been refused"
    assert any(expected in reason for reason in reasons), reasons


def test_valid_plan_with_references_has_no_reasons() -> None:
    plan = make_plan(
        TASK,
        [
            {"step_id": "s1", "action": "math_calculator", "inputs": {"expression": "6 * 7"}},
            {
                "step_id": "s2",
                "action": "math_calculator",
                "inputs": {"expression": "x + 1", "variables": {"x": {"from_step": "s1", "path": "value"}}},
                "dependencies": ["s1"],
            },
            {
                "step_id": "s3",
                "action": "python_exec",
                "inputs": {"code": "print(input())", "stdin": {"from_step": "s2"}},
                "dependencies": ["s2"],
                "parallelizable": False,
            },
        ],
    )
    assert validate_plan(plan, task_id=TASK, tools=TOOLS) == []
    assert (
        validate_plan(plan, task_id=TASK, tools=TOOLS, allowed_tools=["math_calculator", "python_exec"]) == []
    )


def test_valid_raw_dict_plan_has_no_reasons() -> None:
    assert validate_plan(raw_plan(), task_id=TASK, tools=TOOLS) == []


def test_every_problem_is_reported_not_just_the_first() -> None:
    plan = make_plan(
        TASK,
        [
            {"step_id": "s1", "action": "send_email", "inputs": {}},
            {"step_id": "s2", "action": "math_calculator", "inputs": {}, "dependencies": ["ghost"]},
        ],
    )
    reasons = validate_plan(plan, task_id="another", tools=TOOLS)
    joined = "\n".join(reasons)
    assert "expected 'another'" in joined
    assert "unknown action 'send_email'" in joined
    assert "unknown step 'ghost'" in joined
    assert "inputs.expression: Field required" in joined


def test_schema_errors_stop_before_graph_checks() -> None:
    # A plan that does not parse gives only schema reasons (there is no plan to check further).
    reasons = validate_plan(raw_plan(confidence=2.0, task_id="other"), task_id=TASK, tools=TOOLS)
    assert reasons == [r for r in reasons if r.startswith("plan.confidence")]
    assert len(reasons) == 1


def test_parse_plan_passes_plans_through_and_reports_schema_errors() -> None:
    plan = make_plan(TASK, [calc("s1")])
    assert parse_plan(plan) == (plan, [])
    parsed, reasons = parse_plan(raw_plan())
    assert isinstance(parsed, Plan) and reasons == []
    parsed, reasons = parse_plan(raw_plan(confidence="very"))
    assert parsed is None
    assert reasons and reasons[0].startswith("plan.confidence:")
