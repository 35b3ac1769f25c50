"""Plan validation: every check a plan must pass before any of its steps runs.

A plan is first read with the :class:`~officeray.contracts.Plan` model, which accepts every document
valid under the published plan schema (``officeray/schemas/plan.schema.json``). officeray's stricter
rules follow, each a named rule (:data:`RULES`) whose message goes back to the planner as feedback
for its next attempt. :func:`check_plan` returns :class:`PlanProblem` s (rule and message);
:func:`validate_plan` returns the messages alone (empty when the plan is valid).

Where officeray is stricter than the schema, and why, is written down in ``docs/decisions.md``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from officeray.contracts import (
    MAX_IDEMPOTENCY_KEY_CHARS,
    MAX_STEP_ID_CHARS,
    MAX_STEP_TIMEOUT_SECONDS,
    MAX_STEPS_PER_PLAN,
    Plan,
    PlanStep,
)
from officeray.dag import find_cycle, iter_references
from officeray.expectations import expectation_error

ToolInputModels = Mapping[str, type[BaseModel]]
"""Registered tool name -> the pydantic model its inputs must satisfy."""

RULES: dict[str, str] = {
    "schema": "the document is not a plan under the published plan schema",
    "task_id": "the plan belongs to the task it is for",
    "steps_present": "a plan has at least one step",
    "max_steps": f"a plan has at most {MAX_STEPS_PER_PLAN} steps",
    "step_id": f"a step id is 1 to {MAX_STEP_ID_CHARS} printable characters",
    "unique_step_ids": "step ids are unique",
    "idempotency_key": f"an idempotency key is 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable characters",
    "timeout": f"timeout_seconds is between 1 and {MAX_STEP_TIMEOUT_SECONDS}",
    "dependencies": "dependencies name other steps of the plan, once each",
    "acyclic": "dependencies form no cycle",
    "registered_tool": "each action is a registered tool",
    "allowed_tool": "each action is allowed for the task",
    "tool_inputs": "each step's inputs match its tool's input model",
    "references": "a step using another step's output lists it in dependencies",
    "outputs_expectation": "outputs_expectation is a JSON Schema (or {'keys': [...]})",
}
"""Every rule a plan is checked against, by name, with what it requires."""

_PRINTABLE_RE = re.compile(r"[^\x00-\x1f\x7f]+")


@dataclass(frozen=True)
class PlanProblem:
    """Why a plan is refused: the rule it breaks (a key of :data:`RULES`) and a message for the planner."""

    rule: str
    message: str


def _pydantic_problems(rule: str, prefix: str, exc: ValidationError) -> list[PlanProblem]:
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        problems.append(
            PlanProblem(rule, f"{prefix}{where}: {err['msg']}" if where else f"{prefix}{err['msg']}")
        )
    return problems


def parse_plan(data: Plan | Mapping[str, Any]) -> tuple[Plan | None, list[str]]:
    """A :class:`Plan` from a model or from JSON-like data, with schema errors as reasons."""
    if isinstance(data, Plan):
        return data, []
    try:
        return Plan.model_validate(data), []
    except ValidationError as exc:
        return None, [p.message for p in _pydantic_problems("schema", "plan.", exc)]


def check_plan(
    data: Plan | Mapping[str, Any],
    *,
    task_id: str,
    tools: ToolInputModels,
    allowed_tools: Collection[str] | None = None,
) -> list[PlanProblem]:
    """Every rule ``data`` breaks as a plan for ``task_id``; an empty list when it is acceptable."""
    if isinstance(data, Plan):
        plan = data
    else:
        try:
            plan = Plan.model_validate(data)
        except ValidationError as exc:
            return _pydantic_problems("schema", "plan.", exc)
    problems: list[PlanProblem] = []
    if plan.task_id != task_id:
        problems.append(PlanProblem("task_id", f"plan.task_id is {plan.task_id!r}, expected {task_id!r}"))
    if not plan.steps:
        problems.append(PlanProblem("steps_present", "the plan has no steps; a plan needs at least one"))
        return problems
    if len(plan.steps) > MAX_STEPS_PER_PLAN:
        problems.append(
            PlanProblem(
                "max_steps",
                f"the plan has {len(plan.steps)} steps; at most {MAX_STEPS_PER_PLAN} are allowed "
                "(split the task, or do more in one step)",
            )
        )
        return problems

    seen: set[str] = set()
    for step in plan.steps:
        if step.step_id in seen:
            problems.append(
                PlanProblem("unique_step_ids", f"step id {step.step_id!r} is used more than once")
            )
        seen.add(step.step_id)
    for step in plan.steps:
        problems.extend(_check_step(step, seen, tools, allowed_tools))

    cycle = find_cycle(plan.steps)
    if cycle:
        problems.append(PlanProblem("acyclic", "dependencies form a cycle: " + " -> ".join(cycle)))
    return problems


def validate_plan(
    data: Plan | Mapping[str, Any],
    *,
    task_id: str,
    tools: ToolInputModels,
    allowed_tools: Collection[str] | None = None,
) -> list[str]:
    """Why ``data`` is not an acceptable plan for ``task_id``; an empty list when it is."""
    return [p.message for p in check_plan(data, task_id=task_id, tools=tools, allowed_tools=allowed_tools)]


def _check_form(step: PlanStep, where: str) -> list[PlanProblem]:
    """The step's id, idempotency key, timeout and expectation, each against its rule."""
    problems = []
    if not (1 <= len(step.step_id) <= MAX_STEP_ID_CHARS and _PRINTABLE_RE.fullmatch(step.step_id)):
        problems.append(
            PlanProblem(
                "step_id",
                f"step id {step.step_id!r} must be 1 to {MAX_STEP_ID_CHARS} characters without control "
                "characters (e.g. 's1')",
            )
        )
    key = step.idempotency_key
    if not (1 <= len(key) <= MAX_IDEMPOTENCY_KEY_CHARS and _PRINTABLE_RE.fullmatch(key)):
        problems.append(
            PlanProblem(
                "idempotency_key",
                f"{where}: idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters without "
                "control characters (e.g. 'TASK_ID:ITERATION:STEP_ID')",
            )
        )
    if not 1 <= step.timeout_seconds <= MAX_STEP_TIMEOUT_SECONDS:
        problems.append(
            PlanProblem(
                "timeout",
                f"{where}: timeout_seconds is {step.timeout_seconds}; it must be between 1 and "
                f"{MAX_STEP_TIMEOUT_SECONDS}",
            )
        )
    why = expectation_error(step.outputs_expectation)
    if why is not None:
        problems.append(PlanProblem("outputs_expectation", f"{where}: outputs_expectation is {why}"))
    return problems


def _check_dependencies(step: PlanStep, where: str, step_ids: set[str]) -> list[PlanProblem]:
    problems = []
    for dep in step.dependencies:
        if dep == step.step_id:
            problems.append(PlanProblem("dependencies", f"{where} depends on itself"))
        elif dep not in step_ids:
            problems.append(PlanProblem("dependencies", f"{where} depends on unknown step {dep!r}"))
    if len(set(step.dependencies)) != len(step.dependencies):
        problems.append(PlanProblem("dependencies", f"{where} lists a dependency twice"))
    return problems


def _check_step(
    step: PlanStep, step_ids: set[str], tools: ToolInputModels, allowed_tools: Collection[str] | None
) -> list[PlanProblem]:
    where = f"step {step.step_id}"
    problems = _check_form(step, where) + _check_dependencies(step, where, step_ids)
    if step.action not in tools:
        problems.append(
            PlanProblem(
                "registered_tool",
                f"{where}: unknown action {step.action!r}; registered tools: {', '.join(sorted(tools))}",
            )
        )
        return problems
    if allowed_tools is not None and step.action not in allowed_tools:
        problems.append(
            PlanProblem("allowed_tool", f"{where}: tool {step.action!r} is not allowed for this task")
        )

    try:
        tools[step.action].model_validate(step.inputs)
    except ValidationError as exc:
        problems.extend(_pydantic_problems("tool_inputs", f"{where} inputs.", exc))

    for ref in iter_references(step.inputs):
        if ref.from_step not in step.dependencies:
            problems.append(
                PlanProblem(
                    "references",
                    f"{where} uses the output of {ref.from_step!r} but does not list it in dependencies",
                )
            )
    return problems
