"""``officeray run --address`` against a real ``officeray serve``: the task runs on the server, the
command starts no Ray, so a second task costs well under a second; an unreachable address exits 1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import REPO, free_port

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 240
STOP_TIMEOUT_S = 60
CLI_TIMEOUT_S = 120
SECOND_RUN_LIMIT_S = 5.0
"""A second ``run --address`` must finish within this (it is well under a second here; the margin
keeps a loaded machine from failing the test)."""
TASK = "Trace the call sequence from main to process_data in examples/sample_project"
OFFICERAY = str(Path(sys.executable).with_name("officeray"))


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["OFFICERAY_STORE__URL"] = f"sqlite:///{tmp_path}/remote.db"
    env["OFFICERAY_TELEMETRY__TRACE_FILE"] = str(tmp_path / "traces.jsonl")
    env["OFFICERAY_RUNNERS__COUNT"] = "2"
    # what is tested is the client's path to a running server, not the sandbox: no Docker needed
    env["OFFICERAY_SANDBOX__BACKEND"] = "local"
    env["OFFICERAY_MEMORY__ENABLED"] = "false"  # nor the memory (its own tests; ~8 s of cold start)
    env["OFFICERAY_AUTH__ADMIN_KEY_FILE"] = str(tmp_path / "state" / "admin.key")
    env.pop("OFFICERAY_API_KEY", None)
    env.pop("OFFICERAY_ADDRESS", None)
    return env


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """``officeray serve`` on a free loopback port (it writes its first admin key under ``tmp_path``,
    where the client commands of this test find it)."""
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [OFFICERAY, "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO, env=_env(tmp_path), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "officeray serve did not come up"
            time.sleep(0.5)
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _officeray(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = subprocess.run(
        [OFFICERAY, *args],
        cwd=REPO,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    return proc, time.monotonic() - started


def test_run_with_an_address_uses_the_running_server(served: str, tmp_path: Path) -> None:
    records = []
    timings = []
    for _ in range(2):
        proc, elapsed = _officeray(tmp_path, "run", TASK, "--address", served, "--json")
        assert proc.returncode == 0, proc.stderr[-3000:]
        records.append(json.loads(proc.stdout))  # the whole of stdout is one JSON object
        timings.append(elapsed)
    print(f"officeray run --address: first {timings[0]:.2f}s, second {timings[1]:.2f}s")
    for record in records:
        assert record["status"] == "completed" and record["task_id"].startswith("task-")
        assert record["result"]["path"][-1].startswith("app.processing.core.process_data")
    assert records[0]["task_id"] != records[1]["task_id"]
    assert timings[1] < SECOND_RUN_LIMIT_S

    proc, _ = _officeray(tmp_path, "get", records[1]["task_id"], "--address", served, "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["status"] == "completed"
    proc, _ = _officeray(tmp_path, "list", "--address", served, "--json")
    listed = {t["task_id"] for t in json.loads(proc.stdout)["tasks"]}
    assert {r["task_id"] for r in records} <= listed


def test_run_with_an_unreachable_address_exits_1(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"http://127.0.0.1:{sock.getsockname()[1]}"
    proc, elapsed = _officeray(tmp_path, "run", TASK, "--address", address)
    assert proc.returncode == 1
    assert "cannot reach" in proc.stderr and address in proc.stderr and "Traceback" not in proc.stderr
    assert elapsed < SECOND_RUN_LIMIT_S * 2  # no Ray started
