"""On a two-node loopback cluster (the fake autoscaling cluster: a head that runs no sandboxes, and a
worker node the autoscaler adds for the tool runners), ``GET /v1/tasks/{id}/trace`` of a task whose
steps ran on the worker node holds those steps' spans, next to the head's."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from cluster.runtime import LocalStack
from officeray.auth import Role
from officeray.config import apply_overrides
from officeray.testing import make_plan
from tests.autoscaling.conftest import FakeCluster, autoscaling_settings
from tests.integration.conftest import bearer, create_key, free_port, require_docker

pytestmark = [pytest.mark.integration, pytest.mark.autoscaling]

TRACE_TIMEOUT_S = 30.0


def test_the_trace_of_a_task_holds_the_spans_made_on_the_worker_node(
    fake_cluster: FakeCluster, tmp_path: Path
) -> None:
    require_docker()
    assert fake_cluster.workers_with("docker") == 0  # the head runs no sandboxes
    settings = apply_overrides(
        autoscaling_settings(tmp_path, max_runners=1, idle_timeout_s=60.0),
        {
            "serve.port": free_port(),
            "telemetry.trace_store.flush_interval_s": 0.2,
            "runners.host_concurrency": 4,
        },
    )
    plan = make_plan(
        "ready", [{"step_id": "s1", "action": "python_exec", "inputs": {"code": "print(6 * 7)"}}]
    )
    with LocalStack(settings, address=fake_cluster.address, http=True, proxy_location="HeadOnly") as stack:
        key = create_key(stack.settings.store.url, role=Role.ADMIN)
        base = f"http://127.0.0.1:{stack.settings.serve.port}"
        with httpx.Client(base_url=base, headers=bearer(key), timeout=120) as api:
            body = {"description": "print 42 in the sandbox", "plan": plan.model_dump(mode="json")}
            task_id = api.post("/v1/tasks", json=body).json()["task_id"]
            record = api.get(f"/v1/tasks/{task_id}", params={"wait_s": 30}).json()
            while record["status"] not in ("completed", "failed"):
                record = api.get(f"/v1/tasks/{task_id}", params={"wait_s": 30}).json()
            assert record["status"] == "completed", record
            deadline = time.monotonic() + TRACE_TIMEOUT_S
            while True:
                spans = api.get(f"/v1/tasks/{task_id}/trace").json()["spans"]
                if {"runner", "gateway"} <= {s["component"] for s in spans}:
                    break
                assert time.monotonic() < deadline, spans
                time.sleep(0.3)
        nodes = fake_cluster.alive_nodes()  # before the stack's end disconnects this driver
    worker_nodes = {n["NodeID"] for n in nodes if n["Resources"].get("docker")}
    head_nodes = {n["NodeID"] for n in nodes if not n["Resources"].get("docker")}
    runner_spans = [s for s in spans if s["component"] == "runner"]
    assert [s["name"] for s in runner_spans] == ["tool python_exec"]
    assert {s["node"] for s in runner_spans} <= worker_nodes, (runner_spans, worker_nodes)
    assert {s["node"] for s in spans if s["component"] == "gateway"} <= head_nodes | worker_nodes
    assert len({s["node"] for s in spans}) >= 2  # spans of two nodes in one answer
    assert {s["trace_id"] for s in spans} == {record["trace_id"]}
