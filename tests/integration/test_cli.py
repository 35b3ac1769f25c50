"""The commands a user types, as subprocesses: ``officeray run`` and the batch job entrypoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, bearer, create_key, require_docker

pytestmark = pytest.mark.integration

CLI_TIMEOUT_S = 240


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["OFFICERAY_STORE__URL"] = f"sqlite:///{tmp_path}/cli.db"
    env["OFFICERAY_TELEMETRY__TRACE_FILE"] = str(tmp_path / "traces.jsonl")
    env["OFFICERAY_RUNNERS__COUNT"] = "2"
    env["OFFICERAY_AUTH__ADMIN_KEY_FILE"] = str(tmp_path / "admin.key")
    # these are the CLI's tests; the memory (its encoder costs a cold start ~8 s on 2 CPUs) has its own
    env["OFFICERAY_MEMORY__ENABLED"] = "false"
    return env


def _officeray(*args: str, tmp_path: Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("officeray")
    return subprocess.run(
        [str(exe), *args],
        cwd=cwd,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def test_run_json_prints_exactly_one_record_and_exits_0(tmp_path: Path) -> None:
    require_docker()
    proc = _officeray(
        "run",
        "Trace the call sequence from main to process_data in examples/sample_project",
        "--json",
        tmp_path=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout)  # the whole of stdout is one JSON object
    assert record["status"] == "completed" and record["iterations"] == 1
    assert record["trace_id"] and record["task_id"].startswith("task-")
    (step,) = record["steps"]
    assert step["action"] == "code_analyzer" and step["status"] == "succeeded" and step["attempts"] == 1
    assert step["output"]["found"] is True
    assert record["result"]["path"][-1].startswith("app.processing.core.process_data")


def test_run_takes_an_absolute_folder_from_another_cwd(tmp_path: Path) -> None:
    """The folder a user names is theirs: no need to cd into the workspace first."""
    require_docker()
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    project = REPO / "examples" / "sample_project"
    proc = _officeray(
        "run",
        f"Trace the call sequence from main to process_data in {project}",
        "--json",
        tmp_path=tmp_path,
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout)
    assert record["status"] == "completed", record["error"]
    (step,) = record["steps"]
    assert step["output"]["found"] is True and step["output"]["hops"] == 5
    assert record["result"]["path"][-1].startswith("app.processing.core.process_data")


def test_run_exits_1_when_the_task_fails(tmp_path: Path) -> None:
    require_docker()
    proc = _officeray("run", "What is 1 / 0?", "--json", tmp_path=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    record = json.loads(proc.stdout)
    assert record["status"] == "failed" and "zero" in record["error"]


def test_batch_job_writes_one_record_per_task_in_order(tmp_path: Path) -> None:
    require_docker()
    tasks = tmp_path / "tasks.jsonl"
    lines = ["Compute 1 + 1", "What is 3 * 3?", "Book me a flight", "Calculate 10 / 4"]
    tasks.write_text("".join(json.dumps({"description": t}) + "\n" for t in lines))
    out = tmp_path / "out" / "results.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.jobs.batch", str(tasks), "--out", str(out)],
        cwd=REPO,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]  # one task cannot be planned
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["description"] for r in records] == lines
    assert [r["status"] for r in records] == ["completed", "completed", "failed", "completed"]
    assert [r["result"] for r in records if r["status"] == "completed"] == [2, 9, 2.5]
    assert "3 completed, 1 failed" in proc.stdout


def test_serve_answers_http_until_stopped(tmp_path: Path) -> None:
    require_docker()
    import signal
    import socket
    import time

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = Path(sys.executable).with_name("officeray")
    proc = subprocess.Popen(
        [str(exe), "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + CLI_TIMEOUT_S
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        auth = bearer(create_key(f"sqlite:///{tmp_path}/cli.db"))
        created = httpx.post(
            f"{base}/v1/tasks", json={"description": "Calculate 40 + 2"}, headers=auth, timeout=10
        )
        assert created.status_code == 202
        task_id = created.json()["task_id"]
        while time.monotonic() < deadline:
            body = httpx.get(f"{base}/v1/tasks/{task_id}", headers=auth, timeout=10).json()
            if body["status"] in ("completed", "failed"):
                break
            time.sleep(0.2)
        assert body["status"] == "completed" and body["result"] == 42
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0


def test_tool_runs_in_the_docker_sandbox_like_a_step(tmp_path: Path) -> None:
    require_docker()
    code = "import os, socket\nprint(os.getuid())\nsocket.create_connection(('127.0.0.1', 9), timeout=1)"
    proc = _officeray(
        "tool", "python_exec", "--input", json.dumps({"code": code}), "--json", tmp_path=tmp_path
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["status"] == "failed" and result["error"]["type"] == "tool_error"
    assert result["output"]["stdout"].strip() == "65534"  # the sandbox user, not root
    assert "Network is unreachable" in result["output"]["stderr"] or "Errno" in result["output"]["stderr"]


def test_bench_sandbox_reports_the_three_ways_and_the_ratios(tmp_path: Path) -> None:
    require_docker()
    proc = _officeray("bench", "sandbox", "--calls", "20", "--run-calls", "2", "--json", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert set(report["measures"]) == {"ping", "warm", "exec", "run"}
    assert report["measures"]["warm"]["n"] == 20 and report["measures"]["run"]["n"] == 2
    assert set(report["ratios_p50"]) == {"exec_over_warm", "run_over_warm"}
    assert isinstance(report["targets"]["met"], bool)
