"""The event schema: building events under the redaction settings, recording them as span events,
reading them back; and where they are emitted (model router, tool runner, workflow), each checked
on an in-memory tracer. Also the scrubbing of prompts before an ``openai`` tier (against the
loopback fake OpenAI server)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan

from officeray.config import OpenAITierConfig, RedactionSettings, Settings, WorkflowSettings
from officeray.contracts import (
    ModelCallRecord,
    ModelUsage,
    PlanStep,
    Review,
    Reviewed,
    ReviewRequest,
    ReviewVerdict,
    TaskRequest,
    TaskStatus,
)
from officeray.event_schema import (
    EVENT_ATTRIBUTE,
    EVENT_TYPES,
    TelemetryEvent,
    emit_event,
    event_from_attributes,
    events_of,
    make_event,
    record_event,
)
from officeray.redaction import CARD, EMAIL, HASH_PREFIX, PHONE, SECRET, TRUNCATION_MARK
from officeray.testing import (
    FunctionExecutor,
    InMemoryApprovals,
    InMemoryStore,
    ScriptedPlanner,
    ScriptedReviewer,
    in_memory_tracer,
    make_plan,
)
from officeray.tools.builtin import BUILTIN_TOOLS
from officeray.workflow import Workflow
from serving.router import Router, RouterExhaustedError
from serving.testing import FakeClock, ScriptedTier, chain
from serving.tiers import build_tier
from serving.tiers.base import ModelAnswer, ModelCall, ServerError, Usage
from tests.fake_openai_server import FakeOpenAIServer

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
T1 = T0 + timedelta(milliseconds=1500)
MODES = RedactionSettings(
    prompts="drop", responses="hash", tool_args="full", tool_results="truncate", max_chars=16
)


def events_in(spans: list[ReadableSpan], name: str | None = None) -> list[TelemetryEvent]:
    return [e for s in spans if name is None or s.name == name for e in events_of(s.events)]


# --------------------------------------------------------------------------------------------------
# Building events
# --------------------------------------------------------------------------------------------------

CONTENT = {"to": "bob@example.com", "body": "x" * 40}


@pytest.mark.parametrize(
    ("event_type", "key", "expected"),
    [
        ("llm_request", "prompt", None),  # prompts: drop
        ("llm_response", "response", "hash"),  # responses: hash
        ("review", "feedback", "hash"),  # responses: hash
        ("tool_request", "args", {"to": EMAIL, "body": "x" * 40}),  # tool_args: full (scrubbed)
        ("tool_response", "result", '{"body":"xxxxxxx' + TRUNCATION_MARK.format(omitted=58)),  # truncate
        ("approval", "reason", {"to": EMAIL, "body": "x" * 40}),  # in full, scrubbed
    ],
)
def test_each_kind_of_content_is_recorded_as_its_setting_says(
    event_type: Any, key: str, expected: Any
) -> None:
    event = make_event(event_type, agent="runner", redaction=MODES, content=CONTENT, details={"action": "a"})
    assert event.redacted
    assert event.payload["action"] == "a"
    if expected is None:
        assert key not in event.payload
    elif expected == "hash":
        assert event.payload[key].startswith(HASH_PREFIX)
    else:
        assert event.payload[key] == expected


def test_the_default_settings_truncate_and_scrub() -> None:
    event = make_event("llm_request", agent="planner", content="mail bob@example.com " + "y" * 600)
    prompt = event.payload["prompt"]
    assert prompt.startswith(f"mail {EMAIL} yyy") and prompt.endswith(TRUNCATION_MARK.format(omitted=109))
    assert event.redacted


def test_nothing_to_redact_is_not_marked_redacted() -> None:
    event = make_event(
        "tool_request", agent="runner", content={"expression": "6 * 7"}, details={"action": "m"}
    )
    assert not event.redacted
    assert event.payload == {"action": "m", "args": {"expression": "6 * 7"}}


def test_details_and_errors_are_scrubbed_and_the_error_clipped() -> None:
    event = make_event(
        "approval",
        agent="orchestrator",
        details={"decided_by": "alice@example.com"},
        error="card 4111 1111 1111 1111 refused " + "z" * 2000,
        started_at=T0,
        ended_at=T1,
    )
    assert event.payload == {"decided_by": EMAIL}
    assert (
        event.error is not None
        and event.error.startswith(f"card {CARD} refused zz")
        and len(event.error) < 1100
    )
    assert event.redacted
    assert event.duration_ms == 1500.0


def test_scrubbing_off_keeps_details_and_errors() -> None:
    settings = RedactionSettings(scrub_pii=False, tool_args="full")
    event = make_event(
        "tool_request", agent="runner", redaction=settings, content="bob@example.com", error="bob@example.com"
    )
    assert event.payload == {"args": "bob@example.com"} and event.error == "bob@example.com"
    assert not event.redacted


def test_the_schema_refuses_unknown_types_and_fields() -> None:
    with pytest.raises(ValueError):
        TelemetryEvent(event_type="llm_call", agent="planner")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        TelemetryEvent.model_validate({"event_type": "review", "agent": "reviewer", "extra": 1})
    assert set(EVENT_TYPES) == {
        "llm_request",
        "llm_response",
        "tool_request",
        "tool_response",
        "approval",
        "review",
        "gatekeeper",
    }


# --------------------------------------------------------------------------------------------------
# Span events
# --------------------------------------------------------------------------------------------------


def test_record_event_adds_a_span_event_with_the_json_and_flat_attributes() -> None:
    tracer, exporter = in_memory_tracer()
    event = make_event(
        "llm_response",
        agent="planner",
        content="ok",
        task_id="t1",
        step_id="s1",
        error="boom",
        started_at=T0,
        ended_at=T1,
        tokens_in=10,
        tokens_out=3,
    )
    with tracer.start_as_current_span("model.call") as span:
        record_event(span, event)
    (finished,) = exporter.get_finished_spans()
    (span_event,) = finished.events
    assert span_event.name == "llm_response"
    attributes = dict(span_event.attributes or {})
    assert json.loads(str(attributes[EVENT_ATTRIBUTE]))["event_type"] == "llm_response"
    assert event_from_attributes(attributes) == event
    assert attributes["officeray.task_id"] == "t1" and attributes["officeray.step_id"] == "s1"
    assert attributes["officeray.agent"] == "planner" and attributes["officeray.error"] == "boom"
    assert attributes["officeray.tokens_in"] == 10 and attributes["officeray.tokens_out"] == 3
    assert attributes["officeray.duration_ms"] == 1500.0
    assert span_event.timestamp == int(T1.timestamp()) * 10**9 + 500 * 10**6


def test_emit_event_does_nothing_on_a_span_that_is_not_recording() -> None:
    span = trace.NoOpTracer().start_span("x")
    assert emit_event(span, "review", agent="reviewer", content="bob@example.com") is None


def test_events_are_read_back_from_stored_span_dicts() -> None:
    event = make_event("review", agent="reviewer", content="fine", task_id="t1")
    stored = [
        {"name": "review", "time_ns": 1, "attributes": {EVENT_ATTRIBUTE: event.to_json()}},
        {"name": "fallback", "time_ns": 2, "attributes": {"officeray.reason": "x"}},
        {"name": "review", "time_ns": 3, "attributes": {EVENT_ATTRIBUTE: "{not json"}},
        {
            "name": "review",
            "time_ns": 4,
            "attributes": {EVENT_ATTRIBUTE: '{"event_type": "nope", "agent": "x"}'},
        },
    ]
    assert events_of(stored) == [event]
    assert events_of(None) == []


# --------------------------------------------------------------------------------------------------
# The model router: llm_request and llm_response on the model.call span
# --------------------------------------------------------------------------------------------------


def _router(*tiers: ScriptedTier, redaction: RedactionSettings | None = None) -> tuple[Router, Any]:
    tracer, exporter = in_memory_tracer()
    clock = FakeClock()
    router = Router(
        "planner",
        chain(*tiers),
        _router_settings(),
        tracer=tracer,
        clock=clock,
        sleep=clock.sleep,
        rand=lambda: 0.5,
        redaction=redaction,
        now=lambda: T0,
    )
    return router, exporter


def _router_settings() -> Any:
    from officeray.config import RouterSettings

    return RouterSettings.model_validate({"breaker": {"failure_threshold": 5, "cooldown_s": 30.0}})


def _call() -> ModelCall:
    return ModelCall(
        role="planner", messages=[{"role": "user", "content": "plan it; mail bob@example.com"}], task_id="t1"
    )


async def test_the_router_records_the_request_and_the_answer() -> None:
    answer = ModelAnswer(
        content="the plan, call +1 555 123 4567", usage=Usage(prompt_tokens=12, completion_tokens=5)
    )
    failing = ScriptedTier("openai", "big", [ServerError("HTTP 500")])
    router, exporter = _router(failing, ScriptedTier("embedded", "rules", [answer]))

    routed = await router.call(_call(), lambda a: a.content)

    assert routed.fallbacks == 1
    request, response = events_in(exporter.get_finished_spans(), "model.call")
    assert request.event_type == "llm_request" and request.agent == "planner" and request.task_id == "t1"
    assert request.payload["prompt"] == [{"role": "user", "content": f"plan it; mail {EMAIL}"}]
    assert request.payload["role"] == "planner" and request.redacted
    assert response.event_type == "llm_response" and response.error is None
    assert response.payload["response"] == f"the plan, call {PHONE}"
    assert response.payload["tier"] == "embedded" and response.payload["model"] == "rules"
    assert response.payload["fallbacks"] == 1 and response.payload["attempts"] == 2
    assert (response.tokens_in, response.tokens_out) == (12, 5)
    assert response.duration_ms is not None and response.started_at == T0


async def test_the_router_records_a_call_that_failed_on_every_tier() -> None:
    router, exporter = _router(ScriptedTier("openai", "big", [ServerError("HTTP 500 for bob@example.com")]))

    with pytest.raises(RouterExhaustedError):
        await router.call(_call(), lambda a: a.content)

    (response,) = [e for e in events_in(exporter.get_finished_spans()) if e.event_type == "llm_response"]
    assert response.error is not None and response.error.startswith(
        "RouterExhaustedError: every planner tier"
    )
    assert "bob@example.com" not in response.error and EMAIL in response.error
    assert "response" in response.payload and response.payload["response"] is None
    assert response.payload["tiers"] == ["openai(big)"]


async def test_the_router_records_what_the_settings_allow() -> None:
    answer = ModelAnswer(content="secret answer")
    router, exporter = _router(ScriptedTier("embedded", "rules", [answer]), redaction=MODES)

    await router.call(_call(), lambda a: a.content)

    request, response = events_in(exporter.get_finished_spans())
    assert "prompt" not in request.payload and request.redacted  # prompts: drop
    assert response.payload["response"].startswith(HASH_PREFIX)  # responses: hash


# --------------------------------------------------------------------------------------------------
# The tool runner: tool_request and tool_response on the step's span
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Any]:
    from actors.tool_runner import ToolRunner

    settings = Settings.model_validate(
        {
            "workspace_root": str(tmp_path),
            "telemetry": {"trace_store": {"enabled": False}, "redaction": {"tool_results": "full"}},
            "sandbox": {"backend": "local", "spares": 0},
        }
    )
    built: Any = ToolRunner(settings)  # a plain object here, not an actor
    try:
        yield built
    finally:
        built.shutdown()


def test_the_runner_records_a_step_s_inputs_and_output(runner: Any) -> None:
    tracer, exporter = in_memory_tracer()
    runner.tracer = tracer
    step = PlanStep(
        step_id="s1", action="math_calculator", inputs={"expression": "6 * 7"}, idempotency_key="k1"
    )

    outcome = runner.run("t1", step, {"expression": "6 * 7"}, {})

    assert outcome.error is None
    (span,) = exporter.get_finished_spans()
    assert span.name == "tool math_calculator"
    request, response = events_of(span.events)
    assert (request.event_type, request.agent, request.task_id, request.step_id) == (
        "tool_request",
        "runner",
        "t1",
        "s1",
    )
    assert request.payload == {"action": "math_calculator", "args": {"expression": "6 * 7"}}
    assert response.event_type == "tool_response" and response.error is None
    assert response.payload["result"]["value"] == 42  # tool_results: full
    assert response.duration_ms is not None and response.ended_at is not None


def test_the_runner_records_a_failed_step_scrubbed(runner: Any) -> None:
    tracer, exporter = in_memory_tracer()
    runner.tracer = tracer
    inputs = {"expression": "bob@example.com"}
    step = PlanStep(step_id="s2", action="math_calculator", inputs=inputs, idempotency_key="k2")

    outcome = runner.run("t1", step, inputs, {})

    assert outcome.error is not None
    request, response = events_of(exporter.get_finished_spans()[0].events)
    assert request.payload["args"] == {"expression": EMAIL} and request.redacted  # tool_args: truncate
    assert response.error is not None and "bob@example.com" not in response.error
    assert response.payload["error_type"] == outcome.error.type.value


# --------------------------------------------------------------------------------------------------
# The workflow: review and approval events
# --------------------------------------------------------------------------------------------------

TOOLS = {name: spec.input_model for name, spec in BUILTIN_TOOLS.items()}


def _workflow(
    reviews: list[Any], approvals: InMemoryApprovals | None = None, timeout_s: float = 5.0
) -> tuple[Workflow, Any]:
    tracer, exporter = in_memory_tracer()
    plan = make_plan(
        "t1", [{"step_id": "s1", "action": "math_calculator", "inputs": {"expression": "6 * 7"}}]
    )

    async def no_sleep(_seconds: float) -> None:
        return None

    workflow = Workflow(
        planner=ScriptedPlanner([plan, plan]),
        reviewer=ScriptedReviewer(reviews),
        executor=FunctionExecutor({"math_calculator": lambda inputs: {"value": 42}}),
        store=InMemoryStore(),
        tracer=tracer,
        tools=TOOLS,
        settings=WorkflowSettings.model_validate(
            {"approvals": {"timeout_s": timeout_s}, "max_iterations": 2}
        ),
        needs_approval=(lambda _action: True) if approvals is not None else None,
        approvals=approvals,
        sleep=no_sleep,
        redaction=RedactionSettings(responses="full"),
    )
    return workflow, exporter


def _reviewed(request: ReviewRequest) -> Reviewed:
    usage = ModelUsage(prompt_tokens=30, completion_tokens=7, calls=1)
    return Reviewed(
        review=Review(verdict=ReviewVerdict.APPROVED, feedback="fine; told bob@example.com", final_output=42),
        call=ModelCallRecord(role="reviewer", tier="embedded", model="rules", usage=usage),
    )


async def test_the_workflow_records_the_reviewer_s_answer() -> None:
    workflow, exporter = _workflow([_reviewed])

    record = await asyncio.wait_for(workflow.run(TaskRequest(description="six times seven"), "t1"), 5)

    assert record.status == TaskStatus.COMPLETED
    (review,) = events_in(exporter.get_finished_spans(), "review")
    assert (review.event_type, review.agent, review.task_id) == ("review", "reviewer", "t1")
    assert review.payload == {
        "iteration": 1,
        "verdict": "APPROVED",
        "tier": "embedded",
        "model": "rules",
        "feedback": f"fine; told {EMAIL}",
    }
    assert (review.tokens_in, review.tokens_out) == (30, 7) and review.redacted


async def test_the_workflow_records_a_reviewer_that_failed() -> None:
    workflow, exporter = _workflow([RuntimeError("reviewer down"), _reviewed])

    await asyncio.wait_for(workflow.run(TaskRequest(description="six times seven"), "t1"), 5)

    failed, answered = events_in(exporter.get_finished_spans(), "review")
    assert failed.error == "RuntimeError: reviewer down" and failed.payload["iteration"] == 1
    assert answered.error is None and answered.payload["verdict"] == "APPROVED"


async def test_the_workflow_records_an_approval_decision() -> None:
    approvals = InMemoryApprovals()
    approvals.decide("t1", "t1:1:s1", "approved", by="alice@example.com", reason="ok, card 4111111111111111")
    workflow, exporter = _workflow([_reviewed], approvals)

    record = await asyncio.wait_for(workflow.run(TaskRequest(description="six times seven"), "t1"), 5)

    assert record.status == TaskStatus.COMPLETED
    (approval,) = [e for e in events_in(exporter.get_finished_spans()) if e.event_type == "approval"]
    assert (approval.agent, approval.task_id, approval.step_id) == ("orchestrator", "t1", "s1")
    assert approval.payload == {
        "action": "math_calculator",
        "decision": "approved",
        "decided_by": EMAIL,
        "reason": f"ok, card {CARD}",
    }
    assert approval.error is None and approval.duration_ms is not None


async def test_the_workflow_records_an_approval_that_timed_out() -> None:
    workflow, exporter = _workflow([], InMemoryApprovals(), timeout_s=0.01)

    record = await asyncio.wait_for(workflow.run(TaskRequest(description="six times seven"), "t1"), 5)

    assert record.status == TaskStatus.FAILED
    approvals = [e for e in events_in(exporter.get_finished_spans()) if e.event_type == "approval"]
    assert approvals and all(e.payload["decision"] == "timed_out" and e.error for e in approvals)


# --------------------------------------------------------------------------------------------------
# Scrubbing prompts before an external tier
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scrub", [True, False])
async def test_the_openai_tier_scrubs_prompts_when_told_to(scrub: bool) -> None:
    text = "mail bob@example.com, key sk-proj-AbC123dEf456GhI789jKl0"
    planner_request = json.dumps({"task_id": "t1", "description": "Compute 6*7; card 4111 1111 1111 1111"})
    with FakeOpenAIServer(mode="text") as server:
        config = OpenAITierConfig(tier="openai", model="fake-model", base_url=server.base_url)
        tier = build_tier(config, "ai_tool", scrub_external_prompts=scrub)
        try:
            call = ModelCall(
                role="ai_tool",
                messages=[{"role": "system", "content": planner_request}, {"role": "user", "content": text}],
            )
            answer = await tier.generate(call)
        finally:
            await tier.aclose()  # type: ignore[attr-defined]
        sent = server.chat_requests[-1]["body"]["messages"]
    if scrub:
        assert sent[1]["content"] == f"mail {EMAIL}, key {SECRET}"
        assert json.loads(sent[0]["content"]) == {"task_id": "t1", "description": f"Compute 6*7; card {CARD}"}
        assert answer.content == f"echo: mail {EMAIL}, key {SECRET}"
    else:
        assert [m["content"] for m in sent] == [planner_request, text]
