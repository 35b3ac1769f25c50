"""Task leases: the ``task_leases`` table, which orchestrator runs which unfinished task, until when.

A lease is taken by one conditional ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` (absent, expired,
or already the taker's), so orchestrators that take leases at once never both get one. Writes
*fenced* on a lease (:class:`~officeray.store.writer.Fenced`) read its holder in their transaction
(:meth:`LeaseRepository.holders`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from officeray.store.api import ResumableTask, positive_ttl
from officeray.store.engine import insert
from officeray.store.schema import leases_table, tasks_table
from officeray.store.tasks import FINAL_STATUSES, TaskRepository

CLAIM_BATCH_SIZE = 200
"""Leases taken per statement by :meth:`LeaseRepository.claim_on` (SQLite limits bound values)."""


def lease_row(task_id: str, owner: str, ttl_s: float, now: datetime) -> dict[str, Any]:
    """The ``task_leases`` row of a lease taken at ``now`` for ``ttl_s`` seconds."""
    return {"task_id": task_id, "owner": owner, "expires_at": now + positive_ttl(ttl_s)}


def _task_ids_match(column: sa.Column[str], single: bool) -> sa.ColumnElement[bool]:
    """``column = :task_id`` (``single``) or ``column IN :task_ids``."""
    if single:
        return column == sa.bindparam("task_id")
    return column.in_(sa.bindparam("task_ids", expanding=True))


class LeaseRepository:
    """Reads and writes of ``task_leases`` on a connection of a ``dialect`` database."""

    def __init__(self, dialect: str) -> None:
        self._dialect = dialect
        # the leases of fenced writes, by whether there is one task (most batches: ``= :task_id``
        # costs less than an expanding ``IN``) or several; built once (every transition reads them)
        self._leases_of = {
            single: sa.select(leases_table.c.task_id, leases_table.c.owner).where(
                _task_ids_match(leases_table.c.task_id, single)
            )
            for single in (True, False)
        }
        self._lock_task_rows = {
            single: sa.select(tasks_table.c.task_id)
            .where(_task_ids_match(tasks_table.c.task_id, single))
            .order_by(tasks_table.c.task_id)  # one order for all writers
            .with_for_update(key_share=True)  # FOR NO KEY UPDATE: the lock the upsert takes anyway
            for single in (True, False)
        }
        # one lease taken per submitted task: built once (compiling it cost more than running it)
        t = leases_table
        acquire = insert(dialect, t).values(
            {
                "task_id": sa.bindparam("task_id"),
                "owner": sa.bindparam("owner"),
                "expires_at": sa.bindparam("expires_at"),
            }
        )
        self._acquire = acquire.on_conflict_do_update(
            index_elements=[t.c.task_id],
            set_={"owner": acquire.excluded.owner, "expires_at": acquire.excluded.expires_at},
            where=sa.or_(t.c.expires_at <= sa.bindparam("now"), t.c.owner == sa.bindparam("taker")),
        ).returning(t.c.task_id)
        self._release = t.delete().where(
            t.c.task_id == sa.bindparam("task_id"), t.c.owner == sa.bindparam("owner")
        )

    def holders(self, conn: Connection, task_ids: list[str]) -> dict[str, str]:
        """Who holds the lease of each of ``task_ids`` (that has one), for fenced writes in this
        transaction.

        SQLite runs one write transaction at a time. On PostgreSQL the tasks' rows are locked first
        (in one order) and the leases read after (READ COMMITTED: a later statement sees what
        committed before it), so a run that took a task over before the lock is seen here, and the
        writes of one that takes it over later wait for this transaction: an old owner never
        overwrites the new one's record.
        """
        single = len(task_ids) == 1
        params: dict[str, Any] = {"task_id": task_ids[0]} if single else {"task_ids": task_ids}
        if self._dialect == "postgresql":
            conn.execute(self._lock_task_rows[single], params)
        return {row.task_id: row.owner for row in conn.execute(self._leases_of[single], params)}

    def _upsert(self, rows: Sequence[dict[str, Any]], owner: str, now: datetime) -> Any:
        """Take each row's lease if it is absent, expired or ``owner``'s; RETURNING the ids taken."""
        t = leases_table
        stmt = insert(self._dialect, t).values(list(rows))
        return stmt.on_conflict_do_update(
            index_elements=[t.c.task_id],
            set_={"owner": stmt.excluded.owner, "expires_at": stmt.excluded.expires_at},
            where=sa.or_(t.c.expires_at <= now, t.c.owner == owner),
        ).returning(t.c.task_id)

    def acquire_on(self, conn: Connection, row: dict[str, Any], now: datetime) -> bool:
        """Take or extend the lease of ``row`` (see :func:`lease_row`): True when it is its owner's."""
        params = {**row, "now": now, "taker": row["owner"]}
        return conn.execute(self._acquire, params).first() is not None

    @staticmethod
    def renew_on(conn: Connection, owner: str, expires_at: datetime) -> int:
        t = leases_table
        return int(conn.execute(t.update().where(t.c.owner == owner).values(expires_at=expires_at)).rowcount)

    def release_on(self, conn: Connection, task_id: str, owner: str) -> bool:
        return bool(conn.execute(self._release, {"task_id": task_id, "owner": owner}).rowcount)

    @staticmethod
    def owner(conn: Connection, task_id: str, now: datetime) -> str | None:
        t = leases_table
        query = sa.select(t.c.owner).where(t.c.task_id == task_id, t.c.expires_at > now)
        owner: str | None = conn.execute(query).scalar_one_or_none()
        return owner

    def claim_on(
        self, conn: Connection, owner: str, expires_at: datetime, now: datetime, limit: int
    ) -> list[ResumableTask]:
        """Lease to ``owner`` the unfinished tasks (with a request) whose lease is absent or expired,
        oldest first, and return them; a task that became final meanwhile is not returned and its
        lease is given back."""
        t, lease = tasks_table, leases_table
        candidates = (
            sa.select(t.c.task_id)
            .select_from(t.outerjoin(lease, lease.c.task_id == t.c.task_id))
            .where(
                t.c.status.not_in(FINAL_STATUSES),
                t.c.request.is_not(None),
                sa.or_(lease.c.task_id.is_(None), lease.c.expires_at <= now),
            )
            .order_by(t.c.created_at, t.c.task_id)  # one order for all: no deadlock between claimers
            .limit(limit)
        )
        ids = list(conn.execute(candidates).scalars())
        claimed: list[str] = []
        for start in range(0, len(ids), CLAIM_BATCH_SIZE):
            rows = [
                {"task_id": task_id, "owner": owner, "expires_at": expires_at}
                for task_id in ids[start : start + CLAIM_BATCH_SIZE]
            ]
            claimed.extend(conn.execute(self._upsert(rows, owner, now)).scalars())
        if not claimed:
            return []
        if self._dialect == "postgresql":
            # as a fenced write does (:meth:`holders`): wait for a write of the previous owner that
            # locked these rows before our lease, so the checkpoint read below is the last one
            conn.execute(self._lock_task_rows[False], {"task_ids": claimed})
        # a task that became final between the candidate scan and the lease is not resumed...
        found = TaskRepository.resumable(conn, claimed)
        finished = set(claimed) - {task.record.task_id for task in found}
        if finished:  # ...and its lease is given back at once
            conn.execute(lease.delete().where(lease.c.task_id.in_(finished)).where(lease.c.owner == owner))
        return found
