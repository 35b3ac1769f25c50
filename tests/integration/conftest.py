"""Fixtures for integration tests: a real Ray + Serve stack with Docker sandboxes on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from officeray.config import Settings, load_settings

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


def integration_settings(tmp: Path, **overrides: object) -> Settings:
    data = {
        "workspace_root": str(REPO),
        "store.url": f"sqlite:///{tmp}/officeray.db",
        "telemetry.trace_file": str(tmp / "traces.jsonl"),
        "serve.port": free_port(),
        "runners.count": 2,
        # short leases: a killed orchestrator's tasks are claimed again within seconds
        "workflow.lease_ttl_s": 8.0,
        "workflow.claim_interval_s": 0.5,
        "workflow.orchestrators": 2,
        **overrides,
    }
    return load_settings(None, **data)


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Ray, the Serve app with HTTP on a free loopback port, the orchestrator and warm sandboxes."""
    require_docker()
    from cluster.runtime import LocalStack

    tmp = tmp_path_factory.mktemp("stack")
    with LocalStack(integration_settings(tmp), http=True) as running:
        yield running
