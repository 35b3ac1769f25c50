"""The load-test report builder: reading a run folder, the summary's numbers, the plots, the HTML
page, the SLO gate and the ``python -m loadtests.report`` command line, on synthetic run folders."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loadtests import report as rep
from loadtests.records import (
    DEFAULT_STAGE,
    REPORT_HTML,
    REPORT_JSON,
    RUN_FILE,
    SAMPLES_FILE,
    TIMELINE_FILE,
)
from loadtests.slo import parse_slo

REPO = Path(__file__).resolve().parents[2]
START = 1_000_000.0
DURATION = 100.0
SCRIPT = "<script>alert('x')</script>"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _submits() -> list[dict[str, Any]]:
    """100 submissions, one per second, taking 1..100 ms; every 10th failed."""
    samples = []
    for i in range(1, 101):
        sample: dict[str, Any] = {"t": START + i - 1, "type": "POST", "name": "/v1/tasks", "ms": float(i)}
        sample["ok"] = i % 10 != 0
        if not sample["ok"]:
            sample["error"] = "HTTP 503"
        samples.append(sample)
    return samples


def _completions() -> list[dict[str, Any]]:
    """Research tasks: 10 in the ramp (1..10 s), 10 in the peak (11..20 s), 2 of those failed with a
    script as error; one code task ending exactly at the stage boundary (peak) and one after the end."""
    samples = []
    for k in range(1, 21):
        t = START + (5 if k <= 10 else 60) + k * 0.1
        sample: dict[str, Any] = {"t": t, "type": "TASK", "name": "research", "ms": k * 1000.0}
        sample.update(ok=True, status="completed", task_id=f"t{k}")
        if k in (19, 20):
            sample.update(ok=False, status="failed", error=SCRIPT)
        samples.append(sample)
    boundary = {"t": START + 50.0, "type": "TASK", "name": "code", "ms": 500.0, "ok": True}
    late = {"t": START + DURATION + 3, "type": "TASK", "name": "code", "ms": 700.0, "ok": True}
    return [*samples, {**boundary, "status": "completed"}, {**late, "status": "rejected"}]


def _llm() -> list[dict[str, Any]]:
    return [
        {
            "t": START + 1,
            "type": "LLM",
            "name": "e2e",
            "ms": 900.0,
            "ok": True,
            "tokens": 100,
            "tokens_per_s": 50.0,
        },
        {
            "t": START + 2,
            "type": "LLM",
            "name": "e2e",
            "ms": 800.0,
            "ok": True,
            "tokens": 60,
            "tokens_per_s": 70.0,
        },
        {"t": START + 3, "type": "LLM", "name": "ttft", "ms": 90.0, "ok": True},
    ]


STAGES = [
    {"name": "ramp", "start_s": 0.0, "end_s": 50.0, "users": 10, "spawn_rate": 2.0},
    {"name": "peak", "start_s": 50.0, "end_s": DURATION, "users": 20, "spawn_rate": 5.0},
]


def _run_info(**overrides: Any) -> dict[str, Any]:
    info = {
        "started_at": START,
        "ended_at": START + DURATION,
        "host": "http://127.0.0.1:8000",
        "mode": "closed",
        "scenario": "tasks",
        "stand_in_model": True,
        "stages": STAGES,
        "settings": {"users": 20, "spawn_rate": 5.0, "task_mix": "research:1"},
        "traces": {"completeness": 0.9, "checked": 20, "complete": 18},
    }
    info.update(overrides)
    return info


def _ticks(count: int = 101) -> list[dict[str, Any]]:
    return [
        {
            "t": START + i,
            "users": min(i, 20),
            "in_flight": i % 5,
            "submitted": i,
            "completed": i,
            "failures": i // 10,
            "stage": "ramp" if i < 50 else "peak",
        }
        for i in range(count)
    ]


def write_run(
    out: Path,
    samples: list[dict[str, Any]] | None = None,
    ticks: list[dict[str, Any]] | None = None,
    trailer: str = "",
    **info: Any,
) -> Path:
    """A run folder; ``trailer`` is appended to samples.jsonl as is (e.g. a truncated line)."""
    out.mkdir(parents=True, exist_ok=True)
    samples = [*_submits(), *_completions(), *_llm()] if samples is None else samples
    ticks = _ticks() if ticks is None else ticks
    (out / SAMPLES_FILE).write_text("".join(json.dumps(s) + "\n" for s in samples) + trailer)
    (out / TIMELINE_FILE).write_text("".join(json.dumps(t) + "\n" for t in ticks))
    (out / RUN_FILE).write_text(json.dumps(_run_info(**info)))
    return out


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return write_run(tmp_path / "run")


@pytest.fixture
def summary(run_dir: Path) -> dict[str, Any]:
    return rep.summarize(rep.load_run(run_dir))


def _request(report: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
    (entry,) = [r for r in report["requests"] if (r["type"], r["name"]) == (kind, name)]
    return entry


def _stage(report: dict[str, Any], name: str) -> dict[str, Any]:
    (stage,) = [s for s in report["stages"] if s["name"] == name]
    return stage


# --- summary -----------------------------------------------------------------------------------


def test_submit_percentiles_are_exact_with_linear_interpolation(summary: dict[str, Any]) -> None:
    submit = summary["submit"]
    assert submit["count"] == 100
    assert submit["p50_ms"] == pytest.approx(50.5)
    assert submit["p90_ms"] == pytest.approx(90.1)
    assert submit["p95_ms"] == pytest.approx(95.05)
    assert submit["p99_ms"] == pytest.approx(99.01)
    assert submit["max_ms"] == 100.0
    assert submit["mean_ms"] == pytest.approx(50.5)
    assert _request(summary, "POST", "/v1/tasks") == {"type": "POST", "name": "/v1/tasks", **submit}


def test_failures_throughput_and_totals(summary: dict[str, Any]) -> None:
    submit = summary["submit"]
    assert (submit["failures"], submit["failure_rate"]) == (10, pytest.approx(0.1))
    assert submit["throughput_rps"] == pytest.approx(100 / DURATION)
    completion = summary["completion"]
    assert (completion["count"], completion["failures"]) == (22, 2)
    assert completion["throughput_rps"] == pytest.approx(22 / DURATION)
    assert summary["totals"] == {"count": 125, "failures": 12, "failure_rate": pytest.approx(12 / 125)}
    assert summary["task_status"] == {"completed": 19, "failed": 2, "rejected": 1}


def test_requests_are_grouped_by_type_and_name(summary: dict[str, Any]) -> None:
    keys = [(r["type"], r["name"]) for r in summary["requests"]]
    assert keys == sorted(keys)
    assert set(keys) == {
        ("POST", "/v1/tasks"),
        ("TASK", "research"),
        ("TASK", "code"),
        ("LLM", "e2e"),
        ("LLM", "ttft"),
    }
    research = _request(summary, "TASK", "research")
    assert research["p50_ms"] == pytest.approx(10_500.0)
    assert research["max_ms"] == 20_000.0
    code = _request(summary, "TASK", "code")
    assert (code["count"], code["mean_ms"]) == (2, pytest.approx(600.0))


def test_llm_e2e_token_statistics(summary: dict[str, Any]) -> None:
    e2e = _request(summary, "LLM", "e2e")
    assert e2e["tokens_total"] == 160
    assert e2e["tokens_per_s_mean"] == pytest.approx(60.0)
    assert e2e["tokens_per_s_p50"] == pytest.approx(60.0)
    assert "tokens_total" not in _request(summary, "LLM", "ttft")


def test_samples_are_split_by_stage_on_their_end_time(summary: dict[str, Any]) -> None:
    ramp, peak = _stage(summary, "ramp"), _stage(summary, "peak")
    assert (ramp["start_s"], ramp["end_s"], ramp["users"], ramp["spawn_rate"]) == (0.0, 50.0, 10, 2.0)
    assert ramp["submit"]["count"] == peak["submit"]["count"] == 50
    assert ramp["submit"]["p50_ms"] == pytest.approx(25.5)
    assert peak["submit"]["p50_ms"] == pytest.approx(75.5)
    assert ramp["submit"]["failures"] == peak["submit"]["failures"] == 5
    assert ramp["submit"]["throughput_rps"] == pytest.approx(50 / 50.0)
    # 10 research in the ramp; 10 research, the code task at exactly 50 s and the late one in the peak
    assert ramp["completion"]["count"] == 10
    assert peak["completion"]["count"] == 12
    assert (_request(peak, "TASK", "code")["count"], _request(peak, "TASK", "research")["failures"]) == (2, 2)
    assert peak["completion"]["throughput_rps"] == pytest.approx(12 / 50.0)
    assert _request(ramp, "LLM", "e2e")["count"] == 2


def test_a_run_without_stages_has_one_default_stage(tmp_path: Path) -> None:
    run = rep.load_run(write_run(tmp_path / "run", stages=[]))
    (stage,) = rep.summarize(run)["stages"]
    assert (stage["name"], stage["start_s"], stage["end_s"]) == (DEFAULT_STAGE, 0.0, DURATION)
    assert (stage["users"], stage["spawn_rate"]) == (20, 5.0)
    assert stage["submit"]["count"] == 100
    assert stage["submit"]["throughput_rps"] == pytest.approx(1.0)


def test_errors_are_counted_most_frequent_first(summary: dict[str, Any]) -> None:
    assert summary["errors"] == [{"message": "HTTP 503", "count": 10}, {"message": SCRIPT, "count": 2}]


def test_only_the_top_errors_are_listed(tmp_path: Path) -> None:
    samples = [
        {"t": START + 1, "type": "GET", "name": "/x", "ms": 1.0, "ok": False, "error": f"e{i}"}
        for i in range(rep.TOP_ERRORS + 5)
        for _ in range(i + 1)
    ]
    report = rep.summarize(rep.load_run(write_run(tmp_path / "run", samples=samples)))
    assert len(report["errors"]) == rep.TOP_ERRORS
    assert report["errors"][0] == {"message": f"e{rep.TOP_ERRORS + 4}", "count": rep.TOP_ERRORS + 5}


def test_run_section_traces_and_no_samples(tmp_path: Path) -> None:
    report = rep.summarize(rep.load_run(write_run(tmp_path / "run", samples=[])))
    assert report["run"]["duration_s"] == DURATION
    assert report["run"]["stand_in_model"] is True
    assert "stages" not in report["run"] and "traces" not in report["run"]
    assert report["traces"]["checked"] == 20 and report["trace_completeness"] == 0.9
    assert report["submit"] is None and report["completion"] is None and report["requests"] == []
    assert report["totals"] == {"count": 0, "failures": 0, "failure_rate": None}


# --- reading -----------------------------------------------------------------------------------


def test_a_truncated_last_line_is_skipped_with_a_warning(tmp_path: Path) -> None:
    run = rep.load_run(write_run(tmp_path / "run", trailer='{"t": 1000001.5, "type": "PO'))
    assert len(run.samples) == 125
    assert run.warnings == [f"{SAMPLES_FILE}:126: truncated last line skipped"]
    assert rep.summarize(run)["warnings"] == run.warnings


def test_a_bad_line_before_the_last_is_an_error(tmp_path: Path) -> None:
    out = write_run(tmp_path / "run")
    lines = (out / SAMPLES_FILE).read_text().splitlines()
    lines[3] = "{broken"
    (out / SAMPLES_FILE).write_text("\n".join(lines) + "\n")
    with pytest.raises(rep.ReportError, match=rf"{SAMPLES_FILE}:4: not JSON"):
        rep.load_run(out)


@pytest.mark.parametrize("missing", [SAMPLES_FILE, TIMELINE_FILE, RUN_FILE])
def test_a_missing_file_is_a_report_error(tmp_path: Path, missing: str) -> None:
    out = write_run(tmp_path / "run")
    (out / missing).unlink()
    with pytest.raises(rep.ReportError, match=rf"{missing}: missing"):
        rep.load_run(out)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"started_at": START}), "ended_at"),
        (json.dumps({"started_at": START, "ended_at": START - 1}), "before started_at"),
        (json.dumps({"started_at": START, "ended_at": START + 1, "stages": [{"name": "a"}]}), "stages[0]"),
    ],
)
def test_a_corrupt_run_json_is_a_report_error(tmp_path: Path, content: str, fragment: str) -> None:
    out = write_run(tmp_path / "run")
    (out / RUN_FILE).write_text(content)
    with pytest.raises(rep.ReportError, match=re.escape(fragment)):
        rep.load_run(out)


def test_a_sample_with_a_missing_field_is_a_report_error(tmp_path: Path) -> None:
    out = write_run(
        tmp_path / "run", samples=[{"t": START, "type": "GET", "name": "/x", "ok": True}, *_llm()]
    )
    with pytest.raises(rep.ReportError, match=rf"{SAMPLES_FILE}:1: missing or invalid field\(s\): ms"):
        rep.load_run(out)


def test_a_missing_folder_is_a_report_error(tmp_path: Path) -> None:
    with pytest.raises(rep.ReportError, match="no such folder"):
        rep.load_run(tmp_path / "nope")


# --- plots and HTML ----------------------------------------------------------------------------


def _assert_pngs(paths: list[Path], out: Path) -> None:
    assert [p.name for p in paths] == list(rep.PLOT_NAMES)
    for path in paths:
        assert path.parent == out
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC)
        assert len(data) > 5_000


@pytest.mark.slow
def test_plots_are_valid_pngs(run_dir: Path) -> None:
    _assert_pngs(rep.write_plots(rep.load_run(run_dir), run_dir), run_dir)


def test_plots_of_an_empty_run_show_no_data(tmp_path: Path) -> None:
    out = write_run(tmp_path / "run", samples=[], ticks=[], stages=[])
    _assert_pngs(rep.write_plots(rep.load_run(out), out), out)


def test_a_long_run_is_bucketed_to_at_most_max_plot_points(tmp_path: Path) -> None:
    samples = [
        {"t": START + i, "type": "POST", "name": "/v1/tasks", "ms": 5.0, "ok": True}
        for i in range(0, 3600, 3)
    ]
    out = write_run(tmp_path / "run", samples=samples, ticks=_ticks(3601), ended_at=START + 3600)
    run = rep.load_run(out)
    buckets = rep._bucket(run)
    assert buckets.count <= rep.MAX_PLOT_POINTS
    assert buckets.width == pytest.approx(3600 / rep.MAX_PLOT_POINTS)
    assert sum(len(group) for group in buckets.groups.values()) == len(samples)
    assert sum(buckets.rate(lambda s: True)) * buckets.width == pytest.approx(len(samples))
    _assert_pngs(rep.write_plots(run, out), out)


def test_html_has_the_tables_and_escapes_text_from_the_run(run_dir: Path) -> None:
    report, _ = rep.build_report(run_dir, [parse_slo("completion.p95_ms <= 30000")])
    page = (run_dir / REPORT_HTML).read_text()
    assert SCRIPT not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    for heading in ("SLOs", "Requests", "Stages", "Task status", "Traces", "Errors", "Run"):
        assert f"<h2>{heading}</h2>" in page
    assert page.count("<table>") >= 6
    assert "/v1/tasks" in page and "ramp" in page and "peak" in page
    assert "stand-in" in page and "settings.task_mix" in page
    assert "Complete traces: 90.0%" in page
    assert "completion.p95_ms &lt;= 30000" in page and "PASSED" in page
    assert page.count('src="data:image/png;base64,') == len(rep.PLOT_NAMES)


# --- building and gating -----------------------------------------------------------------------


def test_build_report_writes_json_plots_and_html(run_dir: Path) -> None:
    slos = [parse_slo("submit.p99_ms <= 100"), parse_slo("run.trace_completeness >= 0.95")]
    report, results = rep.build_report(run_dir, slos)
    assert [r.ok for r in results] == [True, False]
    assert results[1].value == pytest.approx(0.9)
    written = json.loads((run_dir / REPORT_JSON).read_text())
    assert written == json.loads(json.dumps(report))
    assert written["passed"] is False
    assert [s["ok"] for s in written["slos"]] == [True, False]
    assert set(written) >= {
        "run",
        "requests",
        "submit",
        "completion",
        "stages",
        "task_status",
        "traces",
        "errors",
    }
    for name in (*rep.PLOT_NAMES, REPORT_HTML):
        assert (run_dir / name).is_file()


def test_build_report_without_slos_passes(run_dir: Path) -> None:
    report, results = rep.build_report(run_dir)
    assert results == [] and report["passed"] is True and report["slos"] == []


@pytest.mark.parametrize(
    ("slos", "code"),
    [
        ([], 0),
        (["completion.p95_ms <= 30000", "submit.failure_rate <= 0.1"], 0),
        (["completion.p95_ms <= 30000", "submit.failure_rate < 0.1"], 1),
        (["completion[nonexistent].count >= 0"], 1),
    ],
)
def test_main_exit_codes(
    run_dir: Path, slos: list[str], code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(run_dir)]
    for slo in slos:
        argv += ["--slo", slo]
    assert rep.main(argv) == code
    out = capsys.readouterr().out
    assert out.count("PASS") + out.count("FAIL") == len(slos)


def test_main_reads_an_slo_file(run_dir: Path, tmp_path: Path) -> None:
    slo_file = tmp_path / "slos.yaml"
    slo_file.write_text("slos:\n  - run.failures <= 0\n")
    assert rep.main([str(run_dir), "--slo", "submit.count >= 100", "--slo-file", str(slo_file)]) == 1
    assert [s["expr"] for s in json.loads((run_dir / REPORT_JSON).read_text())["slos"]] == [
        "submit.count >= 100",
        "run.failures <= 0",
    ]


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--slo", "completion.p95 <= 3"], "unknown metric 'p95'"),
        (["--slo-file", "/nonexistent/slos.yaml"], "cannot read SLO file"),
    ],
)
def test_main_bad_input_exits_2_with_one_line(
    run_dir: Path, extra: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert rep.main([str(run_dir), *extra]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1
    assert not (run_dir / REPORT_JSON).exists()


@pytest.mark.slow
def test_cli_module_exit_codes_without_traceback(run_dir: Path, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "loadtests.report", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )

    ok = run(str(run_dir), "--slo", "submit.p50_ms <= 60")
    assert ok.returncode == 0, ok.stderr
    violated = run(str(run_dir), "--slo", "submit.p50_ms<50")
    assert violated.returncode == 1 and "FAIL" in violated.stdout
    for bad in ([str(tmp_path / "missing")], [str(run_dir), "--slo", "nonsense"], []):
        result = run(*bad)
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert result.stderr.count("\n") == 1
