"""The adapters between the workflow and the model deployments: backpressure, envelopes, chat errors."""

from __future__ import annotations

import asyncio
import threading
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

    async def remote(self, *args: Any) -> Any:
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


@pytest.fixture(autouse=True)
def _no_real_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Records the waits of this test's event loop instead of waiting. ``asyncio.sleep`` is patched
    for the whole process, so event loops of other threads (a Serve handle's, left by an earlier
    test in this process) keep sleeping for real and are not recorded."""
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(seconds: float) -> None:
        if threading.current_thread() is not threading.main_thread():
            await real_sleep(seconds)
            return
        waits.append(seconds)

    monkeypatch.setattr(models.asyncio, "sleep", fake_sleep)
    return waits


async def test_backpressure_is_retried_with_backoff_then_answers(_no_real_waits: list[float]) -> None:
    method = _Method([BackPressureError("full"), BackPressureError("full"), "ok"])
    assert await call_with_backpressure(method) == "ok"
    assert method.calls == 3
    assert _no_real_waits == [models.BACKPRESSURE_INITIAL_WAIT_S, models.BACKPRESSURE_INITIAL_WAIT_S * 2]


async def test_lasting_backpressure_is_a_retriable_unavailable_error_not_a_hang() -> None:
    method = _Method([BackPressureError("full")] * (models.BACKPRESSURE_RETRIES + 1))
    with pytest.raises(ModelUnavailableError, match="overloaded"):
        await call_with_backpressure(method)
    assert method.calls == models.BACKPRESSURE_RETRIES + 1


async def test_other_errors_are_not_retried() -> None:
    method = _Method([ValueError("boom"), "never"])
    with pytest.raises(ValueError):
        await call_with_backpressure(method)
    assert method.calls == 1


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
