"""Plan validation: every check a plan must pass before any of its steps runs.

:func:`validate_plan` returns a list of human-readable reasons (empty when the plan is valid). The
workflow sends those reasons back to the planner as feedback for its next attempt.

Checks, in order: the plan schema (the JSON Schema exported by :func:`officeray.contracts.plan_json_schema`
is generated from the same pydantic model), the plan belongs to the task, step ids are unique,
dependencies exist and form a DAG, each action is a registered tool allowed for this task, each
step's inputs match the tool's input model, and every ``{"from_step": ...}`` reference points at a
step listed in the step's dependencies.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from officeray.contracts import Plan
from officeray.dag import find_cycle, iter_references

ToolInputModels = Mapping[str, type[BaseModel]]
"""Registered tool name -> the pydantic model its inputs must satisfy."""


def _pydantic_reasons(prefix: str, exc: ValidationError) -> list[str]:
    reasons = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        reasons.append(f"{prefix}{where}: {err['msg']}" if where else f"{prefix}{err['msg']}")
    return reasons


def parse_plan(data: Plan | Mapping[str, Any]) -> tuple[Plan | None, list[str]]:
    """A :class:`Plan` from a model or from JSON-like data, with schema errors as reasons."""
    if isinstance(data, Plan):
        return data, []
    try:
        return Plan.model_validate(data), []
    except ValidationError as exc:
        return None, _pydantic_reasons("plan.", exc)


def validate_plan(
    data: Plan | Mapping[str, Any],
    *,
    task_id: str,
    tools: ToolInputModels,
    allowed_tools: Collection[str] | None = None,
) -> list[str]:
    """Why ``data`` is not an acceptable plan for ``task_id``; an empty list when it is."""
    plan, reasons = parse_plan(data)
    if plan is None:
        return reasons
    if plan.task_id != task_id:
        reasons.append(f"plan.task_id is {plan.task_id!r}, expected {task_id!r}")

    ids = [s.step_id for s in plan.steps]
    seen: set[str] = set()
    for step_id in ids:
        if step_id in seen:
            reasons.append(f"step id {step_id!r} is used more than once")
        seen.add(step_id)

    for step in plan.steps:
        reasons.extend(_check_step(step, seen, tools, allowed_tools))

    cycle = find_cycle(plan.steps)
    if cycle:
        reasons.append("dependencies form a cycle: " + " -> ".join(cycle))
    return reasons


def _check_step(
    step: Any, step_ids: set[str], tools: ToolInputModels, allowed_tools: Collection[str] | None
) -> list[str]:
    reasons = []
    where = f"step {step.step_id}"
    for dep in step.dependencies:
        if dep == step.step_id:
            reasons.append(f"{where} depends on itself")
        elif dep not in step_ids:
            reasons.append(f"{where} depends on unknown step {dep!r}")
    if len(set(step.dependencies)) != len(step.dependencies):
        reasons.append(f"{where} lists a dependency twice")

    if step.action not in tools:
        reasons.append(
            f"{where}: unknown action {step.action!r}; registered tools: {', '.join(sorted(tools))}"
        )
        return reasons
    if allowed_tools is not None and step.action not in allowed_tools:
        reasons.append(f"{where}: tool {step.action!r} is not allowed for this task")

    try:
        tools[step.action].model_validate(step.inputs)
    except ValidationError as exc:
        reasons.extend(_pydantic_reasons(f"{where} inputs.", exc))

    for ref in iter_references(step.inputs):
        if ref.from_step not in step.dependencies:
            reasons.append(
                f"{where} uses the output of {ref.from_step!r} but does not list it in dependencies"
            )
    return reasons
