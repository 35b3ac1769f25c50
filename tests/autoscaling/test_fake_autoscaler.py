"""Autoscaling on Ray's fake multi-node provider (``cluster/local-autoscaling.yaml``).

* A GPU-requesting Serve deployment (the ask of the vLLM tier's replicas: one GPU of the
  ``accelerator_type`` in ``cluster/serve_config.yaml``; vLLM itself is not installed here) makes
  the autoscaler add a GPU node; deleting it lets the node go after the idle timeout.
* A burst of queued sandbox steps grows the tool-runner pool; its runners ask for ``docker``, which
  only CPU worker nodes advertise, so the autoscaler adds CPU nodes up to their max; once the
  runners are stopped for idleness, the nodes go too.

The times printed (``-s``) are the figures reported in docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import ray
from ray import serve

from actors.tool_runner import RunnerPool
from cluster.prepare import prepare_settings
from tests.autoscaling.conftest import FakeCluster, autoscaling_settings, sleep_step
from tests.integration.conftest import REPO, require_docker

pytestmark = [pytest.mark.integration, pytest.mark.autoscaling]

SCALE_UP_TIMEOUT_S = 120.0
SCALE_DOWN_TIMEOUT_S = 120.0
RUNNER_IDLE_TIMEOUT_S = 1.0
STEP_SLEEP_S = 4.0
GPU_APP = "gpu-probe"


def _gpu_ask() -> dict[str, Any]:
    """What a vLLM replica of cluster/serve_config.yaml asks for: one GPU of its accelerator type."""
    import yaml

    config = yaml.safe_load((REPO / "cluster" / "serve_config.yaml").read_text())
    (llm_app,) = [a for a in config["applications"] if a["import_path"].startswith("ray.serve.llm")]
    (llm_config,) = llm_app["args"]["llm_configs"]
    return {"num_cpus": 1, "num_gpus": 1, "accelerator_type": llm_config["accelerator_type"]}


@serve.deployment(num_replicas=1)
class GpuReplica:
    """Reports where it runs: the GPU Ray gave it and its node."""

    def __call__(self) -> dict[str, Any]:
        context = ray.get_runtime_context()
        return {"gpu_ids": ray.get_gpu_ids(), "node_id": context.get_node_id()}


def test_a_gpu_deployment_adds_a_gpu_node_and_it_goes_after_the_idle_timeout(
    fake_cluster: FakeCluster,
) -> None:
    gpu_type = fake_cluster.config["available_node_types"]["gpu_worker"]
    assert fake_cluster.workers_with("GPU") == 0
    ask = _gpu_ask()
    assert f"accelerator_type:{ask['accelerator_type']}" in gpu_type["resources"]

    serve.start(proxy_location="Disabled")  # handles only: fake nodes share this machine's ports
    started = time.monotonic()
    handle = serve.run(GpuReplica.options(ray_actor_options=ask).bind(), name=GPU_APP, route_prefix=None)
    answer = handle.remote().result(timeout_s=SCALE_UP_TIMEOUT_S)
    added_s = time.monotonic() - started
    gpu_nodes = [n for n in fake_cluster.alive_nodes() if n["Resources"].get("GPU")]
    assert len(gpu_nodes) == 1 and answer["node_id"] == gpu_nodes[0]["NodeID"]
    assert len(answer["gpu_ids"]) == 1

    deleting = time.monotonic()
    serve.delete(GPU_APP)
    serve.shutdown()  # nothing of Serve stays on the cluster (the CPU test needs its nodes empty)
    fake_cluster.wait_for(
        lambda: fake_cluster.workers_with("GPU") == 0, "the GPU node to be removed", SCALE_DOWN_TIMEOUT_S
    )
    removed_s = time.monotonic() - deleting
    idle_timeout_s = 60 * fake_cluster.config["idle_timeout_minutes"]
    assert removed_s >= idle_timeout_s  # it waited for the idle timeout
    print(
        f"\nfake autoscaler: GPU node added and replica serving in {added_s:.1f}s; node removed "
        f"{removed_s:.1f}s after the deployment was deleted (idle timeout {idle_timeout_s:.0f}s)"
    )


def test_queued_tool_steps_add_cpu_nodes_up_to_the_max_and_they_go_when_idle(
    fake_cluster: FakeCluster, tmp_path: Path
) -> None:
    require_docker()
    cpu_type = fake_cluster.config["available_node_types"]["cpu_worker"]
    max_nodes, per_node = cpu_type["max_workers"], int(cpu_type["resources"]["docker"])
    policy = {"max_runners": max_nodes * per_node, "idle_timeout_s": RUNNER_IDLE_TIMEOUT_S}
    settings = prepare_settings(autoscaling_settings(tmp_path, **policy))
    assert fake_cluster.workers_with("docker") == 0  # the head runs no sandboxes

    async def burst() -> tuple[float, float, float, int]:
        pool = RunnerPool(settings)
        scaler = asyncio.ensure_future(pool.autoscale())
        try:
            await pool.wait_ready()
            steps = [sleep_step(i, STEP_SLEEP_S) for i in range(2 * max_nodes * per_node)]
            started = time.monotonic()
            runs = [asyncio.ensure_future(pool.execute(f"t{s.step_id}", s, s.inputs, {})) for s in steps]
            peak, all_nodes_s = 0, float("nan")
            while not all(r.done() for r in runs):
                peak = max(peak, fake_cluster.workers_with("docker"))
                if peak == max_nodes and all_nodes_s != all_nodes_s:  # first time at the max
                    all_nodes_s = time.monotonic() - started
                await asyncio.sleep(0.25)
            nodes_up_s = time.monotonic() - started
            outcomes = [r.result() for r in runs]
            assert [o.error for o in outcomes] == [None] * len(steps)
            assert pool.stats()["started_total"] == max_nodes * per_node
            burst_done = time.monotonic()
            while pool.stats()["runners"]:
                assert time.monotonic() - burst_done < SCALE_DOWN_TIMEOUT_S, pool.stats()
                await asyncio.sleep(0.25)
            return all_nodes_s, nodes_up_s, time.monotonic() - burst_done, peak
        finally:
            scaler.cancel()
            pool.shutdown()

    all_nodes_s, burst_s, runners_stopped_s, peak = asyncio.run(burst())
    assert peak == max_nodes  # every CPU worker type node the config allows, and no more
    removed_s = fake_cluster.wait_for(
        lambda: fake_cluster.workers_with("docker") == 0, "the CPU nodes to be removed", SCALE_DOWN_TIMEOUT_S
    )
    print(
        f"\nfake autoscaler: {2 * max_nodes * per_node} sandbox steps of {STEP_SLEEP_S:.0f}s: "
        f"{peak} CPU nodes added within {all_nodes_s:.1f}s, all steps done in {burst_s:.1f}s; "
        f"idle runners stopped {runners_stopped_s:.1f}s after the burst, "
        f"and the CPU nodes were removed {removed_s:.1f}s after that"
    )
