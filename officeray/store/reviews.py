"""Review decisions: the ``review_decisions`` table, a person's first decision (accept, reject or
revise) on a task's escalated results, keyed by the task and the round (``iteration``)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from officeray.contracts import ReviewDecision, ReviewDecisionKind, utcnow
from officeray.store.engine import insert_first
from officeray.store.schema import review_decisions_table


class ReviewDecisionRepository:
    """Decisions in ``review_decisions`` on a connection of a ``dialect`` database."""

    def __init__(self, dialect: str) -> None:
        self._dialect = dialect

    def decide_on(
        self,
        conn: Connection,
        task_id: str,
        iteration: int,
        decision: ReviewDecisionKind,
        decided_by: str,
        feedback: str,
    ) -> bool:
        """Record the decision; False when the round was decided before (the first decision wins)."""
        return insert_first(
            conn,
            self._dialect,
            review_decisions_table,
            ("task_id", "iteration"),
            task_id=task_id,
            iteration=iteration,
            decision=decision,
            feedback=feedback,
            decided_by=decided_by,
            decided_at=utcnow(),
        )

    @staticmethod
    def clear_on(conn: Connection, task_id: str) -> int:
        """Delete every decision on ``task_id`` (its rounds wait anew); how many there were."""
        t = review_decisions_table
        return conn.execute(sa.delete(t).where(t.c.task_id == task_id)).rowcount or 0

    @staticmethod
    def get(conn: Connection, task_id: str, iteration: int) -> ReviewDecision | None:
        t = review_decisions_table
        row = conn.execute(sa.select(t).where(t.c.task_id == task_id, t.c.iteration == iteration)).first()
        if row is None:
            return None
        return ReviewDecision(
            task_id=row.task_id,
            iteration=row.iteration,
            decision=row.decision,
            feedback=row.feedback,
            decided_by=row.decided_by,
            decided_at=row.decided_at,
        )
