"""The live event stream of a task (serving.events) on the in-memory store: order, resumption after
``Last-Event-ID`` without loss or duplicates (also when a smaller event id commits after a larger one,
as on PostgreSQL), heartbeats, and the end after the final state. The stream's sleeps are scripted:
each one lets the "workflow" write its next transition."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sse_starlette import ServerSentEvent

from officeray.contracts import TaskEvent, TaskRecord, TaskRequest, TaskStatus
from officeray.testing import InMemoryStore
from serving.events import (
    EVENT_SETTLE_S,
    EventSource,
    parse_last_event_id,
    task_event_stream,
    wants_event_stream,
)

Write = Callable[[], Awaitable[Any]]


class Script:
    """The stream's clock and sleep: every sleep advances the clock by ``step_s`` and runs the next
    scripted write (if any)."""

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
        if self.sleeps > 1000:
            raise AssertionError("the stream did not end")


async def _task(store: InMemoryStore, task_id: str = "t1") -> None:
    await store.create_task(TaskRecord(task_id=task_id, description="x"), TaskRequest(description="x"))


def _transition(store: InMemoryStore, kind: str, status: TaskStatus, task_id: str = "t1") -> Write:
    record = TaskRecord(task_id=task_id, description="x", status=status)
    if status.is_final:
        return lambda: store.finish_task(record, kind, {"status": status.value})
    return lambda: store.save_transition(record, kind, {"status": status.value})


def _lifecycle(store: InMemoryStore) -> list[Write]:
    return [
        _transition(store, "planning", TaskStatus.PLANNING),
        _transition(store, "planned", TaskStatus.EXECUTING),
        lambda: store.append_event("other", "noise", {"status": "executing"}),  # another task's event
        _transition(store, "step_finished", TaskStatus.EXECUTING),
        _transition(store, "reviewing", TaskStatus.REVIEWING),
        _transition(store, "completed", TaskStatus.COMPLETED),
        _transition(store, "after_the_end", TaskStatus.COMPLETED),  # never streamed
    ]


class Uncommitted:
    """The store as a gateway reads it on PostgreSQL while events are being written by several
    processes: an event whose id is in :attr:`hidden` has its id but is not committed yet."""

    def __init__(self, store: InMemoryStore) -> None:
        self.store = store
        self.hidden: set[int] = set()

    async def events(self, task_id: str, after_id: int | None = None) -> list[TaskEvent]:
        return [e for e in await self.store.events(task_id, after_id) if e.id not in self.hidden]

    async def get_task(self, task_id: str) -> TaskRecord | None:
        return await self.store.get_task(task_id)


async def _collect(
    store: EventSource, script: Script, after_id: int | None = None, limit: int = 10_000
) -> list[ServerSentEvent]:
    messages: list[ServerSentEvent] = []
    stream = task_event_stream(store, "t1", after_id, heartbeat_s=15, clock=script.clock, sleep=script.sleep)
    async for message in stream:
        messages.append(message)
        if len([m for m in messages if m.event]) >= limit:
            await stream.aclose()  # the client went away
            break
    return messages


def _events(messages: list[ServerSentEvent]) -> list[tuple[int, str]]:
    return [(int(m.id), m.event) for m in messages if m.event is not None and m.id is not None]


async def test_transitions_stream_in_order_and_the_stream_ends_after_the_final_one() -> None:
    store = InMemoryStore()
    await _task(store)
    script = Script(_lifecycle(store))
    messages = await _collect(store, script)
    kinds = [kind for _, kind in _events(messages)]
    assert kinds == ["planning", "planned", "step_finished", "reviewing", "completed"]
    ids = [event_id for event_id, _ in _events(messages)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    stored = {e.id: e for e in await store.events("t1")}
    for message in messages:
        if message.event:
            data = json.loads(message.data)
            assert data == stored[int(message.id)].model_dump(mode="json")  # the event's JSON, id included
    assert messages[0].retry == 1000 and messages[0].event is None  # reconnect advice first


async def test_an_event_read_is_held_for_the_settle_time_before_it_is_sent() -> None:
    store = InMemoryStore()
    await _task(store)
    sent_at: list[float] = []
    script = Script([_transition(store, "planning", TaskStatus.PLANNING)])
    stream = task_event_stream(store, "t1", clock=script.clock, sleep=script.sleep)
    async for message in stream:
        if message.event:
            sent_at.append(script.now)
            await stream.aclose()
            break
    # written at 0.25 s (the first sleep), read at once, sent once it was seen for the settle time
    assert sent_at == [0.25 + EVENT_SETTLE_S]


async def test_an_event_id_that_commits_after_a_larger_one_is_still_streamed_in_order() -> None:
    store = InMemoryStore()
    await _task(store)
    uncommitted = Uncommitted(store)

    async def cancel_requested_committing_late() -> None:  # another shard's write, still in flight
        await store.append_event("t1", "cancel_requested", {"by": "key-1", "status": "executing"})
        uncommitted.hidden.add(max(e.id or 0 for e in await store.events("t1")))

    async def commit() -> None:
        uncommitted.hidden.clear()

    script = Script(
        [
            _transition(store, "planning", TaskStatus.PLANNING),
            _transition(store, "planned", TaskStatus.EXECUTING),
            cancel_requested_committing_late,
            _transition(store, "step_finished", TaskStatus.EXECUTING),  # a larger id, committed first
            lambda: store.get_task("t1"),
            commit,  # 0.5 s after the larger id was first read: within the settle time
            _transition(store, "cancelled", TaskStatus.CANCELLED),
        ]
    )
    first = _events(await _collect(uncommitted, script, limit=3))
    everything = [(e.id, e.kind) for e in await store.events("t1")]
    assert [kind for _, kind in first] == ["planning", "planned", "cancel_requested"]
    assert first == everything[:3]
    rest = _events(await _collect(uncommitted, script, after_id=first[-1][0]))  # a reconnect
    assert first + rest == [(e.id, e.kind) for e in await store.events("t1")]
    assert [kind for _, kind in rest] == ["step_finished", "cancelled"]


async def test_resuming_after_the_last_seen_id_loses_and_repeats_nothing() -> None:
    store = InMemoryStore()
    await _task(store)
    script = Script(_lifecycle(store))
    first = _events(await _collect(store, script, limit=2))  # the client drops after two events
    assert [kind for _, kind in first] == ["planning", "planned"]
    last_seen = first[-1][0]
    script.writes[:1] = [script.writes[0], _transition(store, "step_started", TaskStatus.EXECUTING)]
    rest = _events(await _collect(store, script, after_id=last_seen))
    everything = [(e.id, e.kind) for e in await store.events("t1")]
    assert first + rest == everything[: len(first) + len(rest)]
    assert [kind for _, kind in rest][-1] == "completed"
    assert parse_last_event_id(str(last_seen)) == last_seen


async def test_a_finished_task_streams_what_is_left_and_ends() -> None:
    store = InMemoryStore()
    await _task(store)
    for write in _lifecycle(store)[:6]:
        await write()
    script = Script()
    everything = [(e.id, e.kind) for e in await store.events("t1")]
    assert _events(await _collect(store, script)) == everything
    assert _events(await _collect(store, script, after_id=everything[-1][0])) == []
    assert script.sleeps == 0


async def test_a_quiet_stream_sends_heartbeats() -> None:
    store = InMemoryStore()
    await _task(store)
    quiet: list[Write] = [lambda: store.get_task("t1")] * 130  # 130 sleeps of 0.25 s: 32.5 s
    script = Script([*quiet, _transition(store, "completed", TaskStatus.COMPLETED)])
    messages = await _collect(store, script)
    pings = [m for m in messages if m.comment == "ping"]
    assert len(pings) == 2  # 15 s and 30 s of silence
    assert _events(messages)[-1][1] == "completed"


async def test_a_task_that_disappears_ends_its_stream() -> None:
    store = InMemoryStore()
    messages = await _collect(store, Script())
    assert _events(messages) == []


@pytest.mark.parametrize(
    ("accept", "wanted"),
    [
        ("text/event-stream", True),
        ("Text/Event-Stream", True),
        ("application/json, text/event-stream;q=0.5", True),
        ("text/event-stream; q=0", False),
        ("text/event-stream;q=oops", True),
        ("application/json", False),
        ("*/*", False),
        ("", False),
        (None, False),
        ("text/event-streamx", False),
    ],
)
def test_which_accept_headers_ask_for_a_stream(accept: str | None, wanted: bool) -> None:
    assert wants_event_stream(accept) is wanted


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "1e3", "0x10", "１２", "9" * 30, "12 13", str(2**63)])
def test_a_malformed_last_event_id_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="Last-Event-ID"):
        parse_last_event_id(value)


@pytest.mark.parametrize(
    ("value", "parsed"), [(None, None), ("", None), ("  ", None), ("0", 0), (" 42 ", 42)]
)
def test_last_event_id_values(value: str | None, parsed: int | None) -> None:
    assert parse_last_event_id(value) == parsed
