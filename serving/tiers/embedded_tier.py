"""The ``embedded`` tier behind the :class:`~serving.tiers.base.ModelTier` interface.

:class:`EmbeddedTier` wraps the pure, deterministic answerers (:func:`~serving.tiers.embedded.plan_task`,
:func:`~serving.tiers.embedded.review_results`, and the ai_tool's own
:func:`~tools_sandbox.host_tools.ai_answers.answer_prompt`) for one role. It reads a call two ways:

* ``call.payload`` set (the role adapters' path): a :class:`~officeray.contracts.PlanRequest` for the
  planner, a :class:`~officeray.contracts.ReviewRequest` for the reviewer, a ``str`` prompt for the
  ai_tool. A payload of another role's type is refused.
* ``call.payload`` is ``None`` (the OpenAI-shaped HTTP route, :mod:`serving.chat_api`): the request
  comes from the last ``user`` message. Planner: a JSON object shaped like a ``PlanRequest``
  (``{"task_id", "description", ...}``; ``task_id`` defaults to ``"chat"``, ``allowed_tools`` to every
  registered tool) or plain text taken as the task description. Reviewer: a ``ReviewRequest`` as JSON.
  ai_tool: the text is the prompt.

The answer's ``data`` is the :class:`~officeray.contracts.Plan` / :class:`~officeray.contracts.Review`
object (the ai_tool's answer text), ``content`` its JSON (the text). A request the embedded answerers
do not understand raises :class:`~serving.tiers.base.CannotAnswerError` with their message.

Usage is approximate: **whitespace tokens**, not a model tokenizer's. ``prompt_tokens`` counts the
messages' text (or the payload as JSON when there are no messages), ``completion_tokens`` the
answer's ``content``. JSON is written with ``", "`` and ``": "`` separators so that a plan's size in
"tokens" grows with its keys and values.

The optional :class:`~officeray.config.LatencyModel` makes the tier take a real model's time, so that
load tests stand in honestly for one: :meth:`EmbeddedTier.generate` waits
``ttft_s * f1 + completion_tokens / tokens_per_s * f2`` before returning, where each factor is
``1 + jitter * (2 * rand() - 1)`` (``rand`` is only drawn when ``jitter > 0``, ``f1`` first) and a part
that is zero (``ttft_s == 0``, ``tokens_per_s == 0``) costs no time and draws nothing.
:meth:`EmbeddedTier.stream` yields the content word by word, waiting ``ttft_s`` (jittered) before the
first chunk and ``1 / tokens_per_s`` (jittered) between chunks. Refusals are raised at once.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from officeray.config import LatencyModel
from officeray.contracts import DecomposeRequest, Plan, PlanRequest, ReviewRequest
from officeray.decompose import decompose_rules
from officeray.errors import PlanningError
from officeray.tools.builtin import BUILTIN_TOOLS
from serving.tiers.base import CannotAnswerError, ModelAnswer, ModelCall, Role, Usage
from serving.tiers.embedded import plan_task, review_results
from tools_sandbox.host_tools.ai_answers import answer_prompt

EMBEDDED_TIER = "embedded"
EMBEDDED_MODEL = "embedded"

CHAT_TASK_ID = "chat"
"""``task_id`` of a plan asked for in plain text over the chat route."""

_WORD_BOUNDARY_RE = re.compile(r"(?<=\s)(?=\S)")

Sleep = Callable[[float], Awaitable[Any]]


def whitespace_tokens(text: str) -> int:
    """The embedded tier's token count: whitespace-separated words (an approximation)."""
    return len(text.split())


def word_chunks(text: str) -> list[str]:
    """``text`` cut before each word that follows whitespace; the chunks join back to ``text``."""
    return [chunk for chunk in _WORD_BOUNDARY_RE.split(text) if chunk]


def _to_json(value: BaseModel) -> str:
    return json.dumps(value.model_dump(mode="json"), ensure_ascii=False)


def _last_user_text(call: ModelCall) -> str:
    for message in reversed(call.messages):
        if message.get("role") == "user":
            return str(message.get("content") or "")
    raise CannotAnswerError(f"the embedded {call.role} needs a user message; the call has none")


def _planner_request(text: str) -> PlanRequest:
    """A PlanRequest from the chat route's user text: a PlanRequest-like JSON object, or the description.

    ``allowed_tools`` defaults to the built-in tools: the only ones the embedded planner plans."""
    try:
        loaded = json.loads(text)
    except ValueError:
        loaded = None
    if isinstance(loaded, dict) and "description" in loaded:
        data = {"task_id": CHAT_TASK_ID, "allowed_tools": sorted(BUILTIN_TOOLS), **loaded}
        try:
            return PlanRequest.model_validate(data)
        except ValidationError as exc:
            raise CannotAnswerError(f"the user message is not a valid plan request: {_errors(exc)}") from None
    if not text.strip():
        raise CannotAnswerError("the embedded planner needs a task description; the user message is empty")
    return PlanRequest(task_id=CHAT_TASK_ID, description=text, allowed_tools=sorted(BUILTIN_TOOLS))


def _reviewer_request(text: str) -> ReviewRequest:
    try:
        return ReviewRequest.model_validate_json(text)
    except ValidationError as exc:
        raise CannotAnswerError(
            "the embedded reviewer expects the last user message to be a review request as JSON "
            '({"task_id", "description", "iteration", "plan", "results"}): ' + _errors(exc)
        ) from None


def _errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{where}: {err['msg']}")
    more = len(exc.errors()) - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


_Request = PlanRequest | ReviewRequest | DecomposeRequest
"""The structured requests the embedded tier answers (the ai_tool's is a prompt string)."""

_EXPECTED: dict[Role, tuple[type[Any], str]] = {
    "planner": (PlanRequest, "a PlanRequest"),
    "reviewer": (ReviewRequest, "a ReviewRequest"),
    "ai_tool": (str, "a prompt string"),
    "decomposer": (DecomposeRequest, "a DecomposeRequest"),
}


class EmbeddedTier:
    """The deterministic tier for one ``role`` (see the module docstring)."""

    name: str = EMBEDDED_TIER
    model: str = EMBEDDED_MODEL

    def __init__(
        self,
        role: Role,
        latency: LatencyModel | None = None,
        *,
        sleep: Sleep = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if role not in _EXPECTED:
            raise ValueError(f"unknown role {role!r}; roles: {', '.join(_EXPECTED)}")
        self.role: Role = role
        self.latency = latency
        self._sleep = sleep
        self._rand = rand

    # -- answering ---------------------------------------------------------------------------------

    def answer(self, call: ModelCall) -> ModelAnswer:
        """The answer to ``call`` at once (no simulated latency)."""
        request = self._request(call)
        if isinstance(request, PlanRequest):
            reused = self._reuse(request)
            if reused is not None:
                return reused
        prompt_text = self._prompt_text(call, request)
        try:
            if isinstance(request, PlanRequest):
                plan = plan_task(request)
                data: Any = plan
                content = _to_json(plan)
            elif isinstance(request, ReviewRequest):
                review = review_results(request)
                data, content = review, _to_json(review)
            elif isinstance(request, DecomposeRequest):
                decomposition = decompose_rules(request.description, request.allowed_tools)
                data, content = decomposition, _to_json(decomposition)
            else:
                if call.max_tokens < 1:
                    raise CannotAnswerError("max_tokens must be at least 1")
                content = str(answer_prompt(request, call.max_tokens)["answer"])
                data = content
        except PlanningError as exc:  # AiToolUnsupportedPrompt is one too
            raise CannotAnswerError(str(exc)) from exc
        usage = Usage(
            prompt_tokens=whitespace_tokens(prompt_text),
            completion_tokens=whitespace_tokens(content),
            calls=1,
        )
        return ModelAnswer(content=content, data=data, usage=usage, tier=self.name, model=self.model)

    async def generate(self, call: ModelCall) -> ModelAnswer:
        answer = self.answer(call)
        if answer.reused_from is not None:
            return answer  # nothing was generated: no model time to stand in for
        delay = self._delay(ttft=True, tokens=answer.usage.completion_tokens)
        if delay > 0:
            await self._sleep(delay)
        return answer

    async def stream(self, call: ModelCall) -> AsyncIterator[str]:
        """The answer's content in word chunks, paced like a model's token stream."""
        answer = self.answer(call)
        for index, chunk in enumerate(word_chunks(answer.content)):
            delay = self._delay(ttft=True, tokens=0) if index == 0 else self._delay(ttft=False, tokens=1)
            if delay > 0:
                await self._sleep(delay)
            yield chunk

    def _reuse(self, request: PlanRequest) -> ModelAnswer | None:
        """The remembered plan of a near-duplicate success (``request.memory.reusable``, chosen by the
        memory: :func:`officeray.memory.learn.reusable_plan`), on a first round only; re-stamped for
        this task by the role adapter, then validated and reviewed like any plan."""
        memory = request.memory
        if memory is None or memory.reusable is None or request.iteration != 1 or request.feedback:
            return None
        hit = next((h for h in memory.successes if h.entry_id == memory.reusable), None)
        if hit is None or hit.plan is None:
            return None
        if any(step.get("action") not in request.allowed_tools for step in hit.plan.get("steps", [])):
            return None
        try:
            plan = Plan.model_validate(
                {**hit.plan, "task_id": request.task_id, "plan_id": f"{request.task_id}-plan-1"}
            )
        except ValidationError:
            return None  # a plan stored by an older version: plan anew
        usage = Usage(prompt_tokens=0, completion_tokens=0, calls=0)
        return ModelAnswer(
            content=_to_json(plan),
            data=plan,
            usage=usage,
            tier=self.name,
            model=self.model,
            reused_from=hit.task_id,
        )

    # -- helpers -----------------------------------------------------------------------------------

    def _request(self, call: ModelCall) -> PlanRequest | ReviewRequest | DecomposeRequest | str:
        payload = call.payload
        if payload is None:
            text = _last_user_text(call)
            if self.role == "planner":
                return _planner_request(text)
            if self.role == "reviewer":
                return _reviewer_request(text)
            if self.role == "decomposer":
                return DecomposeRequest(task_id=CHAT_TASK_ID, description=text)
            return text
        expected_type, expected = _EXPECTED[self.role]
        if isinstance(payload, dict) and self.role != "ai_tool":
            try:
                validated: _Request = expected_type.model_validate(payload)
            except ValidationError as exc:
                raise CannotAnswerError(f"the payload is not {expected}: {_errors(exc)}") from None
            return validated
        if isinstance(payload, _Request | str) and isinstance(payload, expected_type):
            return payload
        raise CannotAnswerError(
            f"the embedded {self.role} answers {expected}, not a {type(payload).__name__} payload"
        )

    @staticmethod
    def _prompt_text(call: ModelCall, request: PlanRequest | ReviewRequest | DecomposeRequest | str) -> str:
        if call.messages:
            return " ".join(str(m.get("content") or "") for m in call.messages)
        return request if isinstance(request, str) else _to_json(request)

    def _factor(self) -> float:
        assert self.latency is not None
        jitter = self.latency.jitter
        return 1.0 if jitter == 0 else 1.0 + jitter * (2.0 * self._rand() - 1.0)

    def _delay(self, *, ttft: bool, tokens: int) -> float:
        """Seconds to wait: ``ttft_s`` (when asked) plus ``tokens / tokens_per_s``, each jittered."""
        latency = self.latency
        if latency is None:
            return 0.0
        delay = 0.0
        if ttft and latency.ttft_s > 0:
            delay += latency.ttft_s * self._factor()
        if tokens > 0 and latency.tokens_per_s > 0:
            delay += tokens / latency.tokens_per_s * self._factor()
        return max(0.0, delay)
