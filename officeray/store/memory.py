"""The memory: the ``memory_entries`` table, one row per finished task attempt with its vector.

Each row holds the :class:`~officeray.memory.entries.MemoryEntry` as JSON without its vector
(``entry``) and the columns that are queried or changed on their own: ``tenant`` (indexed with
``seq``), ``task_id``, ``outcome``, ``rating`` (the users' net rating, changed by
:meth:`MemoryRepository.rate_on`), ``encoder`` and ``vector`` (float32 bytes, written again when the
encoder changes). Those columns win over the JSON, which keeps what the entry was when first stored.
``seq`` is the id of the entry's vector in its tenant's faiss index, increasing and never reused.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from officeray.errors import StoreError
from officeray.memory.entries import MemoryEntry, MemoryTenantState
from officeray.store.api import MEMORY_PAGE_LIMIT, as_utc
from officeray.store.engine import insert
from officeray.store.schema import memory_entries_table

__all__ = ["MEMORY_PAGE_LIMIT", "SEQ_BATCH", "MemoryRepository", "memory_row"]

SEQ_BATCH = 500
"""Most ``seq`` values bound in one ``IN (...)`` list (SQLite allows 999 bound parameters in old
builds); :meth:`MemoryRepository.by_seq` reads longer lists in batches."""

_JSON_EXCLUDED = {"seq", "vector"}
"""What the ``entry`` JSON leaves out: the database's ``seq`` and the vector (a column of its own)."""

_t = memory_entries_table
_WITHOUT_VECTOR = tuple(c for c in _t.c if c.name != "vector")
"""The columns of an answer without vectors (the vector bytes are not even read)."""


def memory_row(entry: MemoryEntry) -> dict[str, Any]:
    """The ``memory_entries`` row of ``entry`` (its ``seq`` is the database's)."""
    return {
        "entry_id": entry.entry_id,
        "tenant": entry.tenant,
        "task_id": entry.task_id,
        "outcome": entry.outcome,
        "rating": entry.rating,
        "encoder": entry.encoder,
        "vector": entry.vector,
        "created_at": as_utc(entry.created_at),
        "updated_at": as_utc(entry.updated_at),
        "entry": entry.model_dump_json(exclude=_JSON_EXCLUDED),
    }


def _entry(row: Mapping[Any, Any]) -> MemoryEntry:
    """The entry of a row: its JSON, with the columns over it (a row read without ``vector`` gives
    ``vector=None``)."""
    fields = json.loads(row["entry"])
    fields.update(
        seq=row["seq"],
        entry_id=row["entry_id"],
        tenant=row["tenant"],
        task_id=row["task_id"],
        outcome=row["outcome"],
        rating=row["rating"],
        encoder=row["encoder"],
        vector=row.get("vector"),
        created_at=as_utc(row["created_at"]),
        updated_at=as_utc(row["updated_at"]),
    )
    return MemoryEntry.model_validate(fields)


def _entries(rows: Iterable[Mapping[Any, Any]]) -> list[MemoryEntry]:
    """Entries in ``seq`` order (``RETURNING`` gives rows in no particular order)."""
    return sorted((_entry(row) for row in rows), key=lambda entry: entry.seq or 0)


class MemoryRepository:
    """Reads and writes of ``memory_entries`` on a connection of a ``dialect`` database."""

    def __init__(self, dialect: str) -> None:
        self._dialect = dialect

    def add_on(self, conn: Connection, row: dict[str, Any]) -> MemoryEntry:
        """Insert the row unless its ``entry_id`` is stored (one statement: racing adds store one);
        the stored entry, with its ``seq``."""
        stmt = (
            insert(self._dialect, _t)
            .values(**row)
            .on_conflict_do_nothing(index_elements=[_t.c.entry_id])
            .returning(_t.c.seq)
        )
        seq = conn.execute(stmt).scalar()
        if seq is None:
            existing = self.get(conn, row["entry_id"])
            if existing is None:  # PostgreSQL: deleted by another transaction since the conflict
                raise StoreError(f"memory entry {row['entry_id']!r} was deleted while it was added")
            return existing
        return _entry({**row, "seq": seq})

    @staticmethod
    def get(conn: Connection, entry_id: str) -> MemoryEntry | None:
        row = conn.execute(sa.select(_t).where(_t.c.entry_id == entry_id)).mappings().first()
        return None if row is None else _entry(row)

    @staticmethod
    def by_seq(conn: Connection, seqs: Sequence[int]) -> list[MemoryEntry]:
        """The entries of ``seqs``, in that order, without vectors; unknown ones are left out."""
        found: dict[int, MemoryEntry] = {}
        wanted = list(dict.fromkeys(seqs))
        for start in range(0, len(wanted), SEQ_BATCH):
            batch = wanted[start : start + SEQ_BATCH]
            rows = conn.execute(sa.select(*_WITHOUT_VECTOR).where(_t.c.seq.in_(batch))).mappings()
            found.update((row["seq"], _entry(row)) for row in rows)
        return [found[seq] for seq in seqs if seq in found]

    @staticmethod
    def page(
        conn: Connection,
        tenant: str | None,
        after_seq: int,
        limit: int,
        with_vectors: bool,
        missing_encoder: str | None,
    ) -> list[MemoryEntry]:
        columns = tuple(_t.c) if with_vectors else _WITHOUT_VECTOR
        query = sa.select(*columns).where(_t.c.seq > after_seq)
        if tenant is not None:
            query = query.where(_t.c.tenant == tenant)
        if missing_encoder is not None:
            query = query.where(sa.or_(_t.c.vector.is_(None), _t.c.encoder != missing_encoder))
        rows = conn.execute(query.order_by(_t.c.seq).limit(limit)).mappings()
        return [_entry(row) for row in rows]

    @staticmethod
    def of_task(conn: Connection, task_id: str) -> list[MemoryEntry]:
        query = sa.select(*_WITHOUT_VECTOR).where(_t.c.task_id == task_id).order_by(_t.c.seq)
        return [_entry(row) for row in conn.execute(query).mappings()]

    @staticmethod
    def rate_on(conn: Connection, task_id: str, delta: int, now: datetime) -> list[MemoryEntry]:
        """Add ``delta`` to the rating of the task's entries (one statement); the changed entries."""
        stmt = (
            _t.update()
            .where(_t.c.task_id == task_id)
            .values(rating=_t.c.rating + delta, updated_at=as_utc(now))
            .returning(*_WITHOUT_VECTOR)
        )
        return _entries(conn.execute(stmt).mappings())

    @staticmethod
    def set_vectors_on(conn: Connection, vectors: Mapping[str, tuple[bytes, str]], now: datetime) -> int:
        """Store each entry's vector and encoder; how many entries were updated."""
        at = as_utc(now)
        updated = 0
        for entry_id, (vector, encoder) in vectors.items():
            stmt = _t.update().where(_t.c.entry_id == entry_id)
            updated += conn.execute(stmt.values(vector=vector, encoder=encoder, updated_at=at)).rowcount or 0
        return updated

    @staticmethod
    def delete_on(
        conn: Connection, entry_id: str | None, task_id: str | None, tenant: str | None
    ) -> list[MemoryEntry]:
        """Delete what the selectors name (checked by the caller: see
        :func:`~officeray.store.api.check_memory_selector`); the deleted entries."""
        stmt = _t.delete()
        if entry_id is not None:
            stmt = stmt.where(_t.c.entry_id == entry_id)
        if task_id is not None:
            stmt = stmt.where(_t.c.task_id == task_id)
        if tenant is not None:
            stmt = stmt.where(_t.c.tenant == tenant)
        return _entries(conn.execute(stmt.returning(*_WITHOUT_VECTOR)).mappings())

    @staticmethod
    def state(conn: Connection) -> dict[str, MemoryTenantState]:
        query = sa.select(_t.c.tenant, sa.func.count(), sa.func.max(_t.c.seq)).group_by(_t.c.tenant)
        return {
            tenant: MemoryTenantState(int(count), int(max_seq))
            for tenant, count, max_seq in conn.execute(query)
        }
