"""The memory's per-tenant faiss index (:class:`officeray.memory.index.VectorIndex`): exact top-k while
flat, the switch to HNSW past the threshold (recall against exact search), removal with tombstones and
compaction, replacement, the file round trip, and refusal of bad files and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from officeray.memory.index import FILE_MAGIC, TOMBSTONE_COMPACT_FRACTION, VectorIndex

DIM = 32
K = 10


def unit_vectors(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def exact_top(ids: np.ndarray, vectors: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    order = np.argsort(-(vectors @ query), kind="stable")[:k]
    return [int(ids[i]) for i in order]


def filled(n: int, *, threshold: int, seed: int = 1, first_id: int = 1) -> tuple[VectorIndex, np.ndarray]:
    index = VectorIndex(DIM, hnsw_threshold=threshold)
    vectors = unit_vectors(n, seed)
    index.add(np.arange(first_id, first_id + n, dtype=np.int64), vectors)
    return index, vectors


def recall_at_k(index: VectorIndex, ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray) -> float:
    found = 0
    for query in queries:
        truth = set(exact_top(ids, vectors, query, K))
        found += len(truth & {i for i, _ in index.search(query, K)})
    return found / (K * len(queries))


# -- flat ------------------------------------------------------------------------------------------


def test_flat_search_is_exact_top_k_best_first() -> None:
    ids = np.random.default_rng(0).permutation(np.arange(100, 400, dtype=np.int64))
    vectors = unit_vectors(len(ids), seed=2)
    index = VectorIndex(DIM, hnsw_threshold=1_000)
    index.add(ids, vectors)
    assert (index.kind, len(index), index.max_id) == ("flat", 300, 399)
    for query in unit_vectors(20, seed=3):
        hits = index.search(query, K)
        assert [i for i, _ in hits] == exact_top(ids, vectors, query, K)
        scores = [s for _, s in hits]
        assert scores == sorted(scores, reverse=True)
        by_id = dict(zip(ids.tolist(), vectors, strict=True))
        assert scores == pytest.approx([float(by_id[i] @ query) for i, _ in hits], abs=1e-5)


def test_empty_index_small_k_and_k_beyond_the_size() -> None:
    index = VectorIndex(DIM, hnsw_threshold=10)
    query = unit_vectors(1, seed=4)[0]
    assert (len(index), index.max_id, index.ids().tolist()) == (0, 0, [])
    assert index.search(query, K) == []
    index.add(np.array([7, 3], dtype=np.int64), unit_vectors(2, seed=5))
    assert sorted(i for i, _ in index.search(query, 50)) == [3, 7]
    assert index.search(query, 0) == []
    assert index.ids().tolist() == [3, 7]


def test_adding_nothing_changes_nothing() -> None:
    index, _ = filled(5, threshold=10)
    index.add(np.empty(0, dtype=np.int64), np.empty((0, DIM), dtype=np.float32))
    assert len(index) == 5


# -- HNSW ------------------------------------------------------------------------------------------


def test_switches_to_hnsw_past_the_threshold_and_keeps_finding_the_same_vectors() -> None:
    index, first = filled(250, threshold=300)
    assert index.kind == "flat"
    second = unit_vectors(250, seed=8)
    index.add(np.arange(251, 501, dtype=np.int64), second)
    assert (index.kind, len(index), index.max_id) == ("hnsw", 500, 500)
    ids = np.arange(1, 501, dtype=np.int64)
    vectors = np.concatenate([first, second])
    assert recall_at_k(index, ids, vectors, unit_vectors(30, seed=9)) >= 0.95
    # every stored vector, from before the switch and after, finds itself first
    for i in range(0, 500, 25):
        best_id, best_score = index.search(vectors[i], 1)[0]
        assert (best_id, best_score) == (i + 1, pytest.approx(1.0, abs=1e-5))


def test_a_single_add_past_the_threshold_builds_hnsw_directly() -> None:
    index, vectors = filled(400, threshold=100)
    assert index.kind == "hnsw"
    ids = np.arange(1, 401, dtype=np.int64)
    assert recall_at_k(index, ids, vectors, unit_vectors(20, seed=10)) >= 0.95


def test_hnsw_stays_hnsw_on_plain_adds_below_the_threshold() -> None:
    index, _ = filled(150, threshold=100)
    index.remove(range(1, 21))  # 20 of 150 stored: under the compaction fraction
    assert (index.kind, len(index), index.tombstones) == ("hnsw", 130, 20)
    index.add(np.array([1_000], dtype=np.int64), unit_vectors(1, seed=11))
    assert (index.kind, len(index)) == ("hnsw", 131)


# -- remove --------------------------------------------------------------------------------------


def test_remove_on_flat_counts_live_ids_and_they_are_never_returned() -> None:
    index, vectors = filled(50, threshold=100)
    assert index.remove([3, 4, 4, 999]) == 2
    assert index.remove([3]) == 0
    assert len(index) == 48
    for i in (2, 3):  # vectors of ids 3 and 4
        assert {h for h, _ in index.search(vectors[i], 50)} == set(range(1, 51)) - {3, 4}
    assert 3 not in index.ids().tolist()


def test_remove_on_hnsw_filters_tombstones_and_still_answers_k() -> None:
    index, vectors = filled(400, threshold=100)
    gone = list(range(1, 41))  # 10% of what the graph holds: tombstones, no compaction
    assert index.remove(gone) == 40
    assert (index.kind, len(index), index.tombstones) == ("hnsw", 360, 40)
    for i in range(40):
        hits = index.search(vectors[i], K)
        assert len(hits) == K
        assert not {h for h, _ in hits} & set(gone)
    ids = np.arange(41, 401, dtype=np.int64)
    assert recall_at_k(index, ids, vectors[40:], unit_vectors(20, seed=12)) >= 0.95
    assert index.max_id == 400
    index.remove([400])
    assert index.max_id == 399


def test_hnsw_compacts_past_the_tombstone_fraction_and_goes_back_to_flat_when_small() -> None:
    index, vectors = filled(400, threshold=100)
    many = int(TOMBSTONE_COMPACT_FRACTION * 400) + 1
    assert index.remove(range(1, many + 1)) == many
    assert (index.kind, index.tombstones, len(index)) == ("hnsw", 0, 400 - many)
    assert {h for h, _ in index.search(vectors[0], 400)} == set(range(many + 1, 401))
    index.remove(range(many + 1, 351))  # leaves 50 live: compacted into a flat index
    assert (index.kind, index.tombstones, len(index)) == ("flat", 0, 50)
    assert [i for i, _ in index.search(vectors[-1], 1)] == [400]


# -- replace -------------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [1_000, 100], ids=["flat", "hnsw"])
def test_re_adding_an_id_replaces_its_vector(threshold: int) -> None:
    index, vectors = filled(200, threshold=threshold)
    kind = index.kind
    new = unit_vectors(2, seed=13)
    index.add(np.array([5, 6], dtype=np.int64), new)
    assert (index.kind, len(index), index.tombstones) == (kind, 200, 0)
    for id_, vector in zip((5, 6), new, strict=True):
        assert index.search(vector, 1)[0] == (id_, pytest.approx(1.0, abs=1e-5))
    old_best = index.search(vectors[4], 1)[0]  # id 5's old vector
    assert old_best[0] != 5 or old_best[1] < 0.99


def test_re_adding_a_removed_id_on_hnsw() -> None:
    index, _ = filled(200, threshold=100)
    index.remove([9])
    assert index.tombstones == 1
    vector = unit_vectors(1, seed=14)
    index.add(np.array([9], dtype=np.int64), vector)
    assert (len(index), index.tombstones) == (200, 0)
    assert index.search(vector[0], 1)[0] == (9, pytest.approx(1.0, abs=1e-5))


# -- files -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [1_000, 100], ids=["flat", "hnsw"])
def test_save_and_load_round_trip(tmp_path: Path, threshold: int) -> None:
    index, _ = filled(300, threshold=threshold, first_id=10)
    index.remove([10, 11, 12])
    path = tmp_path / "tenants" / "acme.faiss"
    index.save(path)
    loaded = VectorIndex.load(path, hnsw_threshold=threshold)
    assert loaded is not None
    assert (loaded.kind, loaded.dim, len(loaded), loaded.max_id, loaded.tombstones) == (
        index.kind,
        DIM,
        297,
        309,
        index.tombstones,
    )
    assert loaded.ids().tolist() == index.ids().tolist()
    for query in unit_vectors(10, seed=15):
        assert loaded.search(query, K) == index.search(query, K)
    assert [p.name for p in path.parent.iterdir()] == ["acme.faiss"]  # no temporary file left


def test_save_replaces_an_older_file(tmp_path: Path) -> None:
    path = tmp_path / "t.faiss"
    filled(10, threshold=100)[0].save(path)
    index, _ = filled(20, threshold=100, seed=3)
    index.save(path)
    loaded = VectorIndex.load(path, hnsw_threshold=100)
    assert loaded is not None and len(loaded) == 20


def test_load_fits_the_kind_to_a_changed_threshold(tmp_path: Path) -> None:
    index, _ = filled(200, threshold=1_000)
    path = tmp_path / "t.faiss"
    index.save(path)
    as_hnsw = VectorIndex.load(path, hnsw_threshold=100, ef_search=32)
    assert as_hnsw is not None and (as_hnsw.kind, len(as_hnsw)) == ("hnsw", 200)
    as_hnsw.save(path)
    as_flat = VectorIndex.load(path, hnsw_threshold=1_000)
    assert as_flat is not None and (as_flat.kind, len(as_flat)) == ("flat", 200)


def _corrupt(data: bytes, how: str) -> bytes:
    if how == "empty":
        return b""
    if how == "garbage":
        return b"not an index at all" * 10
    if how == "truncated":
        return data[: len(data) // 2]
    if how == "flipped payload byte":
        at = len(data) - 100
        return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
    if how == "bad header json":
        start = len(FILE_MAGIC) + 8
        return data[:start] + b"[" + data[start + 1 :]
    if how == "header disagrees":
        return data.replace(b'"live":40', b'"live":41')
    if how == "huge header length":
        return FILE_MAGIC + (2**62).to_bytes(8, "little") + data[len(FILE_MAGIC) + 8 :]
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    [
        "empty",
        "garbage",
        "truncated",
        "flipped payload byte",
        "bad header json",
        "header disagrees",
        "huge header length",
    ],
)
def test_a_bad_file_loads_as_none(tmp_path: Path, how: str) -> None:
    path = tmp_path / "t.faiss"
    filled(40, threshold=100)[0].save(path)
    data = path.read_bytes()
    bad = _corrupt(data, how)
    assert bad != data
    path.write_bytes(bad)
    assert VectorIndex.load(path, hnsw_threshold=100) is None


def test_a_missing_file_or_a_folder_loads_as_none(tmp_path: Path) -> None:
    assert VectorIndex.load(tmp_path / "missing.faiss", hnsw_threshold=100) is None
    assert VectorIndex.load(tmp_path, hnsw_threshold=100) is None


# -- bad input -------------------------------------------------------------------------------------


def test_bad_dimensions_shapes_and_ids_are_value_errors() -> None:
    index = VectorIndex(DIM, hnsw_threshold=100)
    one = np.array([1], dtype=np.int64)
    with pytest.raises(ValueError, match="shape"):
        index.add(one, unit_vectors(1, seed=1, dim=DIM + 1))
    with pytest.raises(ValueError, match="dimension"):
        index.search(np.ones(DIM + 1, dtype=np.float32), K)
    with pytest.raises(ValueError, match="ids for"):
        index.add(np.array([1, 2], dtype=np.int64), unit_vectors(1, seed=1))
    with pytest.raises(ValueError, match="one-dimensional"):
        index.add(np.array([[1]], dtype=np.int64), unit_vectors(1, seed=1))
    with pytest.raises(ValueError, match="repeats"):
        index.add(np.array([1, 1], dtype=np.int64), unit_vectors(2, seed=1))
    with pytest.raises(ValueError, match="negative"):
        index.add(np.array([-1], dtype=np.int64), unit_vectors(1, seed=1))
    with pytest.raises(ValueError, match="finite"):
        index.add(one, np.full((1, DIM), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="dim"):
        VectorIndex(0, hnsw_threshold=100)
    assert len(index) == 0
