"""The data contracts: the plan schema (seed fields, JSON Schema export), task requests, task records."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import jsonschema
import pytest
from pydantic import ValidationError

from officeray.contracts import (
    DEFAULT_STEP_TIMEOUT_SECONDS,
    MAX_TASK_DESCRIPTION_CHARS,
    ErrorType,
    Plan,
    PlanStep,
    StepError,
    StepResult,
    StepStatus,
    TaskRecord,
    TaskRequest,
    TaskStatus,
    plan_json_schema,
)
from officeray.testing import make_plan

SCHEMA = plan_json_schema()
STEP_SCHEMA = SCHEMA["properties"]["steps"]["items"]
METADATA_SCHEMA = SCHEMA["properties"]["metadata"]


def published_plan_dict() -> dict:
    """A plan in the published schema's JSON shape, every field given."""
    return {
        "plan_id": "plan-1",
        "task_id": "task-1",
        "generated_at": "2024-05-01T12:00:00Z",
        "confidence": 0.8,
        "metadata": {
            "priority": 3,
            "required_tools": ["math_calculator"],
            "estimated_cost_tokens": 1200,
            "estimated_duration_seconds": 2.5,
        },
        "steps": [
            {
                "step_id": "s1",
                "action": "math_calculator",
                "inputs": {"expression": "2 + 2"},
                "outputs_expectation": {"type": "object", "required": ["value"]},
                "timeout_seconds": 30,
                "parallelizable": True,
                "idempotency_key": "task-1:1:s1",
                "dependencies": [],
            },
            {
                "step_id": "s2",
                "action": "math_calculator",
                "inputs": {"expression": "x * 3", "variables": {"x": {"from_step": "s1", "path": "value"}}},
                "outputs_expectation": None,
                "timeout_seconds": 30,
                "parallelizable": False,
                "idempotency_key": "task-1:1:s2",
                "dependencies": ["s1"],
            },
        ],
    }


# -- the published schema and the model agree ------------------------------------------------------

_JSON_TYPES = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "array": list,
    "object": dict,
    "null": type(None),
}


def _json_types(value: object) -> set[str]:
    """The JSON Schema types ``value`` (as dumped to JSON) belongs to."""
    found = set()
    for name, py in _JSON_TYPES.items():
        if isinstance(value, py) and not (name in ("integer", "number") and isinstance(value, bool)):
            found.add(name)
    return found


def _check_against(schema: dict, dumped: dict) -> None:
    for key, prop in schema["properties"].items():
        assert key in dumped, f"the model does not give {key!r}"
        allowed = prop["type"] if isinstance(prop["type"], list) else [prop["type"]]
        value = dumped[key]
        if key == "confidence" and value is None:
            continue  # optional in the schema: absent there, null in the model's dump
        assert _json_types(value) & set(allowed), f"{key}: {value!r} is not of type {allowed}"


def test_the_shipped_schema_is_the_published_contract() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert set(SCHEMA["required"]) == {"plan_id", "task_id", "steps", "metadata"}
    assert set(STEP_SCHEMA["required"]) == {"step_id", "action", "inputs", "idempotency_key"}
    assert METADATA_SCHEMA["properties"]["priority"] == {
        "type": "integer",
        "minimum": 0,
        "description": METADATA_SCHEMA["properties"]["priority"]["description"],
    }
    assert STEP_SCHEMA["properties"]["outputs_expectation"]["type"] == ["object", "null"]
    assert "additionalProperties" not in SCHEMA and "additionalProperties" not in STEP_SCHEMA
    assert SCHEMA["properties"]["steps"].get("minItems") is None  # empty steps: a validator rule


def test_model_dump_has_the_schema_types_at_every_level() -> None:
    plan = Plan.model_validate(published_plan_dict())
    dumped = json.loads(plan.model_dump_json())
    jsonschema.validate(dumped, SCHEMA)
    _check_against(SCHEMA, dumped)
    _check_against(METADATA_SCHEMA, dumped["metadata"])
    for step in dumped["steps"]:
        _check_against(STEP_SCHEMA, step)


def test_model_defaults_are_the_schema_defaults() -> None:
    step = PlanStep.model_validate(
        {"step_id": "s1", "action": "python_exec", "inputs": {}, "idempotency_key": "k"}
    )
    for key, prop in STEP_SCHEMA["properties"].items():
        if "default" in prop:
            assert getattr(step, key) == prop["default"], key
    assert step.timeout_seconds == DEFAULT_STEP_TIMEOUT_SECONDS == 300
    assert step.parallelizable is False
    assert step.outputs_expectation is None
    assert step.dependencies == []


def test_plan_round_trips_through_json() -> None:
    plan = Plan.model_validate(published_plan_dict())
    assert plan.metadata.priority == 3
    assert plan.generated_at == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert plan.steps[0].outputs_expectation == {"type": "object", "required": ["value"]}
    assert plan.steps[1].dependencies == ["s1"]
    assert plan.steps[1].parallelizable is False
    assert Plan.model_validate_json(plan.model_dump_json()) == plan


def test_optional_fields_may_be_left_out() -> None:
    plan = Plan.model_validate(
        {
            "plan_id": "p",
            "task_id": "t",
            "metadata": {},
            "steps": [{"step_id": "step 1", "action": "python_exec", "inputs": {}, "idempotency_key": "k"}],
        }
    )
    assert plan.confidence is None
    assert plan.metadata.priority == 0
    assert plan.metadata.required_tools == []
    assert plan.generated_at is not None and plan.generated_at.tzinfo is not None


def test_unknown_properties_are_tolerated_and_dropped() -> None:
    data = published_plan_dict()
    data["reasoning"] = "because"
    data["metadata"]["model"] = "gpt"
    data["steps"][0]["why"] = "needed"
    plan = Plan.model_validate(data)
    dumped = plan.model_dump()
    assert "reasoning" not in dumped and "model" not in dumped["metadata"] and "why" not in dumped["steps"][0]


def test_a_timestamp_that_is_not_a_date_time_is_dropped() -> None:
    data = published_plan_dict()
    data["generated_at"] = "yesterday"
    assert Plan.model_validate(data).generated_at is None


def test_plans_stored_before_the_published_schema_still_load() -> None:
    data = published_plan_dict()
    data["metadata"]["priority"] = "high"
    data["steps"][0]["outputs_expectation"] = ["value"]
    data["steps"][1]["outputs_expectation"] = []
    plan = Plan.model_validate(data)
    assert plan.metadata.priority == 2
    assert plan.steps[0].outputs_expectation == {"keys": ["value"]}
    assert plan.steps[1].outputs_expectation is None


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda d: d.update(confidence=1.5), id="confidence-above-1"),
        pytest.param(lambda d: d.update(confidence=-0.1), id="confidence-below-0"),
        pytest.param(lambda d: d["metadata"].update(priority=-1), id="negative-priority"),
        pytest.param(lambda d: d["metadata"].update(priority="urgent"), id="word-priority"),
        pytest.param(lambda d: d["steps"][0].pop("idempotency_key"), id="no-idempotency-key"),
        pytest.param(lambda d: d["steps"][0].update(outputs_expectation=["value", 3]), id="expectation-list"),
        pytest.param(lambda d: d.pop("task_id"), id="no-task-id"),
    ],
)
def test_documents_invalid_under_the_schema_are_refused(change) -> None:
    data = published_plan_dict()
    change(data)
    assert list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(data)), "the schema accepts it"
    with pytest.raises(ValidationError):
        Plan.model_validate(data)


# -- task requests -------------------------------------------------------------------------------


def test_task_request_accepts_a_plain_description() -> None:
    request = TaskRequest(description="add 2 and 2")
    assert request.task_id is None
    assert request.allowed_tools is None
    assert request.max_iterations is None


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"description": ""}, id="empty"),
        pytest.param({"description": "   \n\t "}, id="blank"),
        pytest.param({"description": "x" * (MAX_TASK_DESCRIPTION_CHARS + 1)}, id="overlong"),
        pytest.param({"description": "ok", "priority": "high"}, id="extra-key"),
        pytest.param({"description": "ok", "task_id": "has/slash"}, id="bad-task-id"),
        pytest.param({"description": "ok", "max_iterations": 0}, id="zero-iterations"),
        pytest.param({}, id="missing-description"),
    ],
)
def test_task_request_refuses(data: dict) -> None:
    with pytest.raises(ValidationError):
        TaskRequest.model_validate(data)


def test_task_request_blank_description_message_is_clear() -> None:
    with pytest.raises(ValidationError, match="description must not be blank"):
        TaskRequest(description="   ")


def test_task_request_description_at_the_limit_is_accepted() -> None:
    assert (
        len(TaskRequest(description="x" * MAX_TASK_DESCRIPTION_CHARS).description)
        == MAX_TASK_DESCRIPTION_CHARS
    )


# -- task records --------------------------------------------------------------------------------


def _result(step_id: str, status: StepStatus) -> StepResult:
    return StepResult(step_id=step_id, action="python_exec", idempotency_key=f"t:{step_id}", status=status)


def test_task_record_public_view_has_progress_counts() -> None:
    record = TaskRecord(
        task_id="t",
        description="d",
        status=TaskStatus.EXECUTING,
        plan=make_plan("t", [{"step_id": "s1", "action": "python_exec", "inputs": {"code": "1"}}]),
        steps=[
            _result("s1", StepStatus.SUCCEEDED),
            _result("s2", StepStatus.SUCCEEDED),
            _result("s3", StepStatus.RUNNING),
            _result("s4", StepStatus.FAILED),
            _result("s5", StepStatus.SKIPPED),
            _result("s6", StepStatus.PENDING),
        ],
    )
    view = record.public_view()
    assert view["progress"] == {
        "pending": 1,
        "waiting_approval": 0,
        "running": 1,
        "succeeded": 2,
        "failed": 1,
        "skipped": 1,
        "total": 6,
    }
    assert view["status"] == "executing"
    assert view["task_id"] == "t"
    json.dumps(view)  # JSON-ready: datetimes and enums are already strings


def test_task_record_public_view_of_a_new_task() -> None:
    view = TaskRecord(task_id="t", description="d").public_view()
    assert view["status"] == "queued"
    assert view["progress"]["total"] == 0
    assert all(count == 0 for count in view["progress"].values())


def test_task_record_round_trips_through_json() -> None:
    failed = _result("s1", StepStatus.FAILED).model_copy(
        update={"error": StepError(type=ErrorType.TIMEOUT, message="too slow")}
    )
    record = TaskRecord(task_id="t", description="d", status=TaskStatus.FAILED, steps=[failed], error="x")
    assert TaskRecord.model_validate_json(record.model_dump_json()) == record


def test_task_status_is_final() -> None:
    assert {s for s in TaskStatus if s.is_final} == {
        TaskStatus.COMPLETED,
        TaskStatus.FAILED,
        TaskStatus.CANCELLED,
    }


def test_step_result_duration() -> None:
    result = _result("s1", StepStatus.SUCCEEDED)
    assert result.duration_s is None
    result.started_at = datetime(2024, 1, 1, 0, 0, 0, tzinfo=UTC)
    result.finished_at = datetime(2024, 1, 1, 0, 0, 2, 500_000, tzinfo=UTC)
    assert result.duration_s == 2.5


def test_the_readme_example_plan_is_valid_and_accepted() -> None:
    from pathlib import Path

    from officeray.tools.builtin import BUILTIN_TOOLS
    from officeray.validate import validate_plan

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## The plan contract", 1)[1]
    example = json.loads(section.split("```json", 1)[1].split("```", 1)[0])
    jsonschema.validate(example, SCHEMA)
    tools = {name: spec.input_model for name, spec in BUILTIN_TOOLS.items()}
    assert validate_plan(example, task_id="t1", tools=tools) == []
