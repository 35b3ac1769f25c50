"""The adapters between the workflow and the model deployments: backpressure, envelopes, chat errors."""

from __future__ import annotations

from typing import Any

import pytest

from officeray.contracts import ModelCallRecord, ModelUsage, PlanRequest
from officeray.errors import ModelUnavailableError, PlanningError
from serving import models
from serving.models import ModelReply, ServePlanner, call_with_backpressure, unwrap_chat_reply
from serving.tiers.base import ModelAnswer, RateLimitedError, TierError
from serving.tiers.embedded import plan_task


class BackPressureError(Exception):
    """Stands in for ray.serve.exceptions.BackPressureError (matched by name, as Ray raises it)."""


class _Method:
    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.calls = 0
        self.args: list[tuple[Any, ...]] = []

    async def remote(self, *args: Any) -> Any:
        self.calls += 1
        self.args.append(args)
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


class Waits:
    """The injected ``sleep`` of :func:`call_with_backpressure`: records the waits, never waits."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)


async def test_backpressure_is_retried_with_backoff_then_answers() -> None:
    method, waits = _Method([BackPressureError("full"), BackPressureError("full"), "ok"]), Waits()
    assert await call_with_backpressure(method, sleep=waits) == "ok"
    assert method.calls == 3
    assert waits.seconds == [models.BACKPRESSURE_INITIAL_WAIT_S, models.BACKPRESSURE_INITIAL_WAIT_S * 2]


async def test_lasting_backpressure_is_a_retriable_unavailable_error_not_a_hang() -> None:
    method, waits = _Method([BackPressureError("full")] * (models.BACKPRESSURE_RETRIES + 1)), Waits()
    with pytest.raises(ModelUnavailableError, match="overloaded"):
        await call_with_backpressure(method, sleep=waits)
    assert method.calls == models.BACKPRESSURE_RETRIES + 1
    assert len(waits.seconds) == models.BACKPRESSURE_RETRIES  # none after the last attempt


async def test_other_errors_are_not_retried() -> None:
    method, waits = _Method([ValueError("boom"), "never"]), Waits()
    with pytest.raises(ValueError):
        await call_with_backpressure(method, sleep=waits)
    assert method.calls == 1 and waits.seconds == []


async def test_every_attempt_gets_the_same_arguments() -> None:
    method = _Method([BackPressureError("full"), "ok"])
    assert await call_with_backpressure(method, "request", "tenant", sleep=Waits()) == "ok"
    assert method.args == [("request", "tenant")] * 2


class _Handle:
    def __init__(self, reply: ModelReply) -> None:
        self.plan = _Method([reply])


async def test_planner_adapter_returns_the_plan_with_its_call_record() -> None:
    request = PlanRequest(task_id="t1", description="Compute 1 + 1", allowed_tools=["math_calculator"])
    call = ModelCallRecord(role="planner", tier="embedded", usage=ModelUsage(prompt_tokens=3, calls=1))
    planned = await ServePlanner(_Handle(ModelReply(plan=plan_task(request), call=call))).plan(request)
    assert planned.plan.task_id == "t1" and planned.call == call


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (ModelReply(error="planning", message="cannot plan this"), PlanningError),
        (ModelReply(error="unavailable", message="all tiers down"), ModelUnavailableError),
    ],
)
async def test_planner_adapter_raises_the_typed_error(reply: ModelReply, error: type[Exception]) -> None:
    request = PlanRequest(task_id="t1", description="x", allowed_tools=[])
    with pytest.raises(error, match=reply.message):
        await ServePlanner(_Handle(reply)).plan(request)


def test_chat_reply_envelope_round_trips_typed_errors() -> None:
    answer = ModelAnswer(content="hi", tier="embedded")
    assert unwrap_chat_reply({"answer": answer}) is answer
    with pytest.raises(RateLimitedError) as exc:
        unwrap_chat_reply({"error": "RateLimitedError", "message": "slow down", "retry_after_s": 3.0})
    assert exc.value.retry_after_s == 3.0
    with pytest.raises(TierError, match="odd"):
        unwrap_chat_reply({"error": "NotATierError", "message": "odd"})
