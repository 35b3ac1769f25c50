"""Model router: fallback, retries and backoff, timeouts, circuit breakers, pricing, cache, spans.

Tiers are :class:`serving.testing.ScriptedTier` fakes; clock and sleep are a
:class:`serving.testing.FakeClock`, so no test really waits (except the timeout tests, which need a
real, tiny ``asyncio.wait_for`` limit).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from opentelemetry.trace import StatusCode

from officeray.config import Price, RouterSettings
from officeray.contracts import PlanRequest
from officeray.telemetry import inject_context
from officeray.testing import in_memory_tracer
from serving.router import Attempt, Router, RouterExhaustedError, UnexpectedTierError, attempts_of
from serving.testing import FakeClock, ScriptedTier, chain
from serving.tiers.base import (
    BackpressureError,
    CannotAnswerError,
    MalformedAnswerError,
    ModelAnswer,
    ModelCall,
    RateLimitedError,
    ServerError,
    TierError,
    TierUnavailableError,
    Usage,
)

TINY_TIMEOUT_S = 0.05
HANG_S = 30.0


def _settings(**changes: Any) -> RouterSettings:
    base: dict[str, Any] = {
        "initial_backoff_s": 0.5,
        "backoff_coefficient": 2.0,
        "max_backoff_s": 10.0,
        "jitter": 0.2,
        "breaker": {"failure_threshold": 2, "cooldown_s": 30.0},
    }
    base.update(changes)
    return RouterSettings.model_validate(base)


def _router(
    *tiers: ScriptedTier,
    clock: FakeClock | None = None,
    role: Any = "planner",
    rand: float = 0.5,
    **kwargs: Any,
) -> Router:
    clock = clock or FakeClock()
    settings = kwargs.pop("settings", None) or _settings()
    return Router(role, chain(*tiers), settings, clock=clock, sleep=clock.sleep, rand=lambda: rand, **kwargs)


def _call(task_id: str = "t1", **changes: Any) -> ModelCall:
    return ModelCall(
        role=changes.pop("role", "planner"),
        messages=[{"role": "user", "content": "compute 1+1"}],
        payload=PlanRequest(task_id=task_id, description="compute 1+1", allowed_tools=["math_calculator"]),
        task_id=task_id,
        **changes,
    )


def _content(answer: ModelAnswer) -> str:
    return answer.content


def _accept_json(answer: ModelAnswer) -> str:
    if answer.content == "bad":
        raise MalformedAnswerError("not the JSON the schema asks for")
    return answer.content


def _answer(content: str = "ok", prompt: int = 0, completion: int = 0, model: str = "") -> ModelAnswer:
    return ModelAnswer(
        content=content, model=model, usage=Usage(prompt_tokens=prompt, completion_tokens=completion)
    )


# --------------------------------------------------------------------------------------------------
# Walking the chain
# --------------------------------------------------------------------------------------------------


async def test_first_tier_answers() -> None:
    first = ScriptedTier("openai", "gpt-4o", ["plan A"])
    second = ScriptedTier("embedded", "rules", [])
    routed = await _router(first, second).call(_call(), _content)

    assert routed.value == "plan A"
    assert routed.answer.tier == "openai" and routed.answer.model == "gpt-4o"
    assert routed.fallbacks == 0 and not routed.cached
    assert [(a.tier, a.index, a.try_number, a.outcome) for a in routed.attempts] == [("openai", 0, 1, "ok")]
    assert first.call_count == 1 and second.call_count == 0
    first.assert_consumed()


@pytest.mark.parametrize(
    "error",
    [
        MalformedAnswerError("bad json"),
        TierUnavailableError("no API key"),
        CannotAnswerError("cannot plan"),
        TierError("plain"),
    ],
)
async def test_non_retryable_error_falls_back_at_once(error: TierError) -> None:
    clock = FakeClock()
    first = ScriptedTier("openai", "gpt-4o", [error], max_retries=3)
    second = ScriptedTier("embedded", "rules", ["from embedded"])
    routed = await _router(first, second, clock=clock).call(_call(), _content)

    assert routed.value == "from embedded"
    assert routed.fallbacks == 1
    assert first.call_count == 1
    assert clock.sleeps == []
    assert [(a.index, a.outcome, a.error_type) for a in routed.attempts] == [
        (0, "error", type(error).__name__),
        (1, "ok", None),
    ]


async def test_unexpected_exception_is_a_failure_of_the_tier() -> None:
    first = ScriptedTier("openai", "gpt-4o", [KeyError("choices")], max_retries=2)
    second = ScriptedTier("embedded", "rules", ["ok"])
    routed = await _router(first, second).call(_call(), _content)

    assert routed.value == "ok"
    assert first.call_count == 1  # not retried
    failed = routed.attempts[0]
    assert failed.error_type == UnexpectedTierError.__name__
    assert "KeyError" in failed.message and "choices" in failed.message


# --------------------------------------------------------------------------------------------------
# Retries and backoff
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rand", "max_backoff_s", "waits"),
    [
        (0.5, 10.0, [0.5, 1.0, 2.0]),  # no jitter at rand=0.5: initial * 2**(n-1)
        (0.0, 10.0, [0.4, 0.8, 1.6]),  # factor 1 - jitter
        (1.0, 10.0, [0.6, 1.2, 2.4]),  # factor 1 + jitter
        (0.5, 1.5, [0.5, 1.0, 1.5]),  # capped
    ],
)
async def test_retries_with_exponential_backoff(
    rand: float, max_backoff_s: float, waits: list[float]
) -> None:
    clock = FakeClock()
    tier = ScriptedTier(
        "openai",
        "gpt-4o",
        [ServerError("502"), RateLimitedError("429"), BackpressureError("queue full"), "finally"],
        max_retries=3,
    )
    router = _router(tier, clock=clock, rand=rand, settings=_settings(max_backoff_s=max_backoff_s))
    routed = await router.call(_call(), _content)

    assert routed.value == "finally"
    assert clock.sleeps == pytest.approx(waits)
    assert [a.try_number for a in routed.attempts] == [1, 2, 3, 4]
    assert [a.waited_s for a in routed.attempts] == pytest.approx([*waits, 0.0])
    assert routed.fallbacks == 0
    tier.assert_consumed()


async def test_retries_exhausted_then_next_tier() -> None:
    clock = FakeClock()
    first = ScriptedTier("openai", "gpt-4o", [ServerError("500"), ServerError("503")], max_retries=1)
    second = ScriptedTier("vllm", "llama", ["local"])
    routed = await _router(first, second, clock=clock).call(_call(), _content)

    assert routed.value == "local"
    assert clock.sleeps == [0.5]  # one wait between the two tries, none after the last
    assert routed.attempts[1].waited_s == 0.0
    assert routed.fallbacks == 1


async def test_embedded_tier_is_never_retried() -> None:
    clock = FakeClock()
    embedded = ScriptedTier("embedded", "rules", [ServerError("boom")])
    backup = ScriptedTier("openai", "gpt-4o", ["ok"])
    routed = await _router(embedded, backup, clock=clock).call(_call(), _content)

    assert routed.value == "ok"
    assert embedded.call_count == 1 and clock.sleeps == []


async def test_retry_after_is_honoured() -> None:
    clock = FakeClock()
    tier = ScriptedTier("openai", "gpt-4o", [RateLimitedError("429", retry_after_s=3.0), "ok"], max_retries=2)
    routed = await _router(tier, clock=clock).call(_call(), _content)

    assert routed.value == "ok"
    assert clock.sleeps == [3.0]  # exactly the header, no jitter
    assert routed.attempts[0].waited_s == 3.0
    assert "Retry-After" in routed.attempts[0].message


async def test_retry_after_beyond_cap_falls_back_without_waiting() -> None:
    clock = FakeClock()
    first = ScriptedTier("openai", "gpt-4o", [RateLimitedError("429", retry_after_s=60.0)], max_retries=2)
    second = ScriptedTier("embedded", "rules", ["ok"])
    routed = await _router(first, second, clock=clock).call(_call(), _content)

    assert routed.value == "ok"
    assert clock.sleeps == []
    assert first.call_count == 1
    assert routed.attempts[0].waited_s == 0.0
    assert "exceeds max_backoff_s" in routed.attempts[0].message
    assert routed.fallbacks == 1


# --------------------------------------------------------------------------------------------------
# Timeouts
# --------------------------------------------------------------------------------------------------


async def test_timeout_then_retry_answers() -> None:
    clock = FakeClock()
    tier = ScriptedTier(
        "openai", "gpt-4o", [HANG_S, "late but fine"], timeout_s=TINY_TIMEOUT_S, max_retries=1
    )
    routed = await _router(tier, clock=clock).call(_call(), _content)

    assert routed.value == "late but fine"
    assert [(a.outcome, a.error_type) for a in routed.attempts] == [
        ("error", "TierTimeoutError"),
        ("ok", None),
    ]
    assert f"{TINY_TIMEOUT_S:g}s" in routed.attempts[0].message
    assert clock.sleeps == [0.5]  # a timeout is retryable
    assert tier.call_count == 2


async def test_timeout_falls_back_to_next_tier() -> None:
    slow = ScriptedTier("vllm", "llama", [HANG_S, "never"], timeout_s=TINY_TIMEOUT_S)
    fast = ScriptedTier("embedded", "rules", ["fast"])
    routed = await _router(slow, fast).call(_call(), _content)

    assert routed.value == "fast"
    assert routed.attempts[0].error_type == "TierTimeoutError"
    assert slow.answers == ["never"]  # the hang was cut short before the next item


# --------------------------------------------------------------------------------------------------
# accept(): answers the caller cannot use
# --------------------------------------------------------------------------------------------------


async def test_malformed_answer_from_accept_falls_back() -> None:
    first = ScriptedTier("openai", "gpt-4o", [_answer("bad", prompt=100, completion=50)], max_retries=2)
    second = ScriptedTier("embedded", "rules", ["good"])
    routed = await _router(first, second).call(_call(), _accept_json)

    assert routed.value == "good"
    assert first.call_count == 1  # malformed is not retried
    bad = routed.attempts[0]
    assert bad.error_type == "MalformedAnswerError"
    assert bad.usage.prompt_tokens == 100  # billed anyway
    assert routed.usage.prompt_tokens == 100 and routed.usage.calls == 2


async def test_value_error_from_accept_counts_as_malformed() -> None:
    def accept(answer: ModelAnswer) -> int:
        return int(answer.content)

    first = ScriptedTier("openai", "gpt-4o", ["not a number"])
    second = ScriptedTier("embedded", "rules", ["42"])
    routed = await _router(first, second).call(_call(), accept)

    assert routed.value == 42
    assert routed.attempts[0].error_type == "MalformedAnswerError"


# --------------------------------------------------------------------------------------------------
# Circuit breaker
# --------------------------------------------------------------------------------------------------


async def test_breaker_opens_skips_half_opens_and_closes() -> None:
    clock = FakeClock()
    flaky = ScriptedTier("openai", "gpt-4o", [ServerError("1"), ServerError("2"), "recovered", "again"])
    backup = ScriptedTier("embedded", "rules", ["b1", "b2", "b3"])
    router = _router(flaky, backup, clock=clock)  # threshold 2, cooldown 30 s

    assert (await router.call(_call(), _content)).value == "b1"
    assert (await router.call(_call(), _content)).value == "b2"
    assert router.breakers[0].state == "open"

    skipped = await router.call(_call(), _content)
    assert skipped.value == "b3"
    assert flaky.call_count == 2  # not called while open
    assert skipped.attempts[0].outcome == "skipped_open_circuit"
    assert skipped.attempts[0].try_number == 0
    assert skipped.fallbacks == 1

    clock.advance(30)
    assert router.breakers[0].state == "half_open"
    trial = await router.call(_call(), _content)
    assert trial.value == "recovered" and trial.fallbacks == 0
    assert router.breakers[0].state == "closed"
    assert (await router.call(_call(), _content)).value == "again"
    flaky.assert_consumed()
    backup.assert_consumed()


async def test_breaker_reopens_when_the_trial_fails() -> None:
    clock = FakeClock()
    flaky = ScriptedTier("openai", "gpt-4o", [ServerError("1"), ServerError("2"), ServerError("trial")])
    backup = ScriptedTier("embedded", "rules", ["b"] * 5)
    router = _router(flaky, backup, clock=clock)

    await router.call(_call(), _content)
    await router.call(_call(), _content)
    clock.advance(30)
    await router.call(_call(), _content)  # the trial, failing
    assert router.breakers[0].state == "open"
    assert router.breakers[0].opened_at == 30.0

    clock.advance(29)
    await router.call(_call(), _content)
    assert flaky.call_count == 3  # skipped again: the cooldown restarted at the failed trial
    flaky.assert_consumed()


async def test_retries_within_one_call_count_once_on_the_breaker() -> None:
    failing = ScriptedTier("openai", "gpt-4o", [ServerError("1"), ServerError("2")], max_retries=1)
    backup = ScriptedTier("embedded", "rules", ["b"])
    router = _router(failing, backup)
    await router.call(_call(), _content)
    assert router.breakers[0].state == "closed"
    assert router.breakers[0].consecutive_failures == 1


@pytest.mark.parametrize("error", [TierUnavailableError("no GPU"), CannotAnswerError("cannot plan that")])
async def test_not_the_providers_fault_never_trips_the_breaker(error: TierError) -> None:
    first = ScriptedTier("openai", "gpt-4o", [error] * 4)
    backup = ScriptedTier("embedded", "rules", ["b"] * 4)
    router = _router(first, backup)
    for _ in range(4):
        await router.call(_call(), _content)
    assert first.call_count == 4
    assert router.breakers[0].state == "closed"


async def test_cancelled_trial_frees_the_half_open_slot() -> None:
    clock = FakeClock()
    tier = ScriptedTier("embedded", "rules", [TierError("1"), TierError("2"), HANG_S, "never", "trial 2"])
    router = _router(tier, clock=clock)
    for _ in range(2):
        with pytest.raises(RouterExhaustedError):
            await router.call(_call(), _content)
    clock.advance(30)
    task = asyncio.create_task(router.call(_call(), _content))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    tier.answers.remove("never")
    assert (await router.call(_call(), _content)).value == "trial 2"


# --------------------------------------------------------------------------------------------------
# When every tier fails
# --------------------------------------------------------------------------------------------------


async def test_cannot_answer_propagates_after_other_tiers_fail() -> None:
    refusal = CannotAnswerError("the embedded planner does not understand 'paint a cat'")
    embedded = ScriptedTier("embedded", "rules", [refusal])
    remote = ScriptedTier("openai", "gpt-4o", [ServerError("503")])
    with pytest.raises(CannotAnswerError) as info:
        await _router(embedded, remote).call(_call(), _content)

    assert info.value is refusal
    assert [a.tier for a in attempts_of(info.value)] == ["embedded", "openai"]


async def test_exhausted_error_lists_every_tier() -> None:
    clock = FakeClock()
    tiers = [
        ScriptedTier(
            "openai", "gpt-4o", [RateLimitedError("429 slow down", retry_after_s=99)], max_retries=1
        ),
        ScriptedTier("vllm", "llama-3", [ServerError("engine died")]),
        ScriptedTier("embedded", "rules", [MalformedAnswerError("bad shape")]),
    ]
    with pytest.raises(RouterExhaustedError) as info:
        await _router(*tiers, clock=clock, role="reviewer").call(_call(role="reviewer"), _content)

    message = str(info.value)
    assert message.startswith("every reviewer tier failed: ")
    assert "openai(gpt-4o): RateLimitedError: 429 slow down" in message
    assert "vllm(llama-3): ServerError: engine died" in message
    assert "embedded: MalformedAnswerError: bad shape" in message
    assert info.value.role == "reviewer"
    assert len(info.value.attempts) == 3
    assert attempts_of(info.value) == info.value.attempts


async def test_exhausted_when_every_breaker_is_open() -> None:
    tier = ScriptedTier("openai", "gpt-4o", [ServerError("1"), ServerError("2")])
    router = _router(tier)
    for _ in range(2):
        with pytest.raises(RouterExhaustedError):
            await router.call(_call(), _content)
    with pytest.raises(RouterExhaustedError, match=r"openai\(gpt-4o\): skipped, circuit open"):
        await router.call(_call(), _content)
    assert tier.call_count == 2


# --------------------------------------------------------------------------------------------------
# Pricing
# --------------------------------------------------------------------------------------------------


async def test_pricing_per_thousand_tokens() -> None:
    prices = {"gpt-4o": Price(prompt_per_1k=2.5, completion_per_1k=10.0)}
    tier = ScriptedTier("openai", "gpt-4o", [_answer("ok", prompt=1200, completion=300)])
    routed = await _router(tier, prices=prices).call(_call(), _content)

    assert routed.answer.usage.cost_usd == pytest.approx(1.2 * 2.5 + 0.3 * 10.0)
    assert routed.answer.usage.calls == 1
    assert routed.attempts[0].usage == routed.answer.usage
    assert routed.usage.cost_usd == pytest.approx(6.0)


async def test_price_is_looked_up_by_the_answers_model() -> None:
    prices = {"gpt-4o-2024-08-06": Price(prompt_per_1k=1.0)}
    tier = ScriptedTier("openai", "gpt-4o", [_answer(prompt=2000, model="gpt-4o-2024-08-06")])
    routed = await _router(tier, prices=prices).call(_call(), _content)
    assert routed.answer.usage.cost_usd == pytest.approx(2.0)


async def test_model_without_price_costs_nothing() -> None:
    tier = ScriptedTier("openai", "local-model", [_answer(prompt=5000, completion=5000)])
    routed = await _router(tier, prices={"other": Price(prompt_per_1k=9)}).call(_call(), _content)
    assert routed.answer.usage.cost_usd == 0.0
    assert routed.answer.usage.total_tokens == 10000


# --------------------------------------------------------------------------------------------------
# Response cache (planner only)
# --------------------------------------------------------------------------------------------------


def _cached_settings(**cache: Any) -> RouterSettings:
    return _settings(cache={"enabled": True, **cache})


async def test_cache_hit_for_the_same_question_from_another_task() -> None:
    accepted: list[str] = []

    def accept(answer: ModelAnswer) -> str:
        accepted.append(answer.content)
        return answer.content

    tier = ScriptedTier("openai", "gpt-4o", [_answer("plan", prompt=10, completion=5)])
    router = _router(tier, settings=_cached_settings())
    first = await router.call(_call("t1"), accept)
    second = await router.call(_call("t2", tenant="other"), accept)

    assert not first.cached and first.answer.usage.total_tokens == 15
    assert second.cached and second.value == "plan"
    assert second.answer.usage == Usage()
    assert [(a.outcome, a.tier, a.index, a.try_number) for a in second.attempts] == [
        ("cache_hit", "openai", -1, 0)
    ]
    assert accepted == ["plan", "plan"]  # the hit still goes through accept
    assert tier.call_count == 1


async def test_cache_miss_after_ttl() -> None:
    clock = FakeClock()
    tier = ScriptedTier("openai", "gpt-4o", ["one", "two"])
    router = _router(tier, clock=clock, settings=_cached_settings(ttl_s=60))
    await router.call(_call(), _content)
    clock.advance(60)
    routed = await router.call(_call(), _content)
    assert not routed.cached and routed.value == "two"
    tier.assert_consumed()


async def test_failed_answers_are_not_cached() -> None:
    tier = ScriptedTier("openai", "gpt-4o", ["bad", "good"], max_retries=0)
    router = _router(tier, ScriptedTier("embedded", "rules", ["fallback"]), settings=_cached_settings())
    assert (await router.call(_call(), _accept_json)).value == "fallback"
    second = await router.call(_call(), _accept_json)
    assert second.cached and second.value == "fallback"


@pytest.mark.parametrize(("role", "enabled"), [("reviewer", True), ("ai_tool", True), ("planner", False)])
async def test_no_cache_for_other_roles_or_when_disabled(role: str, enabled: bool) -> None:
    tier = ScriptedTier("openai", "gpt-4o", ["one", "two"])
    router = _router(tier, role=role, settings=_settings(cache={"enabled": enabled}))
    await router.call(_call(role=role), _content)
    routed = await router.call(_call(role=role), _content)
    assert not routed.cached and routed.value == "two"


# --------------------------------------------------------------------------------------------------
# Attempts are records; spans join the caller's trace
# --------------------------------------------------------------------------------------------------


def test_attempt_round_trips_as_json() -> None:
    attempt = Attempt(
        tier="openai",
        model="gpt-4o",
        index=0,
        try_number=2,
        outcome="error",
        error_type="RateLimitedError",
        message="429",
        duration_s=0.25,
        waited_s=1.0,
        usage=Usage(prompt_tokens=3),
    )
    assert Attempt.model_validate_json(attempt.model_dump_json()) == attempt


async def test_attempt_spans_join_the_callers_trace() -> None:
    tracer, exporter = in_memory_tracer()
    first = ScriptedTier("openai", "gpt-4o", [ServerError("503")])
    second = ScriptedTier("embedded", "rules", [_answer("ok", prompt=7, completion=3)])
    router = _router(first, second, tracer=tracer)

    with tracer.start_as_current_span("plan") as parent:
        carrier = inject_context()
    # Called outside the parent span: only the carrier links the two (as across processes).
    await router.call(_call(trace_context=carrier), _content)

    spans = {s.name: s for s in exporter.get_finished_spans() if s.name != "model.attempt"}
    attempts = [s for s in exporter.get_finished_spans() if s.name == "model.attempt"]
    call_span = spans["model.call"]
    trace_id = parent.get_span_context().trace_id

    assert call_span.context.trace_id == trace_id
    assert call_span.parent is not None and call_span.parent.span_id == parent.get_span_context().span_id
    assert call_span.attributes is not None
    assert call_span.attributes["officeray.role"] == "planner"
    assert call_span.attributes["officeray.fallbacks"] == 1
    assert call_span.attributes["officeray.cached"] is False
    assert call_span.attributes["officeray.tier"] == "embedded"

    assert len(attempts) == 2
    for span in attempts:
        assert span.context.trace_id == trace_id
        assert span.parent is not None and span.parent.span_id == call_span.context.span_id
    failed, ok = sorted(attempts, key=lambda s: s.start_time or 0)
    assert failed.attributes is not None and ok.attributes is not None
    assert failed.attributes["officeray.outcome"] == "error"
    assert failed.attributes["officeray.error_type"] == "ServerError"
    assert failed.attributes["officeray.tier"] == "openai"
    assert failed.attributes["officeray.model"] == "gpt-4o"
    assert failed.attributes["officeray.try"] == 1
    assert failed.status.status_code == StatusCode.ERROR
    assert ok.attributes["officeray.outcome"] == "ok"
    assert ok.attributes["officeray.prompt_tokens"] == 7
    assert ok.attributes["officeray.completion_tokens"] == 3
    assert ok.status.status_code != StatusCode.ERROR

    events = [e for e in call_span.events if e.name == "fallback"]
    assert len(events) == 1
    assert events[0].attributes is not None
    assert events[0].attributes["officeray.from_tier"] == "openai"
    assert events[0].attributes["officeray.to_tier"] == "embedded"


async def test_exhausted_call_span_is_an_error() -> None:
    tracer, exporter = in_memory_tracer()
    router = _router(ScriptedTier("openai", "gpt-4o", [ServerError("503")]), tracer=tracer)
    with pytest.raises(RouterExhaustedError):
        await router.call(_call(), _content)
    call_span = next(s for s in exporter.get_finished_spans() if s.name == "model.call")
    assert call_span.status.status_code == StatusCode.ERROR


async def test_without_trace_context_the_call_joins_the_current_span() -> None:
    tracer, exporter = in_memory_tracer()
    router = _router(ScriptedTier("openai", "gpt-4o", ["ok"]), tracer=tracer)
    with tracer.start_as_current_span("task") as task:
        await router.call(_call(), _content)
    call_span = next(s for s in exporter.get_finished_spans() if s.name == "model.call")
    assert call_span.parent is not None and call_span.parent.span_id == task.get_span_context().span_id


async def test_scripted_tier_fails_loudly_past_its_script() -> None:
    tier = ScriptedTier("openai", "gpt-4o", [])
    with pytest.raises(AssertionError, match="no more items"):
        await tier.generate(_call())
    leftover = ScriptedTier("openai", "gpt-4o", ["unused"])
    with pytest.raises(AssertionError, match="1 unused item"):
        leftover.assert_consumed()
