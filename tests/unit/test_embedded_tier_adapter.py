"""EmbeddedTier: the embedded answerers behind the ModelTier interface, with simulated latency."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from officeray.config import LatencyModel
from officeray.contracts import (
    Plan,
    PlanRequest,
    Review,
    ReviewRequest,
    ReviewVerdict,
    StepResult,
    StepStatus,
)
from serving.tiers.base import CannotAnswerError, ModelCall, ModelTier
from serving.tiers.embedded import plan_task
from serving.tiers.embedded_tier import CHAT_TASK_ID, EmbeddedTier, whitespace_tokens, word_chunks

MATH_TASK = "Compute 6*7 then calculate ans / 2"


class Clock:
    """Records the waits asked of ``sleep`` instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)


def rands(*values: float) -> Any:
    it: Iterator[float] = iter(values)
    return lambda: next(it)


def plan_request(description: str = MATH_TASK, **kwargs: Any) -> PlanRequest:
    defaults: dict[str, Any] = {"task_id": "t1", "allowed_tools": ["math_calculator", "python_exec"]}
    return PlanRequest(description=description, **{**defaults, **kwargs})


def review_request() -> ReviewRequest:
    plan = plan_task(plan_request("Compute 6*7"))
    step = plan.steps[0]
    result = StepResult(
        step_id=step.step_id,
        action=step.action,
        idempotency_key=step.idempotency_key,
        status=StepStatus.SUCCEEDED,
        output={"value": 42, "expression": "6*7"},
    )
    return ReviewRequest(task_id="t1", description="Compute 6*7", iteration=1, plan=plan, results=[result])


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "you are a planner"}, {"role": "user", "content": text}]


# --------------------------------------------------------------------------------------------------
# Payload dispatch
# --------------------------------------------------------------------------------------------------


def test_is_a_model_tier() -> None:
    tier = EmbeddedTier("planner")
    assert isinstance(tier, ModelTier)
    assert (tier.name, tier.model) == ("embedded", "embedded")


async def test_plan_request_payload_gives_the_plan_object_and_its_json() -> None:
    request = plan_request()
    answer = await EmbeddedTier("planner").generate(ModelCall(role="planner", payload=request))
    assert isinstance(answer.data, Plan)
    assert [s.action for s in answer.data.steps] == ["math_calculator", "math_calculator"]
    assert Plan.model_validate_json(answer.content) == answer.data
    assert (answer.tier, answer.model) == ("embedded", "embedded")


async def test_review_request_payload_gives_the_review() -> None:
    answer = await EmbeddedTier("reviewer").generate(ModelCall(role="reviewer", payload=review_request()))
    assert isinstance(answer.data, Review)
    assert answer.data.verdict == ReviewVerdict.APPROVED
    assert answer.data.final_output == 42
    assert Review.model_validate_json(answer.content) == answer.data


async def test_string_payload_goes_to_the_ai_tool() -> None:
    call = ModelCall(role="ai_tool", payload="count words: one two three")
    answer = await EmbeddedTier("ai_tool").generate(call)
    assert answer.data == answer.content == "3"


async def test_ai_tool_answer_is_cut_to_max_tokens() -> None:
    call = ModelCall(role="ai_tool", payload="keywords: alpha beta gamma delta", max_tokens=2)
    answer = await EmbeddedTier("ai_tool").generate(call)
    assert answer.content == "alpha, beta,"


async def test_dict_payload_is_validated_as_the_roles_request() -> None:
    payload = plan_request().model_dump(mode="json")
    answer = await EmbeddedTier("planner").generate(ModelCall(role="planner", payload=payload))
    assert isinstance(answer.data, Plan)


async def test_payload_of_another_role_is_refused() -> None:
    with pytest.raises(CannotAnswerError, match="answers a ReviewRequest, not a PlanRequest"):
        await EmbeddedTier("reviewer").generate(ModelCall(role="reviewer", payload=plan_request()))


def test_unknown_role_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown role"):
        EmbeddedTier("critic")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# The messages path (the OpenAI-shaped route)
# --------------------------------------------------------------------------------------------------


async def test_planner_takes_plain_text_as_the_description() -> None:
    answer = await EmbeddedTier("planner").generate(ModelCall(role="planner", messages=user(MATH_TASK)))
    assert isinstance(answer.data, Plan)
    assert answer.data.task_id == CHAT_TASK_ID
    assert len(answer.data.steps) == 2


async def test_planner_takes_a_plan_request_as_json() -> None:
    text = json.dumps({"task_id": "abc", "description": "What is 2+2?", "iteration": 2})
    answer = await EmbeddedTier("planner").generate(ModelCall(role="planner", messages=user(text)))
    assert answer.data.plan_id == "abc-plan-2"


async def test_planner_json_that_is_not_a_plan_request_is_refused() -> None:
    text = json.dumps({"description": "What is 2+2?", "iteration": "two"})
    with pytest.raises(CannotAnswerError, match="not a valid plan request: iteration"):
        await EmbeddedTier("planner").generate(ModelCall(role="planner", messages=user(text)))


async def test_the_last_user_message_counts() -> None:
    messages = [
        {"role": "user", "content": "Draw me a sheep"},
        {"role": "assistant", "content": "I cannot"},
        {"role": "user", "content": "What is 1+1?"},
    ]
    answer = await EmbeddedTier("planner").generate(ModelCall(role="planner", messages=messages))
    assert answer.data.steps[0].inputs == {"expression": "1+1"}


async def test_reviewer_reads_review_request_json() -> None:
    text = review_request().model_dump_json()
    answer = await EmbeddedTier("reviewer").generate(ModelCall(role="reviewer", messages=user(text)))
    assert answer.data.verdict == ReviewVerdict.APPROVED


async def test_reviewer_says_what_it_expects_for_plain_text() -> None:
    with pytest.raises(CannotAnswerError, match="expects the last user message to be a review request"):
        await EmbeddedTier("reviewer").generate(ModelCall(role="reviewer", messages=user("is it good?")))


async def test_ai_tool_takes_the_text_as_the_prompt() -> None:
    call = ModelCall(role="ai_tool", messages=[{"role": "user", "content": "classify sentiment: I love it"}])
    answer = await EmbeddedTier("ai_tool").generate(call)
    assert answer.content.startswith("positive")


async def test_no_user_message_is_refused() -> None:
    call = ModelCall(role="ai_tool", messages=[{"role": "system", "content": "hi"}])
    with pytest.raises(CannotAnswerError, match="needs a user message"):
        await EmbeddedTier("ai_tool").generate(call)


# --------------------------------------------------------------------------------------------------
# Refusals become CannotAnswerError with the answerer's message
# --------------------------------------------------------------------------------------------------


async def test_planning_error_becomes_cannot_answer_with_the_same_message() -> None:
    with pytest.raises(CannotAnswerError) as info:
        await EmbeddedTier("planner").generate(
            ModelCall(role="planner", payload=plan_request("Draw a sheep"))
        )
    assert "could not understand the task" in str(info.value)
    assert "It understands:" in str(info.value)
    assert str(info.value) == str(info.value.__cause__)


async def test_unsupported_prompt_becomes_cannot_answer() -> None:
    with pytest.raises(CannotAnswerError, match="the embedded ai_tool cannot answer this prompt"):
        await EmbeddedTier("ai_tool").generate(ModelCall(role="ai_tool", payload="write a poem"))


async def test_disallowed_tool_becomes_cannot_answer() -> None:
    request = plan_request("Compute 1+1", allowed_tools=["python_exec"])
    with pytest.raises(CannotAnswerError, match="not allowed"):
        await EmbeddedTier("planner").generate(ModelCall(role="planner", payload=request))


# --------------------------------------------------------------------------------------------------
# Usage: approximate, whitespace tokens
# --------------------------------------------------------------------------------------------------


async def test_usage_counts_whitespace_tokens_of_messages_and_content() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "count words: a b c d"},
    ]
    answer = await EmbeddedTier("ai_tool").generate(ModelCall(role="ai_tool", messages=messages))
    assert answer.usage.prompt_tokens == 2 + 6
    assert answer.usage.completion_tokens == 1
    assert answer.usage.calls == 1
    assert answer.usage.cost_usd == 0


async def test_usage_counts_the_payload_json_without_messages() -> None:
    request = plan_request()
    answer = await EmbeddedTier("planner").generate(ModelCall(role="planner", payload=request))
    assert answer.usage.prompt_tokens == whitespace_tokens(json.dumps(request.model_dump(mode="json")))
    assert answer.usage.completion_tokens == whitespace_tokens(answer.content) > 10


# --------------------------------------------------------------------------------------------------
# Latency model
# --------------------------------------------------------------------------------------------------


async def test_no_latency_model_never_sleeps() -> None:
    clock = Clock()
    await EmbeddedTier("ai_tool", sleep=clock.sleep).generate(
        ModelCall(role="ai_tool", payload="count words: a")
    )
    assert clock.waits == []


async def test_zero_latency_never_sleeps() -> None:
    clock = Clock()
    tier = EmbeddedTier("ai_tool", LatencyModel(), sleep=clock.sleep, rand=rands())
    await tier.generate(ModelCall(role="ai_tool", payload="count words: a"))
    assert clock.waits == []


async def test_generate_waits_ttft_plus_tokens_over_rate() -> None:
    clock = Clock()
    tier = EmbeddedTier("ai_tool", LatencyModel(ttft_s=0.5, tokens_per_s=10), sleep=clock.sleep, rand=rands())
    # "summarize: ..." answers with the text's first sentences: 6 whitespace tokens.
    answer = await tier.generate(ModelCall(role="ai_tool", payload="summarize: one two three four five six."))
    assert answer.usage.completion_tokens == 6
    assert clock.waits == [pytest.approx(0.5 + 6 / 10)]


async def test_generate_applies_jitter_factors_from_rand() -> None:
    clock = Clock()
    latency = LatencyModel(ttft_s=1.0, tokens_per_s=2, jitter=0.5)
    tier = EmbeddedTier("ai_tool", latency, sleep=clock.sleep, rand=rands(0.0, 1.0))
    await tier.generate(ModelCall(role="ai_tool", payload="count words: a b"))  # answer "2": 1 token
    # f1 = 1 + 0.5 * (2*0 - 1) = 0.5 ; f2 = 1 + 0.5 * (2*1 - 1) = 1.5
    assert clock.waits == [pytest.approx(1.0 * 0.5 + 1 / 2 * 1.5)]


async def test_tokens_only_latency() -> None:
    clock = Clock()
    tier = EmbeddedTier("ai_tool", LatencyModel(tokens_per_s=4), sleep=clock.sleep)
    await tier.generate(ModelCall(role="ai_tool", payload="summarize: a b c d."))
    assert clock.waits == [pytest.approx(1.0)]


async def test_refusals_do_not_wait() -> None:
    clock = Clock()
    tier = EmbeddedTier("ai_tool", LatencyModel(ttft_s=1), sleep=clock.sleep)
    with pytest.raises(CannotAnswerError):
        await tier.generate(ModelCall(role="ai_tool", payload="write a poem"))
    assert clock.waits == []


# --------------------------------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------------------------------


def test_word_chunks_join_back_to_the_text() -> None:
    for text in ["a b  c", " lead", "trail ", "one", "", "x\ny\tz "]:
        assert "".join(word_chunks(text)) == text
    assert word_chunks("a b  c") == ["a ", "b  ", "c"]


async def test_stream_yields_word_chunks_in_order_with_waits() -> None:
    clock = Clock()
    events: list[Any] = []

    async def sleep(seconds: float) -> None:
        await clock.sleep(seconds)
        events.append(("wait", seconds))

    tier = EmbeddedTier("ai_tool", LatencyModel(ttft_s=0.3, tokens_per_s=4), sleep=sleep)
    call = ModelCall(role="ai_tool", payload="summarize: alpha beta gamma.")
    async for chunk in tier.stream(call):
        events.append(chunk)
    assert events == [
        ("wait", pytest.approx(0.3)),
        "alpha ",
        ("wait", pytest.approx(0.25)),
        "beta ",
        ("wait", pytest.approx(0.25)),
        "gamma.",
    ]


async def test_stream_jitters_each_wait() -> None:
    clock = Clock()
    latency = LatencyModel(ttft_s=1.0, tokens_per_s=1, jitter=0.1)
    tier = EmbeddedTier("ai_tool", latency, sleep=clock.sleep, rand=rands(1.0, 0.0))
    chunks = [c async for c in tier.stream(ModelCall(role="ai_tool", payload="summarize: a b."))]
    assert chunks == ["a ", "b."]
    assert clock.waits == [pytest.approx(1.1), pytest.approx(0.9)]


async def test_stream_of_a_plan_joins_to_the_plan_json() -> None:
    tier = EmbeddedTier("planner")
    call = ModelCall(role="planner", payload=plan_request())
    chunks = [c async for c in tier.stream(call)]
    assert len(chunks) > 10
    assert Plan.model_validate_json("".join(chunks)).task_id == "t1"


async def test_stream_refusal_raises_before_any_chunk() -> None:
    clock = Clock()
    tier = EmbeddedTier("ai_tool", LatencyModel(ttft_s=1), sleep=clock.sleep)
    with pytest.raises(CannotAnswerError):
        async for _ in tier.stream(ModelCall(role="ai_tool", payload="write a poem")):
            pass
    assert clock.waits == []
