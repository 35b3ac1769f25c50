"""Feedback: the ``task_feedback`` table, what users said about a task's result, in the order given."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from officeray.feedback import TaskFeedback
from officeray.store.api import as_utc
from officeray.store.schema import task_feedback_table


def feedback_row(feedback: TaskFeedback) -> dict[str, Any]:
    """The ``task_feedback`` row of ``feedback`` (its ``id`` is the database's)."""
    return {
        "task_id": feedback.task_id,
        "tenant": feedback.tenant,
        "rating": feedback.rating,
        "comment": feedback.comment,
        "labels": json.dumps(feedback.labels),
        "submitted_by": feedback.submitted_by,
        "created_at": as_utc(feedback.created_at),
    }


class FeedbackRepository:
    """Reads and writes of ``task_feedback``."""

    @staticmethod
    def add_on(conn: Connection, row: dict[str, Any]) -> TaskFeedback:
        """Insert the row; the stored feedback, with its id."""
        new_id = conn.execute(task_feedback_table.insert().values(**row).returning(task_feedback_table.c.id))
        return _feedback({**row, "id": new_id.scalar_one()})

    @staticmethod
    def of_task(conn: Connection, task_id: str) -> list[TaskFeedback]:
        t = task_feedback_table
        rows = conn.execute(sa.select(t).where(t.c.task_id == task_id).order_by(t.c.id)).mappings()
        return [_feedback(dict(row)) for row in rows]


def _feedback(row: dict[str, Any]) -> TaskFeedback:
    labels = row["labels"]
    return TaskFeedback(
        id=row["id"],
        task_id=row["task_id"],
        tenant=row["tenant"],
        rating=row["rating"],
        comment=row["comment"],
        labels=json.loads(labels) if isinstance(labels, str) else labels,
        submitted_by=row["submitted_by"],
        created_at=as_utc(row["created_at"]),
    )
