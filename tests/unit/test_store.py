"""SqlStore on a SQLite file: tasks, events and step results survive a reopen."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from officeray.contracts import ErrorType, StepError, StepResult, StepStatus, TaskRecord, TaskStatus
from officeray.store import SqlStore
from officeray.testing import make_plan


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "officeray.db"  # the folder does not exist yet


@pytest.fixture
def store(db_path: Path) -> Iterator[SqlStore]:
    opened = SqlStore(sqlite_url(db_path))
    yield opened
    opened.close()


def record(task_id: str = "task-1", status: TaskStatus = TaskStatus.QUEUED, **fields) -> TaskRecord:
    return TaskRecord(task_id=task_id, description=f"do {task_id}", status=status, **fields)


def step_result(key: str = "task-1:1:s1", status: StepStatus = StepStatus.SUCCEEDED, **fields) -> StepResult:
    return StepResult(step_id="s1", action="math_calculator", idempotency_key=key, status=status, **fields)


async def test_creates_the_database_file_and_its_folder(db_path: Path, store: SqlStore) -> None:
    assert db_path.exists()


async def test_save_and_get_task(store: SqlStore) -> None:
    saved = record(
        plan=make_plan(
            "task-1", [{"step_id": "s1", "action": "math_calculator", "inputs": {"expression": "1"}}]
        ),
        steps=[step_result(output={"value": 1})],
        trace_id="ab" * 16,
    )
    await store.save_task(saved)
    loaded = await store.get_task("task-1")
    assert loaded is not None
    assert loaded.task_id == "task-1"
    assert loaded.description == "do task-1"
    assert loaded.plan == saved.plan
    assert loaded.steps == saved.steps
    assert loaded.trace_id == "ab" * 16


async def test_update_task_replaces_the_record(store: SqlStore) -> None:
    first = record()
    await store.save_task(first)
    done = first.model_copy(
        update={"status": TaskStatus.COMPLETED, "result": {"answer": 42}, "iterations": 2}
    )
    await store.save_task(done)

    loaded = await store.get_task("task-1")
    assert loaded is not None
    assert loaded.status == TaskStatus.COMPLETED
    assert loaded.result == {"answer": 42}
    assert loaded.iterations == 2
    assert loaded.created_at == first.created_at
    assert loaded.updated_at >= first.updated_at
    assert [r.task_id for r in store.list_tasks_sync()] == ["task-1"]  # updated, not duplicated


async def test_unknown_ids_give_none(store: SqlStore) -> None:
    assert await store.get_task("nope") is None
    assert store.get_step_result_sync("nope") is None
    assert await store.events("nope") == []


async def test_list_tasks_by_status(store: SqlStore) -> None:
    await store.save_task(record("a", TaskStatus.COMPLETED))
    await store.save_task(record("b", TaskStatus.FAILED, error="boom"))
    await store.save_task(record("c", TaskStatus.COMPLETED))
    await store.save_task(record("d", TaskStatus.EXECUTING))

    assert sorted(r.task_id for r in store.list_tasks_sync(TaskStatus.COMPLETED)) == ["a", "c"]
    failed = store.list_tasks_sync(TaskStatus.FAILED)
    assert [(r.task_id, r.error) for r in failed] == [("b", "boom")]
    assert store.list_tasks_sync(TaskStatus.QUEUED) == []
    assert sorted(r.task_id for r in store.list_tasks_sync()) == ["a", "b", "c", "d"]
    assert len(store.list_tasks_sync(limit=2)) == 2


async def test_list_tasks_newest_first(store: SqlStore) -> None:
    older = record("older")
    newer = record("newer")
    newer.created_at = older.created_at.replace(year=older.created_at.year + 1)
    await store.save_task(older)
    await store.save_task(newer)
    assert [r.task_id for r in store.list_tasks_sync()] == ["newer", "older"]


async def test_events_come_back_in_order_per_task(store: SqlStore) -> None:
    kinds = ["accepted", "planning", "planned", "validated", "executing", "completed"]
    for i, kind in enumerate(kinds):
        await store.append_event("task-1", kind, {"status": kind, "i": i})
        await store.append_event("task-2", f"other-{kind}", {})

    events = await store.events("task-1")
    assert [e["kind"] for e in events] == kinds
    assert [e["data"]["i"] for e in events] == list(range(len(kinds)))
    assert all(e["at"] for e in events)
    assert len(await store.events("task-2")) == len(kinds)


async def test_step_result_by_idempotency_key(store: SqlStore) -> None:
    running = step_result(status=StepStatus.RUNNING, attempts=1)
    await store.save_step_result("task-1", running)
    failed = step_result(
        status=StepStatus.FAILED,
        attempts=2,
        error=StepError(type=ErrorType.SANDBOX_ERROR, message="container died"),
    )
    await store.save_step_result("task-1", failed)  # same key: replaces
    await store.save_step_result("task-1", step_result("task-1:1:s2", output=[1, 2]))

    loaded = store.get_step_result_sync("task-1:1:s1")
    assert loaded == failed
    other = store.get_step_result_sync("task-1:1:s2")
    assert other is not None and other.output == [1, 2]


async def test_everything_persists_across_store_instances(db_path: Path, store: SqlStore) -> None:
    await store.save_task(record(status=TaskStatus.COMPLETED, result="done"))
    await store.append_event("task-1", "accepted", {"status": "queued"})
    await store.append_event("task-1", "completed", {"status": "completed"})
    await store.save_step_result("task-1", step_result(output={"value": 3}))
    store.close()

    reopened = SqlStore(sqlite_url(db_path))
    try:
        loaded = await reopened.get_task("task-1")
        assert loaded is not None
        assert loaded.status == TaskStatus.COMPLETED
        assert loaded.result == "done"
        assert [e["kind"] for e in await reopened.events("task-1")] == ["accepted", "completed"]
        result = reopened.get_step_result_sync("task-1:1:s1")
        assert result is not None and result.output == {"value": 3}
        assert [r.task_id for r in reopened.list_tasks_sync(TaskStatus.COMPLETED)] == ["task-1"]
    finally:
        reopened.close()


async def test_two_open_stores_see_each_others_writes(db_path: Path, store: SqlStore) -> None:
    second = SqlStore(sqlite_url(db_path))
    try:
        await second.save_task(record("from-second"))
        await store.save_task(record("from-first"))
        assert await store.get_task("from-second") is not None
        assert await second.get_task("from-first") is not None
    finally:
        second.close()


async def test_saving_does_not_change_the_callers_record(store: SqlStore) -> None:
    mine = record()
    before = mine.model_copy(deep=True)
    await store.save_task(mine)
    assert mine == before


async def test_concurrent_writes_are_all_stored_in_order_per_task(store: SqlStore) -> None:
    import asyncio

    records = [record(f"task-{i}") for i in range(20)]

    async def one_task(r: TaskRecord) -> None:
        for i in range(10):
            r.iterations = i
            await store.save_transition(r, f"t{i}", {"i": i})

    await asyncio.gather(*(one_task(r) for r in records))
    for r in records:
        assert [e["kind"] for e in await store.events(r.task_id)] == [f"t{i}" for i in range(10)]
        stored = await store.get_task(r.task_id)
        assert stored is not None and stored.iterations == 9


async def test_a_failing_write_fails_alone_and_the_others_of_its_batch_are_stored(store: SqlStore) -> None:
    import asyncio

    import sqlalchemy as sa

    from officeray.errors import StoreError

    good = [record(f"good-{i}") for i in range(5)]

    def bad(conn: sa.Connection) -> None:
        conn.execute(sa.text("INSERT INTO no_such_table VALUES (1)"))

    writes = [store.save_task(r) for r in good[:3]]
    writes.append(store._writer.submit(bad))  # a statement error inside a group commit
    writes += [store.save_task(r) for r in good[3:]]
    outcomes = await asyncio.gather(*writes, return_exceptions=True)
    assert isinstance(outcomes[3], StoreError)
    assert [o for i, o in enumerate(outcomes) if i != 3] == [None] * 5
    for r in good:
        assert await store.get_task(r.task_id) is not None


async def test_duplicate_creates_in_one_batch_insert_once(store: SqlStore) -> None:
    import asyncio

    from officeray.contracts import TaskRequest

    r = record()
    request = TaskRequest(description="x")
    results = await asyncio.gather(*(store.create_task(r, request) for _ in range(5)))
    assert sorted(results) == [False, False, False, False, True]


async def test_create_leased_task_takes_the_lease_and_inserts_once(store: SqlStore) -> None:
    from officeray.contracts import TaskRequest

    request = TaskRequest(description="x")
    assert await store.create_leased_task(record("t1"), request, "orch-a", 30) is True
    assert await store.lease_owner("t1") == "orch-a"
    # the same id again, from another orchestrator: refused while a holds it, nothing changed
    assert await store.create_leased_task(record("t1"), request, "orch-b", 30) is False
    assert await store.lease_owner("t1") == "orch-a"
    # the task exists and its lease is gone: refused, and no lease is left behind
    await store.release_lease("t1", "orch-a")
    assert await store.create_leased_task(record("t1"), request, "orch-b", 30) is False
    assert await store.lease_owner("t1") is None
