"""The memory as a service: record finished tasks, recall similar ones, learn from feedback.

:class:`Memory` owns one :class:`~officeray.memory.index.VectorIndex` per tenant (a tenant never
searches another's index), keeps the entries' metadata and vectors in the store and the indexes in
files under ``index_dir`` (one per tenant, named by a hash of the tenant, plus ``manifest.json``
naming the encoder). At :meth:`Memory.start` each tenant's file is loaded and checked against the
store: a missing or unreadable file, another encoder, or a count that differs is rebuilt from the
store's vectors (embedding entries that have none of this encoder); entries written after the file
are added. On a cluster one detached actor owns it (:mod:`actors.memory`); tests and the CLI run it
in process.

The encoder is a port (:class:`~officeray.memory.entries.Encoder`). When it cannot answer, the
memory is off, with one warning: recall answers None and tasks plan without it, while finished
tasks are still stored (without a vector) so that a later rebuild or the embed job can add them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from officeray.config import MemorySettings
from officeray.contracts import MemoryHit, MemoryOutcome, Recall, TaskRecord, utcnow
from officeray.memory.entries import (
    MAX_QUERY_CHARS,
    MAX_SEARCH_K,
    Encoded,
    Encoder,
    EncoderUnavailableError,
    MemoryEntry,
    MemoryTenantState,
    vector_bytes,
    vector_of,
)
from officeray.memory.index import VectorIndex
from officeray.memory.learn import entry_from_record, reusable_plan
from officeray.store.api import TaskStore

logger = logging.getLogger(__name__)

OVERFETCH = 4
"""Neighbours fetched per hit wanted (outcome, rating and score filters drop some)."""

MIN_FETCH = 32
"""Fewest neighbours fetched per search."""

REBUILD_PAGE = 2_000
"""Entries read from the store per page while rebuilding, and texts encoded per call."""

PROBE_TEXT = "officeray"
"""What :meth:`Memory.start` encodes to learn the encoder's model and dimension."""

ENCODER_RETRY_S = 30.0
"""After the encoder failed, the memory stays off this long, then tries it again (a replica that
restarted, backpressure); one warning per time it turns off."""

TENANT_FILE_DIGITS = 24
"""Hex digits of the tenant's hash in its index file's name."""

SCORE_DIGITS = 4
"""Decimals of the scores in hits."""

MANIFEST = "manifest.json"
"""The index folder's description: the encoder and dimension its vectors come from."""


def tenant_file(index_dir: Path, tenant: str) -> Path:
    """The index file of ``tenant`` (named by a hash: tenant names are not file names)."""
    return index_dir / f"{hashlib.sha256(tenant.encode()).hexdigest()[:TENANT_FILE_DIGITS]}.faiss"


class Memory:
    """One process's memory (see the module docstring). Call :meth:`start` before anything else."""

    def __init__(
        self,
        store: TaskStore,
        encoder: Encoder,
        settings: MemorySettings,
        index_dir: Path | None,
        *,
        now: Callable[[], datetime] = utcnow,
        clock: Callable[[], float] = time.monotonic,
        embed_missing: bool = True,
    ) -> None:
        self.store = store
        self.encoder = encoder
        self.settings = settings
        self.index_dir = index_dir
        """None: the indexes live only in memory (rebuilt from the store at each start)."""
        self.embed_missing = embed_missing
        """False: entries without a vector of this encoder are left out of the indexes, not embedded
        (:func:`rebuild_index_files`, in a process that has no model)."""
        self._now = now
        self._clock = clock
        """Monotonic seconds: when a failed encoder is tried again (:data:`ENCODER_RETRY_S`)."""
        self._off_since = 0.0
        self._indexes: dict[str, VectorIndex] = {}
        self._unsaved: dict[str, int] = {}
        self.model: str | None = None
        self.dim: int | None = None
        self.off_reason: str | None = None
        """Why the memory is off (the encoder failed), None while it is on."""
        self._started: asyncio.Future[None] | None = None

    # -- life -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Learn the encoder, then load or rebuild each tenant's index (once; later calls wait)."""
        if self._started is None:
            self._started = asyncio.ensure_future(self._start())
        try:
            await asyncio.shield(self._started)
        except Exception:
            self._started = None  # the store did not answer: the next call starts again
            raise

    async def _start(self) -> None:
        if not self.settings.enabled:
            self.off_reason = "memory.enabled is false"
            return
        probe = await self._encode([PROBE_TEXT])
        if probe is None:
            return
        self.model, self.dim = probe.model, int(probe.vectors.shape[1])
        state = await self.store.memory_state()
        manifest_ok = self._manifest_matches()
        for tenant, tenant_state in state.items():
            loaded = self._load(tenant) if manifest_ok else None
            if loaded is None or not await self._catch_up(tenant, loaded, tenant_state):
                await self._rebuild_tenant(tenant)
        self._write_manifest()
        self.persist()

    @property
    def on(self) -> bool:
        return self.off_reason is None and self.model is not None

    def _retry_due(self) -> bool:
        return self.settings.enabled and self._clock() - self._off_since >= ENCODER_RETRY_S

    async def _ensure_on(self) -> bool:
        """Started, and on; a memory whose encoder failed tries it again once :data:`ENCODER_RETRY_S`
        passed (the whole start again when the encoder never answered)."""
        await self.start()
        if self.model is None and self._retry_due():
            self._started = None
            await self.start()
        return self.model is not None and (self.off_reason is None or self._retry_due())

    def _turn_off(self, reason: str) -> None:
        if self.off_reason is None:
            logger.warning("memory is off: %s (tasks still run, planned without it)", reason)
        self.off_reason = reason
        self._off_since = self._clock()

    async def _encode(self, texts: Sequence[str]) -> Encoded | None:
        if self.off_reason is not None and not self._retry_due():
            return None
        try:
            encoded = await self.encoder.encode([t[:MAX_QUERY_CHARS] for t in texts])
        except EncoderUnavailableError as exc:
            self._turn_off(str(exc))
            return None
        if self.model is not None and encoded.model != self.model:
            self._turn_off(f"the encoder changed from {self.model} to {encoded.model}; run a rebuild")
            return None
        if self.off_reason is not None:
            logger.warning("memory is on again (the encoder answers)")
            self.off_reason = None
        return encoded

    # -- files ----------------------------------------------------------------------------------

    def _manifest_matches(self) -> bool:
        if self.index_dir is None:
            return False
        try:
            manifest = json.loads((self.index_dir / MANIFEST).read_text())
        except (OSError, ValueError):
            return False
        return bool(manifest.get("encoder") == self.model and manifest.get("dim") == self.dim)

    def _write_manifest(self) -> None:
        if self.index_dir is None:
            return
        self.index_dir.mkdir(parents=True, exist_ok=True)
        path = self.index_dir / MANIFEST
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"encoder": self.model, "dim": self.dim}))
        os.replace(tmp, path)

    def _new_index(self) -> VectorIndex:
        s = self.settings
        assert self.dim is not None
        return VectorIndex(
            self.dim,
            hnsw_threshold=s.hnsw_threshold,
            hnsw_m=s.hnsw_m,
            ef_construction=s.hnsw_ef_construction,
            ef_search=s.hnsw_ef_search,
        )

    def _load(self, tenant: str) -> VectorIndex | None:
        if self.index_dir is None:
            return None
        s = self.settings
        index = VectorIndex.load(
            tenant_file(self.index_dir, tenant),
            hnsw_threshold=s.hnsw_threshold,
            hnsw_m=s.hnsw_m,
            ef_construction=s.hnsw_ef_construction,
            ef_search=s.hnsw_ef_search,
        )
        if index is None or index.dim != self.dim:
            return None
        return index

    def persist(self, tenant: str | None = None) -> None:
        """Write the indexes changed since their last write (or ``tenant``'s) to their files."""
        if self.index_dir is None:
            self._unsaved.clear()
            return
        self.index_dir.mkdir(parents=True, exist_ok=True)
        for name in [tenant] if tenant is not None else list(self._unsaved):
            index = self._indexes.get(name)
            if index is not None:
                index.save(tenant_file(self.index_dir, name))
            self._unsaved.pop(name, None)

    def _changed(self, tenant: str, count: int = 1) -> None:
        self._unsaved[tenant] = self._unsaved.get(tenant, 0) + count
        if self._unsaved[tenant] >= self.settings.persist_every:
            self.persist(tenant)

    # -- building -------------------------------------------------------------------------------

    async def _entries(self, tenant: str, after_seq: int = 0) -> list[MemoryEntry]:
        entries: list[MemoryEntry] = []
        while True:
            page = await self.store.memory_entries(tenant=tenant, after_seq=after_seq, limit=REBUILD_PAGE)
            entries.extend(page)
            if len(page) < REBUILD_PAGE:
                return entries
            after_seq = page[-1].seq or after_seq

    async def _vectors(self, entries: list[MemoryEntry]) -> tuple[np.ndarray, np.ndarray]:
        """Ids and vectors of ``entries``, embedding (and storing) those without a vector of this
        encoder; entries that cannot be embedded now are left out."""
        missing = [e for e in entries if e.vector is None or e.encoder != self.model]
        if not self.embed_missing:
            missing = []
        for start in range(0, len(missing), REBUILD_PAGE):
            chunk = missing[start : start + REBUILD_PAGE]
            encoded = await self._encode([e.description for e in chunk])
            if encoded is None:
                break
            stored = {
                e.entry_id: (vector_bytes(v), encoded.model)
                for e, v in zip(chunk, encoded.vectors, strict=True)
            }
            await self.store.set_memory_vectors(stored)
            for e, v in zip(chunk, encoded.vectors, strict=True):
                e.vector, e.encoder = vector_bytes(v), encoded.model
        ready = [e for e in entries if e.vector is not None and e.encoder == self.model and e.seq is not None]
        assert self.dim is not None
        if not ready:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.dim), dtype=np.float32)
        ids = np.array([e.seq for e in ready], dtype=np.int64)
        vectors = np.stack([vector_of(e.vector) for e in ready if e.vector is not None]).astype(np.float32)
        return ids, vectors

    async def _rebuild_tenant(self, tenant: str) -> int:
        index = self._new_index()
        entries = await self._entries(tenant)
        ids, vectors = await self._vectors(entries)
        # entries remembered while this one embedded: added too, before the new index is swapped in
        last = max((e.seq or 0 for e in entries), default=0)
        newer_ids, newer_vectors = await self._vectors(await self._entries(tenant, after_seq=last))
        if len(newer_ids):
            ids, vectors = np.concatenate([ids, newer_ids]), np.concatenate([vectors, newer_vectors])
        if len(ids):
            index.add(ids, vectors)
        self._indexes[tenant] = index
        self._unsaved[tenant] = self._unsaved.get(tenant, 0) + 1
        return len(ids)

    async def _catch_up(self, tenant: str, index: VectorIndex, state: MemoryTenantState) -> bool:
        """Add the entries stored after the file was written; False when the file cannot be
        trusted (entries were deleted, or some have no vector) and the tenant must be rebuilt."""
        newer = await self._entries(tenant, after_seq=index.max_id) if state.max_seq > index.max_id else []
        ids, vectors = await self._vectors(newer)
        if len(ids):
            index.add(ids, vectors)
            self._unsaved[tenant] = self._unsaved.get(tenant, 0) + len(ids)
        if len(index) != state.entries:
            return False
        self._indexes[tenant] = index
        return True

    async def rebuild(self) -> dict[str, Any]:
        """Rebuild every tenant's index from the store, embedding what has no vector of this encoder."""
        await self.start()
        started = time.perf_counter()
        try:  # the encoder as it is now (its model may have changed: adopt it)
            probe = await self.encoder.encode([PROBE_TEXT])
        except EncoderUnavailableError as exc:
            self._turn_off(str(exc))
            return {"rebuilt": False, "reason": self.off_reason}
        if self.off_reason is not None:
            logger.warning("memory is on again (rebuilt with %s)", probe.model)
        self.model, self.dim, self.off_reason = probe.model, int(probe.vectors.shape[1]), None
        state = await self.store.memory_state()
        self._indexes = {t: i for t, i in self._indexes.items() if t in state}
        entries = 0
        for tenant in state:
            entries += await self._rebuild_tenant(tenant)
        self._write_manifest()
        self.persist()
        return {
            "rebuilt": True,
            "tenants": len(state),
            "entries": entries,
            "stored": sum(s.entries for s in state.values()),
            "encoder": self.model,
            "took_s": round(time.perf_counter() - started, 3),
        }

    # -- writing --------------------------------------------------------------------------------

    async def remember(self, record: TaskRecord) -> MemoryEntry | None:
        """Store a finished task attempt and add it to its tenant's index (see the module docstring
        for an encoder that is off)."""
        if not self.settings.enabled:
            return None
        on = await self._ensure_on()
        entry = entry_from_record(record, self._now())
        if entry is None:
            return None
        # feedback given before this entry existed counts too
        entry.rating = sum(f.rating for f in await self.store.feedback(record.task_id))
        encoded = await self._encode([entry.description]) if on else None
        if encoded is not None:
            entry.vector, entry.encoder = vector_bytes(encoded.vectors[0]), encoded.model
        stored = await self.store.add_memory_entry(entry)
        if encoded is not None and stored.seq is not None:
            index = self._indexes.get(stored.tenant)
            if index is None:
                index = self._indexes[stored.tenant] = self._new_index()
            index.add(np.array([stored.seq], dtype=np.int64), encoded.vectors[:1].astype(np.float32))
            self._changed(stored.tenant)
        return stored

    async def feedback(self, task_id: str, rating: int) -> int:
        """Add a user's rating to the task's entries (read at every search: a net rating at
        ``exclude_at_rating`` or below hides an entry, a positive one promotes it)."""
        if not self.settings.enabled or rating == 0:
            return 0
        return len(await self.store.rate_memory(task_id, rating))

    async def _forget(self, deleted: list[MemoryEntry]) -> None:
        await self.start()
        by_tenant: dict[str, list[int]] = {}
        for entry in deleted:
            if entry.seq is not None:
                by_tenant.setdefault(entry.tenant, []).append(entry.seq)
        for tenant, seqs in by_tenant.items():
            index = self._indexes.get(tenant)
            if index is not None:
                index.remove(seqs)
                self.persist(tenant)

    async def delete_entry(self, entry_id: str, tenant: str | None = None) -> bool:
        deleted = await self.store.delete_memory(entry_id=entry_id, tenant=tenant)
        await self._forget(deleted)
        return bool(deleted)

    async def delete_task(self, task_id: str, tenant: str | None = None) -> int:
        """Forget a task's entries (none when ``tenant`` is given and the task is another's)."""
        deleted = await self.store.delete_memory(task_id=task_id, tenant=tenant)
        await self._forget(deleted)
        return len(deleted)

    async def delete_tenant(self, tenant: str) -> int:
        deleted = await self.store.delete_memory(tenant=tenant)
        await self.start()
        self._indexes.pop(tenant, None)
        self._unsaved.pop(tenant, None)
        if self.index_dir is not None:
            tenant_file(self.index_dir, tenant).unlink(missing_ok=True)
        return len(deleted)

    # -- reading --------------------------------------------------------------------------------

    def _rank(self, score: float, rating: int) -> float:
        """``score`` moved by the net rating: up to ``max_promotion`` either way (a negative rating
        above ``exclude_at_rating`` demotes)."""
        s = self.settings
        return score + max(-s.max_promotion, min(s.max_promotion, s.promotion_per_rating * rating))

    async def _neighbours(self, tenant: str, text: str, fetch: int) -> tuple[list[MemoryHit], int] | None:
        """Hits of ``tenant`` near ``text`` (excluded entries left out), by rank; None when off."""
        if not await self._ensure_on():
            return None
        index = self._indexes.get(tenant)
        if index is None or not len(index):
            return [], 0
        encoded = await self._encode([text])
        if encoded is None:
            return None
        found = index.search(encoded.vectors[0], max(fetch, MIN_FETCH))
        scores = dict(found)
        entries = await self.store.memory_entries_by_seq([seq for seq, _ in found])
        hits = [
            MemoryHit(
                entry_id=e.entry_id,
                task_id=e.task_id,
                outcome=e.outcome,
                score=round(float(scores[e.seq]), SCORE_DIGITS),
                rank_score=round(self._rank(float(scores[e.seq]), e.rating), SCORE_DIGITS),
                description=e.description,
                lesson=e.lesson,
                rating=e.rating,
                plan=e.plan,
                failed_steps=e.failed_steps,
            )
            for e in entries
            if e.seq in scores and e.tenant == tenant and e.rating > self.settings.exclude_at_rating
        ]
        hits.sort(key=lambda h: h.rank_score, reverse=True)
        return hits, len(index)

    async def recall(self, tenant: str, description: str) -> Recall | None:
        """The ``k_successes`` most similar completed tasks and ``k_failures`` most similar failed
        ones of ``tenant`` at or above ``min_score``; None when the memory is off."""
        s = self.settings
        if not s.enabled:
            return None
        started = time.perf_counter()
        wanted = s.k_successes + s.k_failures
        found = await self._neighbours(tenant, description, wanted * OVERFETCH)
        if found is None:
            return None
        hits, searched = found
        kept = [h for h in hits if h.score >= s.min_score]
        successes = [h for h in kept if h.outcome == "completed"][: s.k_successes]
        failures = [h for h in kept if h.outcome == "failed"][: s.k_failures]
        best = max((h.score for h in [*successes, *failures]), default=None)
        reusable = reusable_plan(successes, description, s.reuse_threshold)
        return Recall(
            reusable=reusable.entry_id if reusable is not None else None,
            successes=successes,
            failures=failures,
            best_score=best,
            searched=searched,
            encoder=self.model or "",
            took_ms=round((time.perf_counter() - started) * 1000, 3),
        )

    async def search(
        self, tenant: str, text: str, k: int, *, outcome: MemoryOutcome | None = None
    ) -> list[MemoryHit]:
        """The ``k`` entries of ``tenant`` nearest to ``text`` (of one ``outcome`` if given), best
        first; empty when the memory is off."""
        k = max(1, min(k, MAX_SEARCH_K))
        found = await self._neighbours(tenant, text, k * OVERFETCH)
        if found is None:
            return []
        hits = [h for h in found[0] if outcome is None or h.outcome == outcome]
        return hits[:k]

    async def stats(self) -> dict[str, Any]:
        await self.start()
        return {
            "enabled": self.settings.enabled,
            "on": self.on,
            "off_reason": self.off_reason,
            "encoder": self.model,
            "dim": self.dim,
            "index_dir": str(self.index_dir) if self.index_dir else None,
            "tenants": {t: {"entries": len(i), "kind": i.kind} for t, i in sorted(self._indexes.items())},
        }


class StoredVectors:
    """An encoder that answers only with vectors already stored (the embed job wrote them): what
    :func:`rebuild_index_files` rebuilds with, in a process that has no model."""

    def __init__(self, model: str, dim: int) -> None:
        self.model, self.dim = model, dim

    async def encode(self, texts: Sequence[str]) -> Encoded:
        if list(texts) == [PROBE_TEXT]:  # the probe of Memory.start: the model's name and dimension
            return Encoded(np.zeros((1, self.dim), dtype=np.float32), self.model)
        raise EncoderUnavailableError("rebuilding from stored vectors only; run the embed job for the rest")


async def rebuild_index_files(
    store: TaskStore, settings: MemorySettings, index_dir: Path, model: str, dim: int
) -> dict[str, Any]:
    """Rebuild every tenant's index file from the vectors of ``model`` in the store (entries without
    one are left out), without loading a model."""
    memory = Memory(store, StoredVectors(model, dim), settings, index_dir, embed_missing=False)
    return await memory.rebuild()
