"""One schema for what the agents say and do: LLM calls, tool calls, approvals and reviews.

A :class:`TelemetryEvent` is recorded as an OpenTelemetry *span event* (:func:`record_event`) on the
span of the work it belongs to, so it travels with the task's trace (OTLP exporters, the trace
store, ``GET /v1/tasks/{id}/trace``) and needs no store of its own. The event's name is its
``event_type``; its attributes are the whole event as compact JSON under :data:`EVENT_ATTRIBUTE`
plus a few flat ones to filter on (``officeray.task_id``, ``officeray.step_id``,
``officeray.agent``, ``officeray.redacted``, ``officeray.error``, ``officeray.tokens_in``,
``officeray.tokens_out``, ``officeray.duration_ms``).

* ``llm_request``: the model router, before a call (on ``model.call``); content ``prompt``,
  recorded as ``prompts`` says;
* ``llm_response``: the model router, after it (``model.call``); ``response`` as ``responses``;
* ``tool_request``: a tool runner, before a step (``tool <action>``); ``args`` as ``tool_args``;
* ``tool_response``: a tool runner, after it (``tool <action>``); ``result`` as ``tool_results``;
* ``approval``: the workflow, when a person's decision is applied (the ``task`` span); ``reason``,
  in full (scrubbed);
* ``review``: the workflow, when the reviewer answered (``review``); ``feedback`` as ``responses``;
* ``gatekeeper``: the workflow, when the gatekeeper judged a step before it ran (the ``task`` span);
  ``reason``, in full (scrubbed), with ``verdict``, ``risk``, ``rule`` and ``action`` in the details.

:func:`make_event` builds an event and applies the ``telemetry.redaction`` settings
(:class:`~officeray.config.RedactionSettings`) to its content; the other payload fields (tier,
model, action, verdict...) are recorded as they are, scrubbed when ``scrub_pii`` is on, as is the
error message. :func:`emit_event` builds and records in one call, and skips the work on a span that
records nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, get_args

from opentelemetry import trace
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from officeray.config import RedactionMode, RedactionSettings
from officeray.redaction import redact, scrub_pii

EventType = Literal[
    "llm_request", "llm_response", "tool_request", "tool_response", "approval", "review", "gatekeeper"
]
EVENT_TYPES: Final[tuple[str, ...]] = get_args(EventType)

EVENT_ATTRIBUTE: Final = "officeray.event"
"""The span-event attribute that holds the whole event as compact JSON."""

CONTENT_KEYS: Final[Mapping[str, str]] = {
    "llm_request": "prompt",
    "llm_response": "response",
    "tool_request": "args",
    "tool_response": "result",
    "approval": "reason",
    "review": "feedback",
    "gatekeeper": "reason",
}
"""The payload key of each event type's content (what the redaction settings apply to)."""

CONTENT_SETTINGS: Final[Mapping[str, str | None]] = {
    "llm_request": "prompts",
    "llm_response": "responses",
    "tool_request": "tool_args",
    "tool_response": "tool_results",
    "approval": None,
    "review": "responses",
    "gatekeeper": None,
}
"""The ``telemetry.redaction`` field that decides how each event type's content is recorded; None:
recorded in full (scrubbed when ``scrub_pii`` is on)."""

MAX_ERROR_CHARS: Final = 1_000
"""Longest error message an event records."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_UNSET: Any = object()


class TelemetryEvent(BaseModel):
    """One LLM call, tool call, approval or review, as recorded (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    event_type: EventType
    agent: str
    """The component that acted: ``planner``, ``reviewer``, ``ai_tool`` (the model roles),
    ``runner`` (a tool step), ``orchestrator`` (an approval applied)."""
    task_id: str | None = None
    step_id: str | None = None
    """The plan step (tool events, approvals); None for model calls and reviews."""
    payload: dict[str, Any] = Field(default_factory=dict)
    """The content under its :data:`CONTENT_KEYS` key (absent when dropped), and metadata: ``role``,
    ``tier``, ``model``, ``action``, ``verdict``, ``decision``..."""
    redacted: bool = False
    """Whether anything of the payload or the error was truncated, hashed, dropped or scrubbed."""
    error: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration_ms: float | None = Field(default=None, ge=0)
    tokens_in: int | None = Field(default=None, ge=0)
    """Prompt tokens (model calls, the reviewer's answer)."""
    tokens_out: int | None = Field(default=None, ge=0)
    """Completion tokens."""

    def to_json(self) -> str:
        """The event as compact JSON (the :data:`EVENT_ATTRIBUTE` value)."""
        return self.model_dump_json()


def make_event(
    event_type: EventType,
    *,
    agent: str,
    redaction: RedactionSettings | None = None,
    content: Any = _UNSET,
    details: Mapping[str, Any] | None = None,
    task_id: str | None = None,
    step_id: str | None = None,
    error: str | None = None,
    started_at: datetime | None = None,
    ended_at: datetime | None = None,
    duration_ms: float | None = None,
    tokens_in: int | None = None,
    tokens_out: int | None = None,
) -> TelemetryEvent:
    """An event whose ``content`` (the prompt, answer, tool args or result...) is recorded as the
    ``redaction`` settings say for its type (default settings: truncated and scrubbed); ``details``
    are payload metadata, recorded in full. ``duration_ms`` defaults to ``ended_at - started_at``."""
    settings = redaction if redaction is not None else RedactionSettings()
    scrub = settings.scrub_pii
    payload, redacted = redact(dict(details or {}), "full", settings.max_chars, scrub)
    if content is not _UNSET:
        field = CONTENT_SETTINGS[event_type]
        mode: RedactionMode = getattr(settings, field) if field is not None else "full"
        recorded, content_redacted = redact(content, mode, settings.max_chars, scrub)
        redacted |= content_redacted
        if mode != "drop":
            payload[CONTENT_KEYS[event_type]] = recorded
    if error is not None:
        clipped = error if len(error) <= MAX_ERROR_CHARS else error[: MAX_ERROR_CHARS - 1] + "…"
        scrubbed = scrub_pii(clipped) if scrub else clipped
        redacted |= scrubbed != error
        error = scrubbed
    if duration_ms is None and started_at is not None and ended_at is not None:
        duration_ms = max(0.0, (ended_at - started_at) / timedelta(milliseconds=1))
    return TelemetryEvent(
        event_type=event_type,
        agent=agent,
        task_id=task_id,
        step_id=step_id,
        payload=payload,
        redacted=redacted,
        error=error,
        started_at=started_at,
        ended_at=ended_at,
        duration_ms=duration_ms,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
    )


def event_attributes(event: TelemetryEvent) -> dict[str, Any]:
    """The span-event attributes of ``event``: :data:`EVENT_ATTRIBUTE` and the flat ones that are set."""
    attributes: dict[str, Any] = {
        EVENT_ATTRIBUTE: event.to_json(),
        "officeray.agent": event.agent,
        "officeray.redacted": event.redacted,
    }
    flat = {
        "officeray.task_id": event.task_id,
        "officeray.step_id": event.step_id,
        "officeray.error": event.error,
        "officeray.duration_ms": event.duration_ms,
        "officeray.tokens_in": event.tokens_in,
        "officeray.tokens_out": event.tokens_out,
    }
    attributes.update({key: value for key, value in flat.items() if value is not None})
    return attributes


def record_event(span: trace.Span, event: TelemetryEvent) -> None:
    """Add ``event`` to ``span`` as a span event named its ``event_type``, timed at its end (or start)."""
    when = event.ended_at or event.started_at
    timestamp = None
    if when is not None:
        aware = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
        timestamp = (aware - _EPOCH) // timedelta(microseconds=1) * 1_000
    span.add_event(event.event_type, event_attributes(event), timestamp=timestamp)


def emit_event(span: trace.Span, event_type: EventType, **fields: Any) -> TelemetryEvent | None:
    """:func:`make_event` and :func:`record_event` in one; nothing (None) on a span that is not
    recording (a no-op tracer), so untraced processes pay no redaction work."""
    if not span.is_recording():
        return None
    event = make_event(event_type, **fields)
    record_event(span, event)
    return event


def event_from_attributes(attributes: Mapping[str, Any]) -> TelemetryEvent | None:
    """The event a span event's attributes hold (as stored spans give them back); None when they
    hold none, or not a valid one."""
    raw = attributes.get(EVENT_ATTRIBUTE)
    if not isinstance(raw, str):
        return None
    try:
        return TelemetryEvent.model_validate_json(raw)
    except ValidationError:
        return None


def events_of(span_events: Any) -> list[TelemetryEvent]:
    """The telemetry events among a span's events: SDK ``Event`` objects (``.attributes``) or dicts
    with an ``attributes`` key (a stored span's ``events``)."""
    found = []
    for raw in span_events or ():
        attributes = raw.get("attributes") if isinstance(raw, Mapping) else getattr(raw, "attributes", None)
        event = event_from_attributes(attributes) if isinstance(attributes, Mapping) else None
        if event is not None:
            found.append(event)
    return found


__all__ = [
    "CONTENT_KEYS",
    "CONTENT_SETTINGS",
    "EVENT_ATTRIBUTE",
    "EVENT_TYPES",
    "EventType",
    "TelemetryEvent",
    "emit_event",
    "event_attributes",
    "event_from_attributes",
    "events_of",
    "make_event",
    "record_event",
]
