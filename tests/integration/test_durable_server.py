"""`officeray serve` on PostgreSQL with approvals required for medium-risk tools: a person approves
or rejects a step over HTTP, and the gateway answers 503 (accepting nothing) while the store is down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from officeray.auth import parse_key
from tests.integration.conftest import REPO, bearer, create_key, free_port, require_docker
from tests.store.conftest import PostgresServer, require_postgres

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 240
TASK_TIMEOUT_S = 120
PYTHON_TASK = "Run python:\nprint('approved work')"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, PostgresServer, str]]:
    """``officeray serve`` on a PostgreSQL store: its address, the server, an admin key."""
    require_docker()
    postgres = PostgresServer(require_postgres())
    postgres.start()
    url = postgres.create_database()
    port = free_port()
    config = tmp_path / "officeray.yaml"
    config.write_text(
        json.dumps(
            {
                "store": {"url": url},
                "telemetry": {"trace_file": str(tmp_path / "traces.jsonl")},
                "runners": {"count": 1},
                # the default levels: python_exec (high) waits for a person
                "workflow": {"approvals": {"timeout_s": 120}},
            }
        )
    )
    exe = str(Path(sys.executable).with_name("officeray"))
    proc = subprocess.Popen(
        [exe, "serve", "--port", str(port), "--config", str(config)],
        cwd=REPO, env={**os.environ, "OFFICERAY_AUTH__ADMIN_KEY_FILE": str(tmp_path / "admin.key")},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else "serve exited"
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "officeray serve did not come up"
            time.sleep(0.5)
        yield base, postgres, create_key(url)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        postgres.remove()


def _until(client: httpx.Client, task_id: str, statuses: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + TASK_TIMEOUT_S
    while time.monotonic() < deadline:
        body = client.get(f"/v1/tasks/{task_id}").json()
        if body["status"] in statuses:
            return body
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} never reached {statuses}")


def test_approvals_and_a_store_outage_over_http(server: tuple[str, PostgresServer, str]) -> None:
    base, postgres, key = server
    key_id = parse_key(key)
    with httpx.Client(base_url=base, headers=bearer(key), timeout=30) as client:
        # approve: the step waits (no runner held), then runs once approved
        first = client.post("/v1/tasks", json={"description": PYTHON_TASK}).json()["task_id"]
        waiting = _until(client, first, {"waiting_approval"})
        assert waiting["steps"][0]["status"] == "waiting_approval"
        decided = client.post(f"/v1/tasks/{first}/approvals/s1", json={"decision": "approve", "by": "alice"})
        assert decided.status_code == 200, decided.text
        done = _until(client, first, {"completed", "failed"})
        assert done["status"] == "completed" and done["result"] == "approved work"
        audit = [
            e
            for e in client.get(f"/v1/tasks/{first}/events").json()["events"]
            if e["kind"] == "approval_decided"
        ]
        # decided by the key, whatever the body's "by" says
        assert audit[0]["data"]["decided_by"] == key_id and audit[0]["data"]["decision"] == "approved"
        again = client.post(f"/v1/tasks/{first}/approvals/s1", json={"decision": "reject", "by": "mallory"})
        assert again.status_code == 409

        # reject: the task fails with who and why, and lands in the dead-letter queue
        second = client.post("/v1/tasks", json={"description": PYTHON_TASK}).json()["task_id"]
        _until(client, second, {"waiting_approval"})
        client.post(
            f"/v1/tasks/{second}/approvals/s1", json={"decision": "reject", "by": "bob", "reason": "no"}
        )
        failed = _until(client, second, {"completed", "failed"})
        assert failed["status"] == "failed" and f"rejected by {key_id}" in failed["error"]
        assert client.get(f"/v1/dlq/{second}").status_code == 200

        # the store goes away: nothing is accepted, the answer is 503 with Retry-After
        postgres.stop()
        try:
            down = client.post("/v1/tasks", json={"description": "Compute 1 + 1"})
            assert down.status_code == 503 and down.headers.get("retry-after"), down.text
        finally:
            postgres.start()
        # and it recovers when the store is back
        deadline = time.monotonic() + TASK_TIMEOUT_S
        while (back := client.post("/v1/tasks", json={"description": "Compute 1 + 1"})).status_code == 503:
            assert time.monotonic() < deadline, back.text
            time.sleep(0.5)
        assert back.status_code == 202, back.text
        assert _until(client, back.json()["task_id"], {"completed", "failed"})["status"] == "completed"
