"""The vllm tier end to end: ray.serve.llm serves a small local model, the tier gets a structured plan.

Needs vLLM (``pip install '.[gpu]'``), a visible GPU, and a small instruct model already on disk:
``OFFICERAY_VLLM_TEST_MODEL=/path/to/Qwen2.5-0.5B-Instruct pytest -m gpu tests/gpu``. Nothing is
downloaded (the replicas run with ``HF_HUB_OFFLINE=1``). Optional:
``OFFICERAY_VLLM_TEST_MAX_MODEL_LEN`` (default 4096).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from officeray.config import VllmTierConfig
from officeray.contracts import Plan, plan_json_schema
from serving.tiers.base import ModelCall
from serving.tiers.vllm_tier import VllmTier, deploy_vllm_app, vllm_available

MODEL_ENV = "OFFICERAY_VLLM_TEST_MODEL"

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(1200)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def vllm_cfg() -> VllmTierConfig:
    ok, why = vllm_available()
    if not ok:
        pytest.skip(f"the vllm tier cannot run here: {why}")
    model = os.environ.get(MODEL_ENV)
    if not model:
        pytest.skip(f"set {MODEL_ENV} to a small local instruct model (a path or a cached name) to run this")
    max_len = int(os.environ.get("OFFICERAY_VLLM_TEST_MAX_MODEL_LEN", "4096"))
    return VllmTierConfig(
        tier="vllm",
        model=model,
        model_id="officeray-test-llm",
        num_gpus=1,
        engine_kwargs={"max_model_len": max_len, "enforce_eager": True, "gpu_memory_utilization": 0.6},
    )


@pytest.fixture(scope="module")
def base_url(vllm_cfg: VllmTierConfig) -> Iterator[str]:
    import ray
    from ray import serve

    port = _free_port()
    ray.init(include_dashboard=False, namespace="officeray-gpu-test")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        url = deploy_vllm_app([vllm_cfg], host="127.0.0.1", port=port)
        assert url is not None
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


async def test_structured_plan_from_the_local_model(vllm_cfg: VllmTierConfig, base_url: str) -> None:
    tier = VllmTier(vllm_cfg, base_url=base_url)
    call = ModelCall(
        role="planner",
        messages=[
            {
                "role": "system",
                "content": (
                    "You plan tasks as JSON matching the given schema. The only tool is math_calculator, "
                    'whose inputs are {"expression": "<arithmetic>"} and whose output has the key "value". '
                    "Use step ids s1, s2, ..."
                ),
            },
            {"role": "user", "content": "task_id t1: Compute 6*7"},
        ],
        json_schema=plan_json_schema(),
        schema_name="plan",
        max_tokens=1024,
    )
    try:
        answer = await tier.generate(call)
    finally:
        await tier.aclose()
    assert isinstance(answer.data, dict), answer.content
    plan = Plan.model_validate(answer.data)
    assert len(plan.steps) >= 1
    assert answer.tier == "vllm"
    assert answer.model == "officeray-test-llm"
    assert answer.usage.prompt_tokens > 0
    assert answer.usage.completion_tokens > 0
