"""``ray job submit`` against a head started with ``ray start --head`` on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, free_port, require_docker

pytestmark = pytest.mark.integration

HEAD_START_TIMEOUT_S = 120
JOB_TIMEOUT_S = 300
HEAD_STOP_TIMEOUT_S = 5


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    # the job's `python` must be this environment's interpreter, as with an activated venv
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_AUTH_MODE"] = "token"
    env["OFFICERAY_STORE__URL"] = f"sqlite:///{tmp_path}/job.db"
    env["OFFICERAY_TELEMETRY__TRACE_FILE"] = str(tmp_path / "traces.jsonl")
    env["OFFICERAY_RUNNERS__COUNT"] = "2"
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture
def head(tmp_path: Path) -> Iterator[str]:
    """A Ray head on loopback with its own ports; stopping it stops only this cluster."""
    require_docker()
    ray_bin = str(Path(sys.executable).with_name("ray"))
    dashboard = free_port()
    proc = subprocess.Popen(
        [
            ray_bin, "start", "--head", "--block", "--disable-usage-stats",
            "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
            "--port", str(free_port()), "--dashboard-port", str(dashboard),
            "--ray-client-server-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()),
            "--num-cpus", "2",
        ],
        cwd=REPO, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + HEAD_START_TIMEOUT_S
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else "ray start exited"
            probe = subprocess.run(
                [ray_bin, "job", "list", "--address", address],
                env=_env(tmp_path), capture_output=True, text=True, check=False,
            )  # fmt: skip
            if probe.returncode == 0:
                break
            assert time.monotonic() < deadline, probe.stderr[-2000:]
            time.sleep(1)
        yield address
    finally:
        # the head's processes share the session of `ray start`: stop them all, and only them
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=HEAD_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_ray_job_submit_runs_the_batch_on_the_cluster(head: str, tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    lines = ["Compute 2 * 21", "Trace the call sequence from main to process_data in examples/sample_project"]
    tasks.write_text("".join(json.dumps({"description": t}) + "\n" for t in lines))
    out = tmp_path / "results.jsonl"
    ray_bin = str(Path(sys.executable).with_name("ray"))
    submit = [
        ray_bin, "job", "submit", "--address", head, "--working-dir", ".", "--",
        "python", "-m", "cluster.jobs.batch", str(tasks), "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(
        submit, cwd=REPO, env=_env(tmp_path), capture_output=True, text=True,
        timeout=JOB_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "2 completed, 0 failed" in proc.stdout
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["description"] for r in records] == lines
    assert records[0]["result"] == 42
    assert records[1]["result"]["path"][-1].startswith("app.processing.core.process_data")

    # a second job finds the application already deployed on the cluster and reuses it
    again = subprocess.run(
        submit, cwd=REPO, env=_env(tmp_path), capture_output=True, text=True,
        timeout=JOB_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout[-4000:]
    assert [json.loads(line)["status"] for line in out.read_text().splitlines()] == ["completed", "completed"]
