"""SqlStore on a SQLite file: the file and its folder are created, what is written survives a reopen,
two stores on one file see each other's writes, and a failing write fails alone in its group commit.
What every store does is in ``tests/store/test_store_conformance.py``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from officeray.contracts import StepResult, StepStatus, TaskRecord, TaskStatus
from officeray.errors import StoreError
from officeray.store import SqlStore


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
        assert [e.kind for e in await reopened.events("task-1")] == ["accepted", "completed"]
        result = await reopened.get_step_result("task-1:1:s1")
        assert result is not None and result.output == {"value": 3}
        assert [r.task_id for r in await reopened.list_tasks(TaskStatus.COMPLETED)] == ["task-1"]
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


async def test_a_failing_write_fails_alone_and_the_others_of_its_batch_are_stored(store: SqlStore) -> None:
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
