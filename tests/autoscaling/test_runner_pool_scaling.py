"""The tool-runner pool grows with queued sandbox steps and shrinks when idle (one local Ray node).

The runners are real: Ray actors, each with a warm Docker sandbox, asking for the ``docker``
resource the local node advertises. The same pool on an autoscaling cluster is in
``test_fake_autoscaler.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import docker
import pytest
import ray

from actors.tool_runner import RunnerPool
from cluster.prepare import prepare_settings
from cluster.runtime import init_ray, local_node_resources
from officeray.config import Settings
from officeray.contracts import PlanStep, StepOutcome
from tests.autoscaling.conftest import autoscaling_settings, sleep_step
from tests.integration.conftest import require_docker
from tools_sandbox.docker_sandbox import SANDBOX_LABEL

pytestmark = [pytest.mark.integration, pytest.mark.autoscaling]

MAX_RUNNERS = 3
IDLE_TIMEOUT_S = 1.0
STEP_SLEEP_S = 2.0
SCALE_DOWN_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    require_docker()
    tmp = tmp_path_factory.mktemp("pool")
    # paths made absolute, sandbox image built
    prepared = prepare_settings(
        autoscaling_settings(tmp, max_runners=MAX_RUNNERS, idle_timeout_s=IDLE_TIMEOUT_S)
    )
    init_ray(prepared, "local")
    try:
        yield prepared
    finally:
        ray.shutdown()


def _step(i: int) -> PlanStep:
    return sleep_step(i, STEP_SLEEP_S)


def _containers_of(pids: set[int]) -> int:
    client = docker.from_env()
    try:
        # the list endpoint's own answer: ``containers.list`` inspects each container afterwards, and
        # one a retiring runner removes in between would raise NotFound
        found = client.api.containers(filters={"label": SANDBOX_LABEL})
        owners = [int((c.get("Labels") or {}).get(f"{SANDBOX_LABEL}.host_pid", "0")) for c in found]
        return sum(1 for pid in owners if pid in pids)
    finally:
        client.close()


def test_the_local_node_advertises_the_runner_resource_for_the_whole_pool(settings: Settings) -> None:
    assert local_node_resources(settings) == {"docker": float(MAX_RUNNERS)}
    assert ray.cluster_resources().get("docker") == MAX_RUNNERS


def test_a_burst_of_steps_grows_the_pool_to_its_max_and_idle_runners_are_stopped(settings: Settings) -> None:
    async def scenario() -> None:
        pool = RunnerPool(settings)
        scaler = asyncio.ensure_future(pool.autoscale())
        try:
            await pool.wait_ready()
            assert pool.stats()["runners"] == 0  # min_runners: 0

            burst = [pool.execute(f"task-{i}", _step(i), _step(i).inputs, {}) for i in range(2 * MAX_RUNNERS)]
            started = time.monotonic()
            outcomes: list[StepOutcome] = await asyncio.gather(*burst)
            elapsed = time.monotonic() - started

            assert [o.error for o in outcomes] == [None] * len(outcomes)
            assert [o.output["stdout"].strip() for o in outcomes] == [str(i) for i in range(len(outcomes))]
            stats = pool.stats()
            assert stats["runners"] == MAX_RUNNERS and stats["started_total"] == MAX_RUNNERS
            # six 2 s steps on three runners: two waves, not six (and not one: the max held)
            assert 2 * STEP_SLEEP_S <= elapsed < 6 * STEP_SLEEP_S
            pids = set(pool._pids.values())
            assert len(pids) == MAX_RUNNERS and _containers_of(pids) == MAX_RUNNERS

            deadline = time.monotonic() + SCALE_DOWN_TIMEOUT_S
            while (pool.stats()["runners"] or _containers_of(pids)) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert pool.stats() == {
                "runners": 0, "idle": 0, "starting": 0, "waiting_steps": 0, "min_runners": 0,
                "max_runners": MAX_RUNNERS, "started_total": MAX_RUNNERS, "stopped_total": MAX_RUNNERS,
                "placement_problem": None,
            }  # fmt: skip
            assert _containers_of(pids) == 0  # the stopped runners removed their sandboxes

            # the pool grows again from zero for the next step
            again = await pool.execute("task-again", _step(9), _step(9).inputs, {})
            assert again.error is None and pool.stats()["started_total"] == MAX_RUNNERS + 1
        finally:
            scaler.cancel()
            pool.shutdown()

    asyncio.run(scenario())
