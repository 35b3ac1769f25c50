"""The cluster's memory: one detached actor owns the faiss indexes, everyone else holds a client.

The actor (``officeray-memory``, on the head node beside the trace collector, so its index files
stay in one place and a worker node it sat on could still scale down) runs one
:class:`~officeray.memory.service.Memory` over the store, with the encoder port it was created with
(the composition root's :class:`serving.encoder.ServeEncoder` over the ``encoder`` deployment: this
package never imports :mod:`serving`). Orchestrators recall before planning and remember finished
tasks through :class:`MemoryClient`; the gateway searches, deletes and passes feedback on through it.
"""

from __future__ import annotations

from typing import Any

import ray

from actors.collector import detached_on_head
from officeray.config import Settings, memory_index_dir
from officeray.contracts import MemoryHit, MemoryOutcome, Recall, TaskRecord
from officeray.memory.entries import Encoder, MemoryEntry
from officeray.memory.service import Memory
from officeray.store import SqlStore

MEMORY_ACTOR_NAME = "officeray-memory"

MEMORY_ACTOR_MAX_CONCURRENCY = 256
"""Calls the memory actor serves at once (recalls and records of every orchestrator)."""


class MemoryActor:
    """The :class:`~officeray.memory.service.Memory` of the cluster (see the module docstring)."""

    def __init__(self, settings: Settings, encoder: Encoder) -> None:
        self.store = SqlStore(settings.store.url)
        self.memory = Memory(self.store, encoder, settings.memory, memory_index_dir(settings))

    async def recall(self, tenant: str, description: str) -> Recall | None:
        return await self.memory.recall(tenant, description)

    async def remember(self, record: TaskRecord) -> MemoryEntry | None:
        return await self.memory.remember(record)

    async def search(self, tenant: str, text: str, k: int, outcome: MemoryOutcome | None) -> list[MemoryHit]:
        return await self.memory.search(tenant, text, k, outcome=outcome)

    async def feedback(self, task_id: str, rating: int) -> int:
        return await self.memory.feedback(task_id, rating)

    async def delete_entry(self, entry_id: str, tenant: str | None) -> bool:
        return await self.memory.delete_entry(entry_id, tenant)

    async def delete_task(self, task_id: str, tenant: str | None) -> int:
        return await self.memory.delete_task(task_id, tenant)

    async def delete_tenant(self, tenant: str) -> int:
        return await self.memory.delete_tenant(tenant)

    async def rebuild(self) -> dict[str, Any]:
        return await self.memory.rebuild()

    async def stats(self) -> dict[str, Any]:
        return await self.memory.stats()

    async def persist(self) -> bool:
        self.memory.persist()
        return True


def memory_actor(settings: Settings, encoder: Encoder) -> Any:
    """The cluster's memory actor (its handle), created (detached) on first use; a restarted one
    reloads its files and catches up from the store."""
    return detached_on_head(
        MemoryActor, MEMORY_ACTOR_NAME, settings, MEMORY_ACTOR_MAX_CONCURRENCY, settings, encoder
    )


def running_memory_actor(settings: Settings) -> Any | None:
    """The memory actor if it runs (the embed job asks it to rebuild), else None."""
    try:
        return ray.get_actor(MEMORY_ACTOR_NAME, namespace=settings.ray_namespace)
    except ValueError:
        return None


class MemoryClient:
    """The :class:`~officeray.memory.entries.MemoryService` of a cluster, over the memory actor.

    Picklable (settings and the encoder port): the composition root builds it and hands it to the
    orchestrators and the gateway; the actor is looked up (or created) on first use."""

    def __init__(self, settings: Settings, encoder: Encoder) -> None:
        self.settings = settings
        self.encoder = encoder
        self._actor: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings, "encoder": self.encoder, "_actor": None}

    @property
    def actor(self) -> Any:
        if self._actor is None:
            self._actor = memory_actor(self.settings, self.encoder)
        return self._actor

    async def recall(self, tenant: str, description: str) -> Recall | None:
        result: Recall | None = await self.actor.recall.remote(tenant, description)
        return result

    async def remember(self, record: TaskRecord) -> MemoryEntry | None:
        result: MemoryEntry | None = await self.actor.remember.remote(record)
        return result

    async def search(
        self, tenant: str, text: str, k: int, *, outcome: MemoryOutcome | None = None
    ) -> list[MemoryHit]:
        result: list[MemoryHit] = await self.actor.search.remote(tenant, text, k, outcome)
        return result

    async def feedback(self, task_id: str, rating: int) -> int:
        result: int = await self.actor.feedback.remote(task_id, rating)
        return result

    async def delete_entry(self, entry_id: str, tenant: str | None = None) -> bool:
        result: bool = await self.actor.delete_entry.remote(entry_id, tenant)
        return result

    async def delete_task(self, task_id: str, tenant: str | None = None) -> int:
        result: int = await self.actor.delete_task.remote(task_id, tenant)
        return result

    async def delete_tenant(self, tenant: str) -> int:
        result: int = await self.actor.delete_tenant.remote(tenant)
        return result

    async def rebuild(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.actor.rebuild.remote()
        return result

    async def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.actor.stats.remote()
        return result
