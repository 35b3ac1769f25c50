"""The batch job against a head started with ``ray start --head`` on loopback.

One head per module (``head_cluster``; ``head`` is its dashboard address, what ``ray job submit``
takes): the first job deploys the Serve app, the later ones reuse it. The head's environment is the
jobs' environment: its own store, trace file and workspace (a copy of ``examples/sample_project``)
under the module's temporary directory, so a test can add a folder a task needs between two runs.
The head itself is :func:`tests.integration.conftest.ray_head`, shared with the ``serve deploy`` test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.integration.conftest import REPO, head_env, ray_head

pytestmark = pytest.mark.integration

JOB_TIMEOUT_S = 300
HEAD_DOCKER_SLOTS = 64
"""The ``docker`` resource the head advertises: tool runners ask for one each (``runners.resources``)."""


@dataclass(frozen=True)
class Head:
    address: str
    """The dashboard (``ray job submit --address``)."""
    gcs: str
    """The GCS (``ray.init(address=...)``, ``python -m cluster.jobs.batch --address``)."""
    tmp: Path
    env: dict[str, str]
    """The head's environment (and so its jobs')."""

    @property
    def workspace(self) -> Path:
        return Path(self.env["OFFICERAY_WORKSPACE_ROOT"])


@pytest.fixture(scope="module")
def head_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Head]:
    """A Ray head on loopback (:func:`~tests.integration.conftest.ray_head`) whose jobs use a
    workspace of their own under the module's temporary directory."""
    tmp = tmp_path_factory.mktemp("head")
    env = head_env(tmp) | {"OFFICERAY_WORKSPACE_ROOT": str(tmp / "workspace")}
    shutil.copytree(REPO / "examples" / "sample_project", tmp / "workspace" / "examples" / "sample_project")
    with ray_head(tmp, env, sandbox_slots=HEAD_DOCKER_SLOTS) as running:
        yield Head(address=running.address, gcs=running.gcs, tmp=tmp, env=env)


@pytest.fixture(scope="module")
def head(head_cluster: Head) -> str:
    """The dashboard address of the module's head (what ``ray job submit --address`` takes)."""
    return head_cluster.address


def _submit(head: Head, *args: str) -> subprocess.CompletedProcess[str]:
    """``ray job submit --working-dir . -- python -m cluster.jobs.batch ARGS`` on the head."""
    ray_bin = str(Path(sys.executable).with_name("ray"))
    command = [
        ray_bin, "job", "submit", "--address", head.address, "--working-dir", ".", "--",
        "python", "-m", "cluster.jobs.batch", *args,
    ]  # fmt: skip
    return subprocess.run(
        command, cwd=REPO, env=head.env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S, check=False
    )


def _driver(head: Head, *args: str) -> subprocess.CompletedProcess[str]:
    """The batch job as a driver of this process's machine joining the head (no job upload)."""
    return subprocess.run(
        [sys.executable, "-m", "cluster.jobs.batch", *args, "--address", head.gcs],
        cwd=REPO, env=head.env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S, check=False,
    )  # fmt: skip


def _logs(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stdout[-4000:] + proc.stderr[-3000:]


def test_ray_job_submit_runs_the_batch_on_the_cluster(head_cluster: Head, head: str) -> None:
    tmp = head_cluster.tmp
    tasks = tmp / "tasks.jsonl"
    lines = ["Compute 2 * 21", "Trace the call sequence from main to process_data in examples/sample_project"]
    tasks.write_text("".join(json.dumps({"description": t}) + "\n" for t in lines))
    out = tmp / "results.jsonl"
    assert head == head_cluster.address
    proc = _submit(head_cluster, str(tasks), "--out", str(out))
    assert proc.returncode == 0, _logs(proc)
    assert "2 completed, 0 failed" in proc.stdout
    assert "[####################] 2/2 done (2 completed, 0 failed, 0 skipped)" in proc.stdout  # job logs
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["description"] for r in records] == lines
    assert records[0]["result"] == 42
    assert records[1]["result"]["path"][-1].startswith("app.processing.core.process_data")

    # a second job finds the application already deployed on the cluster and reuses it; without
    # --run-id it is a new run: its tasks run again under new ids
    again = _submit(head_cluster, str(tasks), "--out", str(out))
    assert again.returncode == 0, _logs(again)
    assert "2 completed, 0 failed, 0 skipped" in again.stdout
    second = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["status"] for r in second] == ["completed", "completed"]
    assert {r["task_id"] for r in second}.isdisjoint(r["task_id"] for r in records)


def test_parquet_in_parquet_out_from_a_directory(head_cluster: Head) -> None:
    tmp = head_cluster.tmp / "parquet"
    (tmp / "tasks").mkdir(parents=True)
    pq.write_table(
        pa.table({"description": ["Compute 6 * 7", "What is 10 / 4?"], "tenant": ["acme", None]}),
        tmp / "tasks" / "part-0.parquet",
    )
    pq.write_table(pa.table({"description": ["Compute 1 + 2"]}), tmp / "tasks" / "part-1.parquet")
    out = tmp / "results.parquet"
    proc = _submit(
        head_cluster, str(tmp / "tasks"), "--out", str(out), "--run-id", "pq1", "--concurrency", "2"
    )
    assert proc.returncode == 0, _logs(proc)
    assert "batch: run pq1: 3 task(s) in" in proc.stdout and "3 completed, 0 failed" in proc.stdout
    table = pq.read_table(out)
    rows = table.to_pylist()
    assert [r["task_id"] for r in rows] == ["pq1-000000", "pq1-000001", "pq1-000002"]
    assert [r["row"] for r in rows] == [0, 1, 2]
    assert [r["description"] for r in rows] == ["Compute 6 * 7", "What is 10 / 4?", "Compute 1 + 2"]
    assert [r["tenant"] for r in rows] == ["acme", "default", "default"]
    assert [r["status"] for r in rows] == ["completed"] * 3
    assert [json.loads(r["result"]) for r in rows] == [42, 2.5, 3]
    assert all(r["run_id"] == "pq1" and r["latency_s"] > 0 and r["total_tokens"] > 0 for r in rows)
    assert json.loads(rows[0]["steps"])[0]["action"] == "math_calculator"
    assert all(r["finished_at"] > r["created_at"] for r in rows)


def test_resubmitting_a_run_id_skips_completed_tasks_and_reruns_failed_ones(head_cluster: Head) -> None:
    tmp = head_cluster.tmp / "rerun"
    tmp.mkdir()
    tasks = tmp / "tasks.jsonl"
    lines = [
        "Compute 2 * 21",
        "Trace the call sequence from main to process_data in late_project",  # not there yet: fails
        "Compute 6 * 7",
    ]
    tasks.write_text("".join(json.dumps({"description": t}) + "\n" for t in lines))
    out = tmp / "results.jsonl"
    args = (str(tasks), "--out", str(out), "--run-id", "rerun1")

    first = _driver(head_cluster, *args)
    assert first.returncode == 1, _logs(first)
    assert "2 completed, 1 failed, 0 skipped" in first.stdout
    assert "re-submit with --run-id rerun1 to re-run the failed tasks" in first.stdout
    before = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["task_id"] for r in before] == ["rerun1-000000", "rerun1-000001", "rerun1-000002"]
    assert [r["status"] for r in before] == ["completed", "failed", "completed"]
    assert "late_project" in before[1]["error"]

    # what the failed task needed appears; the same input under the same run id again
    shutil.copytree(REPO / "examples" / "sample_project", head_cluster.workspace / "late_project")
    second = _driver(head_cluster, *args)
    assert second.returncode == 0, _logs(second)
    assert "1 completed, 0 failed, 2 skipped (completed earlier), 1 re-run" in second.stdout
    after = [json.loads(line) for line in out.read_text().splitlines()]
    for kept in (0, 2):  # the stored records, untouched: nothing ran again
        assert after[kept] == before[kept]
    rerun = after[1]
    assert rerun["task_id"] == "rerun1-000001" and rerun["created_at"] == before[1]["created_at"]
    assert rerun["status"] == "completed" and rerun["result"]["path"][-1].startswith("app.processing.core")
    assert rerun["resumed"] == 1
    assert any("dead-letter" in log["message"] for log in rerun["logs"])

    # everything completed: a third submission runs nothing and reports the same results
    third = _driver(head_cluster, *args)
    assert third.returncode == 0, _logs(third)
    assert "0 completed, 0 failed, 3 skipped" in third.stdout
    assert [json.loads(line) for line in out.read_text().splitlines()] == after
