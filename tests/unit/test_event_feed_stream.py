"""The live feed of every task's events (serving.events.event_feed_stream, ``GET /v1/events``) on the
in-memory store: it starts at the tail (or after ``Last-Event-ID``), carries each event's task id and
tenant, shows one tenant only when asked, holds events for the settle time (so an id committed late
is still sent in order), sends heartbeats, and resumes without loss or repeats. The stream's sleeps
are scripted: each one lets the "workflows" write their next transition."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from sse_starlette import ServerSentEvent

from officeray.contracts import FeedEvent, TaskRecord, TaskRequest, TaskStatus
from officeray.testing import InMemoryStore
from serving.events import EVENT_SETTLE_S, FeedSource, event_feed_stream, feed_view

Write = Callable[[], Awaitable[Any]]


class Script:
    """The stream's clock and sleep: every sleep advances the clock by ``step_s`` and runs the next
    scripted write (if any); past the script the stream has run long enough."""

    def __init__(self, writes: list[Write] | None = None, step_s: float = 0.25) -> None:
        self.writes = list(writes or [])
        self.step_s = step_s
        self.now = 0.0
        self.sleeps = 0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += self.step_s
        if self.writes:
            await self.writes.pop(0)()


async def _task(store: InMemoryStore, task_id: str, tenant: str = "acme") -> None:
    record = TaskRecord(task_id=task_id, description="x", tenant=tenant)
    await store.create_task(record, TaskRequest(description="x", tenant=tenant))


def _transition(store: InMemoryStore, task_id: str, kind: str, tenant: str = "acme") -> Write:
    record = TaskRecord(task_id=task_id, description="x", status=TaskStatus.EXECUTING, tenant=tenant)
    return lambda: store.save_transition(record, kind, {"status": "executing"})


async def _collect(
    store: FeedSource,
    script: Script,
    *,
    tenant: str | None = None,
    after_id: int | None = None,
    events: int = 1000,
    max_sleeps: int = 40,
) -> list[ServerSentEvent]:
    """The stream's messages until ``events`` events came or it slept ``max_sleeps`` more times."""
    messages: list[ServerSentEvent] = []
    stop_at = script.sleeps + max_sleeps
    stream = event_feed_stream(
        store, tenant, after_id, heartbeat_s=15, clock=script.clock, sleep=script.sleep
    )
    async for message in stream:
        messages.append(message)
        if len(_events(messages)) >= events or script.sleeps >= stop_at:
            await stream.aclose()  # the client went away
            break
    return messages


def _events(messages: list[ServerSentEvent]) -> list[tuple[int, str, str]]:
    """``(id, task_id, kind)`` of each event message."""
    return [
        (int(m.id), json.loads(str(m.data))["task_id"], m.event)
        for m in messages
        if m.event is not None and m.id is not None
    ]


async def test_the_feed_starts_at_the_tail_and_streams_every_tasks_events_with_their_task() -> None:
    store = InMemoryStore()
    await _task(store, "a")
    await _task(store, "b", tenant="zeta")
    await _transition(store, "a", "before_the_stream")()  # written before: not streamed
    script = Script([_transition(store, "a", "planned"), _transition(store, "b", "planned", "zeta")])
    messages = await _collect(store, script, events=2)
    assert [(task, kind) for _, task, kind in _events(messages)] == [("a", "planned"), ("b", "planned")]
    assert messages[0].retry == 1000 and messages[0].event is None  # reconnect advice first
    stored = {e.id: e for e in await store.event_feed(0)}
    for message in messages:
        if message.event:
            data = json.loads(str(message.data))
            assert data == stored[int(str(message.id))].model_dump(mode="json")
            assert FeedEvent.model_validate(data).tenant in ("acme", "zeta")


async def test_a_tenants_feed_shows_its_tasks_only() -> None:
    store = InMemoryStore()
    await _task(store, "a")
    await _task(store, "b", tenant="zeta")
    script = Script(
        [
            _transition(store, "b", "planned", "zeta"),
            _transition(store, "a", "planned"),
            _transition(store, "b", "step_started", "zeta"),
            _transition(store, "a", "step_started"),
        ]
    )
    got = _events(await _collect(store, script, tenant="acme", events=2))
    assert [(task, kind) for _, task, kind in got] == [("a", "planned"), ("a", "step_started")]


async def test_an_event_is_held_for_the_settle_time_before_it_is_sent() -> None:
    store = InMemoryStore()
    await _task(store, "a")
    sent_at: list[float] = []
    script = Script([_transition(store, "a", "planned")])
    stream = event_feed_stream(store, None, clock=script.clock, sleep=script.sleep)
    async for message in stream:
        if message.event:
            sent_at.append(script.now)
            await stream.aclose()
            break
    assert sent_at == [0.25 + EVENT_SETTLE_S]  # written at the first sleep, sent once settled


class Uncommitted:
    """The store as a gateway reads it on PostgreSQL while several processes write: an event whose
    id is in :attr:`hidden` has its id but is not committed yet."""

    def __init__(self, store: InMemoryStore) -> None:
        self.store = store
        self.hidden: set[int] = set()

    async def event_feed(
        self, after_id: int | None = None, *, tenant: str | None = None, limit: int = 500
    ) -> list[FeedEvent]:
        feed = await self.store.event_feed(after_id, tenant=tenant, limit=limit)
        return [e for e in feed if e.id not in self.hidden]


async def test_an_id_committed_after_a_larger_one_is_still_sent_in_order_and_resumed_exactly() -> None:
    store = InMemoryStore()
    for task_id in ("a", "b"):
        await _task(store, task_id)
    uncommitted = Uncommitted(store)

    async def late_write() -> None:  # another shard's write, in flight
        await _transition(store, "a", "cancel_requested")()
        uncommitted.hidden.add(max(e.id or 0 for e in await store.event_feed(0)))

    async def commit() -> None:
        uncommitted.hidden.clear()

    async def nothing() -> None:
        return None

    script = Script(
        [
            _transition(store, "a", "planned"),
            late_write,
            _transition(store, "b", "planned"),  # a larger id, committed first
            nothing,
            commit,  # within the settle time of the larger id's first reading
            _transition(store, "b", "step_started"),
        ]
    )
    first = _events(await _collect(uncommitted, script, events=2))
    everything = [(e.id, e.task_id, e.kind) for e in await store.event_feed(0)]
    assert first == everything[:2]
    assert [kind for _, _, kind in first] == ["planned", "cancel_requested"]  # id order, not commit order
    rest = _events(await _collect(uncommitted, script, after_id=first[-1][0], events=2))  # a reconnect
    assert first + rest == [(e.id, e.task_id, e.kind) for e in await store.event_feed(0)]


async def test_a_quiet_feed_sends_heartbeats_and_reads_in_batches() -> None:
    store = InMemoryStore()
    await _task(store, "a")
    for n in range(7):
        await _transition(store, "a", f"old-{n}")()
    script = Script()
    messages: list[tuple[float, ServerSentEvent]] = []
    stream = event_feed_stream(
        store, None, 0, batch=3, heartbeat_s=15, clock=script.clock, sleep=script.sleep
    )
    async for message in stream:
        messages.append((script.now, message))
        if message.comment == "ping":
            await stream.aclose()
            break
    events = _events([m for _, m in messages])
    assert [kind for _, _, kind in events] == [f"old-{n}" for n in range(7)]  # after id 0: all of them
    sent_at = [at for at, m in messages if m.event]
    assert sent_at == sorted(sent_at) and len(set(sent_at)) == 3  # three reads of at most three events
    last_event_at, (ping_at, _) = sent_at[-1], messages[-1]
    assert ping_at == last_event_at + 15  # the heartbeat: 15 s after the last event, not before


async def test_the_json_feed_view_lists_events_with_their_task() -> None:
    store = InMemoryStore()
    await _task(store, "a")
    await _transition(store, "a", "planned")()
    view = feed_view(await store.event_feed())
    assert [(e["task_id"], e["tenant"], e["kind"]) for e in view["events"]] == [("a", "acme", "planned")]
