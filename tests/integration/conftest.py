"""Fixtures for integration tests: a real Ray + Serve stack with Docker sandboxes on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from officeray.auth import Role, mint_key
from officeray.config import Settings, load_settings
from officeray.otlp_receiver import OtlpReceiver
from tests.integration.stored import with_store

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def docker_available() -> tuple[bool, str]:
    try:
        proc = subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"docker info failed: {exc}"
    return proc.returncode == 0, proc.stderr.decode(errors="replace")[-300:]


def require_docker() -> None:
    """Fail (or skip, with OFFICERAY_SKIP_DOCKER=1) when the Docker engine is not reachable."""
    ok, why = docker_available()
    if ok:
        return
    if os.environ.get("OFFICERAY_SKIP_DOCKER") == "1":
        pytest.skip(f"OFFICERAY_SKIP_DOCKER=1 and Docker is unreachable: {why}")
    pytest.fail(f"the Docker engine is not reachable (run scripts/bootstrap.sh): {why}")


THROTTLED_TENANT = "throttled"
"""A tenant of the test stack with a small submit burst, and a slow rate."""
THROTTLED_BURST = 3
BACKLOGGED_TENANT = "backlogged"
"""A tenant of the test stack that runs one task at a time per orchestrator shard."""
GUARDED_TENANT = "guarded"
"""A tenant with the default approval levels (``workflow.approvals.required_risk_levels``: high)."""


def integration_settings(tmp: Path, **overrides: object) -> Settings:
    data = {
        "workspace_root": str(REPO),
        "store.url": f"sqlite:///{tmp}/officeray.db",
        "serve.port": free_port(),
        # Ray's Prometheus endpoint of the local instance, reported to often (test_metrics_scrape.py)
        "telemetry.metrics.export_port": free_port(),
        "telemetry.metrics.report_interval_ms": 1000,
        # spans reach the trace store quickly
        "telemetry.trace_store.flush_interval_s": 0.2,
        "runners.count": 2,
        # short leases: a killed orchestrator's tasks are claimed again within seconds
        "workflow.lease_ttl_s": 8.0,
        "workflow.claim_interval_s": 0.5,
        "workflow.orchestrators": 2,
        # the tests submit far faster than a client should, and run more tasks at once than the
        # default tenant's 64: the limits are tested on their own tenants
        # approvals: the tests' own tenant runs high-risk steps (python_exec) without asking; the
        # gatekeeper's approvals are tested on GUARDED_TENANT, which has the default levels
        "tenants": {
            "default": {
                "submit_per_s": 1000.0,
                "submit_burst": 1000,
                "max_concurrent_tasks": 4096,
                "approval_risk_levels": [],
            },
            GUARDED_TENANT: {"approval_risk_levels": None},
            THROTTLED_TENANT: {"submit_per_s": 0.2, "submit_burst": THROTTLED_BURST},
            BACKLOGGED_TENANT: {"max_concurrent_tasks": 1},
        },
        # webhooks to a receiver of the test on loopback, retried quickly (test_events_webhooks.py)
        "webhooks.allow_hosts": ["127.0.0.1"],
        "webhooks.initial_backoff_s": 0.3,
        "webhooks.jitter": 0.0,
        "webhooks.poll_interval_s": 0.1,
        "webhooks.timeout_s": 5.0,
        # http_client GETs to a slow server of the test on loopback (test_subagents_example.py)
        "tools": {"http_client": {"allow_hosts": ["127.0.0.1"]}},
        **overrides,
    }
    return load_settings(None, **data)


def create_key(store_url: str, tenant: str = "default", role: Role = Role.ADMIN) -> str:
    """A new API key in the store at ``store_url`` (what ``officeray keys create`` does): the key."""
    key, record = mint_key(tenant, role)
    assert with_store(store_url, lambda store: store.create_api_key(record))
    return key


def bearer(key: str) -> dict[str, str]:
    """The header that authenticates a request with ``key``."""
    return {"Authorization": f"Bearer {key}"}


def base_url(stack: Any) -> str:
    return f"http://127.0.0.1:{stack.settings.serve.port}"


@pytest.fixture(scope="package")
def admin_key(stack: Any) -> str:
    """An admin key of tenant ``default`` in the test stack's store."""
    return create_key(stack.settings.store.url)


@pytest.fixture
def api(stack: Any, admin_key: str) -> Iterator[httpx.Client]:
    """An HTTP client of the test stack that sends :func:`admin_key`."""
    with httpx.Client(base_url=base_url(stack), headers=bearer(admin_key), timeout=60) as http:
        yield http


@pytest.fixture(scope="package")
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """The loopback OTLP receiver the test stack exports its spans to (HTTP/protobuf)."""
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory, otlp_receiver: OtlpReceiver) -> Iterator[object]:
    """Ray, the Serve app with HTTP on a free loopback port, the orchestrator and warm sandboxes;
    every process exports its spans to :func:`otlp_receiver` too."""
    require_docker()
    from cluster.runtime import LocalStack

    tmp = tmp_path_factory.mktemp("stack")
    settings = integration_settings(tmp, **{"telemetry.otlp.endpoint": otlp_receiver.endpoint})
    with LocalStack(settings, http=True) as running:
        yield running


HEAD_START_TIMEOUT_S = 120
HEAD_STOP_TIMEOUT_S = 5
HEAD_SANDBOX_SLOTS = 8
"""The ``docker`` resource a test head advertises: room for that many tool runners."""


def head_env(tmp: Path) -> dict[str, str]:
    """Environment of a test head and of the CLIs that talk to it (token auth, files under ``tmp``)."""
    env = dict(os.environ)
    # a job's `python` must be this environment's interpreter, as with an activated venv
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_AUTH_MODE"] = "token"
    env["OFFICERAY_STORE__URL"] = f"sqlite:///{tmp}/officeray.db"
    env["OFFICERAY_TELEMETRY__TRACE_FILE"] = str(tmp / "traces.jsonl")
    env["OFFICERAY_RUNNERS__COUNT"] = "2"
    env.pop("RAY_ADDRESS", None)
    return env


@dataclass(frozen=True)
class RayHead:
    address: str
    """The dashboard: what ``ray job submit --address`` and ``serve deploy --address`` take."""
    gcs: str
    """The GCS: what ``ray.init(address=...)`` and ``python -m cluster.jobs.batch --address`` take."""


@contextlib.contextmanager
def ray_head(tmp: Path, env: dict[str, str], *, sandbox_slots: int = HEAD_SANDBOX_SLOTS) -> Iterator[RayHead]:
    """``ray start --head`` on loopback with its own ports and its own Ray temp dir.

    The head advertises ``docker`` for the tool runners. Its own temp dir matters when other
    clusters run on the machine: a job's driver is pointed at the cluster recorded in its head's
    temp dir (``ray_current_cluster``), and in the shared default (``/tmp/ray``) that is whichever
    cluster started last. It is short: Ray's socket paths live there. Stopping the head stops only
    this cluster's processes.
    """
    require_docker()
    ray_bin = str(Path(sys.executable).with_name("ray"))
    dashboard, gcs = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayhead-", dir="/tmp")
    log = (tmp / "head.log").open("w")
    proc = subprocess.Popen(
        [
            ray_bin, "start", "--head", "--block", "--disable-usage-stats",
            "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
            "--port", str(gcs), "--dashboard-port", str(dashboard),
            "--ray-client-server-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()),
            "--num-cpus", "2", "--resources", json.dumps({"docker": sandbox_slots}),
            "--temp-dir", temp_dir,
        ],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + HEAD_START_TIMEOUT_S
        while True:
            assert proc.poll() is None, (tmp / "head.log").read_text()[-3000:]
            probe = subprocess.run(
                [ray_bin, "job", "list", "--address", address],
                env=env, capture_output=True, text=True, check=False,
            )  # fmt: skip
            if probe.returncode == 0:
                break
            assert time.monotonic() < deadline, probe.stderr[-2000:]
            time.sleep(1)
        yield RayHead(address=address, gcs=f"127.0.0.1:{gcs}")
    finally:
        # the head's processes share the session of `ray start`: stop them all, and only them
        stop_process_group(proc, HEAD_STOP_TIMEOUT_S)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def stop_process_group(proc: subprocess.Popen[Any], timeout_s: float) -> None:
    """Stop every process of ``proc``'s session (started with ``start_new_session``): SIGTERM, then
    SIGKILL for whatever is left after ``timeout_s`` (Ray's GCS and autoscaler may ignore SIGTERM)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout_s)
