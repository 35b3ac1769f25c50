"""Live events of a task (server-sent events) and its webhook deliveries, for the gateway's routes.

``GET /v1/tasks/{task_id}/events`` with ``Accept: text/event-stream`` streams the task's transitions
as they are stored (:func:`task_event_stream`, sent with sse-starlette's ``EventSourceResponse``):

* each transition is one event: ``id:`` the store's event id (increasing), ``event:`` its kind,
  ``data:`` its JSON (:class:`~officeray.contracts.TaskEvent`);
* a client that reconnects with ``Last-Event-ID: N`` (browsers' ``EventSource`` do it by themselves)
  gets exactly the events written after event ``N``: nothing lost, nothing twice;
* a comment line (``: ping``) every :data:`HEARTBEAT_S` without an event keeps proxies from closing
  the connection;
* the stream ends after the event that makes the task final.

The stream reads the store (every :data:`EVENT_POLL_S`), not an orchestrator, so any gateway
replica serves any task, wherever it runs.

Event ids come from one sequence of the store, but on PostgreSQL writers in several processes (the
workflow on one shard, ``cancel_requested`` from another) commit in any order: id 102 may be read
before 101 is committed. So an event is sent only once the stream has seen it for
:data:`EVENT_SETTLE_S` (a write commits well within that of drawing its id, so every smaller id is
readable by then), and the events before it went first, in id order. ``Last-Event-ID`` is then exact:
no event below a sent id can appear later. A task that ended before the stream saw it sends its
events at once (nothing is written to it any more).

``GET /v1/events`` streams the events of every task of a tenant (an admin's: of every tenant) the
same way (:func:`event_feed_stream`, the console's live task list): each message's data also names
the task and its tenant; it starts at the newest event (or after ``Last-Event-ID``) and never ends.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from sse_starlette import EventSourceResponse, ServerSentEvent

from officeray.contracts import FeedEvent, TaskEvent, TaskRecord, TaskStatus
from officeray.webhooks import WebhookDelivery

EVENT_STREAM_TYPE = "text/event-stream"

EVENT_POLL_S = 0.25
"""How often a stream reads the store for new events."""

HEARTBEAT_S = 15.0
"""Longest silence on a stream: a ``: ping`` comment is sent after this long without an event."""

RECONNECT_MS = 1000
"""The ``retry:`` a stream's first message sets: how long an ``EventSource`` waits to reconnect."""

EVENT_SETTLE_S = 1.0
"""How long a stream holds an event it has just read before sending it: longer than any write takes
from drawing its event id to its commit, so the events with smaller ids are all readable by then."""

MAX_EVENT_ID = 2**63 - 1
"""Largest ``Last-Event-ID`` taken (a store's event ids are 64-bit at most)."""


class EventSource(Protocol):
    """The part of the store a stream reads."""

    async def events(self, task_id: str, after_id: int | None = None) -> list[TaskEvent]: ...

    async def get_task(self, task_id: str) -> TaskRecord | None: ...


def wants_event_stream(accept: str | None) -> bool:
    """Whether an ``Accept`` header asks for ``text/event-stream`` (with a non-zero quality)."""
    for part in (accept or "").split(","):
        media, *params = (piece.strip() for piece in part.split(";"))
        if media.lower() != EVENT_STREAM_TYPE:
            continue
        quality = next((p.split("=", 1)[1] for p in params if p.lower().startswith("q=")), "1")
        try:
            if float(quality) > 0:
                return True
        except ValueError:
            return True
    return False


def parse_last_event_id(value: str | None) -> int | None:
    """The event id of a ``Last-Event-ID`` header (None: absent or empty, start from the first
    event); ValueError for anything but a decimal id in ``0..MAX_EVENT_ID``."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > len(str(MAX_EVENT_ID)):
        raise ValueError(f"Last-Event-ID must be an event id (a whole number), not {value[:40]!r}")
    number = int(text)
    if number > MAX_EVENT_ID:
        raise ValueError(f"Last-Event-ID {text} is larger than any event id")
    return number


def _is_final_event(event: TaskEvent) -> bool:
    """Whether ``event`` stored a final state (the workflow records the status with each event)."""
    status = event.data.get("status")
    return isinstance(status, str) and status in {s.value for s in TaskStatus if s.is_final}


def sse_message(event: TaskEvent) -> ServerSentEvent:
    """One task event as a server-sent event: ``id``, ``event`` (the kind) and ``data`` (its JSON)."""
    return ServerSentEvent(
        data=json.dumps(event.model_dump(mode="json"), separators=(",", ":")),
        event=event.kind,
        id=str(event.id),
    )


async def task_event_stream(
    store: EventSource,
    task_id: str,
    after_id: int | None = None,
    *,
    poll_s: float = EVENT_POLL_S,
    heartbeat_s: float = HEARTBEAT_S,
    settle_s: float = EVENT_SETTLE_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> AsyncIterator[ServerSentEvent]:
    """The messages of a task's stream (see the module docstring): its events after ``after_id``
    in id order, each once it was seen for ``settle_s``, heartbeats while it is quiet, until the
    event that makes it final. ``clock`` (seconds) and ``sleep`` are injected for tests."""
    yield ServerSentEvent(comment=f"events of task {task_id}", retry=RECONNECT_MS)
    last_sent = clock()
    seen: dict[int, tuple[TaskEvent, float]] = {}  # read, not sent yet: by id, with when first read
    settled = False  # the task was final (or gone) when its unsent events were read: all go at once
    first = True
    while True:
        now = clock()
        _note(seen, await store.events(task_id, after_id), now)
        if not seen or first:
            first = False
            record = await store.get_task(task_id)
            if record is None or record.status.is_final:
                settled = True  # the final event was stored with the final record: one more read takes it
                _note(seen, await store.events(task_id, after_id), now)
        for event in _ready(seen, math.inf if settled else clock() - settle_s):
            yield sse_message(event)
            after_id = event.id
            last_sent = clock()
            if _is_final_event(event):
                return
        if settled:
            return
        if clock() - last_sent >= heartbeat_s:
            yield ServerSentEvent(comment="ping")
            last_sent = clock()
        await sleep(poll_s)


def _note(seen: dict[int, tuple[TaskEvent, float]], events: list[TaskEvent], now: float) -> None:
    """Add the events read at ``now`` to ``seen`` (those seen before keep their first reading)."""
    for event in events:
        if event.id is not None:
            seen.setdefault(event.id, (event, now))


def _ready(seen: dict[int, tuple[TaskEvent, float]], read_by: float) -> list[TaskEvent]:
    """Take from ``seen`` the events that may be sent, in id order: those first read by ``read_by``,
    up to the first one read later (it, and the ones after it, wait: a smaller id may still commit)."""
    ready: list[TaskEvent] = []
    for event_id in sorted(seen):
        event, first_read = seen[event_id]
        if first_read > read_by:
            break
        del seen[event_id]
        ready.append(event)
    return ready


def event_stream_response(store: EventSource, task_id: str, after_id: int | None) -> EventSourceResponse:
    """The streaming answer of ``GET /v1/tasks/{task_id}/events`` (heartbeats come from
    :func:`task_event_stream`, so sse-starlette's own pings are off)."""
    return EventSourceResponse(
        task_event_stream(store, task_id, after_id),
        ping=0,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},  # no proxy buffering
    )


EVENTS_OPENAPI: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The task's events: a JSON list, or with `Accept: text/event-stream` a live "
        "stream (`id:` event id, `event:` kind, `data:` the event's JSON) that resumes after "
        "`Last-Event-ID` and ends after the task's final state.",
        "content": {EVENT_STREAM_TYPE: {"schema": {"type": "string"}}},
    }
}
"""The OpenAPI description of the events route's two answers."""


def events_view(task_id: str, events: list[TaskEvent]) -> dict[str, Any]:
    """The JSON answer of ``GET /v1/tasks/{task_id}/events`` without ``Accept: text/event-stream``."""
    return {"task_id": task_id, "events": [event.model_dump(mode="json") for event in events]}


def deliveries_view(task_id: str, deliveries: list[WebhookDelivery]) -> dict[str, Any]:
    """The JSON answer of ``GET /v1/tasks/{task_id}/webhooks``: each delivery with its attempts."""
    return {"task_id": task_id, "deliveries": [delivery.public_view() for delivery in deliveries]}


# -- the feed of every task's events (GET /v1/events: the console's live task list) ---------------

FEED_BATCH = 500
"""Most events a feed stream reads from the store per poll (the rest come with the next polls)."""


class FeedSource(Protocol):
    """The part of the store a feed stream reads."""

    async def event_feed(
        self, after_id: int | None = None, *, tenant: str | None = None, limit: int = ...
    ) -> list[FeedEvent]: ...


async def event_feed_stream(
    store: FeedSource,
    tenant: str | None,
    after_id: int | None = None,
    *,
    batch: int = FEED_BATCH,
    poll_s: float = EVENT_POLL_S,
    heartbeat_s: float = HEARTBEAT_S,
    settle_s: float = EVENT_SETTLE_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> AsyncGenerator[ServerSentEvent]:
    """The events of every task of ``tenant`` (None: every tenant's) as they are stored, until the
    client goes away: those after ``after_id`` (a ``Last-Event-ID``), or without one those written
    from now on. The same rules as :func:`task_event_stream`: id order, each event once it was seen
    for ``settle_s`` (so a resumed stream loses nothing and repeats nothing), ``: ping`` heartbeats.
    Each message's data is a :class:`~officeray.contracts.FeedEvent` (the event, its task id and
    tenant)."""
    yield ServerSentEvent(comment="events of every task", retry=RECONNECT_MS)
    if after_id is None:
        tail = await store.event_feed(tenant=tenant, limit=1)
        after_id = tail[-1].id if tail and tail[-1].id is not None else 0
    last_sent = clock()
    seen: dict[int, tuple[TaskEvent, float]] = {}
    while True:
        _note(seen, list(await store.event_feed(after_id, tenant=tenant, limit=batch)), clock())
        for event in _ready(seen, clock() - settle_s):
            yield sse_message(event)
            after_id = event.id
            last_sent = clock()
        if clock() - last_sent >= heartbeat_s:
            yield ServerSentEvent(comment="ping")
            last_sent = clock()
        await sleep(poll_s)


def event_feed_response(store: FeedSource, tenant: str | None, after_id: int | None) -> EventSourceResponse:
    """The streaming answer of ``GET /v1/events`` (heartbeats come from :func:`event_feed_stream`)."""
    return EventSourceResponse(
        event_feed_stream(store, tenant, after_id),
        ping=0,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def feed_view(events: list[FeedEvent]) -> dict[str, Any]:
    """The JSON answer of ``GET /v1/events`` without ``Accept: text/event-stream``."""
    return {"events": [event.model_dump(mode="json") for event in events]}


FEED_OPENAPI: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The events of every task of the caller's tenant (an admin: every tenant's, or "
        "`?tenant=`'s), each with its `task_id` and `tenant`: a JSON list (the last `limit`, or the "
        "first `limit` after `Last-Event-ID`), or with `Accept: text/event-stream` a live stream "
        "that starts now (or after `Last-Event-ID`) and does not end.",
        "content": {EVENT_STREAM_TYPE: {"schema": {"type": "string"}}},
    }
}
"""The OpenAPI description of the feed route's two answers."""
