"""``python -m loadtests.bench_store`` on SQLite: both writes timed, as text and as JSON (no figures
checked but their presence)."""

from __future__ import annotations

import json

import pytest

from loadtests import bench_store


def test_prints_p50_and_p95_of_each_write(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_store.main(["--transitions", "5"]) == 0
    out = capsys.readouterr().out
    assert "store write cost per task transition" in out
    assert "note: 5 transitions timed per row" in out
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("backend"))
    assert header.split() == ["backend", "write", "p50", "ms", "p95", "ms"]
    for write in ("save_task + append_event", "save_transition"):
        row = next(line for line in lines if write in line)
        p50, p95 = (float(figure) for figure in row.split(write, 1)[1].split())
        assert 0 < p50 <= p95


def test_json_output_and_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_store.main(["--transitions", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["benchmark"] == "store"
    table, together = report["tables"]
    assert [(row["backend"], row["write"]) for row in table["rows"]] == [
        ("sqlite (file, WAL)", "save_task + append_event"),
        ("sqlite (file, WAL)", "save_transition"),
    ]
    [concurrent] = together["rows"]  # many tasks at once: what the group committer batches
    assert concurrent["backend"] == "sqlite (file, WAL)"
    assert concurrent["cpu_ms"] > 0 and concurrent["per_s"] > 0
    with pytest.raises(SystemExit):
        bench_store.main(["--transitions", "1"])
