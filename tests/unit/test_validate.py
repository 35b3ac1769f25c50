"""Plan validation: each bad plan is refused with a reason a planner (or a person) can act on."""

from __future__ import annotations

from typing import Any

import pytest

from officeray.contracts import MAX_STEPS_PER_PLAN, Plan
from officeray.testing import make_plan
from officeray.tools.builtin import BUILTIN_TOOLS
from officeray.validate import parse_plan, validate_plan

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
        raw_plan(steps=[]), None, "the plan has no steps; a plan needs at least one", id="rule-empty-steps"
    ),
    pytest.param(
        raw_plan(steps=[calc(f"s{i}", idempotency_key=f"k{i}") for i in range(MAX_STEPS_PER_PLAN + 1)]),
        None,
        f"the plan has {MAX_STEPS_PER_PLAN + 1} steps; at most {MAX_STEPS_PER_PLAN} are allowed",
        id="rule-too-many-steps",
    ),
    pytest.param(
        make_plan(TASK, [calc("s" * 65)]),
        None,
        "must be 1 to 64 characters without control characters",
        id="rule-step-id-too-long",
    ),
    pytest.param(
        make_plan(TASK, [calc("")]),
        None,
        "step id '' must be 1 to 64 characters",
        id="rule-step-id-empty",
    ),
    pytest.param(
        make_plan(TASK, [calc("s1\n")]),
        None,
        "without control characters",
        id="rule-step-id-newline",
    ),
    pytest.param(
        make_plan(TASK, [calc("s1", timeout_seconds=0)]),
        None,
        "step s1: timeout_seconds is 0; it must be between 1 and 3600",
        id="rule-timeout-zero",
    ),
    pytest.param(
        make_plan(TASK, [calc("s1", timeout_seconds=100_000)]),
        None,
        "step s1: timeout_seconds is 100000; it must be between 1 and 3600",
        id="rule-timeout-too-long",
    ),
    pytest.param(
        make_plan(TASK, [calc("s1", idempotency_key="")]),
        None,
        "step s1: idempotency_key must be 1 to 200 characters",
        id="rule-empty-idempotency-key",
    ),
    pytest.param(
        make_plan(TASK, [calc("s1", idempotency_key="k" * 201)]),
        None,
        "step s1: idempotency_key must be 1 to 200 characters",
        id="rule-long-idempotency-key",
    ),
    pytest.param(
        make_plan(TASK, [calc("s1", outputs_expectation={"type": 5})]),
        None,
        "step s1: outputs_expectation is not a valid JSON Schema",
        id="rule-bad-expectation-schema",
    ),
    pytest.param(
        make_plan(TASK, [calc("s1", outputs_expectation={"keys": "value"})]),
        None,
        "step s1: outputs_expectation is keys must be a list of output key names",
        id="rule-bad-expectation-keys",
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


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"extra_field": 1}, id="unknown-plan-property"),
        pytest.param({"confidence": None} | {}, id="confidence-null-dropped"),
        pytest.param({"metadata": {"priority": 7, "surprise": True}}, id="integer-priority-unknown-key"),
        pytest.param({"generated_at": "2026-12-05T10:00:00+01:00"}, id="offset-timestamp"),
    ],
)
def test_plans_valid_under_the_published_schema_are_accepted(changes: dict[str, Any]) -> None:
    data = raw_plan(**changes)
    if data.get("confidence") is None:
        data.pop("confidence")
    assert validate_plan(data, task_id=TASK, tools=TOOLS) == []


def test_step_ids_a_model_is_likely_to_write_are_accepted() -> None:
    plan = raw_plan(
        steps=[
            calc("step 1", idempotency_key="k1", outputs_expectation={"keys": ["value"]}),
            calc(
                "Step #2 (double it)",
                "x * 2",
                idempotency_key="k2",
                dependencies=["step 1"],
                inputs={"expression": "x * 2", "variables": {"x": {"from_step": "step 1", "path": "value"}}},
                outputs_expectation=None,
                unknown_step_field="kept out",
            ),
        ]
    )
    assert validate_plan(plan, task_id=TASK, tools=TOOLS) == []
    parsed = Plan.model_validate(plan)
    assert [s.step_id for s in parsed.steps] == ["step 1", "Step #2 (double it)"]
    assert parsed.steps[0].parallelizable is False  # the schema's default
    assert parsed.steps[0].timeout_seconds == 300
