"""The published plan schema is the contract: every document valid under it is accepted by the plan
model, and refused (if at all) only by one of officeray's named validator rules.

Documents are generated from the shipped schema itself (``hypothesis-jsonschema``), so a change of
the schema or of the model that breaks the promise fails here.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from officeray.contracts import Plan, plan_json_schema
from officeray.tools.builtin import BUILTIN_TOOLS
from officeray.validate import RULES, check_plan

TOOLS = {name: spec.input_model for name, spec in BUILTIN_TOOLS.items()}
EXAMPLES = 150
"""Generated documents per property (the suite's budget: about a second each)."""

SCHEMA = plan_json_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


pytestmark = pytest.mark.slow  # hundreds of generated plans: the full suite runs them


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(from_schema(SCHEMA))
def test_every_schema_valid_plan_is_read_and_refused_only_by_named_rules(document: dict[str, Any]) -> None:
    assert not list(VALIDATOR.iter_errors(document))  # the generator's side of the bargain
    plan = Plan.model_validate(document)  # never a schema error
    assert len(plan.steps) == len(document["steps"])
    for problem in check_plan(document, task_id=document["task_id"], tools=TOOLS):
        assert problem.rule in RULES and problem.rule != "schema", problem


_CALC_STEP = {
    "type": "object",
    "required": ["step_id", "action", "inputs", "idempotency_key"],
    "properties": {
        "step_id": {"type": "string", "pattern": r"^[A-Za-z0-9 _#().-]{1,40}$"},
        "action": {"const": "math_calculator"},
        "inputs": {
            "type": "object",
            "required": ["expression"],
            "properties": {"expression": {"enum": ["1 + 1", "2 ** 10", "(3 - 1) / 4"]}},
            "additionalProperties": False,
        },
        "outputs_expectation": {"oneOf": [{"type": "null"}, {"const": {"keys": ["value"]}}]},
        "timeout_seconds": {"type": "integer", "minimum": 1, "maximum": 3600},
        "parallelizable": {"type": "boolean"},
        "idempotency_key": {"type": "string", "pattern": r"^[a-z0-9:-]{1,50}$"},
        "dependencies": {"const": []},
    },
}


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    from_schema(
        {
            **SCHEMA,
            "properties": {
                **SCHEMA["properties"],
                "steps": {"type": "array", "minItems": 1, "maxItems": 8, "items": _CALC_STEP},
            },
        }
    ),
    st.data(),
)
def test_schema_valid_plans_that_keep_the_rules_are_accepted(document: dict[str, Any], data: Any) -> None:
    """The narrowed documents keep every rule except, maybe, unique ids: all else is accepted."""
    assert not list(VALIDATOR.iter_errors(document))
    rules = {p.rule for p in check_plan(document, task_id=document["task_id"], tools=TOOLS)}
    ids = [s["step_id"] for s in document["steps"]]
    assert rules == (set() if len(set(ids)) == len(ids) else {"unique_step_ids"})
