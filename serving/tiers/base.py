"""The model-tier interface every tier implements, and the typed failures the router acts on.

A *tier* answers one :class:`ModelCall` with a :class:`ModelAnswer`. The call carries both shapes of
the question: ``messages`` (+ ``json_schema`` for structured output) for text models (the ``openai``
and ``vllm`` tiers), and ``payload``, the structured request itself (a ``PlanRequest``, a
``ReviewRequest`` or an ai_tool prompt), for the deterministic ``embedded`` tier. The role adapters
in :mod:`serving.roles` build calls and turn answers into plans and reviews; the router
(:mod:`serving.router`) walks the tiers of a role.

Failures are typed so the router can decide: retry the same tier (``retryable``, honouring
``retry_after_s``), or move on to the next tier. A malformed or schema-violating answer is a
:class:`MalformedAnswerError`: a failure of that tier for that call.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from officeray.contracts import ModelUsage

Role = Literal["planner", "reviewer", "ai_tool", "gatekeeper", "decomposer"]


Usage = ModelUsage
"""Tokens and cost of one or more model calls (the contract type, re-exported for tiers)."""


class ModelCall(BaseModel):
    """One question to a role's model."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    role: Role
    messages: list[dict[str, str]] = Field(default_factory=list)
    """Chat messages (``{"role": "system"|"user"|"assistant", "content": ...}``) for text tiers."""
    json_schema: dict[str, Any] | None = None
    """When set, text tiers ask for structured output that matches this JSON Schema."""
    schema_name: str = "answer"
    max_tokens: int = 2048
    temperature: float = 0.0
    payload: Any = None
    """The structured request (PlanRequest / ReviewRequest / prompt str) for the embedded tier."""
    task_id: str | None = None
    tenant: str = "default"
    trace_context: dict[str, str] = Field(default_factory=dict)
    """W3C trace context of the caller, so tier attempts join the task's trace."""


class ModelAnswer(BaseModel):
    """A tier's answer: the raw text, the parsed value, and what it cost."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    content: str = ""
    data: Any = None
    """The parsed answer: a dict from structured output, or the embedded tier's object."""
    usage: Usage = Field(default_factory=Usage)
    tier: str = ""
    model: str = ""
    reused_from: str | None = None
    """The task whose remembered plan this answer is (the embedded tier's reuse; no model ran)."""


class TierError(Exception):
    """A tier could not answer this call."""

    retryable: bool = False
    """Whether the same tier may be asked again (after ``retry_after_s`` when given)."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RateLimitedError(TierError):
    """HTTP 429: retry after ``retry_after_s`` (the Retry-After header) or the backoff."""

    retryable = True


class ServerError(TierError):
    """HTTP 5xx or a dropped connection."""

    retryable = True


class TierTimeoutError(TierError):
    """No answer within the tier's timeout."""

    retryable = True


class MalformedAnswerError(TierError):
    """The answer is not valid JSON or violates the schema: a failure of this tier for this call."""


class TierUnavailableError(TierError):
    """The tier cannot run here at all (vLLM not installed, no GPU, no API key): skip it."""


class BackpressureError(TierError):
    """The deployment is at ``max_ongoing_requests``: retriable, not a hang."""

    retryable = True


class CannotAnswerError(TierError):
    """The tier understood the call and refuses it for good (the embedded planner cannot plan it).

    Other tiers are still tried; if none answers, this message reaches the user.
    """


@runtime_checkable
class ModelTier(Protocol):
    """What every tier implements. ``name`` is the tier kind (``embedded``, ``openai``, ``vllm``)."""

    name: str
    model: str

    async def generate(self, call: ModelCall) -> ModelAnswer: ...
