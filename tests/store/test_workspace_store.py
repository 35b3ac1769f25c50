"""Task workspaces in every store (in-memory, SQLite, PostgreSQL): files, caps, retention."""

from __future__ import annotations

from datetime import timedelta

import pytest

from officeray.contracts import TaskStatus, utcnow
from officeray.store import TaskStore
from officeray.workspaces import WorkspaceCaps, WorkspaceChanges, WorkspaceLimitError, sha256_hex

from .conftest import T0, record, request_for

CAPS = WorkspaceCaps(max_task_bytes=100, max_task_files=3, max_tenant_bytes=150)


async def test_changes_round_trip_binary_safe(store: TaskStore) -> None:
    await store.create_task(record("t1"), request_for("t1"))
    data = bytes(range(256)) * 2
    files = await store.apply_workspace_changes(
        "t1",
        "default",
        "s1",
        WorkspaceChanges(written={"notes.txt": b"hi", "bin/x.dat": data[:60]}),
        CAPS,
        T0,
    )
    assert [(f.path, f.size, f.step_id) for f in files] == [("bin/x.dat", 60, "s1"), ("notes.txt", 2, "s1")]
    assert files[1].sha256 == sha256_hex(b"hi")
    assert files[1].updated_at == T0
    assert await store.workspace_contents("t1") == {"notes.txt": b"hi", "bin/x.dat": data[:60]}
    found = await store.workspace_file("t1", "bin/x.dat")
    assert found is not None and found[1] == data[:60] and found[0].size == 60
    assert await store.workspace_file("t1", "nope") is None
    assert await store.workspace_file("t2", "notes.txt") is None
    assert await store.workspace_files("t2") == []

    # a later step rewrites one file and deletes the other
    files = await store.apply_workspace_changes(
        "t1", "default", "s2", WorkspaceChanges(written={"notes.txt": b"new"}, deleted=["bin/x.dat"]), CAPS
    )
    assert [(f.path, f.size, f.step_id) for f in files] == [("notes.txt", 3, "s2")]
    assert await store.workspace_contents("t1") == {"notes.txt": b"new"}
    assert await store.workspace_tenant_bytes("default") == 3


async def test_caps_refuse_the_whole_change(store: TaskStore) -> None:
    await store.apply_workspace_changes("t1", "acme", "s1", WorkspaceChanges(written={"a": b"x" * 90}), CAPS)
    with pytest.raises(WorkspaceLimitError, match="max_task_bytes"):
        await store.apply_workspace_changes(
            "t1", "acme", "s2", WorkspaceChanges(written={"b": b"y" * 20, "c": b"z"}), CAPS
        )
    assert await store.workspace_contents("t1") == {"a": b"x" * 90}  # nothing of it was written
    with pytest.raises(WorkspaceLimitError, match="max_task_files"):
        await store.apply_workspace_changes(
            "t1", "acme", "s2", WorkspaceChanges(written={"b": b"", "c": b"", "d": b""}), CAPS
        )
    # replacing a file counts its new size only; deleting frees room
    await store.apply_workspace_changes("t1", "acme", "s3", WorkspaceChanges(written={"a": b"x" * 100}), CAPS)
    # the tenant cap counts the tenant's other tasks, not other tenants'
    await store.apply_workspace_changes(
        "t9", "other", "s1", WorkspaceChanges(written={"a": b"q" * 100}), CAPS
    )
    with pytest.raises(WorkspaceLimitError, match="max_tenant_bytes"):
        await store.apply_workspace_changes(
            "t2", "acme", "s1", WorkspaceChanges(written={"a": b"w" * 60}), CAPS
        )
    await store.apply_workspace_changes("t2", "acme", "s1", WorkspaceChanges(written={"a": b"w" * 50}), CAPS)
    assert await store.workspace_tenant_bytes("acme") == 150


async def test_expired_workspaces_of_finished_tasks_are_deleted(store: TaskStore) -> None:
    for task_id, status in (("done", TaskStatus.COMPLETED), ("running", TaskStatus.EXECUTING)):
        await store.create_task(record(task_id, status), request_for(task_id))
        await store.apply_workspace_changes(
            task_id, "default", "s1", WorkspaceChanges(written={"f": b"1", "g": b"2"}), CAPS
        )
    await store.apply_workspace_changes("gone", "default", "s1", WorkspaceChanges(written={"f": b"1"}), CAPS)
    now = utcnow()
    assert await store.delete_expired_workspaces(now - timedelta(days=1)) == 1  # only the orphan
    assert await store.workspace_files("done") != []
    assert await store.delete_expired_workspaces(now + timedelta(days=1)) == 2  # the finished task's
    assert await store.workspace_files("done") == []
    assert [f.path for f in await store.workspace_files("running")] == ["f", "g"]  # unfinished: kept
