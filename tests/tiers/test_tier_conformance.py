"""One conformance suite for every model tier (:class:`serving.tiers.base.ModelTier`).

The shared cases run once per tier kind (``embedded``, ``openai`` against the loopback
:class:`~tests.fake_openai_server.FakeOpenAIServer`); the cases below them are the ``openai``
tier's own (error mapping, structured output, streaming). A new tier joins the suite by adding a
harness to :data:`HARNESSES`.
"""

from __future__ import annotations

import asyncio
import email.utils
import importlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from officeray.config import OpenAITierConfig
from officeray.contracts import (
    Plan,
    PlanRequest,
    Review,
    ReviewRequest,
    ReviewVerdict,
    StepResult,
    StepStatus,
    plan_json_schema,
)
from officeray.expectations import missing_keys
from serving.tiers.base import (
    MalformedAnswerError,
    ModelAnswer,
    ModelCall,
    ModelTier,
    RateLimitedError,
    Role,
    ServerError,
    TierError,
    TierTimeoutError,
    TierUnavailableError,
)
from serving.tiers.embedded import plan_task, review_results
from serving.tiers.openai_tier import OpenAITier, parse_json_answer, parse_retry_after, strip_code_fence
from tests.fake_openai_server import GARBAGE_CONTENT, FakeOpenAIServer

TOOLS = ["code_analyzer", "math_calculator", "python_exec"]
FAKE_KEY = "sk-test-0123456789abcdef"
KEY_ENV = "OFFICERAY_TEST_OPENAI_KEY"
EMBEDDED_MISSING = "EmbeddedTier not built yet"

# --------------------------------------------------------------------------------------------------
# Calls, as the role adapters build them
# --------------------------------------------------------------------------------------------------


def plan_request(
    task_id: str = "t-plan", description: str = "Compute 6*7 then calculate ans / 2"
) -> PlanRequest:
    return PlanRequest(task_id=task_id, description=description, iteration=1, allowed_tools=TOOLS)


def planner_call(request: PlanRequest) -> ModelCall:
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
            {"role": "system", "content": "You plan tasks as JSON matching the schema."},
            {"role": "user", "content": json.dumps(user)},
        ],
        json_schema=plan_json_schema(),
        schema_name="plan",
        payload=request,
        task_id=request.task_id,
    )


def review_request(task_id: str = "t-review") -> ReviewRequest:
    plan = plan_task(plan_request(task_id, "Compute 6*7"))
    results = [
        StepResult(
            step_id=step.step_id,
            action=step.action,
            idempotency_key=step.idempotency_key,
            status=StepStatus.SUCCEEDED,
            attempts=1,
            output={key: 42 for key in missing_keys(step.outputs_expectation, {})},
        )
        for step in plan.steps
    ]
    return ReviewRequest(task_id=task_id, description="Compute 6*7", iteration=1, plan=plan, results=results)


def reviewer_call(request: ReviewRequest) -> ModelCall:
    return ModelCall(
        role="reviewer",
        messages=[
            {"role": "system", "content": "You review results as JSON matching the schema."},
            {"role": "user", "content": request.model_dump_json()},
        ],
        json_schema=Review.model_json_schema(),
        schema_name="review",
        payload=request,
        task_id=request.task_id,
    )


def as_plan(data: Any) -> Plan:
    return data if isinstance(data, Plan) else Plan.model_validate(data)


def as_review(data: Any) -> Review:
    return data if isinstance(data, Review) else Review.model_validate(data)


def comparable(plan: Plan) -> dict[str, Any]:
    return plan.model_dump(mode="json", exclude={"generated_at"})


# --------------------------------------------------------------------------------------------------
# Harnesses: how to get a tier of each kind for a role
# --------------------------------------------------------------------------------------------------


@dataclass
class Harness:
    kind: str
    make: Callable[[Role], ModelTier]
    server: FakeOpenAIServer | None = None
    opened: list[Any] = field(default_factory=list)

    async def close(self) -> None:
        for tier in self.opened:
            aclose = getattr(tier, "aclose", None)
            if aclose is not None:
                await aclose()


def embedded_tier_class() -> type | None:
    """``serving.tiers.embedded_tier.EmbeddedTier`` once it exists, else None (its cases skip)."""
    try:
        module = importlib.import_module("serving.tiers.embedded_tier")
    except ModuleNotFoundError as exc:
        if exc.name == "serving.tiers.embedded_tier":
            return None
        raise
    return getattr(module, "EmbeddedTier", None)


def embedded_harness() -> Harness:
    cls = embedded_tier_class()
    if cls is None:
        pytest.skip(EMBEDDED_MISSING)
    harness = Harness(kind="embedded", make=lambda role: cls(role))
    return harness


def openai_config(server: FakeOpenAIServer, **overrides: Any) -> OpenAITierConfig:
    values: dict[str, Any] = {
        "tier": "openai",
        "model": "fake-model",
        "base_url": server.base_url,
        "api_key_env": KEY_ENV,
        "timeout_s": 5.0,
    }
    values.update(overrides)
    return OpenAITierConfig(**values)


def openai_harness(server: FakeOpenAIServer) -> Harness:
    opened: list[Any] = []

    def make(role: Role) -> ModelTier:
        server.set_mode("review" if role == "reviewer" else "plan")
        tier = OpenAITier(openai_config(server), environ={KEY_ENV: FAKE_KEY})
        opened.append(tier)
        return tier

    return Harness(kind="openai", make=make, server=server, opened=opened)


HARNESSES = ["embedded", "openai"]


@pytest.fixture
def server() -> Any:
    with FakeOpenAIServer(mode="plan") as fake:
        yield fake


@pytest.fixture(params=HARNESSES)
async def harness(request: pytest.FixtureRequest, server: FakeOpenAIServer) -> AsyncIterator[Harness]:
    built = embedded_harness() if request.param == "embedded" else openai_harness(server)
    try:
        yield built
    finally:
        await built.close()


@pytest.fixture
async def tiers() -> AsyncIterator[list[OpenAITier]]:
    """OpenAI tiers a test makes; closed at the end."""
    made: list[OpenAITier] = []
    yield made
    for tier in made:
        await tier.aclose()


@pytest.fixture
def make_openai(server: FakeOpenAIServer, tiers: list[OpenAITier]) -> Callable[..., OpenAITier]:
    def make(*, environ: dict[str, str] | None = None, **overrides: Any) -> OpenAITier:
        tier = OpenAITier(
            openai_config(server, **overrides), environ={KEY_ENV: FAKE_KEY} if environ is None else environ
        )
        tiers.append(tier)
        return tier

    return make


# --------------------------------------------------------------------------------------------------
# What every tier does
# --------------------------------------------------------------------------------------------------


def test_the_embedded_factory_switches_on_by_itself() -> None:
    """The embedded cases skip only while serving/tiers/embedded_tier.py is missing."""
    cls = embedded_tier_class()
    if cls is not None:
        assert isinstance(cls("planner"), ModelTier)


async def test_planner_call_answers_a_valid_plan(harness: Harness) -> None:
    tier = harness.make("planner")
    assert isinstance(tier, ModelTier)
    request = plan_request()
    answer = await tier.generate(planner_call(request))
    assert isinstance(answer, ModelAnswer)
    plan = as_plan(answer.data)
    assert plan.task_id == request.task_id
    assert [s.action for s in plan.steps] == ["math_calculator", "math_calculator"]
    assert comparable(plan) == comparable(plan_task(request))


async def test_reviewer_call_answers_a_review(harness: Harness) -> None:
    tier = harness.make("reviewer")
    request = review_request()
    answer = await tier.generate(reviewer_call(request))
    review = as_review(answer.data)
    assert review.verdict == ReviewVerdict.APPROVED
    assert review == review_results(request)


async def test_usage_tier_and_model_are_filled_in(harness: Harness) -> None:
    tier = harness.make("planner")
    answer = await tier.generate(planner_call(plan_request()))
    usage = answer.usage
    for value in (usage.prompt_tokens, usage.completion_tokens):
        assert isinstance(value, int)
        assert value >= 0
    assert usage.calls == 1
    assert usage.cost_usd >= 0
    assert answer.tier == tier.name == harness.kind
    assert answer.model == tier.model
    assert answer.model


async def test_generate_is_safe_to_call_concurrently(harness: Harness) -> None:
    tier = harness.make("planner")
    requests = [plan_request(f"t-{i}", f"Compute {i} + {i}") for i in range(20)]
    answers = await asyncio.wait_for(
        asyncio.gather(*(tier.generate(planner_call(r)) for r in requests)), timeout=10
    )
    for request, answer in zip(requests, answers, strict=True):
        plan = as_plan(answer.data)
        assert plan.task_id == request.task_id
        assert plan.steps[0].inputs == plan_task(request).steps[0].inputs
        assert answer.usage.calls == 1
    if harness.server is not None:
        assert len(harness.server.chat_requests) == 20


async def test_stream_joins_to_the_generated_content(harness: Harness) -> None:
    """Tiers with ``stream`` (the chat route uses it) stream what ``generate`` answers."""
    tier = harness.make("reviewer")
    stream = getattr(tier, "stream", None)
    if stream is None:
        pytest.skip(f"the {harness.kind} tier has no stream()")
    call = reviewer_call(review_request())
    answer = await tier.generate(call)
    chunks = [chunk async for chunk in stream(call)]
    assert len(chunks) > 1
    assert all(isinstance(chunk, str) and chunk for chunk in chunks)
    assert "".join(chunks) == answer.content


# --------------------------------------------------------------------------------------------------
# The openai tier: requests
# --------------------------------------------------------------------------------------------------


async def test_request_asks_for_the_json_schema(server: FakeOpenAIServer, make_openai: Any) -> None:
    tier = make_openai(extra_headers={"X-Title": "officeray-tests"})
    call = planner_call(plan_request())
    await tier.generate(call)
    sent = server.chat_requests[-1]
    body = sent["body"]
    assert body["model"] == "fake-model"
    assert body["messages"] == call.messages
    assert body["max_tokens"] == call.max_tokens
    assert body["temperature"] == call.temperature
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "plan", "schema": plan_json_schema(), "strict": False},
    }
    assert sent["headers"]["authorization"] == f"Bearer {FAKE_KEY}"
    assert sent["headers"]["x-title"] == "officeray-tests"
    assert sent["headers"].get("x-stainless-retry-count", "0") == "0"


@pytest.mark.parametrize(
    ("structured_output", "expected"), [("json_object", {"type": "json_object"}), ("none", None)]
)
async def test_other_structured_output_modes(
    server: FakeOpenAIServer, make_openai: Any, structured_output: str, expected: Any
) -> None:
    tier = make_openai(structured_output=structured_output)
    answer = await tier.generate(planner_call(plan_request()))
    assert server.chat_requests[-1]["body"].get("response_format") == expected
    assert as_plan(answer.data).task_id == "t-plan"  # parsed either way


async def test_without_a_schema_data_is_the_text(server: FakeOpenAIServer, make_openai: Any) -> None:
    server.set_mode("text")
    tier = make_openai()
    answer = await tier.generate(
        ModelCall(role="ai_tool", messages=[{"role": "user", "content": "hi there"}])
    )
    assert answer.data == answer.content == "echo: hi there"
    assert "response_format" not in server.chat_requests[-1]["body"]
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (2, 3)


async def test_loopback_without_key_env_sends_a_placeholder(
    server: FakeOpenAIServer, make_openai: Any
) -> None:
    tier = make_openai(api_key_env=None, environ={})
    await tier.generate(planner_call(plan_request()))
    assert server.chat_requests[-1]["headers"]["authorization"] == "Bearer not-needed"


# --------------------------------------------------------------------------------------------------
# The openai tier: bad answers and failures
# --------------------------------------------------------------------------------------------------


async def test_garbage_is_a_malformed_answer(server: FakeOpenAIServer, make_openai: Any) -> None:
    server.set_mode("garbage")
    with pytest.raises(MalformedAnswerError) as info:
        await make_openai().generate(planner_call(plan_request()))
    assert GARBAGE_CONTENT in str(info.value)
    assert not info.value.retryable


async def test_schema_violation_still_parses(server: FakeOpenAIServer, make_openai: Any) -> None:
    """The tier parses JSON; checking it against the schema is the role adapter's job."""
    server.set_mode("schema_violation")
    answer = await make_openai().generate(planner_call(plan_request()))
    assert isinstance(answer.data, dict)
    with pytest.raises(ValidationError):
        Plan.model_validate(answer.data)


async def test_rate_limit_with_retry_after_seconds(server: FakeOpenAIServer, make_openai: Any) -> None:
    server.set_mode("rate_limit", retry_after="7")
    with pytest.raises(RateLimitedError) as info:
        await make_openai().generate(planner_call(plan_request()))
    assert info.value.retryable
    assert info.value.retry_after_s == 7.0
    assert "429" in str(info.value)
    assert len(server.chat_requests) == 1  # the SDK's own retries are off


async def test_rate_limit_with_retry_after_http_date(server: FakeOpenAIServer, make_openai: Any) -> None:
    when = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=3), usegmt=True)
    server.set_mode("rate_limit", retry_after=when)
    with pytest.raises(RateLimitedError) as info:
        await make_openai().generate(planner_call(plan_request()))
    assert info.value.retry_after_s is not None
    assert 1.0 <= info.value.retry_after_s <= 3.5


async def test_server_error(server: FakeOpenAIServer, make_openai: Any) -> None:
    server.set_mode("server_error")
    with pytest.raises(ServerError) as info:
        await make_openai().generate(planner_call(plan_request()))
    assert info.value.retryable
    assert "500" in str(info.value)
    assert len(server.chat_requests) == 1


@pytest.mark.parametrize(("status", "retryable"), [(400, False), (404, False), (422, False), (408, True)])
async def test_other_statuses(
    server: FakeOpenAIServer, make_openai: Any, status: int, retryable: bool
) -> None:
    server.set_mode("http_error", status=status, error_message="model 'fake-model' says no")
    with pytest.raises(TierError) as info:
        await make_openai().generate(planner_call(plan_request()))
    assert info.value.retryable is retryable
    assert isinstance(info.value, ServerError) is retryable
    assert str(status) in str(info.value)
    assert "says no" in str(info.value)


async def test_auth_error_never_repeats_the_key(server: FakeOpenAIServer, make_openai: Any) -> None:
    server.set_mode("http_error", status=401, error_message="Incorrect API key provided: {key}.")
    with pytest.raises(TierError) as info:
        await make_openai().generate(planner_call(plan_request()))
    assert type(info.value) is TierError
    assert not info.value.retryable
    assert "401" in str(info.value)
    assert "Incorrect API key provided" in str(info.value)
    assert FAKE_KEY not in str(info.value)


async def test_fail_times_then_success(server: FakeOpenAIServer, make_openai: Any) -> None:
    server.set_mode("plan", fail_times=2, fail_status=500)
    tier = make_openai()
    for _ in range(2):
        with pytest.raises(ServerError):
            await tier.generate(planner_call(plan_request()))
    answer = await tier.generate(planner_call(plan_request()))
    assert as_plan(answer.data).task_id == "t-plan"


async def test_hang_beyond_the_timeout(server: FakeOpenAIServer, make_openai: Any) -> None:
    server.set_mode("hang", hang_s=10)
    tier = make_openai(timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(TierTimeoutError) as info:
        await tier.generate(planner_call(plan_request()))
    assert time.monotonic() - started < 1.5
    assert info.value.retryable


async def test_missing_key_env_is_unavailable(server: FakeOpenAIServer, make_openai: Any) -> None:
    tier = make_openai(environ={"SOME_OTHER_KEY": "sk-live-other-secret"})
    with pytest.raises(TierUnavailableError) as info:
        await tier.generate(planner_call(plan_request()))
    message = str(info.value)
    assert KEY_ENV in message
    assert "sk-" not in message
    assert FAKE_KEY not in message
    assert not server.chat_requests


async def test_remote_endpoint_without_key_env_needs_openai_api_key(tiers: list[OpenAITier]) -> None:
    config = OpenAITierConfig(tier="openai", model="gpt-x", base_url="https://api.example.invalid/v1")
    tier = OpenAITier(config, environ={})
    tiers.append(tier)
    with pytest.raises(TierUnavailableError, match="OPENAI_API_KEY"):
        await tier.generate(planner_call(plan_request()))


async def test_connection_refused_is_a_server_error(make_openai: Any) -> None:
    with FakeOpenAIServer() as gone:
        base_url = gone.base_url  # a port that was just closed again
    tier = make_openai(base_url=base_url)
    with pytest.raises(ServerError):
        await tier.generate(planner_call(plan_request()))


def test_empty_choices_or_content_are_malformed() -> None:
    tier = OpenAITier(OpenAITierConfig(tier="openai", model="m", base_url="http://127.0.0.1:9/v1"))
    call = planner_call(plan_request())
    with pytest.raises(MalformedAnswerError, match="no choices"):
        tier._answer(call, SimpleNamespace(choices=[], usage=None))
    empty = SimpleNamespace(message=SimpleNamespace(content=None, refusal="I can't"))
    with pytest.raises(MalformedAnswerError, match="no content"):
        tier._answer(call, SimpleNamespace(choices=[empty], usage=None))


def test_json_fences_and_retry_after_helpers() -> None:
    assert strip_code_fence('```json\n{"a": 1}\n```') == '{"a": 1}'
    assert strip_code_fence('```\n{"a": 1}```') == '{"a": 1}'
    assert parse_json_answer('  ```json\n{"a": [1, 2]}\n```  ') == {"a": [1, 2]}
    with pytest.raises(MalformedAnswerError, match="not valid JSON"):
        parse_json_answer("```json\n{oops\n```")
    assert parse_retry_after({"retry-after": "2.5"}) == 2.5
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None
    past = email.utils.format_datetime(datetime.now(UTC) - timedelta(seconds=30), usegmt=True)
    assert parse_retry_after({"retry-after": past}) == 0.0


# --------------------------------------------------------------------------------------------------
# The openai tier: streaming
# --------------------------------------------------------------------------------------------------


async def test_stream_yields_the_chunks_in_order(server: FakeOpenAIServer, make_openai: Any) -> None:
    chunks = ["Hel", "lo", ", ", "wor", "ld", "!"]
    server.set_mode("stream", stream_chunks=chunks, stream_delay_s=0.01)
    tier = make_openai()
    received = [piece async for piece in tier.stream(ModelCall(role="ai_tool", messages=[]))]
    assert received == chunks
    assert server.chat_requests[-1]["body"]["stream"] is True


async def test_stream_of_an_answering_mode(server: FakeOpenAIServer, make_openai: Any) -> None:
    server.set_mode("text")
    call = ModelCall(role="ai_tool", messages=[{"role": "user", "content": "one two three"}])
    received = [piece async for piece in make_openai().stream(call)]
    assert "".join(received) == "echo: one two three"
    assert len(received) == 4


async def test_stream_maps_errors(server: FakeOpenAIServer, make_openai: Any) -> None:
    server.set_mode("rate_limit", retry_after="3")
    with pytest.raises(RateLimitedError) as info:
        async for _ in make_openai().stream(ModelCall(role="ai_tool", messages=[])):
            pass
    assert info.value.retry_after_s == 3.0
