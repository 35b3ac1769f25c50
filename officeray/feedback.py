"""What users say about a task's result: a rating, a comment and labels (``POST /v1/tasks/{id}/feedback``).

Stored by :meth:`~officeray.store.TaskStore.add_feedback`, read back, oldest first, by
:meth:`~officeray.store.TaskStore.feedback`; what the memory of past tasks learns from.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from officeray.contracts import utcnow

MAX_FEEDBACK_COMMENT_CHARS = 4000
"""Longest comment of one feedback."""

MAX_FEEDBACK_LABELS = 20
"""Most labels one feedback carries."""

MAX_FEEDBACK_LABEL_CHARS = 64
"""Longest label; a label is a short tag (``"wrong-file"``, ``"slow"``), not a sentence."""

Rating = Literal[-1, 0, 1]
"""Bad, neutral, good."""


class Feedback(BaseModel):
    """What a client sends: ``{"rating": -1|0|1, "comment": "...", "labels": [...]}``."""

    model_config = ConfigDict(extra="forbid")

    rating: Rating
    comment: str = Field(default="", max_length=MAX_FEEDBACK_COMMENT_CHARS)
    labels: list[str] = Field(default_factory=list, max_length=MAX_FEEDBACK_LABELS)

    @field_validator("labels")
    @classmethod
    def _short_labels(cls, labels: list[str]) -> list[str]:
        for label in labels:
            if not label.strip() or len(label) > MAX_FEEDBACK_LABEL_CHARS:
                raise ValueError(f"a label is 1 to {MAX_FEEDBACK_LABEL_CHARS} characters, not blank")
        return labels


class TaskFeedback(Feedback):
    """One stored feedback: what the client sent, on which task, from which key, when. ``id`` is the
    store's sequence number (None until stored)."""

    model_config = ConfigDict(extra="forbid")

    id: int | None = None
    task_id: str
    tenant: str
    submitted_by: str | None = None
    """The id of the API key that sent it."""
    created_at: datetime = Field(default_factory=utcnow)
