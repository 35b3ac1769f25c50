"""Task workspaces on the real stack (Ray, Serve, two orchestrator shards, two Docker runners): a
ready plan ``file_operations write notes.txt`` -> ``read notes.txt`` completes under load, every
read sees its own task's file, and the artifacts download through the API and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import base_url

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

TASKS = 20
WAIT_S = 240.0
OFFICERAY = str(Path(sys.executable).with_name("officeray"))


def _plan(content: str) -> dict[str, Any]:
    def step(step_id: str, operation: str, deps: list[str], **extra: Any) -> dict[str, Any]:
        return {
            "step_id": step_id,
            "action": "file_operations",
            "inputs": {"operation": operation, "path": "notes.txt", **extra},
            "outputs_expectation": None,
            "timeout_seconds": 60,
            "parallelizable": False,
            "idempotency_key": f"{step_id}-{uuid.uuid4().hex[:8]}",
            "dependencies": deps,
        }

    return {
        "plan_id": f"plan-{uuid.uuid4().hex[:8]}",
        "task_id": "unknown-yet",
        "confidence": 1.0,
        "metadata": {
            "priority": 0,
            "required_tools": ["file_operations"],
            "estimated_cost_tokens": 0,
            "estimated_duration_seconds": 1,
        },
        "steps": [step("write", "write", [], content=content), step("read", "read", ["write"])],
    }


def _final(api: httpx.Client, task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while True:
        body: dict[str, Any] = api.get(f"/v1/tasks/{task_id}", params={"wait_s": 20}).json()
        if body["status"] in ("completed", "failed", "cancelled") or time.monotonic() > deadline:
            return body


def test_write_then_read_under_load_and_artifacts(
    stack: Any, api: httpx.Client, admin_key: str, tmp_path: Path
) -> None:
    contents = [f"notes of task {i}: {uuid.uuid4().hex}" for i in range(TASKS)]

    def submit(content: str) -> str:
        created = api.post("/v1/tasks", json={"description": "write then read notes", "plan": _plan(content)})
        assert created.status_code == 202, created.text
        return str(created.json()["task_id"])

    with ThreadPoolExecutor(max_workers=TASKS) as pool:
        task_ids = list(pool.map(submit, contents))
        finals = list(pool.map(lambda task_id: _final(api, task_id), task_ids))

    for task_id, content, body in zip(task_ids, contents, finals, strict=True):
        assert body["status"] == "completed", (task_id, body.get("error"), body.get("logs"))
        read = next(s for s in body["steps"] if s["step_id"] == "read")
        assert read["output"]["content"] == content, (task_id, read)

    task_id, content = task_ids[0], contents[0]
    listing = api.get(f"/v1/tasks/{task_id}/artifacts")
    assert listing.status_code == 200, listing.text
    [entry] = listing.json()["files"]
    assert (entry["path"], entry["size"], entry["step_id"]) == ("notes.txt", len(content), "write")
    got = api.get(f"/v1/tasks/{task_id}/artifacts/notes.txt")
    assert got.status_code == 200 and got.text == content
    bad = api.get(f"/v1/tasks/{task_id}/artifacts/..%2f..%2fetc%2fpasswd")
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_path"

    folder = tmp_path / "artifacts"
    env = {k: v for k, v in os.environ.items() if k not in ("OFFICERAY_API_KEY", "OFFICERAY_ADDRESS")}
    proc = subprocess.run(
        [
            OFFICERAY,
            "get",
            task_id,
            "--artifacts",
            str(folder),
            "--address",
            base_url(stack),
            "--key",
            admin_key,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (folder / "notes.txt").read_text() == content
