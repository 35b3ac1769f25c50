"""Approvals: the ``approvals`` table, the first decision (approved or rejected) on a step that waits
for a person, keyed by the task and the step's idempotency key."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from officeray.contracts import ApprovalDecision, ApprovalVerdict, utcnow
from officeray.store.engine import insert_first
from officeray.store.schema import approvals_table


class ApprovalRepository:
    """Decisions in ``approvals`` on a connection of a ``dialect`` database."""

    def __init__(self, dialect: str) -> None:
        self._dialect = dialect

    def decide_on(
        self,
        conn: Connection,
        task_id: str,
        step_id: str,
        decision: ApprovalVerdict,
        decided_by: str,
        reason: str | None,
    ) -> bool:
        """Record the decision; False when one was recorded before (the first decision wins)."""
        return insert_first(
            conn,
            self._dialect,
            approvals_table,
            ("task_id", "step_id"),
            task_id=task_id,
            step_id=step_id,
            decision=decision,
            decided_by=decided_by,
            reason=reason,
            decided_at=utcnow(),
        )

    @staticmethod
    def get(conn: Connection, task_id: str, step_id: str) -> ApprovalDecision | None:
        t = approvals_table
        row = conn.execute(sa.select(t).where(t.c.task_id == task_id, t.c.step_id == step_id)).first()
        if row is None:
            return None
        return ApprovalDecision(
            task_id=row.task_id,
            step_id=row.step_id,
            decision=row.decision,
            decided_by=row.decided_by,
            reason=row.reason,
            decided_at=row.decided_at,
        )
