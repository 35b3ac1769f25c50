"""officeray's memory: finished tasks embedded in a vector index per tenant, recalled by the planner.

* :mod:`officeray.memory.entries`: what is remembered (:class:`MemoryEntry`) and the ports
  (:class:`Encoder`, :class:`MemoryService`);
* :mod:`officeray.memory.learn`: entries and lessons from task records, plan reuse, the planner's
  examples and warnings;
* :mod:`officeray.memory.index`: one tenant's faiss index (flat, then HNSW);
* :mod:`officeray.memory.service`: :class:`Memory`, the index per tenant kept with the store.

See docs/memory.md.
"""

from officeray.memory.entries import (
    Encoded,
    Encoder,
    EncoderUnavailableError,
    MemoryEntry,
    MemoryService,
    MemoryTenantState,
)

__all__ = [
    "Encoded",
    "Encoder",
    "EncoderUnavailableError",
    "MemoryEntry",
    "MemoryService",
    "MemoryTenantState",
]
