"""``python -m loadtests.bench_analyzer`` on a tiny generated folder: the printed fields (no timings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtests import bench_analyzer


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg/__init__.py").write_text("")
    (tmp_path / "pkg/main.py").write_text(
        "from pkg.work import process_data\n\n\ndef main():\n    run()\n\n\ndef run():\n    process_data()\n"
    )
    (tmp_path / "pkg/work.py").write_text("def process_data():\n    pass\n")
    (tmp_path / "pkg/other.py").write_text("def process_data():\n    pass\n")
    return tmp_path


def test_prints_files_functions_seconds_memory_and_path(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = bench_analyzer.main([str(folder), "--start", "main", "--end", "process_data", "--repeat", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("run "))
    assert header.split() == ["run", "seconds", "cpu", "s", "files", "functions", "hops"]
    for label in (
        "main -> process_data (run 1)",
        "main -> process_data (run 2)",
        "index only (end to itself)",
    ):
        row = next(line for line in lines if line.startswith(label))
        seconds, cpu_seconds, files, functions = row[len(label) :].split()[:4]
        assert float(seconds) >= 0 and float(cpu_seconds) >= 0 and files == "4" and functions == "4"
    assert "before MiB  peak MiB  growth MiB" in out
    assert "note: path: pkg.main.main (pkg/main.py:4) -> pkg.main.run (pkg/main.py:8) -> " in out
    assert "pkg.work.process_data (pkg/work.py:1)" in out
    assert "also matches pkg.other.process_data (pkg/other.py:1), which main does not reach" in out
    assert "paths found: 1; unreachable candidates: 1" in out
    assert "fits officeray run's staging limits (2000 files, 8 MiB): yes" in out


def test_json_output_and_errors(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        bench_analyzer.main([str(folder), "--start", "main", "--end", "pkg.work.process_data", "--json"]) == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["benchmark"] == "analyzer"
    assert report["result"]["found"] is True and report["result"]["hops"] == 2
    (runs, memory) = report["tables"]
    assert [row["files"] for row in runs["rows"]] == [4, 4]
    assert memory["rows"][0]["peak"] >= memory["rows"][0]["baseline"] > 0
    assert bench_analyzer.main([str(folder), "--start", "nope", "--end", "main"]) == 2
    assert "start_func 'nope' not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_analyzer.main([str(folder), "--repeat", "0"])


def test_the_default_folder_is_the_installed_ray_package() -> None:
    folder = bench_analyzer.default_folder()
    assert folder is not None and (folder / "__init__.py").is_file() and folder.name == "ray"
