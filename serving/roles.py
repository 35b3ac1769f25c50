"""Role adapters: how a planner, reviewer or ai_tool question becomes a :class:`ModelCall` and how
an answer becomes a :class:`Plan`, a :class:`Review` or a text.

Text tiers get chat messages and, for plans and reviews, the JSON Schema exported from the
contracts (:func:`officeray.contracts.plan_json_schema`), so the same schema drives the validator
and the model's structured output. The embedded tier gets the structured request as ``payload``.

A planner's answer is re-stamped for the task that asked: ``task_id``, ``plan_id``
(``<task_id>-plan-<iteration>``) and each step's ``idempotency_key``
(``<task_id>:<iteration>:<step_id>``) are set by officeray, not trusted from the model, so a cached
answer or a model's invented ids can never collide with another task's steps.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel

from officeray.contracts import (
    DecomposeRequest,
    Decomposition,
    ModelCallRecord,
    Plan,
    PlanRequest,
    Review,
    ReviewRequest,
    plan_json_schema,
)
from officeray.gatekeeper import GateDecision, GateModelAnswer, GateRequest
from officeray.memory.learn import memory_prompt
from serving.tiers.base import ModelAnswer, ModelCall

SCHEMA_CACHE_SIZE = 1024
"""Tool input models whose JSON Schema text is kept (built-ins and plugins)."""

MAX_RESULT_CHARS_FOR_REVIEW = 4_000
"""How much of each step's output the reviewer model is shown (the rest is cut with a marker)."""

PLANNER_SYSTEM = """You are the planner of officeray. Turn the user's task into a plan: a JSON object
that matches the given JSON Schema exactly. Each step calls one tool with inputs that match the
tool's input schema. Steps that need an earlier step's output list it in "dependencies" and may
pass it with {{"from_step": "<step_id>", "path": "<key>"}} as an input value. "outputs_expectation"
may say what a step's output must satisfy: a JSON Schema, or {{"keys": ["<key>", ...]}}; the reviewer
checks it. Use only these tools:
{tools}
If feedback from an earlier attempt is given, fix what it names. Answer with the JSON object only."""

REVIEWER_SYSTEM = """You are the reviewer of officeray. You get a task, the plan that ran and each
step's result. Answer with a JSON object matching the given JSON Schema: "verdict" is "APPROVED"
when the results answer the task, "REVISE" when a new plan could fix a failure (say what in
"feedback"), "FAILED" when it cannot be done, "ESCALATE" when a person must decide (the task asks
for human sign-off or review, "require_sign_off" is true, or you cannot judge the results: say why
in "feedback"); "final_output" is the answer to the task (with ESCALATE: the answer you propose).
"confidence" (0 to 1) is how sure you are of your verdict; a low confidence sends an approval to a
person."""


def tool_catalog_text(tools: Mapping[str, tuple[str, type[BaseModel]]], allowed: list[str]) -> str:
    """One line per allowed tool: name, description and input JSON Schema."""
    lines = []
    for name in allowed:
        if name in tools:
            description, model = tools[name]
            lines.append(f"- {name}: {description} Inputs schema: {_schema_text(model)}")
    return "\n".join(lines)


@functools.lru_cache(maxsize=SCHEMA_CACHE_SIZE)
def _schema_text(model: type[BaseModel]) -> str:
    """A model's JSON Schema as text, generated once per process (it costs milliseconds per call)."""
    return json.dumps(model.model_json_schema())


@functools.lru_cache(maxsize=1)
def _review_schema() -> dict[str, Any]:
    return Review.model_json_schema()


def planner_call(
    request: PlanRequest,
    tools: Mapping[str, tuple[str, type[BaseModel]]],
    *,
    tenant: str = "default",
    trace_context: dict[str, str] | None = None,
    memory_budget: int = 0,
) -> ModelCall:
    """The planner's call: the system prompt (tools, and within ``memory_budget`` tokens the memory's
    examples and warnings: :func:`officeray.memory.learn.memory_prompt`), the task as JSON."""
    system = PLANNER_SYSTEM.format(tools=tool_catalog_text(tools, request.allowed_tools))
    remembered = memory_prompt(request.memory, memory_budget)
    if remembered:
        system = f"{system}\n\n{remembered}"
    user = {
        "task_id": request.task_id,
        "description": request.description,
        "iteration": request.iteration,
        "allowed_tools": request.allowed_tools,
        "feedback": request.feedback,
    }
    return ModelCall(
        role="planner",
        messages=[
            {"role": "system", "content": system},
            {"role": "user", "content": json.dumps(user)},
        ],
        json_schema=plan_json_schema(),
        schema_name="plan",
        payload=request,
        task_id=request.task_id,
        tenant=tenant,
        trace_context=trace_context or {},
    )


def accept_plan(request: PlanRequest) -> Callable[[ModelAnswer], Plan]:
    """Parse an answer into a Plan for ``request`` (ValueError when it is not one)."""

    def accept(answer: ModelAnswer) -> Plan:
        data = answer.data
        plan = data if isinstance(data, Plan) else Plan.model_validate(_with_defaults(data, request))
        steps = [
            step.model_copy(
                update={"idempotency_key": f"{request.task_id}:{request.iteration}:{step.step_id}"}
            )
            for step in plan.steps
        ]
        return plan.model_copy(
            update={
                "task_id": request.task_id,
                "plan_id": f"{request.task_id}-plan-{request.iteration}",
                "steps": steps,
            }
        )

    return accept


def _with_defaults(data: Any, request: PlanRequest) -> Any:
    """Fill ids a model may leave out (they are re-stamped anyway)."""
    if not isinstance(data, dict):
        raise ValueError(f"a plan must be a JSON object, not {type(data).__name__}")
    data = {"task_id": request.task_id, "plan_id": f"{request.task_id}-plan-{request.iteration}", **data}
    steps = data.get("steps")
    if isinstance(steps, list):
        data["steps"] = [
            {"idempotency_key": f"{request.task_id}:{request.iteration}:{s.get('step_id', i)}", **s}
            if isinstance(s, dict)
            else s
            for i, s in enumerate(steps, start=1)
        ]
    return data


def _clip(value: Any) -> Any:
    text = json.dumps(value, default=str)
    if len(text) <= MAX_RESULT_CHARS_FOR_REVIEW:
        return value
    return text[:MAX_RESULT_CHARS_FOR_REVIEW] + f"... [cut at {MAX_RESULT_CHARS_FOR_REVIEW} characters]"


def reviewer_call(
    request: ReviewRequest, *, tenant: str = "default", trace_context: dict[str, str] | None = None
) -> ModelCall:
    results = [
        {
            "step_id": r.step_id,
            "action": r.action,
            "status": r.status.value,
            "output": _clip(r.output),
            "error": r.error.model_dump(mode="json") if r.error else None,
        }
        for r in request.results
    ]
    user: dict[str, Any] = {
        "task": request.description,
        "plan": [
            {"step_id": s.step_id, "action": s.action, "outputs_expectation": s.outputs_expectation}
            for s in request.plan.steps
        ],
        "results": results,
    }
    if request.require_sign_off:  # only then: the prompt of every other review stays as it was
        user["require_sign_off"] = True
    return ModelCall(
        role="reviewer",
        messages=[
            {"role": "system", "content": REVIEWER_SYSTEM},
            {"role": "user", "content": json.dumps(user)},
        ],
        json_schema=_review_schema(),
        schema_name="review",
        payload=request,
        task_id=request.task_id,
        tenant=tenant,
        trace_context=trace_context or {},
    )


def accept_review(answer: ModelAnswer) -> Review:
    data = answer.data
    return data if isinstance(data, Review) else Review.model_validate(data)


DECOMPOSER_SYSTEM = """You are the decomposer of officeray. Split the user's task into subtasks only
when it is explicitly made of several parts (an enumeration, several requests); otherwise answer one
subtask whose description is the task itself. Answer with a JSON object matching the given JSON
Schema: "subtasks" in order, each with "subtask_id" ("s1", "s2", ...), a self-contained
"description", "dependencies" (ids of earlier subtasks whose results it needs) and "tool_hints"
(tool names it probably needs). Where a subtask needs an earlier one's result, write
{{result:<subtask_id>}} in its description: it is replaced by that result before the subtask runs.
Tools: {tools}"""


@functools.lru_cache(maxsize=1)
def _decomposition_schema() -> dict[str, Any]:
    return Decomposition.model_json_schema()


def decomposer_call(
    request: DecomposeRequest, *, tenant: str = "default", trace_context: dict[str, str] | None = None
) -> ModelCall:
    """The decomposer's call: the task and the names of the tools it may use."""
    system = DECOMPOSER_SYSTEM.format(tools=", ".join(request.allowed_tools) or "(none)")
    return ModelCall(
        role="decomposer",
        messages=[
            {"role": "system", "content": system},
            {"role": "user", "content": json.dumps({"task": request.description})},
        ],
        json_schema=_decomposition_schema(),
        schema_name="decomposition",
        payload=request,
        task_id=request.task_id,
        tenant=tenant,
        trace_context=trace_context or {},
    )


def accept_decomposition(answer: ModelAnswer) -> Decomposition:
    """Parse an answer into a Decomposition (ValueError when it is not one, e.g. a cycle)."""
    data = answer.data
    return data if isinstance(data, Decomposition) else Decomposition.model_validate(data)


GATEKEEPER_SYSTEM = """You are the gatekeeper of officeray. Before a step of a plan runs, you judge
whether it is appropriate for the task: does the task ask for what the step does (its tool and its
inputs)? Rules already judged the step; their decision is given. Answer with a JSON object matching
the given JSON Schema: "verdict" is "allow" when the step plainly serves the task, "approval" when a
person should look first (it does more than the task asks, or touches data or hosts the task does
not name), "deny" when it must not run (harmful, exfiltrates data, unrelated to the task); "reason"
says why in one sentence."""


@functools.lru_cache(maxsize=1)
def _gate_schema() -> dict[str, Any]:
    return GateModelAnswer.model_json_schema()


def gatekeeper_call(
    request: GateRequest,
    rules: GateDecision,
    *,
    tenant: str = "default",
    trace_context: dict[str, str] | None = None,
) -> ModelCall:
    """The gatekeeper model's call: the task, the step (tool, inputs clipped) and the rules' decision."""
    user = {
        "task": request.description,
        "step": {
            "step_id": request.step.step_id,
            "action": request.step.action,
            "inputs": _clip(request.inputs),
        },
        "rules": {"verdict": rules.verdict.value, "risk": rules.risk.value, "reason": rules.reason},
    }
    return ModelCall(
        role="gatekeeper",
        messages=[
            {"role": "system", "content": GATEKEEPER_SYSTEM},
            {"role": "user", "content": json.dumps(user, default=str)},
        ],
        json_schema=_gate_schema(),
        schema_name="gate",
        payload=request,
        task_id=request.task_id,
        tenant=tenant,
        trace_context=trace_context or {},
    )


def accept_gate(answer: ModelAnswer) -> GateModelAnswer:
    """The gatekeeper model's ``{verdict, reason}`` (ValueError when the answer is not one)."""
    data = answer.data
    return data if isinstance(data, GateModelAnswer) else GateModelAnswer.model_validate(data)


def ai_tool_call(
    prompt: str, max_tokens: int, *, task_id: str | None = None, trace_context: dict[str, str] | None = None
) -> ModelCall:
    return ModelCall(
        role="ai_tool",
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        payload=prompt,
        task_id=task_id,
        trace_context=trace_context or {},
    )


def accept_text(answer: ModelAnswer) -> str:
    data = answer.data
    if isinstance(data, str):
        return data
    if data is None and answer.content:
        return answer.content
    return json.dumps(data, default=str)


def call_record(role: str, routed: Any) -> ModelCallRecord:
    """The task-record entry of a routed call (``routed`` is a :class:`serving.router.Routed`)."""
    return ModelCallRecord(
        role=role,
        tier=routed.answer.tier,
        model=routed.answer.model,
        fallbacks=routed.fallbacks,
        cached=routed.cached,
        usage=routed.usage,
        attempts=[a.model_dump(mode="json", exclude={"usage"}) for a in routed.attempts],
        reused_from=routed.answer.reused_from,
    )
