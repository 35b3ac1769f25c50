"""``officeray bench memory`` at a tiny size: the index table (flat against HNSW, recall@10), the JSON
form, argument checks and the pure helpers; the encoder part once with the packaged model (slow)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from cluster import cli
from loadtests import bench_memory


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench", exit_on_error=False)
    bench_memory.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.slow  # builds faiss indexes: CPU-heavy
def test_index_figures_for_flat_and_hnsw_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--sizes", "200", "--queries", "5", "--skip-encoder", "--ef-search", "16,64", "--json"]
    assert bench_memory.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["benchmark"] == "memory"
    assert report["sizes"] == [200]
    [table] = report["tables"]
    rows = table["rows"]
    expected = [
        (data, index) for data in ("uniform", "structured") for index in ("flat", "hnsw ef=16", "hnsw ef=64")
    ]
    assert [(r["data"], r["index"]) for r in rows] == expected
    for row in rows:
        assert row["entries"] == 200
        assert 0 < row["p50_ms"] <= row["p99_ms"]
        assert row["build_s"] > 0
        assert row["file_mib"] * 1024 * 1024 > 200 * bench_memory.DIM * 4  # the vectors themselves
        hnsw = row["index"] != "flat"
        assert (row["recall_at_10"] is not None) == hnsw
        if hnsw:
            assert 0 < row["recall_at_10"] <= 1
    # at efSearch 64 a 200-entry graph is searched almost exhaustively
    assert all(r["recall_at_10"] >= 0.9 for r in rows if r["index"] == "hnsw ef=64")
    assert "encoder" not in report  # --skip-encoder: not loaded


@pytest.mark.slow  # builds faiss indexes: CPU-heavy
def test_officeray_bench_memory_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "memory", "--sizes", "50", "--queries", "3", "--skip-encoder", "--data", "uniform"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "== vector index: flat (exact) against HNSW ==" in out
    header = next(line for line in out.splitlines() if line.startswith("data"))
    assert "recall@10" in header
    assert "encoder:" not in out
    assert cli.main(["bench", "memory", "--config", "/nonexistent/officeray.yaml", "--skip-encoder"]) == 2


def test_arguments_are_checked() -> None:
    args = _parse("--sizes", "10_000,1000,1000", "--data", "structured", "--ef-search", "32")
    assert (args.sizes, args.data, args.ef_search) == ((10_000, 1000), ("structured",), (32,))
    assert _parse().sizes == bench_memory.DEFAULT_SIZES
    for bad in (
        ["--sizes", "0"],
        ["--sizes", str(bench_memory.MAX_SIZE + 1)],
        ["--sizes", "ten"],
        ["--sizes", ","],
        ["--queries", "1"],
        ["--data", "gaussian"],
        ["--ef-search", "0"],
    ):
        with pytest.raises(argparse.ArgumentError):
            _parse(*bad)


def test_recall_and_data_sets() -> None:
    assert bench_memory.recall_at_k([[1, 2], [3, 9]], [[1, 2], [3, 4]]) == 0.75
    with pytest.raises(ValueError):
        bench_memory.recall_at_k([], [])
    for kind in ("uniform", "structured"):
        stored, queries = bench_memory.dataset(kind, 30, 4, seed=1)
        assert stored.shape == (30, bench_memory.DIM) and queries.shape == (4, bench_memory.DIM)
        assert stored.dtype == np.float32
        assert np.allclose(np.linalg.norm(stored, axis=1), 1, atol=1e-5)
    # structured vectors are nearer each other than uniform ones
    uniform, _ = bench_memory.dataset("uniform", 200, 1, seed=2)
    structured, _ = bench_memory.dataset("structured", 200, 1, seed=2)
    assert np.abs(structured @ structured.T).mean() > 2 * np.abs(uniform @ uniform.T).mean()
    texts = bench_memory.task_texts(20)
    assert len(set(texts)) == 20 and texts == bench_memory.task_texts(20)


@pytest.mark.slow
def test_encoder_throughput_with_the_packaged_model(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--sizes", "20", "--queries", "2", "--data", "uniform", "--encoder-texts", "8", "--json"]
    assert bench_memory.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["encoder"]["dim"] == bench_memory.DIM
    encoder_table = next(t for t in report["tables"] if t["title"].startswith("encoder"))
    assert [(r["batch"], r["texts"]) for r in encoder_table["rows"]] == [(1, 8), (64, 8)]
    assert all(r["texts_per_s"] > 0 for r in encoder_table["rows"])
