"""A fake multi-node autoscaling cluster (``cluster/local-autoscaling.yaml``) on loopback.

The head runs with Ray's ``fake_multinode`` provider: the autoscaler adds and removes worker
"nodes" (extra raylets on this machine) as it would cloud instances. Each fixture use gets its own
ports and temp dir, and stopping it stops only its own processes (never a machine-wide ``ray stop``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from officeray.config import Settings, load_settings
from officeray.contracts import PlanStep
from tests.integration.conftest import REPO, free_port, stop_process_group

LOCAL_AUTOSCALING_CONFIG = REPO / "cluster" / "local-autoscaling.yaml"
HEAD_START_TIMEOUT_S = 120.0
HEAD_STOP_TIMEOUT_S = 10.0
HEAD_STARTED = "Ray runtime started"
"""What ``ray start`` prints once the head (GCS, raylet, autoscaler) is up."""
AUTOSCALER_UPDATE_INTERVAL_S = "1"
"""How often the fake cluster's autoscaler looks at demand (Ray's default is 5 s)."""


@dataclass
class FakeCluster:
    address: str
    config: dict[str, Any]

    def alive_nodes(self) -> list[dict[str, Any]]:
        import ray

        return [n for n in ray.nodes() if n["Alive"]]

    def workers_with(self, resource: str) -> int:
        return sum(1 for n in self.alive_nodes() if n["Resources"].get(resource))

    def wait_for(self, condition: Callable[[], bool], what: str, timeout_s: float) -> float:
        """Seconds until ``condition()`` held; fails the test after ``timeout_s``."""
        started = time.monotonic()
        while not condition():
            assert time.monotonic() - started < timeout_s, f"timed out after {timeout_s}s waiting for {what}"
            time.sleep(0.25)
        return time.monotonic() - started


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        RAY_FAKE_CLUSTER="1",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        AUTOSCALER_UPDATE_INTERVAL_S=AUTOSCALER_UPDATE_INTERVAL_S,
        RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "disabled"),  # the same as this driver's
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture(scope="module")
def fake_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeCluster]:
    """The fake autoscaling cluster's head, and this process connected to it as a driver."""
    import ray

    tmp = tmp_path_factory.mktemp("fakecluster")
    port = free_port()
    config = yaml.safe_load(LOCAL_AUTOSCALING_CONFIG.read_text())
    config["provider"]["gcs_address"] = f"127.0.0.1:{port}"  # the only change: this head's own port
    config_file = tmp / "local-autoscaling.yaml"
    config_file.write_text(yaml.safe_dump(config))
    ray_bin = str(Path(sys.executable).with_name("ray"))
    proc = subprocess.Popen(
        [
            ray_bin, "start", "--head", "--block", "--disable-usage-stats",
            f"--autoscaling-config={config_file}", "--num-cpus=1", f"--port={port}",
            "--node-ip-address=127.0.0.1", "--include-dashboard=false",
            f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
            "--object-store-memory=100000000",
        ],
        cwd=REPO, env=_env(), stdout=open(tmp / "head.log", "w"), stderr=subprocess.STDOUT,  # noqa: SIM115
        start_new_session=True,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + HEAD_START_TIMEOUT_S
        while HEAD_STARTED not in (tmp / "head.log").read_text():
            assert proc.poll() is None, (tmp / "head.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp / "head.log").read_text()[-3000:]
            time.sleep(0.5)
        ray.init(address=address, namespace="officeray", logging_level="WARNING", log_to_driver=False)
        yield FakeCluster(address=address, config=config)
    finally:
        ray.shutdown()
        # the head, its autoscaler and every fake node it started share the session of `ray start`
        stop_process_group(proc, HEAD_STOP_TIMEOUT_S)


def autoscaling_settings(tmp: Path, *, max_runners: int, idle_timeout_s: float) -> Settings:
    """Settings of a runner pool that scales from zero, with its files under ``tmp``."""
    policy = {"min_runners": 0, "max_runners": max_runners, "idle_timeout_s": idle_timeout_s}
    return load_settings(
        None,
        **{
            "workspace_root": str(REPO),
            "store.url": f"sqlite:///{tmp}/officeray.db",
            "telemetry.trace_file": str(tmp / "traces.jsonl"),
            "sandbox.spares": 0,
            "runners.autoscaling": policy,
            # these tests are about scaling: their python_exec steps run without asking a person
            "workflow.approvals.required_risk_levels": [],
        },
    )


def sleep_step(i: int, seconds: float) -> PlanStep:
    """A sandbox step that sleeps ``seconds`` and prints ``i``."""
    code = f"import time\ntime.sleep({seconds})\nprint({i})"
    return PlanStep(step_id=f"s{i}", action="python_exec", inputs={"code": code}, idempotency_key=f"k{i}")
