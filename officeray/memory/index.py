"""One tenant's vectors in a faiss index: exact while small, HNSW past a threshold.

A :class:`VectorIndex` maps int64 ids (the store's ``seq`` of each memory entry) to L2-normalised
float32 vectors and answers the ``k`` nearest by inner product (the cosine similarity of normalised
vectors). It is an ``IndexIDMap2`` over

* ``IndexFlatIP`` (kind ``"flat"``): exact, while the index holds at most ``hnsw_threshold`` vectors;
* ``IndexHNSWFlat`` with ``METRIC_INNER_PRODUCT`` (kind ``"hnsw"``): approximate, once it holds more.
  It is built from the flat index's own vectors when an :meth:`~VectorIndex.add` crosses the
  threshold.

HNSW cannot delete: a removed id becomes a *tombstone*, filtered out inside the graph search (an
``IDSelectorNot`` in the search parameters, so ``k`` live hits still come back), and the index is
rebuilt from its live vectors once tombstones pass :data:`TOMBSTONE_COMPACT_FRACTION` of what it
stores. Re-adding an id that the HNSW graph still holds (live or tombstoned) rebuilds it the same way,
so an id is never stored twice. A rebuild picks the kind again from the live count; a plain add to an
HNSW index keeps it HNSW (no flip-flopping around the threshold).

:meth:`~VectorIndex.save` writes one file atomically (a temporary file, then ``os.replace``): a magic
line, a JSON header (kind, dimension, counts, tombstones, the payload's SHA-256) and the
``faiss.serialize_index`` bytes. :meth:`~VectorIndex.load` answers None for a missing, unreadable,
corrupt or inconsistent file (the caller rebuilds from the store) and never raises for one.

Not thread-safe: the caller serialises calls on one index.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np

__all__ = [
    "FILE_FORMAT_VERSION",
    "FILE_MAGIC",
    "TOMBSTONE_COMPACT_FRACTION",
    "IndexKind",
    "VectorIndex",
]

logger = logging.getLogger(__name__)

IndexKind = Literal["flat", "hnsw"]

TOMBSTONE_COMPACT_FRACTION = 0.2
"""An HNSW index is rebuilt from its live vectors once more than this fraction of the vectors it stores
are tombstones (removed ids still in the graph): filtered searches slow down and lose recall as the
graph fills with dead nodes, and a rebuild costs about as much as building it anew."""

FILE_MAGIC = b"OFFICERAY-VECTOR-INDEX\n"
"""First bytes of an index file."""
FILE_FORMAT_VERSION = 1
"""Version of the file layout (magic, header length, JSON header, faiss payload)."""
HEADER_LENGTH_BYTES = 8
"""The JSON header's length, little-endian unsigned, right after the magic."""
MAX_HEADER_BYTES = 64 * 1024 * 1024
"""Largest JSON header a file may declare (it holds the tombstone list); more means a corrupt file."""

DEFAULT_HNSW_M = 32
DEFAULT_EF_CONSTRUCTION = 80
DEFAULT_EF_SEARCH = 64

NO_RESULT = -1
"""The label faiss returns when it has fewer than ``k`` results."""


def _inner(index: Any) -> Any:
    """The index an ``IndexIDMap2`` wraps, as its concrete faiss type."""
    return faiss.downcast_index(index.index)


def _as_ids(ids: Iterable[int] | np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.fromiter((int(i) for i in ids), dtype=np.int64))


class VectorIndex:
    """One tenant's vectors; ids are int64 (the store's seq)."""

    def __init__(
        self,
        dim: int,
        *,
        hnsw_threshold: int,
        hnsw_m: int = DEFAULT_HNSW_M,
        ef_construction: int = DEFAULT_EF_CONSTRUCTION,
        ef_search: int = DEFAULT_EF_SEARCH,
    ) -> None:
        if dim < 1:
            raise ValueError(f"dim must be at least 1, not {dim}")
        if hnsw_threshold < 0:
            raise ValueError(f"hnsw_threshold must not be negative, not {hnsw_threshold}")
        if hnsw_m < 2 or ef_construction < 1 or ef_search < 1:
            raise ValueError(
                f"bad HNSW parameters: M={hnsw_m}, efConstruction={ef_construction}, efSearch={ef_search}"
            )
        self.dim = dim
        self.hnsw_threshold = hnsw_threshold
        self.hnsw_m = hnsw_m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.kind: IndexKind = "flat"
        self._index: Any = self._new_index("flat")
        self._live: set[int] = set()
        self._tombstones: set[int] = set()
        self._selector: tuple[Any, Any, np.ndarray] | None = None
        """(IDSelectorNot, the IDSelectorBatch it negates, the ids array) while there are tombstones;
        kept together because the faiss selectors only point at each other and at the array."""

    # -- what it holds ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._live)

    @property
    def max_id(self) -> int:
        """The largest live id (0 when empty)."""
        return max(self._live, default=0)

    @property
    def tombstones(self) -> int:
        """Removed ids the HNSW graph still holds (always 0 for a flat index)."""
        return len(self._tombstones)

    def ids(self) -> np.ndarray:
        """The live ids, ascending (int64)."""
        return np.array(sorted(self._live), dtype=np.int64)

    def __contains__(self, id_: object) -> bool:
        return id_ in self._live

    def __repr__(self) -> str:
        return (
            f"VectorIndex(kind={self.kind!r}, dim={self.dim}, live={len(self)}, tombstones={self.tombstones})"
        )

    # -- changes -------------------------------------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add ``vectors`` (``(n, dim)`` float32) under ``ids`` (``(n,)`` int64, each at least 0).

        An id already live is replaced. Past ``hnsw_threshold`` live vectors a flat index becomes HNSW
        (built from its own vectors and these). ValueError for a shape, dimension or id that does not fit.
        """
        ids_arr, vecs = self._checked(ids, vectors)
        if len(ids_arr) == 0:
            return
        new_ids = {int(i) for i in ids_arr}
        replaced = new_ids & self._live
        total = len(self._live) + len(new_ids) - len(replaced)
        if self.kind == "flat" and self._kind_for(total) == "hnsw":
            self._rebuild(extra=(ids_arr, vecs))
            return
        if self.kind == "hnsw" and (replaced or new_ids & self._tombstones):
            # the graph cannot drop the old vectors of these ids: rebuild without them
            self._rebuild(extra=(ids_arr, vecs))
            return
        if replaced:
            self._index.remove_ids(_as_ids(replaced))
        self._index.add_with_ids(vecs, ids_arr)
        self._live |= new_ids

    def remove(self, ids: Iterable[int]) -> int:
        """Remove ``ids``; how many of them were live (the others are ignored)."""
        gone = {int(i) for i in ids} & self._live
        if not gone:
            return 0
        self._live -= gone
        if self.kind == "flat":
            self._index.remove_ids(_as_ids(gone))
            return len(gone)
        self._tombstones |= gone
        self._selector = None
        if len(self._tombstones) > TOMBSTONE_COMPACT_FRACTION * self._index.ntotal:
            self._rebuild()
        return len(gone)

    # -- search --------------------------------------------------------------------------------------

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The ``k`` live vectors with the largest inner product with ``vector``, best first, as
        ``(id, inner product)``; fewer when the index holds fewer. ValueError for a wrong dimension."""
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, -1)
        if query.shape[1] != self.dim:
            raise ValueError(f"query has dimension {query.shape[1]}, the index {self.dim}")
        k = min(k, len(self._live))
        if k <= 0:
            return []
        if self.kind == "flat":
            scores, labels = self._index.search(query, k)
        else:
            scores, labels = self._index.search(query, k, params=self._hnsw_params(k))
        return [
            (int(label), float(score))
            for label, score in zip(labels[0], scores[0], strict=True)
            if label != NO_RESULT
        ]

    def _hnsw_params(self, k: int) -> Any:
        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # absent from faiss's stubs
        params.efSearch = max(self.ef_search, k)
        if self._tombstones:
            if self._selector is None:
                dead = _as_ids(self._tombstones)
                batch = faiss.IDSelectorBatch(len(dead), faiss.swig_ptr(dead))
                self._selector = (faiss.IDSelectorNot(batch), batch, dead)
            params.sel = self._selector[0]
        return params

    # -- files ---------------------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write the index to ``path`` atomically (creating its folder)."""
        payload = faiss.serialize_index(self._index).tobytes()
        header = {
            "format": FILE_FORMAT_VERSION,
            "kind": self.kind,
            "dim": self.dim,
            "ntotal": int(self._index.ntotal),
            "live": len(self._live),
            "tombstones": sorted(self._tombstones),
            "sha256": hashlib.sha256(payload).hexdigest(),
        }
        head = json.dumps(header, separators=(",", ":")).encode()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(FILE_MAGIC)
                out.write(len(head).to_bytes(HEADER_LENGTH_BYTES, "little"))
                out.write(head)
                out.write(payload)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        hnsw_threshold: int,
        hnsw_m: int = DEFAULT_HNSW_M,
        ef_construction: int = DEFAULT_EF_CONSTRUCTION,
        ef_search: int = DEFAULT_EF_SEARCH,
    ) -> VectorIndex | None:
        """The index saved at ``path``; None when it is missing, unreadable, corrupt or inconsistent.

        A file whose kind no longer suits ``hnsw_threshold`` (the setting changed) is rebuilt to fit.
        """
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning("memory index %s unreadable (%s): it will be rebuilt", path, exc)
            return None
        try:
            return cls._from_bytes(
                data,
                hnsw_threshold=hnsw_threshold,
                hnsw_m=hnsw_m,
                ef_construction=ef_construction,
                ef_search=ef_search,
            )
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            logger.warning("memory index %s is not usable (%s): it will be rebuilt", path, exc)
            return None

    @classmethod
    def _from_bytes(cls, data: bytes, **settings: Any) -> VectorIndex:
        if not data.startswith(FILE_MAGIC):
            raise ValueError("not an index file")
        start = len(FILE_MAGIC) + HEADER_LENGTH_BYTES
        head_len = int.from_bytes(data[len(FILE_MAGIC) : start], "little")
        if not 0 < head_len <= min(MAX_HEADER_BYTES, len(data) - start):
            raise ValueError("bad header length")
        header = json.loads(data[start : start + head_len])
        payload = data[start + head_len :]
        if header["format"] != FILE_FORMAT_VERSION:
            raise ValueError(f"file format {header['format']}, expected {FILE_FORMAT_VERSION}")
        if hashlib.sha256(payload).hexdigest() != header["sha256"]:
            raise ValueError("checksum mismatch")
        index = faiss.deserialize_index(np.frombuffer(payload, dtype=np.uint8))
        kind, dim = header["kind"], int(header["dim"])
        expected: type[Any] | None = {"flat": faiss.IndexFlatIP, "hnsw": faiss.IndexHNSWFlat}.get(kind)
        if expected is None or not isinstance(index, faiss.IndexIDMap2):
            raise ValueError(f"unexpected index type {type(index).__name__} ({kind})")
        inner = _inner(index)
        if not isinstance(inner, expected) or inner.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError(f"unexpected inner index {type(inner).__name__} for kind {kind}")
        stored = faiss.vector_to_array(index.id_map).astype(np.int64)
        stored_set = set(stored.tolist())
        tombstones = {int(i) for i in header["tombstones"]}
        live = stored_set - tombstones
        consistent = (
            index.d == dim
            and index.ntotal == len(stored) == int(header["ntotal"])
            and len(stored_set) == len(stored)
            and tombstones <= stored_set
            and len(live) == int(header["live"])
            and (kind == "hnsw" or not tombstones)
        )
        if not consistent:
            raise ValueError("header and index disagree")
        loaded = cls(dim, **settings)
        loaded.kind = kind
        loaded._index = index
        loaded._live = live
        loaded._tombstones = tombstones
        if kind == "hnsw":
            inner.hnsw.efSearch = loaded.ef_search
            inner.hnsw.efConstruction = loaded.ef_construction
        if kind != loaded._kind_for(len(live)) or len(tombstones) > TOMBSTONE_COMPACT_FRACTION * index.ntotal:
            loaded._rebuild()
        return loaded

    # -- internals -----------------------------------------------------------------------------------

    def _kind_for(self, count: int) -> IndexKind:
        return "hnsw" if count > self.hnsw_threshold else "flat"

    def _new_index(self, kind: IndexKind) -> Any:
        if kind == "flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        inner = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = self.ef_construction
        inner.hnsw.efSearch = self.ef_search
        return faiss.IndexIDMap2(inner)

    def _checked(self, ids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids_arr = np.ascontiguousarray(ids, dtype=np.int64)
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        if ids_arr.ndim != 1:
            raise ValueError(f"ids must be one-dimensional, not of shape {ids_arr.shape}")
        if vecs.ndim != 2 or vecs.shape[1] != self.dim:
            raise ValueError(f"vectors must have shape (n, {self.dim}), not {vecs.shape}")
        if len(vecs) != len(ids_arr):
            raise ValueError(f"{len(ids_arr)} ids for {len(vecs)} vectors")
        if len(ids_arr) and int(ids_arr.min()) < 0:
            raise ValueError("ids must not be negative")
        if len(np.unique(ids_arr)) != len(ids_arr):
            raise ValueError("an id repeats within one add")
        if not np.isfinite(vecs).all():
            raise ValueError("vectors must be finite")
        return ids_arr, vecs

    def _live_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """The live ids and their vectors, in storage order."""
        total = int(self._index.ntotal)
        stored = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        vectors = _inner(self._index).reconstruct_n(0, total) if total else np.empty((0, self.dim))
        keep = ~np.isin(stored, _as_ids(self._tombstones))
        return stored[keep], np.asarray(vectors, dtype=np.float32)[keep]

    def _rebuild(self, extra: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """A new index of the live vectors plus ``extra`` (which replace live ones of the same ids),
        of the kind that suits the resulting count; no tombstones."""
        ids, vectors = self._live_vectors()
        if extra is not None:
            extra_ids, extra_vectors = extra
            keep = ~np.isin(ids, extra_ids)
            ids = np.concatenate([ids[keep], extra_ids])
            vectors = np.concatenate([vectors[keep], extra_vectors])
        kind = self._kind_for(len(ids))
        index = self._new_index(kind)
        if len(ids):
            index.add_with_ids(np.ascontiguousarray(vectors), np.ascontiguousarray(ids))
        self.kind = kind
        self._index = index
        self._live = {int(i) for i in ids}
        self._tombstones = set()
        self._selector = None
