"""What the memory holds and the interfaces around it.

One :class:`MemoryEntry` per finished task attempt: the task's text and tenant, the plan that ran,
how it ended, the steps that failed and why, the reviewer's feedback, a one-sentence lesson, latency,
tokens and the users' net rating. Metadata lives in the store (the ``memory_entries`` table, with the
vector as float32 bytes); the vectors also live in a faiss index per tenant
(:class:`~officeray.memory.index.VectorIndex`), rebuilt from the store when its file is missing or
stale.

:class:`Encoder` turns texts into L2-normalised vectors (the ``encoder`` Serve deployment, an
in-process sentence-transformers model, or :class:`~officeray.testing.HashingEncoder` in tests);
:class:`MemoryService` is what the gateway, the CLI and the orchestrators call
(:class:`~officeray.memory.service.Memory` in process, :class:`actors.memory.MemoryClient` on a cluster).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from officeray.contracts import FailedStep, MemoryHit, MemoryOutcome, Recall, TaskRecord, utcnow
from officeray.errors import OfficerayError

__all__ = [
    "Encoded",
    "Encoder",
    "EncoderUnavailableError",
    "FailedStep",
    "MemoryEntry",
    "MemoryHit",
    "MemoryOutcome",
    "MemoryService",
    "MemoryTenantState",
    "Recall",
    "vector_bytes",
    "vector_of",
]


MAX_LESSON_CHARS = 400
"""Longest lesson of one entry (one sentence)."""

MAX_STEP_ERROR_CHARS = 300
"""Longest error message kept per failed step."""

MAX_SEARCH_K = 50
"""Most hits one search answers."""

MAX_QUERY_CHARS = 4_000
"""Longest text one search takes."""


class EncoderUnavailableError(OfficerayError):
    """The encoder cannot load or answer: the memory is off (tasks still run)."""


class Encoded(NamedTuple):
    vectors: np.ndarray
    """``(len(texts), dim)`` float32, each row L2-normalised (inner product = cosine similarity)."""
    model: str
    """The encoder's model name, recorded with each vector (a new model means re-embedding)."""


class Encoder(Protocol):
    async def encode(self, texts: Sequence[str]) -> Encoded:
        """Vectors of ``texts``, in order; :class:`EncoderUnavailableError` when it cannot."""
        ...


class MemoryEntry(BaseModel):
    """One finished task attempt, as remembered."""

    model_config = ConfigDict(extra="forbid")

    entry_id: str
    seq: int | None = None
    """The store's sequence number (the id in the faiss index); None until stored."""
    task_id: str
    tenant: str
    description: str
    plan: dict[str, Any] | None = None
    """The last plan that ran (the :class:`~officeray.contracts.Plan` as JSON)."""
    outcome: MemoryOutcome
    failed_steps: list[FailedStep] = Field(default_factory=list)
    review_feedback: list[str] = Field(default_factory=list)
    """What the reviewer said in each round that was not approved."""
    lesson: str = ""
    """One sentence: what to repeat (a success) or avoid (a failure)."""
    iterations: int = 0
    latency_s: float = 0.0
    tokens: int = 0
    rating: int = 0
    """Net user rating (sum of the task's feedback ratings): negative demotes, positive promotes."""
    encoder: str = ""
    """The model of :attr:`vector` (empty: not embedded yet)."""
    vector: bytes | None = Field(default=None, repr=False)
    """The description's vector, float32 little-endian (:func:`vector_bytes`); never in API answers."""
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    def public_view(self) -> dict[str, Any]:
        """The entry as API answers show it (no vector)."""
        return self.model_dump(mode="json", exclude={"vector"})


class MemoryTenantState(NamedTuple):
    """What the store holds for one tenant: how many entries, the newest sequence number."""

    entries: int
    max_seq: int


class MemoryService(Protocol):
    """The memory as its callers see it (in process or over a Ray actor)."""

    async def recall(self, tenant: str, description: str) -> Recall | None:
        """Similar successes and failures for the planner; None when the memory is off."""
        ...

    async def remember(self, record: TaskRecord) -> MemoryEntry | None:
        """Record a finished task attempt (None: not final, or the memory is off)."""
        ...

    async def search(
        self, tenant: str, text: str, k: int, *, outcome: MemoryOutcome | None = None
    ) -> list[MemoryHit]: ...

    async def feedback(self, task_id: str, rating: int) -> int:
        """Add a user's rating to the task's entries; how many changed."""
        ...

    async def delete_entry(self, entry_id: str, tenant: str | None = None) -> bool:
        """Forget one entry (only the tenant's, when ``tenant`` is given)."""
        ...

    async def delete_task(self, task_id: str, tenant: str | None = None) -> int: ...

    async def delete_tenant(self, tenant: str) -> int: ...

    async def rebuild(self) -> dict[str, Any]:
        """Rebuild every tenant's index from the store (embedding what has no vector of this encoder)."""
        ...

    async def stats(self) -> dict[str, Any]: ...


def vector_bytes(vector: np.ndarray) -> bytes:
    """A vector as the store keeps it (float32, little-endian)."""
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def vector_of(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<f4")
