"""``officeray loadtest`` end to end: a short bounded run, as a user types it.

One run starts its own system (no ``--host``); the others drive the package's running stack over
HTTP, with locust's distributed mode, a staged shape, the open loop and an SLO that fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cluster.runtime import LocalStack
from tests.integration.conftest import REPO, require_docker

pytestmark = [pytest.mark.integration, pytest.mark.load]

LOADTEST_TIMEOUT_S = 300
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _loadtest(
    *args: str, key: str | None = None, model_key: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``officeray loadtest ARGS``; ``key`` (a running server's API key) as ``$OFFICERAY_API_KEY``,
    ``model_key`` (the model endpoint's key, for ``--scenario model``) as ``$OPENAI_API_KEY``."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if key is not None:
        env["OFFICERAY_API_KEY"] = key
    if model_key is not None:
        env["OPENAI_API_KEY"] = model_key
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", "loadtest", "--quiet", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=LOADTEST_TIMEOUT_S,
        check=False,
    )


def _report(out: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    return report


def _host(stack: LocalStack) -> str:
    return f"http://127.0.0.1:{stack.settings.serve.port}"


def test_loadtest_starts_its_own_system_and_writes_the_report(tmp_path: Path) -> None:
    require_docker()
    out = tmp_path / "run"
    proc = _loadtest("--users", "8", "--spawn-rate", "8", "--duration", "8", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = _report(out)
    assert report["passed"] is True
    assert report["run"]["stand_in_model"] is True  # the embedded tier's latency model
    assert report["submit"]["count"] > 0 and report["submit"]["failures"] == 0
    completion = report["completion"]
    assert completion["count"] > 0 and completion["failures"] == 0
    kinds = {r["name"] for r in report["requests"] if r["type"] == "TASK"}
    assert "parallel_waits" in kinds
    # two parallel 0.5 s waits plus model time: never faster than the waits themselves
    waits = next(r for r in report["requests"] if r["type"] == "TASK" and r["name"] == "parallel_waits")
    assert waits["p50_ms"] >= 500
    assert report["traces"]["checked"] == report["task_status"]["completed"]
    assert report["traces"]["completeness"] == 1.0
    for name in ("latency.png", "throughput.png", "users.png", "failures.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    html = (out / "report.html").read_text()
    assert "parallel_waits" in html and "data:image/png;base64" in html
    assert "completion" in proc.stdout and "SLO ok" in proc.stdout


def test_distributed_staged_run_splits_the_report_by_stage(
    stack: LocalStack, admin_key: str, tmp_path: Path
) -> None:
    out = tmp_path / "spike"
    proc = _loadtest(
        "--host", _host(stack),
        "--workers", "2",
        "--shape", "spike:base_users=2,spike_users=6,base_duration_s=3,spike_duration_s=3,after_duration_s=3",
        "--slo", "completion.failure_rate<=0",
        "--slo", "run.trace_completeness>=1",
        "--out", str(out),
        key=admin_key,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = _report(out)
    assert [s["name"] for s in report["stages"]] == ["base", "spike", "recovery"]
    assert [s["users"] for s in report["stages"]] == [2, 6, 2]
    assert all(s["completion"] and s["completion"]["count"] > 0 for s in report["stages"])
    assert report["run"]["settings"]["workers"] == 2
    timeline = [json.loads(line) for line in (out / "timeline.jsonl").read_text().splitlines()]
    assert max(t["users"] for t in timeline) == 6  # the spike, over both workers


def test_open_loop_run_and_a_violated_slo_exits_1(stack: LocalStack, admin_key: str, tmp_path: Path) -> None:
    out = tmp_path / "open"
    proc = _loadtest(
        "--host", _host(stack),
        "--users", "4", "--spawn-rate", "4", "--duration", "5",
        "--arrival-rate", "4",
        "--slo", "completion.p50_ms<=1",
        "--out", str(out),
        key=admin_key,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = _report(out)
    assert report["run"]["mode"] == "open"
    assert report["passed"] is False
    assert report["completion"]["count"] >= 5  # ~4 tasks/s for 5 s, whatever their latency
    assert "SLO FAIL completion.p50_ms<=1" in proc.stdout


def test_model_scenario_measures_the_chat_endpoint(stack: LocalStack, admin_key: str, tmp_path: Path) -> None:
    out = tmp_path / "llm"
    proc = _loadtest(
        "--scenario", "model",
        "--host", _host(stack),
        "--users", "2", "--spawn-rate", "2", "--duration", "4",
        "--slo", "request[LLM e2e].failures<=0",
        "--out", str(out),
        model_key=admin_key,  # the gateway's chat route is the model endpoint here
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = _report(out)
    assert report["run"]["scenario"] == "model"
    by_name = {r["name"]: r for r in report["requests"] if r["type"] == "LLM"}
    assert set(by_name) >= {"ttft", "e2e"}
    assert by_name["e2e"]["count"] > 0 and by_name["e2e"]["failures"] == 0
    assert by_name["ttft"]["p50_ms"] <= by_name["e2e"]["p50_ms"]
    assert by_name["e2e"].get("tokens_total", 0) > 0
