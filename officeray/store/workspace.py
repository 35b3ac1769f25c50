"""Task workspaces: the ``workspace_files`` table, one row per file of a task's workspace.

The store is the workspace's source of truth (a SQLite file on one node, PostgreSQL on many), so a
step on any runner of any node sees the files the steps before it wrote (see
:mod:`officeray.workspaces` and ``docs/workspaces.md``). A step's changes are written in one
transaction that first checks the caps (:func:`officeray.workspaces.check_caps`): changes over a cap
raise :class:`~officeray.workspaces.WorkspaceLimitError` and nothing of them is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from officeray.store.api import as_utc
from officeray.store.engine import insert
from officeray.store.schema import tasks_table, workspace_files_table
from officeray.store.tasks import FINAL_STATUSES
from officeray.workspaces import (
    WorkspaceCaps,
    WorkspaceChanges,
    WorkspaceFile,
    WorkspaceLimitError,
    check_caps,
    merged_sizes,
    sha256_hex,
)

_t = workspace_files_table
_META = (_t.c.path, _t.c.size, _t.c.sha256, _t.c.step_id, _t.c.updated_at)
"""The columns of a listing (the content is not read)."""

_UPDATED = ("size", "sha256", "content", "step_id", "updated_at")
"""The columns a file written again changes."""

DELETE_BATCH = 500
"""Most task ids bound in one ``IN (...)`` list when expired workspaces are deleted."""


def _file(row: Mapping[Any, Any]) -> WorkspaceFile:
    return WorkspaceFile(
        path=row["path"],
        size=row["size"],
        sha256=row["sha256"],
        step_id=row["step_id"],
        updated_at=as_utc(row["updated_at"]),
    )


class WorkspaceRepository:
    """Reads and writes of ``workspace_files`` on a connection of a ``dialect`` database."""

    def __init__(self, dialect: str) -> None:
        rows = insert(dialect, _t)
        self._upsert = rows.on_conflict_do_update(
            index_elements=[_t.c.task_id, _t.c.path],
            set_={name: rows.excluded[name] for name in _UPDATED},
        )

    @staticmethod
    def files(conn: Connection, task_id: str) -> list[WorkspaceFile]:
        rows = conn.execute(sa.select(*_META).where(_t.c.task_id == task_id).order_by(_t.c.path)).mappings()
        return [_file(row) for row in rows]

    @staticmethod
    def file(conn: Connection, task_id: str, path: str) -> tuple[WorkspaceFile, bytes] | None:
        row = (
            conn.execute(sa.select(*_META, _t.c.content).where(_t.c.task_id == task_id, _t.c.path == path))
            .mappings()
            .first()
        )
        return None if row is None else (_file(row), bytes(row["content"]))

    @staticmethod
    def contents(conn: Connection, task_id: str) -> dict[str, bytes]:
        rows = conn.execute(sa.select(_t.c.path, _t.c.content).where(_t.c.task_id == task_id))
        return {path: bytes(content) for path, content in rows}

    def apply_on(
        self,
        conn: Connection,
        task_id: str,
        tenant: str,
        step_id: str,
        changes: WorkspaceChanges,
        caps: WorkspaceCaps,
        now: datetime,
    ) -> list[WorkspaceFile]:
        """Check the caps, then write ``changes``; the task's files afterwards."""
        current = dict(conn.execute(sa.select(_t.c.path, _t.c.size).where(_t.c.task_id == task_id)).all())
        others = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(_t.c.size), 0)).where(
                _t.c.tenant == tenant, _t.c.task_id != task_id
            )
        ).scalar_one()
        problem = check_caps(merged_sizes(current, changes), int(others), caps)
        if problem is not None:
            raise WorkspaceLimitError(problem)
        if changes.deleted:
            conn.execute(_t.delete().where(_t.c.task_id == task_id, _t.c.path.in_(changes.deleted)))
        for path, data in changes.written.items():
            conn.execute(
                self._upsert,
                {
                    "task_id": task_id,
                    "path": path,
                    "tenant": tenant,
                    "size": len(data),
                    "sha256": sha256_hex(data),
                    "content": data,
                    "step_id": step_id,
                    "updated_at": now,
                },
            )
        return self.files(conn, task_id)

    @staticmethod
    def tenant_bytes(conn: Connection, tenant: str) -> int:
        total = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(_t.c.size), 0)).where(_t.c.tenant == tenant)
        ).scalar_one()
        return int(total)

    @staticmethod
    def delete_expired_on(conn: Connection, finished_before: datetime) -> int:
        """Delete the workspaces of tasks that are final and were last updated before
        ``finished_before`` (and of tasks the store no longer has); how many files were deleted."""
        owners = sa.select(_t.c.task_id).distinct()
        expired = sa.select(tasks_table.c.task_id).where(
            tasks_table.c.task_id.in_(owners),
            tasks_table.c.status.in_(FINAL_STATUSES),
            tasks_table.c.updated_at < finished_before,
        )
        known = sa.select(tasks_table.c.task_id)
        orphans = sa.select(_t.c.task_id).distinct().where(~_t.c.task_id.in_(known))
        task_ids = [*conn.execute(expired).scalars(), *conn.execute(orphans).scalars()]
        deleted = 0
        for start in range(0, len(task_ids), DELETE_BATCH):
            batch = task_ids[start : start + DELETE_BATCH]
            deleted += conn.execute(_t.delete().where(_t.c.task_id.in_(batch))).rowcount or 0
        return deleted
