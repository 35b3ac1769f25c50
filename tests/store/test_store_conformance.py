"""One suite for SqlStore on every backend it supports: a SQLite file and a real PostgreSQL server.

Concurrency is tested with threads, each with its own store (its own connections), as separate
processes would: racing claims of one idempotency key, two orchestrators claiming the same unfinished
tasks, concurrent upserts, several stores migrating one fresh database at once.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa

from officeray.contracts import (
    MAX_IDEMPOTENCY_KEY_CHARS,
    MAX_STEP_ID_CHARS,
    ErrorType,
    ModelUsage,
    StepError,
    StepResult,
    StepStatus,
    TaskRecord,
    TaskRequest,
    TaskStatus,
)
from officeray.errors import OfficerayError, StoreError, StoreUnavailableError
from officeray.store import MIGRATIONS, SCHEMA_VERSION, SqlStore, migrate
from officeray.testing import make_plan

from .conftest import PostgresServer, free_port

T = TypeVar("T")

RACERS = 8
"""Threads (each with its own store) racing for the same row."""

UNAVAILABLE_WITHIN_S = 5.0
"""A store that cannot be reached must say so at least this fast (connect timeout 2 s)."""

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

ALL_TABLES = {
    "tasks",
    "task_events",
    "step_results",
    "tenant_usage",
    "task_leases",
    "dlq",
    "idempotency_keys",
    "approvals",
    "schema_migrations",
}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'officeray.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def store(url: str) -> Iterator[SqlStore]:
    opened = SqlStore(url)
    yield opened
    opened.close()


def record(task_id: str = "task-1", status: TaskStatus = TaskStatus.QUEUED, **fields: Any) -> TaskRecord:
    return TaskRecord(task_id=task_id, description=f"do {task_id}", status=status, **fields)


def request_for(task_id: str, tenant: str = "default") -> TaskRequest:
    return TaskRequest(description=f"do {task_id}", task_id=task_id, tenant=tenant)


def step_result(
    key: str = "task-1:1:s1", status: StepStatus = StepStatus.SUCCEEDED, **fields: Any
) -> StepResult:
    return StepResult(step_id="s1", action="math_calculator", idempotency_key=key, status=status, **fields)


def race(url: str, count: int, work: Callable[[SqlStore, int], T]) -> list[T]:
    """Run ``work(store, i)`` in ``count`` threads, each with its own store, released at once."""
    stores = [SqlStore(url) for _ in range(count)]
    barrier = threading.Barrier(count)

    def run(i: int) -> T:
        barrier.wait()
        return work(stores[i], i)

    try:
        with ThreadPoolExecutor(count) as pool:
            return list(pool.map(run, range(count)))
    finally:
        for opened in stores:
            opened.close()


def engine_for(url: str) -> sa.Engine:
    return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))


# -- tasks, events, step results, usage ------------------------------------------------------------


def test_tasks_round_trip_and_upsert_keeps_created_at_and_request(store: SqlStore) -> None:
    first = record(trace_id="ab" * 16)
    assert store.create_task_sync(first, request_for("task-1"))
    assert not store.create_task_sync(record(), request_for("task-1"))  # same id: refused

    done = first.model_copy(update={"status": TaskStatus.EXECUTING, "iterations": 2})
    store.save_task_sync(done)
    loaded = store.get_task_sync("task-1")
    assert loaded is not None
    assert (loaded.status, loaded.iterations, loaded.trace_id) == (TaskStatus.EXECUTING, 2, "ab" * 16)
    assert loaded.created_at == first.created_at
    [(unfinished, request)] = store.unfinished_sync()  # the request survived the update
    assert (unfinished.task_id, request.task_id) == ("task-1", "task-1")

    store.save_task_sync(record("task-2", TaskStatus.COMPLETED))
    assert [r.task_id for r in store.list_tasks_sync(TaskStatus.COMPLETED)] == ["task-2"]
    assert sorted(r.task_id for r in store.list_tasks_sync()) == ["task-1", "task-2"]
    assert store.get_task_sync("nope") is None
    assert store.get_request_sync("task-1") == request_for("task-1")
    assert store.get_request_sync("task-2") is None  # saved without a request
    assert store.get_request_sync("nope") is None


def test_events_in_order_with_utc_times(store: SqlStore) -> None:
    for i, kind in enumerate(["accepted", "planned", "completed"]):
        store.append_event_sync("task-1", kind, {"i": i, "when": T0})
    events = store.events_sync("task-1")
    assert [(e["kind"], e["data"]["i"]) for e in events] == [
        ("accepted", 0),
        ("planned", 1),
        ("completed", 2),
    ]
    assert all(datetime.fromisoformat(e["at"]).utcoffset() == timedelta(0) for e in events)
    assert store.events_sync("other") == []


def test_step_results_upsert_by_idempotency_key(store: SqlStore) -> None:
    store.save_step_result_sync("task-1", step_result(status=StepStatus.RUNNING, attempts=1))
    failed = step_result(
        status=StepStatus.FAILED, attempts=2, error=StepError(type=ErrorType.TIMEOUT, message="slow")
    )
    store.save_step_result_sync("task-1", failed)
    assert store.get_step_result_sync("task-1:1:s1") == failed
    assert store.get_step_result_sync("nope") is None


def test_concurrent_upserts_never_collide(url: str, store: SqlStore) -> None:
    rounds = 5

    def work(mine: SqlStore, i: int) -> None:
        for n in range(rounds):
            mine.save_task_sync(record("shared", iterations=i))
            mine.save_step_result_sync("shared", step_result("shared:1:s1", attempts=n))
            mine.add_tenant_usage_sync("acme", ModelUsage(prompt_tokens=1, completion_tokens=2, calls=1))

    race(url, RACERS, work)
    assert len(store.list_tasks_sync()) == 1
    assert store.get_step_result_sync("shared:1:s1") is not None
    usage = store.tenant_usage_sync("acme")
    assert (usage.prompt_tokens, usage.completion_tokens, usage.calls) == (
        RACERS * rounds,
        2 * RACERS * rounds,
        RACERS * rounds,
    )
    assert store.tenant_usage_sync("nobody") == ModelUsage()


# -- leases -------------------------------------------------------------------------------------------


def test_lease_is_exclusive_until_it_expires(store: SqlStore) -> None:
    assert store.lease_owner_sync("task-1", now=T0) is None
    assert store.acquire_lease_sync("task-1", "orch-a", ttl_s=30, now=T0)
    assert store.lease_owner_sync("task-1", now=T0) == "orch-a"
    assert not store.acquire_lease_sync("task-1", "orch-b", ttl_s=30, now=T0 + timedelta(seconds=29))
    assert store.acquire_lease_sync("task-1", "orch-a", ttl_s=30, now=T0 + timedelta(seconds=29))  # ours
    # extended to T0+59s: still a's at 58s, free at 59s
    assert store.lease_owner_sync("task-1", now=T0 + timedelta(seconds=58)) == "orch-a"
    assert store.lease_owner_sync("task-1", now=T0 + timedelta(seconds=59)) is None
    assert store.acquire_lease_sync("task-1", "orch-b", ttl_s=30, now=T0 + timedelta(seconds=59))
    assert store.lease_owner_sync("task-1", now=T0 + timedelta(seconds=60)) == "orch-b"


def test_lease_times_in_other_zones_mean_the_same_instant(store: SqlStore) -> None:
    east, west = timezone(timedelta(hours=5)), timezone(timedelta(hours=-8))
    assert store.acquire_lease_sync("task-1", "orch-a", ttl_s=10, now=T0.astimezone(east))
    assert store.lease_owner_sync("task-1", now=(T0 + timedelta(seconds=9)).astimezone(west)) == "orch-a"
    assert store.lease_owner_sync("task-1", now=(T0 + timedelta(seconds=10)).astimezone(west)) is None
    naive_utc = (T0 + timedelta(seconds=9)).replace(tzinfo=None)  # naive means UTC
    assert store.lease_owner_sync("task-1", now=naive_utc) == "orch-a"


def test_renew_and_release(store: SqlStore) -> None:
    for task_id in ("t1", "t2"):
        assert store.acquire_lease_sync(task_id, "orch-a", ttl_s=10, now=T0)
    assert store.acquire_lease_sync("t3", "orch-b", ttl_s=10, now=T0)
    assert store.renew_leases_sync("orch-a", ttl_s=100, now=T0 + timedelta(seconds=5)) == 2
    later = T0 + timedelta(seconds=50)
    assert [store.lease_owner_sync(t, now=later) for t in ("t1", "t2", "t3")] == ["orch-a", "orch-a", None]

    assert not store.release_lease_sync("t1", "orch-b")  # not b's: left alone
    assert store.release_lease_sync("t1", "orch-a")
    assert store.lease_owner_sync("t1", now=T0) is None
    assert not store.release_lease_sync("t1", "orch-a")
    assert store.renew_leases_sync("nobody", ttl_s=10) == 0
    with pytest.raises(ValueError, match="ttl_s"):
        store.acquire_lease_sync("t9", "orch-a", ttl_s=0)


def test_claimable_unfinished_leases_what_it_returns(store: SqlStore) -> None:
    for task_id in ("a", "b", "c", "d", "e"):
        assert store.create_task_sync(record(task_id), request_for(task_id))
    store.save_task_sync(record("d", TaskStatus.COMPLETED))
    store.save_task_sync(record("e", TaskStatus.FAILED))
    store.save_task_sync(record("no-request", TaskStatus.EXECUTING))  # cannot be resumed: skipped
    assert store.acquire_lease_sync("b", "orch-b", ttl_s=30, now=T0)  # held
    assert store.acquire_lease_sync("c", "orch-b", ttl_s=5, now=T0)  # expires at T0+5

    now = T0 + timedelta(seconds=10)
    claimed = store.claimable_unfinished_sync("orch-a", ttl_s=60, now=now)
    assert [(r.task_id, req.task_id) for r, req in claimed] == [("a", "a"), ("c", "c")]
    assert store.lease_owner_sync("a", now=now) == "orch-a"
    assert store.lease_owner_sync("c", now=now) == "orch-a"
    assert store.lease_owner_sync("b", now=now) == "orch-b"
    assert store.claimable_unfinished_sync("orch-a", ttl_s=60, now=now) == []  # its own: not again
    # b's lease runs out at T0+30: then b is claimable by anyone
    assert [
        r.task_id for r, _ in store.claimable_unfinished_sync("orch-c", 60, T0 + timedelta(seconds=31))
    ] == ["b"]
    assert len(store.unfinished_sync()) == 3  # the lease-free view is unchanged


def test_claimable_unfinished_respects_limit(store: SqlStore) -> None:
    for i in range(5):
        store.create_task_sync(record(f"t{i}"), request_for(f"t{i}"))
    first = store.claimable_unfinished_sync("orch-a", ttl_s=60, now=T0, limit=2)
    second = store.claimable_unfinished_sync("orch-a", ttl_s=60, now=T0, limit=10)
    assert len(first) == 2 and len(second) == 3
    assert {r.task_id for r, _ in first}.isdisjoint({r.task_id for r, _ in second})


@pytest.mark.parametrize("batch", [5, 1000], ids=["small-batches", "one-batch"])
def test_two_orchestrators_claim_disjoint_sets_covering_all(url: str, store: SqlStore, batch: int) -> None:
    task_ids = {f"task-{i:02d}" for i in range(50)}
    for task_id in sorted(task_ids):
        store.create_task_sync(record(task_id), request_for(task_id))

    def claim_all(mine: SqlStore, i: int) -> list[str]:
        got: list[str] = []
        while claimed := mine.claimable_unfinished_sync(f"orch-{i}", ttl_s=60, now=T0, limit=batch):
            got.extend(r.task_id for r, _ in claimed)
        return got

    first, second = race(url, 2, claim_all)
    assert not set(first) & set(second)
    assert set(first) | set(second) == task_ids
    assert len(first) + len(second) == len(task_ids)
    assert all(store.lease_owner_sync(t, now=T0) == "orch-0" for t in first)
    assert all(store.lease_owner_sync(t, now=T0) == "orch-1" for t in second)


# -- transitions fenced on the lease ------------------------------------------------------------------


def test_a_transition_is_written_only_while_its_owner_holds_the_lease(store: SqlStore) -> None:
    assert store.create_task_sync(record(), request_for("task-1"))
    assert store.acquire_lease_sync("task-1", "orch-a", ttl_s=30, now=T0)
    executing = record(status=TaskStatus.EXECUTING, iterations=1)
    assert store.save_transition_sync(executing, "executing", {"n": 1}, owner="orch-a")
    # an expired lease nobody took is still the owner's: its run goes on writing
    assert store.save_transition_sync(executing, "step_started", {"n": 2}, owner="orch-a")

    assert store.acquire_lease_sync("task-1", "orch-b", ttl_s=30, now=T0 + timedelta(seconds=31))
    taken = record(status=TaskStatus.COMPLETED, iterations=2, result="b")
    assert store.save_transition_sync(taken, "completed", {"n": 3}, owner="orch-b")
    stale = record(status=TaskStatus.EXECUTING, iterations=1)
    assert not store.save_transition_sync(stale, "step_finished", {"n": 4}, owner="orch-a")
    assert not store.finish_task_sync(
        record(status=TaskStatus.FAILED, error="a"), "failed", {}, owner="orch-a"
    )

    kept = store.get_task_sync("task-1")
    assert kept is not None and (kept.status, kept.result) == (TaskStatus.COMPLETED, "b")
    assert [e["data"]["n"] for e in store.events_sync("task-1")] == [1, 2, 3]
    assert store.dlq_get_sync("task-1") is None
    assert store.release_lease_sync("task-1", "orch-b")  # released: nobody holds it, nobody writes
    assert not store.save_transition_sync(stale, "step_finished", {}, owner="orch-b")
    assert store.save_transition_sync(stale, "saved", {}, owner=None)  # unfenced writes are not refused


async def test_refused_transitions_leave_the_rest_of_their_group_commit_alone(store: SqlStore) -> None:
    for task_id, owner in (("mine", "orch-a"), ("theirs", "orch-b")):
        assert await store.create_leased_task(record(task_id), request_for(task_id), owner, 30)
    writes = []
    for i in range(5):  # submitted together: committed in one batch
        for task_id in ("mine", "theirs"):
            update = record(task_id, TaskStatus.EXECUTING, iterations=i + 1)
            writes.append(store.save_transition(update, "step", {"i": i}, owner="orch-a"))
    assert await asyncio.gather(*writes) == [True, False] * 5
    assert [e["data"]["i"] for e in await store.events("mine")] == [0, 1, 2, 3, 4]
    assert await store.events("theirs") == []
    theirs = await store.get_task("theirs")
    assert theirs is not None and theirs.status == TaskStatus.QUEUED


async def test_fenced_writes_in_one_group_commit_see_the_lease_changes_before_them(store: SqlStore) -> None:
    assert await store.create_task(record(), request_for("task-1"))
    assert await store.acquire_lease("task-1", "orch-a", 30, now=T0)
    inside, plug = threading.Event(), threading.Event()

    def hold_the_writer(_conn: sa.Connection) -> None:
        inside.set()
        assert plug.wait(10)

    held = store._writer.submit(hold_the_writer)  # what is queued meanwhile is committed in one batch
    assert await asyncio.to_thread(inside.wait, 10)
    update = record(status=TaskStatus.EXECUTING)
    writes: list[Any] = [store.save_transition(update, "a-before", {}, owner="orch-a")]
    writes.append(
        asyncio.ensure_future(store.acquire_lease("task-1", "orch-b", 30, now=T0 + timedelta(seconds=31)))
    )
    await asyncio.sleep(0)  # the acquisition is queued
    writes.append(store.save_transition(update, "a-after", {}, owner="orch-a"))
    writes.append(store.save_transition(update, "b", {}, owner="orch-b"))
    writes.append(asyncio.ensure_future(store.release_lease("task-1", "orch-b")))
    await asyncio.sleep(0)
    writes.append(store.save_transition(update, "b-released", {}, owner="orch-b"))
    plug.set()
    await held

    assert await asyncio.gather(*writes) == [True, True, False, True, True, False]
    assert [e["kind"] for e in await store.events("task-1")] == ["a-before", "b"]


def test_the_run_that_took_a_task_over_is_never_overwritten_by_the_old_owner(
    url: str, store: SqlStore
) -> None:
    """The old owner writes transitions as fast as it can while another takes its lease and writes: after
    the new owner's write, none of the old owner's lands (the check is in the write's transaction)."""
    assert store.create_task_sync(record(), request_for("task-1"))
    assert store.acquire_lease_sync("task-1", "orch-a", ttl_s=30, now=T0)
    old = SqlStore(url)
    stop = threading.Event()
    refused = threading.Event()

    def old_owner() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            update = record(status=TaskStatus.EXECUTING, iterations=i)
            if not old.save_transition_sync(update, "old", {"i": i}, owner="orch-a"):
                refused.set()

    writer = threading.Thread(target=old_owner)
    writer.start()
    try:
        time.sleep(0.2)
        assert store.acquire_lease_sync("task-1", "orch-b", ttl_s=30, now=T0 + timedelta(seconds=31))
        final = record(status=TaskStatus.COMPLETED, result="new owner")
        assert store.save_transition_sync(final, "completed", {}, owner="orch-b")
        assert refused.wait(10)
        time.sleep(0.2)
    finally:
        stop.set()
        writer.join(10)
        old.close()
    kept = store.get_task_sync("task-1")
    assert kept is not None and (kept.status, kept.result) == (TaskStatus.COMPLETED, "new owner")
    assert store.events_sync("task-1")[-1]["kind"] == "completed"


# -- dead-letter queue --------------------------------------------------------------------------------


def test_dead_letter_queue(store: SqlStore) -> None:
    plan = make_plan(
        "task-1", [{"step_id": "s1", "action": "math_calculator", "inputs": {"expression": "1/0"}}]
    )
    broken = step_result(
        status=StepStatus.FAILED, attempts=3, error=StepError(type=ErrorType.TOOL_ERROR, message="div by 0")
    )
    failed = record(
        status=TaskStatus.FAILED,
        tenant="acme",
        trace_id="cd" * 16,
        plan=plan,
        steps=[broken, step_result("k2")],
    )
    store.dead_letter_sync(failed, "retries exhausted")
    store.dead_letter_sync(record("task-2", TaskStatus.FAILED), "planner gave up")

    assert [e["task_id"] for e in store.dlq_list_sync()] == ["task-2", "task-1"]  # newest first
    [entry] = store.dlq_list_sync(tenant="acme")
    assert entry["reason"] == "retries exhausted"
    assert (entry["tenant"], entry["trace_id"], entry["description"]) == ("acme", "cd" * 16, "do task-1")
    assert datetime.fromisoformat(entry["created_at"]).utcoffset() == timedelta(0)
    assert len(store.dlq_list_sync(limit=1)) == 1
    assert store.dlq_list_sync(tenant="nobody") == []

    full = store.dlq_get_sync("task-1")
    assert full is not None
    assert TaskRecord.model_validate(full["record"]) == failed
    assert full["plan"]["plan_id"] == plan.plan_id
    assert full["step_errors"] == [
        {
            "step_id": "s1",
            "action": "math_calculator",
            "attempts": 3,
            "error": {"type": "tool_error", "message": "div by 0"},
        }
    ]

    store.dead_letter_sync(failed, "retried and failed again")  # upsert
    again = store.dlq_get_sync("task-1")
    assert again is not None and again["reason"] == "retried and failed again"
    assert len(store.dlq_list_sync()) == 2

    assert store.dlq_remove_sync("task-1")
    assert not store.dlq_remove_sync("task-1")
    assert store.dlq_get_sync("task-1") is None


# -- the end of a run -------------------------------------------------------------------------------


def test_finish_task_writes_the_record_its_event_the_dead_letter_entry_and_the_usage(store: SqlStore) -> None:
    assert store.create_task_sync(record(status=TaskStatus.EXECUTING), request_for("task-1"))
    usage = ModelUsage(prompt_tokens=3, completion_tokens=4, cost_usd=0.5, calls=2)
    failed = record(status=TaskStatus.FAILED, tenant="acme", error="retries exhausted", usage=usage)
    assert store.finish_task_sync(failed, "failed", {"error": "retries exhausted"})

    stored = store.get_task_sync("task-1")
    assert stored is not None and stored == failed.model_copy(update={"updated_at": stored.updated_at})
    assert [(e["kind"], e["data"]) for e in store.events_sync("task-1")] == [
        ("failed", {"error": "retries exhausted"})
    ]
    entry = store.dlq_get_sync("task-1")
    assert entry is not None and (entry["reason"], entry["tenant"]) == ("retries exhausted", "acme")
    assert store.tenant_usage_sync("acme") == usage

    done = record("task-2", TaskStatus.COMPLETED, tenant="acme", usage=ModelUsage(calls=1))
    assert store.finish_task_sync(done, "completed", {})
    assert store.dlq_get_sync("task-2") is None  # completed: not dead-lettered
    assert store.tenant_usage_sync("acme").calls == 3
    free = record("task-3", TaskStatus.FAILED, tenant="other")  # no model call: no usage row
    assert store.finish_task_sync(free, "failed", {})
    unpaid = store.dlq_get_sync("task-3")
    assert unpaid is not None and unpaid["reason"] == "failed"
    assert store.tenant_usage_sync("other") == ModelUsage()
    with pytest.raises(ValueError, match="final"):
        store.finish_task_sync(record("task-4", TaskStatus.EXECUTING), "executing", {})


def break_dead_letter_inserts(url: str) -> None:
    """Make every insert into the dead-letter queue fail, as a database that fails mid-transaction."""
    engine = engine_for(url)
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "sqlite":
                conn.execute(
                    sa.text(
                        "CREATE TRIGGER dlq_down BEFORE INSERT ON dlq "
                        "BEGIN SELECT RAISE(ABORT, 'the dead-letter queue is down'); END"
                    )
                )
            else:
                conn.execute(
                    sa.text(
                        "CREATE FUNCTION dlq_down() RETURNS trigger LANGUAGE plpgsql AS "
                        "$$ BEGIN RAISE EXCEPTION 'the dead-letter queue is down'; END $$"
                    )
                )
                conn.execute(
                    sa.text(
                        "CREATE TRIGGER dlq_down BEFORE INSERT ON dlq "
                        "FOR EACH ROW EXECUTE FUNCTION dlq_down()"
                    )
                )
    finally:
        engine.dispose()


async def test_the_end_of_a_run_is_written_whole_or_not_at_all(url: str, store: SqlStore) -> None:
    assert await store.create_leased_task(record(status=TaskStatus.EXECUTING), request_for("task-1"), "o", 30)
    await store.add_tenant_usage("acme", ModelUsage(calls=1))
    break_dead_letter_inserts(url)
    failed = record(status=TaskStatus.FAILED, tenant="acme", error="boom", usage=ModelUsage(calls=5))
    others = [record(f"other-{i}", TaskStatus.EXECUTING) for i in range(3)]

    # in one group commit with other writes: the end fails alone, the others are stored
    outcomes = await asyncio.gather(
        store.save_task(others[0]),
        store.finish_task(failed, "failed", {"error": "boom"}, owner="o"),
        store.save_task(others[1]),
        store.save_transition(others[2], "executing", {}),
        return_exceptions=True,
    )
    assert isinstance(outcomes[1], StoreError) and "dead-letter queue is down" in str(outcomes[1])
    assert outcomes[0] is None and outcomes[2] is None and outcomes[3] is True

    kept = await store.get_task("task-1")
    assert kept is not None and kept.status == TaskStatus.EXECUTING  # not final
    assert await store.events("task-1") == []
    assert await store.dlq_get("task-1") is None
    assert (await store.tenant_usage("acme")).calls == 1  # not counted
    assert all([await store.get_task(r.task_id) for r in others])


# -- idempotency keys ---------------------------------------------------------------------------------


def test_idempotency_key_first_claim_wins(store: SqlStore) -> None:
    assert store.claim_idempotency_key_sync("acme", "k1", "sha-a", "task-1") == ("task-1", True)
    assert store.claim_idempotency_key_sync("acme", "k1", "sha-a", "task-2") == ("task-1", True)  # replay
    assert store.claim_idempotency_key_sync("acme", "k1", "sha-b", "task-3") == ("task-1", False)  # misuse
    assert store.claim_idempotency_key_sync("other", "k1", "sha-b", "task-4") == (
        "task-4",
        True,
    )  # per tenant


def test_racing_idempotency_claims_bind_one_task(url: str) -> None:
    def claim(mine: SqlStore, i: int) -> tuple[str, bool]:
        return mine.claim_idempotency_key_sync("acme", "same-key", f"sha-{i}", f"task-{i}")

    results = race(url, RACERS, claim)
    winners = [i for i, (task_id, matches) in enumerate(results) if matches]
    assert len(winners) == 1
    assert {task_id for task_id, _ in results} == {f"task-{winners[0]}"}


# -- approvals ----------------------------------------------------------------------------------------


def test_first_approval_decision_wins(store: SqlStore) -> None:
    assert store.get_approval_sync("task-1", "s1") is None
    assert store.decide_approval_sync("task-1", "s1", "approved", "alice", "looks fine")
    assert not store.decide_approval_sync("task-1", "s1", "rejected", "bob", "too late")
    decided = store.get_approval_sync("task-1", "s1")
    assert decided is not None
    assert {k: decided[k] for k in ("decision", "decided_by", "reason")} == {
        "decision": "approved",
        "decided_by": "alice",
        "reason": "looks fine",
    }
    assert datetime.fromisoformat(decided["decided_at"]).utcoffset() == timedelta(0)
    assert store.decide_approval_sync("task-1", "s2", "rejected", "bob")
    second = store.get_approval_sync("task-1", "s2")
    assert second is not None and (second["decision"], second["reason"]) == ("rejected", None)
    with pytest.raises(ValueError, match="decision"):
        store.decide_approval_sync("task-1", "s3", "maybe", "carol")  # type: ignore[arg-type]


def test_racing_approvals_one_decision(url: str) -> None:
    def decide(mine: SqlStore, i: int) -> bool:
        return mine.decide_approval_sync("task-1", "s1", "approved" if i % 2 else "rejected", f"user-{i}")

    assert sorted(race(url, RACERS, decide)) == [False] * (RACERS - 1) + [True]


# -- the longest ids the contracts allow ------------------------------------------------------------

LONG_TASK_ID = "t" * 100
"""The longest task id a request may carry (TaskRequest.task_id)."""
LONG_TENANT = "a" * 100
LONG_STEP_ID = "s" * MAX_STEP_ID_CHARS
LONG_KEY = f"{LONG_TASK_ID}:1:".ljust(MAX_IDEMPOTENCY_KEY_CHARS, "k")
"""The longest step idempotency key (the embedded planner writes ``task_id:iteration:step_id``)."""


def test_the_longest_ids_fit_every_table(store: SqlStore) -> None:
    assert len(LONG_KEY) == MAX_IDEMPOTENCY_KEY_CHARS
    request = TaskRequest(
        description="long", task_id=LONG_TASK_ID, tenant=LONG_TENANT, idempotency_key=LONG_KEY
    )
    task = record(LONG_TASK_ID, tenant=LONG_TENANT)
    assert store.create_task_sync(task, request)
    assert store.acquire_lease_sync(LONG_TASK_ID, "orch-a", ttl_s=30)
    task.status = TaskStatus.WAITING_APPROVAL
    assert store.save_transition_sync(task, "approval_requested", {"step_id": LONG_STEP_ID}, owner="orch-a")
    result = StepResult(
        step_id=LONG_STEP_ID, action="python_exec", idempotency_key=LONG_KEY, status=StepStatus.SUCCEEDED
    )
    store.save_step_result_sync(LONG_TASK_ID, result)
    assert store.get_step_result_sync(LONG_KEY) == result

    # approvals are keyed by the step's idempotency key (a decision belongs to one round's step)
    assert store.decide_approval_sync(LONG_TASK_ID, LONG_KEY, "approved", "b" * 200, "ok")
    decided = store.get_approval_sync(LONG_TASK_ID, LONG_KEY)
    assert decided is not None and (decided["step_id"], decided["decided_by"]) == (LONG_KEY, "b" * 200)

    assert store.claim_idempotency_key_sync(LONG_TENANT, LONG_KEY, "f" * 64, LONG_TASK_ID) == (
        LONG_TASK_ID,
        True,
    )
    failed = task.model_copy(update={"status": TaskStatus.FAILED, "error": "x", "usage": ModelUsage(calls=1)})
    assert store.finish_task_sync(failed, "failed", {}, owner="orch-a")
    assert [e["task_id"] for e in store.dlq_list_sync(tenant=LONG_TENANT)] == [LONG_TASK_ID]
    assert store.tenant_usage_sync(LONG_TENANT).calls == 1
    assert store.release_lease_sync(LONG_TASK_ID, "orch-a")
    assert len(store.events_sync(LONG_TASK_ID)) == 2


# -- async wrappers -----------------------------------------------------------------------------------


async def test_async_wrappers(store: SqlStore) -> None:
    assert await store.create_task(record(), request_for("task-1"))
    await store.save_task(record(status=TaskStatus.EXECUTING))
    assert (await store.get_task("task-1")) is not None
    assert len(await store.unfinished()) == 1
    assert await store.get_request("task-1") == request_for("task-1")
    await store.append_event("task-1", "accepted", {})
    assert len(await store.events("task-1")) == 1
    await store.save_step_result("task-1", step_result())
    assert await store.get_step_result("task-1:1:s1") == step_result()
    await store.add_tenant_usage("acme", ModelUsage(calls=1))
    assert (await store.tenant_usage("acme")).calls == 1

    assert await store.acquire_lease("task-1", "orch-a", 30, now=T0)
    assert await store.lease_owner("task-1", now=T0) == "orch-a"
    assert await store.renew_leases("orch-a", 30, now=T0) == 1
    assert await store.release_lease("task-1", "orch-a")
    assert [r.task_id for r, _ in await store.claimable_unfinished("orch-a", 30, now=T0)] == ["task-1"]

    await store.dead_letter(record(status=TaskStatus.FAILED), "gave up")
    assert [e["task_id"] for e in await store.dlq_list()] == ["task-1"]
    assert (await store.dlq_get("task-1")) is not None
    assert await store.dlq_remove("task-1")

    assert await store.claim_idempotency_key("acme", "k", "sha", "task-1") == ("task-1", True)
    assert await store.decide_approval("task-1", "s1", "approved", "alice")
    assert (await store.get_approval("task-1", "s1")) is not None
    assert await store.schema_version() == SCHEMA_VERSION


# -- migrations ---------------------------------------------------------------------------------------


def applied_versions(url: str) -> list[int]:
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            return list(
                conn.execute(sa.text("SELECT version FROM schema_migrations ORDER BY version")).scalars()
            )
    finally:
        engine.dispose()


def test_fresh_database_gets_every_migration(url: str, store: SqlStore) -> None:
    assert store.schema_version_sync() == SCHEMA_VERSION == MIGRATIONS[-1][0]
    assert applied_versions(url) == [version for version, _, _ in MIGRATIONS]
    engine = engine_for(url)
    try:
        assert set(sa.inspect(engine).get_table_names()) >= ALL_TABLES
    finally:
        engine.dispose()
    SqlStore(url).close()  # reopening changes nothing
    assert applied_versions(url) == [version for version, _, _ in MIGRATIONS]


def test_older_database_is_migrated_to_the_latest(url: str) -> None:
    engine = engine_for(url)
    try:
        assert migrate(engine, target=1) == 1
        assert "task_leases" not in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
    opened = SqlStore(url)
    try:
        assert opened.schema_version_sync() == SCHEMA_VERSION
        assert opened.acquire_lease_sync("task-1", "orch-a", ttl_s=30)  # a table of migration 2
    finally:
        opened.close()
    assert applied_versions(url) == [version for version, _, _ in MIGRATIONS]


def test_a_version_2_database_takes_the_longest_approval_keys_once_migrated(url: str) -> None:
    engine = engine_for(url)
    try:
        assert migrate(engine, target=2) == 2
    finally:
        engine.dispose()
    opened = SqlStore(url)
    try:
        assert opened.schema_version_sync() == SCHEMA_VERSION
        assert opened.decide_approval_sync(LONG_TASK_ID, LONG_KEY, "rejected", "bob")
        decided = opened.get_approval_sync(LONG_TASK_ID, LONG_KEY)
        assert decided is not None and decided["step_id"] == LONG_KEY
    finally:
        opened.close()


def test_database_from_before_migrations_is_adopted(url: str) -> None:
    """Databases made by create_all before explicit migrations; the oldest lack tasks.request."""
    engine = engine_for(url)
    legacy = sa.MetaData()
    tasks = sa.Table(
        "tasks",
        legacy,
        sa.Column("task_id", sa.String(128), primary_key=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("record", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    sa.Table("schema_version", legacy, sa.Column("version", sa.Integer, nullable=False))
    old = record("old", TaskStatus.COMPLETED)
    try:
        legacy.create_all(engine)
        with engine.begin() as conn:
            conn.execute(
                tasks.insert().values(
                    task_id="old",
                    status="completed",
                    description=old.description,
                    record=old.model_dump_json(),
                    created_at=old.created_at,
                    updated_at=old.updated_at,
                )
            )
    finally:
        engine.dispose()
    opened = SqlStore(url)
    try:
        assert opened.schema_version_sync() == SCHEMA_VERSION
        assert opened.get_task_sync("old") == old
        assert opened.create_task_sync(record("new"), request_for("new"))
        assert [r.task_id for r, _ in opened.unfinished_sync()] == ["new"]
    finally:
        opened.close()


def test_newer_database_is_refused(url: str, store: SqlStore) -> None:
    engine = engine_for(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO schema_migrations (version, description, applied_at) VALUES (:v, 'x', :at)"
                ),
                {"v": SCHEMA_VERSION + 1, "at": T0},
            )
    finally:
        engine.dispose()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        SqlStore(url)


def test_stores_opening_a_fresh_database_at_once_migrate_it_once(url: str) -> None:
    versions = race(url, RACERS, lambda mine, _i: mine.schema_version_sync())
    assert versions == [SCHEMA_VERSION] * RACERS
    assert applied_versions(url) == [version for version, _, _ in MIGRATIONS]


# -- unavailable store --------------------------------------------------------------------------------


def every_call(store: SqlStore) -> dict[str, Callable[[], object]]:
    return {
        "save_task": lambda: store.save_task_sync(record()),
        "save_transition": lambda: store.save_transition_sync(record(), "k", {}, owner="o"),
        "finish_task": lambda: store.finish_task_sync(record(status=TaskStatus.FAILED), "failed", {}),
        "create_task": lambda: store.create_task_sync(record("x"), request_for("x")),
        "get_task": lambda: store.get_task_sync("task-1"),
        "get_request": lambda: store.get_request_sync("task-1"),
        "list_tasks": lambda: store.list_tasks_sync(),
        "unfinished": lambda: store.unfinished_sync(),
        "append_event": lambda: store.append_event_sync("task-1", "k", {}),
        "events": lambda: store.events_sync("task-1"),
        "save_step_result": lambda: store.save_step_result_sync("task-1", step_result()),
        "get_step_result": lambda: store.get_step_result_sync("k"),
        "add_tenant_usage": lambda: store.add_tenant_usage_sync("acme", ModelUsage(calls=1)),
        "tenant_usage": lambda: store.tenant_usage_sync("acme"),
        "acquire_lease": lambda: store.acquire_lease_sync("task-1", "o", 30),
        "renew_leases": lambda: store.renew_leases_sync("o", 30),
        "release_lease": lambda: store.release_lease_sync("task-1", "o"),
        "lease_owner": lambda: store.lease_owner_sync("task-1"),
        "claimable_unfinished": lambda: store.claimable_unfinished_sync("o", 30),
        "dead_letter": lambda: store.dead_letter_sync(record(), "r"),
        "dlq_list": lambda: store.dlq_list_sync(),
        "dlq_get": lambda: store.dlq_get_sync("task-1"),
        "dlq_remove": lambda: store.dlq_remove_sync("task-1"),
        "claim_idempotency_key": lambda: store.claim_idempotency_key_sync("t", "k", "s", "task-1"),
        "decide_approval": lambda: store.decide_approval_sync("task-1", "s1", "approved", "a"),
        "get_approval": lambda: store.get_approval_sync("task-1", "s1"),
        "schema_version": lambda: store.schema_version_sync(),
    }


READS = {
    "get_task",
    "get_request",
    "list_tasks",
    "unfinished",
    "events",
    "get_step_result",
    "tenant_usage",
    "lease_owner",
    "dlq_list",
    "dlq_get",
    "get_approval",
    "schema_version",
}


def assert_unavailable_quickly(call: Callable[[], object]) -> None:
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError) as caught:
        call()
    assert time.monotonic() - started < UNAVAILABLE_WITHIN_S
    assert isinstance(caught.value, StoreError) and isinstance(caught.value, OfficerayError)


def test_postgres_on_a_closed_port_is_unavailable() -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/officeray"
    assert_unavailable_quickly(lambda: SqlStore(url, connect_timeout_s=2))


def test_plain_postgresql_url_means_psycopg() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/officeray"
    assert_unavailable_quickly(lambda: SqlStore(url, connect_timeout_s=2))  # not "no module psycopg2"


def test_unsupported_backend_is_refused() -> None:
    with pytest.raises(StoreError, match="unsupported store URL"):
        SqlStore("mysql://localhost/officeray")


@pytest.mark.integration
def test_postgres_going_down_then_back(private_postgres: PostgresServer) -> None:
    url = private_postgres.create_database("officeray")
    opened = SqlStore(url, connect_timeout_s=2)
    try:
        opened.save_task_sync(record())
        private_postgres.stop()
        for name, call in every_call(opened).items():
            try:
                assert_unavailable_quickly(call)
            except AssertionError as exc:
                raise AssertionError(f"{name}: {exc}") from exc
        private_postgres.start()
        assert opened.get_task_sync("task-1") is not None  # pooled connections were replaced
    finally:
        opened.close()


async def test_async_methods_raise_unavailable_too(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    opened = SqlStore(f"sqlite:///{path}", sqlite_busy_timeout_ms=100)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreUnavailableError, match="locked"):
            await opened.save_task(record())
    finally:
        holder.close()
        opened.close()


def test_sqlite_locked_past_busy_timeout_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    opened = SqlStore(f"sqlite:///{path}", sqlite_busy_timeout_ms=100)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        writes = {name: call for name, call in every_call(opened).items() if name not in READS}
        for name, call in writes.items():
            try:
                assert_unavailable_quickly(call)
            except AssertionError as exc:
                raise AssertionError(f"{name}: {exc}") from exc
        assert opened.get_task_sync("task-1") is None  # WAL: reads go on
        holder.execute("COMMIT")
        opened.save_task_sync(record())
        assert opened.get_task_sync("task-1") is not None
    finally:
        holder.close()
        opened.close()
