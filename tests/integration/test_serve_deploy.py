"""``serve deploy cluster/serve_config.yaml`` against a head started with ``ray start --head`` on loopback.

The file is deployed as shipped except ``http_options`` (loopback and a free port here, where the
shipped file binds every node's 0.0.0.0:8000). This machine has neither vLLM nor a GPU, so the
``officeray-llm`` application cannot start; ``officeray`` comes up regardless, and its planner and
reviewer fall back from the vllm tier to the embedded one.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from serving.tiers.vllm_tier import VLLM_APP_NAME
from tests.integration.conftest import REPO, bearer, create_key, free_port, head_env, ray_head

pytestmark = pytest.mark.integration

DEPLOY_TIMEOUT_S = 240.0
TASK_WAIT_S = 30
TASK_TIMEOUT_S = 120.0


def _serve_status(address: str, env: dict[str, str]) -> dict[str, Any]:
    serve_bin = str(Path(sys.executable).with_name("serve"))
    proc = subprocess.run(
        [serve_bin, "status", "--address", address], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    status: dict[str, Any] = yaml.safe_load(proc.stdout)
    return status


def test_serve_deploy_of_the_shipped_config_brings_the_app_up_and_it_answers_a_task(tmp_path: Path) -> None:
    config = yaml.safe_load((REPO / "cluster" / "serve_config.yaml").read_text())
    port = free_port()
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    deployed = tmp_path / "serve_config.yaml"
    deployed.write_text(yaml.safe_dump(config, sort_keys=False))
    # a fixed pool of 1 unless the config's args.settings (runners.autoscaling) reach the app
    env = head_env(tmp_path) | {"OFFICERAY_RUNNERS__COUNT": "1"}
    serve_bin = str(Path(sys.executable).with_name("serve"))

    with ray_head(tmp_path, env) as head:
        address = head.address
        proc = subprocess.run(
            [serve_bin, "deploy", str(deployed), "--address", address],
            cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

        deadline = time.monotonic() + DEPLOY_TIMEOUT_S
        while True:
            apps = _serve_status(address, env).get("applications", {})
            state = {name: app["status"] for name, app in apps.items()}
            if state.get("officeray") == "RUNNING" and state.get(VLLM_APP_NAME) not in (None, "DEPLOYING"):
                break
            assert state.get("officeray") not in ("DEPLOY_FAILED", "UNHEALTHY"), apps["officeray"]
            assert time.monotonic() < deadline, state
            time.sleep(2)
        # no vLLM here: the model app reports why it cannot run, and nothing else is affected
        assert state[VLLM_APP_NAME] == "DEPLOY_FAILED"
        assert "vllm" in apps[VLLM_APP_NAME]["message"].lower()

        base = f"http://127.0.0.1:{port}"
        health = httpx.get(f"{base}/healthz", timeout=10).json()
        min_runners = config["applications"][0]["args"]["settings"]["runners.autoscaling"]["min_runners"]
        assert min_runners != 1
        assert health["status"] == "ok" and health["tool_runners"]["runners"] == min_runners
        assert health["tool_runners"]["problems"] == []  # the head advertises docker
        auth = bearer(create_key(env["OFFICERAY_STORE__URL"]))  # what `officeray keys create` does
        task = {"description": "Compute (17 * 3 + 9) / 4"}
        submitted = httpx.post(f"{base}/v1/tasks", json=task, headers=auth, timeout=30)
        assert submitted.status_code == 202, submitted.text
        task_id = submitted.json()["task_id"]
        deadline = time.monotonic() + TASK_TIMEOUT_S
        while True:
            polled = httpx.get(
                f"{base}/v1/tasks/{task_id}", params={"wait_s": TASK_WAIT_S}, headers=auth, timeout=60
            )
            record = polled.json()
            if record["status"] in ("completed", "failed"):
                break
            assert time.monotonic() < deadline, record
        assert record["status"] == "completed", record
        assert record["result"] == 15
