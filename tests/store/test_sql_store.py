"""What only SqlStore has, on a SQLite file and on a real PostgreSQL server: migrations, the group-commit
writer's batches, writes that fail inside a transaction (a trigger), a database that cannot be reached,
and several processes racing on one database. These are SQL-only by nature: the in-memory store has no
schema, no transactions, no second process and no server to lose (``test_store_conformance.py`` holds
what every store does).

Processes are simulated with threads, each with its own store (its own connections and writer
thread) and its own event loop: racing claims of one idempotency key, two orchestrators claiming the
same unfinished tasks, concurrent upserts, several stores migrating one fresh database at once.
"""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa

from loadtests.postgres import free_port
from officeray.auth import Role, mint_key
from officeray.contracts import ModelUsage, StepStatus, TaskStatus, utcnow
from officeray.errors import OfficerayError, StoreError, StoreUnavailableError
from officeray.feedback import TaskFeedback
from officeray.store import MIGRATIONS, SCHEMA_VERSION, SqlStore, migrate
from officeray.webhooks import DeliveryStatus, WebhookAttempt

from .conftest import LONG_KEY, LONG_TASK_ID, T0, PostgresServer, record, request_for, step_result

T = TypeVar("T")

RACERS = 8
"""Threads (each with its own store) racing for the same row."""

UNAVAILABLE_WITHIN_S = 5.0
"""A store that cannot be reached must say so at least this fast (connect timeout 2 s)."""

ALL_TABLES = {
    "tasks",
    "task_events",
    "step_results",
    "tenant_usage",
    "task_leases",
    "dlq",
    "idempotency_keys",
    "approvals",
    "task_feedback",
    "api_keys",
    "webhook_outbox",
    "webhook_attempts",
    "tenant_daily_usage",
    "spans",
    "memory_entries",
    "schema_migrations",
}


def race(url: str, count: int, work: Callable[[SqlStore, int], Awaitable[T]]) -> list[T]:
    """Run ``work(store, i)`` in ``count`` threads, each with its own store and event loop, released
    at once."""
    stores = [SqlStore(url) for _ in range(count)]
    barrier = threading.Barrier(count)

    def run(i: int) -> T:
        barrier.wait()
        return asyncio.run(_awaited(work(stores[i], i)))

    try:
        with ThreadPoolExecutor(count) as pool:
            return list(pool.map(run, range(count)))
    finally:
        for opened in stores:
            opened.close()


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


def engine_for(url: str) -> sa.Engine:
    return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))


# -- several processes on one database ----------------------------------------------------------------


async def test_concurrent_upserts_never_collide(url: str, sql_store: SqlStore) -> None:
    rounds = 5

    async def work(mine: SqlStore, i: int) -> None:
        for n in range(rounds):
            await mine.save_task(record("shared", iterations=i))
            await mine.save_step_result("shared", step_result("shared:1:s1", attempts=n))
            await mine.add_tenant_usage("acme", ModelUsage(prompt_tokens=1, completion_tokens=2, calls=1))

    await asyncio.to_thread(race, url, RACERS, work)
    assert len(await sql_store.list_tasks()) == 1
    assert await sql_store.get_step_result("shared:1:s1") is not None
    usage = await sql_store.tenant_usage("acme")
    assert (usage.prompt_tokens, usage.completion_tokens, usage.calls) == (
        RACERS * rounds,
        2 * RACERS * rounds,
        RACERS * rounds,
    )


@pytest.mark.parametrize("batch", [5, 1000], ids=["small-batches", "one-batch"])
async def test_two_orchestrators_claim_disjoint_sets_covering_all(
    url: str, sql_store: SqlStore, batch: int
) -> None:
    task_ids = {f"task-{i:02d}" for i in range(50)}
    for task_id in sorted(task_ids):
        await sql_store.create_task(record(task_id), request_for(task_id))

    async def claim_all(mine: SqlStore, i: int) -> list[str]:
        got: list[str] = []
        while claimed := await mine.claimable_unfinished(f"orch-{i}", ttl_s=60, now=T0, limit=batch):
            got.extend(r.task_id for r, _ in claimed)
        return got

    first, second = await asyncio.to_thread(race, url, 2, claim_all)
    assert not set(first) & set(second)
    assert set(first) | set(second) == task_ids
    assert len(first) + len(second) == len(task_ids)
    assert [await sql_store.lease_owner(t, now=T0) for t in first] == ["orch-0"] * len(first)
    assert [await sql_store.lease_owner(t, now=T0) for t in second] == ["orch-1"] * len(second)


async def test_racing_idempotency_claims_bind_one_task(url: str) -> None:
    async def claim(mine: SqlStore, i: int) -> tuple[str, bool]:
        return await mine.claim_idempotency_key("acme", "same-key", f"sha-{i}", f"task-{i}")

    results = await asyncio.to_thread(race, url, RACERS, claim)
    winners = [i for i, (_, matches) in enumerate(results) if matches]
    assert len(winners) == 1
    assert {task_id for task_id, _ in results} == {f"task-{winners[0]}"}


async def test_racing_approvals_one_decision(url: str) -> None:
    async def decide(mine: SqlStore, i: int) -> bool:
        return await mine.decide_approval("task-1", "s1", "approved" if i % 2 else "rejected", f"user-{i}")

    assert sorted(await asyncio.to_thread(race, url, RACERS, decide)) == [False] * (RACERS - 1) + [True]


async def test_the_run_that_took_a_task_over_is_never_overwritten_by_the_old_owner(
    url: str, sql_store: SqlStore
) -> None:
    """The old owner (another process) writes transitions as fast as it can while another takes its
    lease and writes: after the new owner's write, none of the old owner's lands (the check is in the
    write's transaction)."""
    assert await sql_store.create_task(record(), request_for("task-1"))
    assert await sql_store.acquire_lease("task-1", "orch-a", ttl_s=30, now=T0)
    old = SqlStore(url)
    stop = threading.Event()
    refused = threading.Event()

    async def old_owner() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            update = record(status=TaskStatus.EXECUTING, iterations=i)
            if not await old.save_transition(update, "old", {"i": i}, owner="orch-a"):
                refused.set()

    writer = threading.Thread(target=asyncio.run, args=(old_owner(),))
    writer.start()
    try:
        await asyncio.sleep(0.2)
        assert await sql_store.acquire_lease("task-1", "orch-b", ttl_s=30, now=T0 + timedelta(seconds=31))
        final = record(status=TaskStatus.COMPLETED, result="new owner")
        assert await sql_store.save_transition(final, "completed", {}, owner="orch-b")
        assert await asyncio.to_thread(refused.wait, 10)
        await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.to_thread(writer.join, 10)
        old.close()
    kept = await sql_store.get_task("task-1")
    assert kept is not None and (kept.status, kept.result) == (TaskStatus.COMPLETED, "new owner")
    assert (await sql_store.events("task-1"))[-1].kind == "completed"


# -- the group-commit writer ----------------------------------------------------------------------------


async def test_fenced_writes_in_one_group_commit_see_the_lease_changes_before_them(
    sql_store: SqlStore,
) -> None:
    store = sql_store
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
    assert [e.kind for e in await store.events("task-1")] == ["a-before", "b"]


async def test_writes_committed_together_keep_each_task_s_order_and_last_record(sql_store: SqlStore) -> None:
    """Transitions and step results queued behind a busy writer go out in one transaction, each
    statement once for all their rows: every task's events stay in order, its last record is the
    one stored, and a step's recorded success is not replaced by a later failure of the batch."""
    store = sql_store
    for task_id in ("task-1", "task-2"):
        assert await store.create_task(record(task_id), request_for(task_id))
        assert await store.acquire_lease(task_id, "orch-a", 30)
    inside, plug = threading.Event(), threading.Event()

    def hold_the_writer(_conn: sa.Connection) -> None:
        inside.set()
        assert plug.wait(10)

    held = store._writer.submit(hold_the_writer)
    assert await asyncio.to_thread(inside.wait, 10)
    writes: list[Any] = []
    for i, status in enumerate((TaskStatus.PLANNING, TaskStatus.EXECUTING, TaskStatus.REVIEWING)):
        for task_id in ("task-1", "task-2"):
            writes.append(
                store.save_transition(record(task_id, status), f"{task_id}-{i}", {}, owner="orch-a")
            )
        if i == 1:
            writes.append(store.save_step_result("task-1", step_result("task-1:1:s1")))
            writes.append(store.save_step_result("task-1", step_result("task-1:1:s1", StepStatus.FAILED)))
    plug.set()
    await held

    assert await asyncio.gather(*writes) == [True, True, True, True, None, None, True, True]
    for task_id in ("task-1", "task-2"):
        assert [e.kind for e in await store.events(task_id)] == [f"{task_id}-{i}" for i in range(3)]
        stored = await store.get_task(task_id)
        assert stored is not None and stored.status == TaskStatus.REVIEWING
    kept = await store.get_step_result("task-1:1:s1")
    assert kept is not None and kept.status == StepStatus.SUCCEEDED


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


async def test_the_end_of_a_run_is_written_whole_or_not_at_all(url: str, sql_store: SqlStore) -> None:
    store = sql_store
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


async def test_fresh_database_gets_every_migration(url: str, sql_store: SqlStore) -> None:
    assert await sql_store.schema_version() == SCHEMA_VERSION == MIGRATIONS[-1][0]
    assert applied_versions(url) == [version for version, _, _ in MIGRATIONS]
    engine = engine_for(url)
    try:
        assert set(sa.inspect(engine).get_table_names()) >= ALL_TABLES
    finally:
        engine.dispose()
    SqlStore(url).close()  # reopening changes nothing
    assert applied_versions(url) == [version for version, _, _ in MIGRATIONS]


async def test_older_database_is_migrated_to_the_latest(url: str) -> None:
    engine = engine_for(url)
    try:
        assert migrate(engine, target=1) == 1
        assert "task_leases" not in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
    opened = SqlStore(url)
    try:
        assert await opened.schema_version() == SCHEMA_VERSION
        assert await opened.acquire_lease("task-1", "orch-a", ttl_s=30)  # a table of migration 2
    finally:
        opened.close()
    assert applied_versions(url) == [version for version, _, _ in MIGRATIONS]


async def test_a_version_2_database_takes_the_longest_approval_keys_once_migrated(url: str) -> None:
    engine = engine_for(url)
    try:
        assert migrate(engine, target=2) == 2
    finally:
        engine.dispose()
    opened = SqlStore(url)
    try:
        assert await opened.schema_version() == SCHEMA_VERSION
        assert await opened.decide_approval(LONG_TASK_ID, LONG_KEY, "rejected", "bob")
        decided = await opened.get_approval(LONG_TASK_ID, LONG_KEY)
        assert decided is not None and decided.step_id == LONG_KEY
    finally:
        opened.close()


async def test_database_from_before_migrations_is_adopted(url: str) -> None:
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
        assert await opened.schema_version() == SCHEMA_VERSION
        assert await opened.get_task("old") == old
        assert await opened.create_task(record("new"), request_for("new"))
        assert [r.task_id for r, _ in await opened.unfinished()] == ["new"]
    finally:
        opened.close()


def test_newer_database_is_refused(url: str, sql_store: SqlStore) -> None:
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


async def test_stores_opening_a_fresh_database_at_once_migrate_it_once(url: str) -> None:
    async def version(mine: SqlStore, _i: int) -> int:
        return await mine.schema_version()

    assert await asyncio.to_thread(race, url, RACERS, version) == [SCHEMA_VERSION] * RACERS
    assert applied_versions(url) == [version for version, _, _ in MIGRATIONS]


# -- unavailable store --------------------------------------------------------------------------------


def every_call(store: SqlStore) -> dict[str, Callable[[], Awaitable[object]]]:
    """Each method of the API, called with plausible arguments."""
    return {
        "save_task": lambda: store.save_task(record()),
        "save_transition": lambda: store.save_transition(record(), "k", {}, owner="o"),
        "finish_task": lambda: store.finish_task(record(status=TaskStatus.FAILED), "failed", {}),
        "create_task": lambda: store.create_task(record("x"), request_for("x")),
        "create_leased_task": lambda: store.create_leased_task(record("y"), request_for("y"), "o", 30),
        "get_task": lambda: store.get_task("task-1"),
        "get_request": lambda: store.get_request("task-1"),
        "list_tasks": lambda: store.list_tasks(),
        "unfinished": lambda: store.unfinished(),
        "append_event": lambda: store.append_event("task-1", "k", {}),
        "events": lambda: store.events("task-1"),
        "save_step_result": lambda: store.save_step_result("task-1", step_result()),
        "get_step_result": lambda: store.get_step_result("k"),
        "add_tenant_usage": lambda: store.add_tenant_usage("acme", ModelUsage(calls=1)),
        "tenant_usage": lambda: store.tenant_usage("acme"),
        "acquire_lease": lambda: store.acquire_lease("task-1", "o", 30),
        "renew_leases": lambda: store.renew_leases("o", 30),
        "release_lease": lambda: store.release_lease("task-1", "o"),
        "lease_owner": lambda: store.lease_owner("task-1"),
        "claimable_unfinished": lambda: store.claimable_unfinished("o", 30),
        "dead_letter": lambda: store.dead_letter(record(), "r"),
        "dlq_list": lambda: store.dlq_list(),
        "dlq_get": lambda: store.dlq_get("task-1"),
        "dlq_remove": lambda: store.dlq_remove("task-1"),
        "claim_idempotency_key": lambda: store.claim_idempotency_key("t", "k", "s", "task-1"),
        "decide_approval": lambda: store.decide_approval("task-1", "s1", "approved", "a"),
        "get_approval": lambda: store.get_approval("task-1", "s1"),
        "schema_version": lambda: store.schema_version(),
        "add_feedback": lambda: store.add_feedback(TaskFeedback(task_id="task-1", tenant="acme", rating=1)),
        "feedback": lambda: store.feedback("task-1"),
        "tenant_usage_on": lambda: store.tenant_usage_on("acme", date(2026, 1, 1)),
        "create_api_key": lambda: store.create_api_key(mint_key("acme", Role.USER)[1]),
        "get_api_key": lambda: store.get_api_key("0123456789ab"),
        "list_api_keys": lambda: store.list_api_keys(),
        "revoke_api_key": lambda: store.revoke_api_key("0123456789ab"),
        "count_api_keys": lambda: store.count_api_keys(),
        "claim_webhooks": lambda: store.claim_webhooks("o", 30),
        "record_webhook_attempt": lambda: store.record_webhook_attempt(
            "d-1", "o", WebhookAttempt(at=utcnow(), status_code=200), DeliveryStatus.DELIVERED
        ),
        "webhook_deliveries": lambda: store.webhook_deliveries("task-1"),
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
    "feedback",
    "tenant_usage_on",
    "get_api_key",
    "list_api_keys",
    "count_api_keys",
    "webhook_deliveries",
}


async def assert_unavailable_quickly(call: Callable[[], object]) -> None:
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError) as caught:
        result = call()
        if inspect.isawaitable(result):
            await result
    assert time.monotonic() - started < UNAVAILABLE_WITHIN_S
    assert isinstance(caught.value, StoreError) and isinstance(caught.value, OfficerayError)


async def assert_every_call_unavailable(calls: dict[str, Callable[[], Awaitable[object]]]) -> None:
    for name, call in calls.items():
        try:
            await assert_unavailable_quickly(call)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc


async def test_postgres_on_a_closed_port_is_unavailable() -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/officeray"
    await assert_unavailable_quickly(lambda: SqlStore(url, connect_timeout_s=2))


async def test_plain_postgresql_url_means_psycopg() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/officeray"
    await assert_unavailable_quickly(lambda: SqlStore(url, connect_timeout_s=2))  # not "no module psycopg2"


def test_unsupported_backend_is_refused() -> None:
    with pytest.raises(StoreError, match="unsupported store URL"):
        SqlStore("mysql://localhost/officeray")


@pytest.mark.integration
async def test_postgres_going_down_then_back(private_postgres: PostgresServer) -> None:
    url = private_postgres.create_database("officeray")
    opened = SqlStore(url, connect_timeout_s=2)
    try:
        await opened.save_task(record())
        await asyncio.to_thread(private_postgres.stop)
        await assert_every_call_unavailable(every_call(opened))
        await asyncio.to_thread(private_postgres.start)
        assert await opened.get_task("task-1") is not None  # pooled connections were replaced
    finally:
        opened.close()


@pytest.mark.slow  # waits out SQLite's busy timeout
async def test_sqlite_locked_past_busy_timeout_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    opened = SqlStore(f"sqlite:///{path}", sqlite_busy_timeout_ms=100)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        writes = {name: call for name, call in every_call(opened).items() if name not in READS}
        await assert_every_call_unavailable(writes)
        assert await opened.get_task("task-1") is None  # WAL: reads go on
        holder.execute("COMMIT")
        await opened.save_task(record())
        assert await opened.get_task("task-1") is not None
    finally:
        holder.close()
        opened.close()


async def test_migration_6_backfills_the_tenant_of_older_tasks(url: str) -> None:
    engine = engine_for(url)
    try:
        assert migrate(engine, target=4) == 4  # before tasks.tenant
        rows = [("acme-task", "acme"), ("default-task", "default")]
        with engine.begin() as conn:
            for task_id, tenant in rows:
                old = record(task_id, tenant=tenant)
                conn.execute(
                    sa.text(
                        "INSERT INTO tasks (task_id, status, description, record, created_at, updated_at)"
                        " VALUES (:task_id, 'queued', 'd', :record, :at, :at)"
                    ),
                    {"task_id": task_id, "record": old.model_dump_json(), "at": old.created_at},
                )
    finally:
        engine.dispose()
    opened = SqlStore(url)
    try:
        assert [r.task_id for r in await opened.list_tasks(tenant="acme")] == ["acme-task"]
        assert [r.task_id for r in await opened.list_tasks(tenant="default")] == ["default-task"]
    finally:
        opened.close()
