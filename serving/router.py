"""The model router: walks a role's chain of tiers until one answers, and says how it went.

For each tier in order:

* a tier whose circuit breaker is open is skipped without being called (``skipped_open_circuit``);
* each try is bounded by the tier's ``timeout_s`` (``openai`` and ``vllm`` configs; the embedded
  tier has none) and a late answer is a :class:`~serving.tiers.base.TierTimeoutError`;
* the answer goes through the caller's ``accept`` (e.g. answer -> Plan); a
  :class:`~serving.tiers.base.MalformedAnswerError` (or any error) there is a failure of this tier;
* a ``retryable`` failure is tried again on the same tier, up to ``max_retries`` times, after the
  provider's Retry-After or an exponential, jittered backoff (``models.router`` settings); a
  Retry-After longer than ``max_backoff_s`` is not waited for: the router falls back at once;
* anything else (malformed, unavailable, cannot answer, an unexpected exception) moves on to the
  next tier at once.

A tier's breaker counts the calls that finally failed on it, except
:class:`~serving.tiers.base.TierUnavailableError` and :class:`~serving.tiers.base.CannotAnswerError`,
which are not the provider's fault. When every tier failed, the first ``CannotAnswerError`` is raised
again (its message tells the user what to change), else :class:`RouterExhaustedError`; both carry
the attempts in an ``attempts`` attribute (:func:`attempts_of`).

Every try is recorded as an :class:`Attempt` (JSON-able, kept in task records) and, with a tracer,
as a ``model.attempt`` span under one ``model.call`` span that joins the caller's trace through
``call.trace_context``. Clock, sleep and random source are injected, so tests never really wait.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, Generic, Literal, TypeVar

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from pydantic import BaseModel, ConfigDict, Field

from officeray.config import EmbeddedTierConfig, Price, RedactionSettings, RouterSettings, TierConfig
from officeray.contracts import utcnow
from officeray.errors import ConfigError
from officeray.event_schema import emit_event
from officeray.metrics import NO_METRICS, Metrics
from officeray.telemetry import extract_context
from serving.breaker import CircuitBreaker
from serving.cache import ResponseCache
from serving.tiers.base import (
    CannotAnswerError,
    MalformedAnswerError,
    ModelAnswer,
    ModelCall,
    ModelTier,
    Role,
    TierError,
    TierTimeoutError,
    TierUnavailableError,
    Usage,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

CACHED_ROLES: frozenset[str] = frozenset({"planner"})
"""Roles whose answers the response cache may serve (when ``models.router.cache.enabled``)."""

MAX_MESSAGE_CHARS = 300
"""Longest error message kept per attempt (and per tier in :class:`RouterExhaustedError`)."""

ATTEMPTS_ATTR = "attempts"
"""Attribute of the error the router raises that holds the list of :class:`Attempt`."""

EMBEDDED = "embedded"

Outcome = Literal["ok", "error", "skipped_open_circuit", "cache_hit"]

# Failures that say nothing against the provider: they never count on a tier's breaker.
_NOT_THE_PROVIDERS_FAULT: tuple[type[TierError], ...] = (TierUnavailableError, CannotAnswerError)


class Attempt(BaseModel):
    """One try on one tier (or a skip, or a cache hit), as kept in task records."""

    model_config = ConfigDict(extra="forbid")

    tier: str
    """Tier kind (``embedded``, ``openai``, ``vllm``): the tier's ``name``."""
    model: str
    index: int
    """Position of the tier in the role's chain; -1 for a cache hit."""
    try_number: int
    """1 for the first try on this tier, 2 for the first retry...; 0 when no try was made
    (``skipped_open_circuit``, ``cache_hit``)."""
    outcome: Outcome
    error_type: str | None = None
    """Class name of the :class:`TierError` (``RateLimitedError``, ``TierTimeoutError`` (also for the
    router's own timeout), ``MalformedAnswerError``, ``UnexpectedTierError``...); ``None`` when ok."""
    message: str = ""
    duration_s: float = 0.0
    waited_s: float = 0.0
    """Backoff slept after this try, before the next try on the same tier."""
    usage: Usage = Field(default_factory=Usage)
    """Tokens and cost of this try (a malformed answer was still billed)."""


@dataclass(frozen=True)
class Routed(Generic[T]):
    """What :meth:`Router.call` returns: the accepted value and how it was obtained."""

    value: T
    answer: ModelAnswer
    """The answer ``value`` came from, ``usage.cost_usd`` priced (zero usage on a cache hit)."""
    attempts: list[Attempt] = field(default_factory=list)
    fallbacks: int = 0
    """Tiers given up (failed or skipped) before the one that answered."""
    cached: bool = False

    @property
    def usage(self) -> Usage:
        """Everything this call spent, failed tries included."""
        total = Usage()
        for attempt in self.attempts:
            total = total + attempt.usage
        return total


class RouterExhaustedError(TierError):
    """Every tier of the role's chain failed (or was skipped) for this call."""

    def __init__(self, role: str, attempts: Sequence[Attempt]) -> None:
        self.role = role
        self.attempts = list(attempts)
        super().__init__(f"every {role} tier failed: " + _summarise(self.attempts))


class UnexpectedTierError(TierError):
    """A tier (or ``accept``) raised something that is not a :class:`TierError`: a bug or an
    unexpected SDK error. A non-retryable failure of that tier; the router itself never crashes."""

    def __init__(self, original: BaseException) -> None:
        self.original = original
        super().__init__(f"unexpected {type(original).__name__}: {original}")


def attempts_of(exc: BaseException) -> list[Attempt]:
    """The attempts the router attached to an error it raised (empty for any other error)."""
    attempts = getattr(exc, ATTEMPTS_ATTR, None)
    return list(attempts) if isinstance(attempts, list) else []


def price_usage(usage: Usage, price: Price | None) -> Usage:
    """``usage`` with ``cost_usd`` from ``price`` (USD per 1000 tokens); unchanged without a price."""
    if price is None:
        return usage
    cost = (
        usage.prompt_tokens / 1000 * price.prompt_per_1k
        + usage.completion_tokens / 1000 * price.completion_per_1k
    )
    return usage.model_copy(update={"cost_usd": cost})


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."


def _label(tier: str, model: str) -> str:
    """``openai(gpt-4o)``; just ``embedded`` for the embedded tier, whose model is its rules."""
    return tier if tier == EMBEDDED or not model or model == tier else f"{tier}({model})"


def _summarise(attempts: Sequence[Attempt]) -> str:
    last: dict[int, Attempt] = {}
    for attempt in attempts:
        if attempt.index >= 0:
            last[attempt.index] = attempt
    parts = []
    for index in sorted(last):
        attempt = last[index]
        if attempt.outcome == "skipped_open_circuit":
            what = "skipped, circuit open"
        else:
            tries = f" (after {attempt.try_number} tries)" if attempt.try_number > 1 else ""
            what = f"{attempt.error_type}{tries}: {attempt.message}"
        parts.append(f"{_label(attempt.tier, attempt.model)}: {what}")
    return "; ".join(parts) or "no tier was tried"


@dataclass
class _Entry:
    index: int
    config: TierConfig
    tier: ModelTier
    breaker: CircuitBreaker

    @property
    def label(self) -> str:
        return _label(self.name, self.model)

    @property
    def name(self) -> str:
        return self.tier.name

    @property
    def model(self) -> str:
        return self.tier.model

    @property
    def timeout_s(self) -> float | None:
        return None if isinstance(self.config, EmbeddedTierConfig) else self.config.timeout_s

    @property
    def max_tries(self) -> int:
        return 1 if isinstance(self.config, EmbeddedTierConfig) else 1 + self.config.max_retries


@dataclass
class _Try(Generic[T]):
    """One try on one tier: the accepted value and its answer, or the error; tokens billed either way."""

    error: TierError | None = None
    accepted: tuple[T, ModelAnswer] | None = None
    usage: Usage = field(default_factory=Usage)


@dataclass
class _TierResult(Generic[T]):
    """How one tier did for one call: the accepted value and its answer, or the last error."""

    accepted: tuple[T, ModelAnswer] | None = None
    error: TierError | None = None
    attempts: list[Attempt] = field(default_factory=list)


class Router:
    """Walks one role's tier chain; one instance per deployment replica (breakers and cache inside)."""

    def __init__(
        self,
        role: Role,
        tiers: Sequence[tuple[TierConfig, ModelTier]],
        settings: RouterSettings,
        prices: Mapping[str, Price] | None = None,
        *,
        tracer: trace.Tracer | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        redaction: RedactionSettings | None = None,
        now: Callable[[], datetime] = utcnow,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        """``metrics`` hears every try, skip and cache hit (:meth:`Metrics.model_called`), every
        fallback and every breaker state (from ``closed`` at the start)."""
        if not tiers:
            raise ConfigError(f"models.{role}: the tier chain is empty")
        self.role = role
        self._metrics = metrics
        self.settings = settings
        self.prices: Mapping[str, Price] = dict(prices or {})
        self._tracer: trace.Tracer = tracer if tracer is not None else trace.NoOpTracer()
        self._clock = clock
        self._sleep = sleep
        self._rand = rand
        self._redaction = redaction
        """How the ``llm_request``/``llm_response`` events record prompts and answers (None: the
        defaults of ``telemetry.redaction``)."""
        self._now = now
        self._entries = []
        for i, (config, tier) in enumerate(tiers):
            label = _label(tier.name, tier.model)
            breaker = CircuitBreaker(settings.breaker, clock, partial(metrics.breaker_state, role, label))
            metrics.breaker_state(role, label, breaker.state)
            self._entries.append(_Entry(i, config, tier, breaker))
        self.cache: ResponseCache | None = (
            ResponseCache(settings.cache, clock) if role in CACHED_ROLES and settings.cache.enabled else None
        )

    @property
    def tiers(self) -> list[tuple[TierConfig, ModelTier]]:
        """The chain, in order, as ``(config, tier)`` pairs."""
        return [(entry.config, entry.tier) for entry in self._entries]

    @property
    def breakers(self) -> list[CircuitBreaker]:
        """One breaker per tier position, in chain order."""
        return [entry.breaker for entry in self._entries]

    # ----------------------------------------------------------------------------------------------
    # The walk
    # ----------------------------------------------------------------------------------------------

    async def call(self, call: ModelCall, accept: Callable[[ModelAnswer], T]) -> Routed[T]:
        """The first accepted answer along the chain; raises when every tier failed (see module doc)."""
        parent = extract_context(call.trace_context) if call.trace_context else None
        with self._tracer.start_as_current_span(
            "model.call",
            context=parent,
            attributes={"officeray.role": self.role},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            started_at, started = self._now(), self._clock()
            emit_event(
                span,
                "llm_request",
                agent=self.role,
                redaction=self._redaction,
                content=call.messages or call.payload,
                details={"role": self.role, "tenant": call.tenant, "messages": len(call.messages)},
                task_id=call.task_id,
                started_at=started_at,
            )
            try:
                routed = await self._route(call, accept, span)
            except TierError as exc:
                span.set_attribute("officeray.cached", False)
                span.set_attribute("officeray.fallbacks", len(self._entries))
                span.set_status(Status(StatusCode.ERROR, _clip(str(exc))))
                span.record_exception(exc)
                self._emit_response(span, call, started_at, started, attempts_of(exc), error=exc)
                raise
            self._emit_response(span, call, started_at, started, routed.attempts, routed=routed)
            span.set_attribute("officeray.cached", routed.cached)
            span.set_attribute("officeray.fallbacks", routed.fallbacks)
            span.set_attribute("officeray.tier", routed.answer.tier)
            span.set_attribute("officeray.model", routed.answer.model)
            return routed

    def _emit_response(
        self,
        span: trace.Span,
        call: ModelCall,
        started_at: datetime,
        started: float,
        attempts: list[Attempt],
        *,
        routed: Routed[Any] | None = None,
        error: TierError | None = None,
    ) -> None:
        """The ``llm_response`` event of a call: the answer and where it came from, or the error."""
        usage = Usage()
        for attempt in attempts:
            usage = usage + attempt.usage
        details: dict[str, Any] = {"role": self.role, "attempts": len(attempts), "cost_usd": usage.cost_usd}
        content: Any = None
        if routed is not None:
            answer = routed.answer
            content = answer.content or answer.data
            details.update(
                tier=answer.tier, model=answer.model, fallbacks=routed.fallbacks, cached=routed.cached
            )
        else:
            details["tiers"] = sorted({_label(a.tier, a.model) for a in attempts if a.index >= 0})
        emit_event(
            span,
            "llm_response",
            agent=self.role,
            redaction=self._redaction,
            content=content,
            details=details,
            task_id=call.task_id,
            error=None if error is None else f"{type(error).__name__}: {error}",
            started_at=started_at,
            ended_at=self._now(),
            duration_ms=max(0.0, self._clock() - started) * 1000,
            tokens_in=usage.prompt_tokens,
            tokens_out=usage.completion_tokens,
        )

    async def _route(
        self, call: ModelCall, accept: Callable[[ModelAnswer], T], span: trace.Span
    ) -> Routed[T]:
        key = None
        if self.cache is not None:
            key = self.cache.key_for(call)
            hit = self._from_cache(key, accept)
            if hit is not None:
                return hit
        attempts: list[Attempt] = []
        errors: list[TierError] = []
        for position, entry in enumerate(self._entries):
            result = await self._walk_tier(entry, call, accept)
            attempts.extend(result.attempts)
            if result.accepted is not None:
                value, answer = result.accepted
                if self.cache is not None and key is not None:
                    self.cache.put(key, answer)
                return Routed(value=value, answer=answer, attempts=attempts, fallbacks=position)
            assert result.error is not None
            errors.append(result.error)
            if position + 1 < len(self._entries):
                self._note_fallback(span, entry, self._entries[position + 1], result)
        raise self._exhausted(errors, attempts)

    def _from_cache(self, key: str, accept: Callable[[ModelAnswer], T]) -> Routed[T] | None:
        assert self.cache is not None
        cached = self.cache.get(key)
        if cached is None:
            return None
        answer = cached.model_copy(update={"usage": Usage()})
        try:
            value = accept(answer)
        except Exception as exc:  # a stale entry the caller no longer accepts: ask the tiers
            logger.info("%s: cached answer not accepted (%s); asking the tiers", self.role, exc)
            return None
        attempt = Attempt(tier=answer.tier, model=answer.model, index=-1, try_number=0, outcome="cache_hit")
        self._metrics.model_called(self.role, _label(answer.tier, answer.model), "cache_hit")
        return Routed(value=value, answer=answer, attempts=[attempt], fallbacks=0, cached=True)

    def _exhausted(self, errors: list[TierError], attempts: list[Attempt]) -> TierError:
        cannot = next((e for e in errors if isinstance(e, CannotAnswerError)), None)
        error: TierError = cannot if cannot is not None else RouterExhaustedError(self.role, attempts)
        setattr(error, ATTEMPTS_ATTR, attempts)
        logger.warning("%s: %s", self.role, _summarise(attempts))
        return error

    def _note_fallback(self, span: trace.Span, entry: _Entry, to: _Entry, result: _TierResult[Any]) -> None:
        last = result.attempts[-1] if result.attempts else None
        reason = (last.error_type or last.outcome) if last is not None else "error"
        self._metrics.model_fell_back(self.role, entry.label, reason)
        span.add_event(
            "fallback",
            {
                "officeray.from_tier": entry.name,
                "officeray.from_model": entry.model,
                "officeray.from_index": entry.index,
                "officeray.to_tier": to.name,
                "officeray.to_model": to.model,
                "officeray.to_index": to.index,
                "officeray.reason": reason,
            },
        )

    # ----------------------------------------------------------------------------------------------
    # One tier
    # ----------------------------------------------------------------------------------------------

    async def _walk_tier(
        self, entry: _Entry, call: ModelCall, accept: Callable[[ModelAnswer], T]
    ) -> _TierResult[T]:
        result: _TierResult[T] = _TierResult()
        if not entry.breaker.allow():
            result.error = TierUnavailableError(f"{entry.label}: circuit open")
            result.attempts.append(
                Attempt(
                    tier=entry.name,
                    model=entry.model,
                    index=entry.index,
                    try_number=0,
                    outcome="skipped_open_circuit",
                    message=f"circuit open after {entry.breaker.consecutive_failures} consecutive failures",
                )
            )
            self._metrics.model_called(self.role, entry.label, "skipped_open_circuit")
            return result
        settled = False
        try:
            await self._tries(entry, call, accept, result)
            if result.accepted is not None:
                entry.breaker.record_success()
            elif isinstance(result.error, _NOT_THE_PROVIDERS_FAULT):
                entry.breaker.release()
            else:
                entry.breaker.record_failure()
            settled = True
        finally:
            if not settled:  # cancelled: free a half-open trial slot, count nothing
                entry.breaker.release()
        return result

    async def _tries(
        self, entry: _Entry, call: ModelCall, accept: Callable[[ModelAnswer], T], result: _TierResult[T]
    ) -> None:
        for try_number in range(1, entry.max_tries + 1):
            with self._tracer.start_as_current_span(
                "model.attempt",
                attributes={
                    "officeray.role": self.role,
                    "officeray.tier": entry.name,
                    "officeray.model": entry.model,
                    "officeray.tier_index": entry.index,
                    "officeray.try": try_number,
                },
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                started = self._clock()
                one = await self._one_try(entry, call, accept)
                error = one.error
                attempt = Attempt(
                    tier=entry.name,
                    model=entry.model,
                    index=entry.index,
                    try_number=try_number,
                    outcome="ok" if error is None else "error",
                    error_type=None if error is None else type(error).__name__,
                    message="" if error is None else _clip(str(error)),
                    duration_s=max(0.0, self._clock() - started),
                    usage=one.usage,
                )
                wait: float | None = None
                if error is not None and error.retryable and try_number < entry.max_tries:
                    wait, note = self._backoff(error, try_number)
                    if note:
                        attempt.message = _clip(f"{attempt.message} ({note})")
                    attempt.waited_s = wait or 0.0
                result.attempts.append(attempt)
                self._annotate(span, attempt)
                self._metrics.model_called(
                    self.role,
                    entry.label,
                    attempt.outcome,
                    attempt.duration_s,
                    attempt.usage.prompt_tokens,
                    attempt.usage.completion_tokens,
                )
            result.accepted, result.error = one.accepted, error
            if error is None or wait is None:
                return
            await self._sleep(wait)

    async def _one_try(self, entry: _Entry, call: ModelCall, accept: Callable[[ModelAnswer], T]) -> _Try[T]:
        """Ask the tier once and pass its answer through ``accept``."""
        try:
            answer = self._priced(entry, await self._generate(entry, call))
        except TierError as exc:
            return _Try(error=exc, usage=self._billed(exc, entry))
        except Exception as exc:  # a bug or an unexpected SDK error: this tier failed, not the router
            logger.exception("%s tier %s raised an unexpected error", self.role, entry.label)
            return _Try(error=UnexpectedTierError(exc))
        try:
            return _Try(accepted=(accept(answer), answer), usage=answer.usage)
        except TierError as exc:
            return _Try(error=exc, usage=answer.usage)
        except ValueError as exc:  # pydantic's ValidationError, json's JSONDecodeError
            error = MalformedAnswerError(f"answer not accepted: {type(exc).__name__}: {exc}")
            return _Try(error=error, usage=answer.usage)
        except Exception as exc:
            logger.exception(
                "%s: accepting the answer of %s raised an unexpected error", self.role, entry.label
            )
            return _Try(error=UnexpectedTierError(exc), usage=answer.usage)

    async def _generate(self, entry: _Entry, call: ModelCall) -> ModelAnswer:
        timeout = entry.timeout_s
        try:
            if timeout is None:
                return await entry.tier.generate(call)
            return await asyncio.wait_for(entry.tier.generate(call), timeout)
        except TimeoutError:
            limit = f"{timeout:g}s" if timeout is not None else "its own limit"
            raise TierTimeoutError(f"no answer within {limit}") from None

    def _priced(self, entry: _Entry, answer: ModelAnswer) -> ModelAnswer:
        model = answer.model or entry.model
        usage = price_usage(answer.usage, self.prices.get(model))
        if usage.calls == 0:
            usage = usage.model_copy(update={"calls": 1})
        return answer.model_copy(update={"usage": usage, "model": model, "tier": answer.tier or entry.name})

    def _billed(self, exc: TierError, entry: _Entry) -> Usage:
        """Tokens a failed try was still billed for, when the tier says so in ``exc.usage``."""
        billed = getattr(exc, "usage", None)
        return price_usage(billed, self.prices.get(entry.model)) if isinstance(billed, Usage) else Usage()

    def _backoff(self, error: TierError, failed_try: int) -> tuple[float | None, str]:
        """Seconds to wait before the next try on the same tier (``None``: give up the tier), and a note."""
        s = self.settings
        if error.retry_after_s is not None:
            if error.retry_after_s > s.max_backoff_s:
                return None, (
                    f"Retry-After {error.retry_after_s:g}s exceeds max_backoff_s {s.max_backoff_s:g}s; "
                    "falling back"
                )
            return max(0.0, error.retry_after_s), f"Retry-After {error.retry_after_s:g}s"
        base = s.initial_backoff_s * s.backoff_coefficient ** (failed_try - 1)
        jittered = base * (1 - s.jitter + 2 * s.jitter * self._rand())
        return max(0.0, min(jittered, s.max_backoff_s)), ""

    @staticmethod
    def _annotate(span: trace.Span, attempt: Attempt) -> None:
        span.set_attribute("officeray.outcome", attempt.outcome)
        span.set_attribute("officeray.error_type", attempt.error_type or "")
        span.set_attribute("officeray.prompt_tokens", attempt.usage.prompt_tokens)
        span.set_attribute("officeray.completion_tokens", attempt.usage.completion_tokens)
        span.set_attribute("officeray.waited_s", attempt.waited_s)
        if attempt.outcome == "error":
            span.set_status(Status(StatusCode.ERROR, attempt.message))
