"""The vllm tier: LLMConfig building, availability, and the OpenAI-compatible call (loopback fake)."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from officeray.config import EmbeddedTierConfig, ModelsSettings, OpenAITierConfig, VllmTierConfig
from officeray.contracts import Plan, plan_json_schema
from officeray.errors import ConfigError
from serving.tiers import vllm_tier
from serving.tiers.base import (
    CannotAnswerError,
    MalformedAnswerError,
    ModelCall,
    ModelTier,
    RateLimitedError,
    ServerError,
    TierUnavailableError,
)
from serving.tiers.vllm_tier import (
    DEFAULT_VLLM_BASE_URL,
    VLLM_ROUTE_PREFIX,
    VllmTier,
    build_llm_config,
    build_vllm_app,
    configured_vllm_tiers,
    llm_config_dict,
    served_model_id,
    unique_vllm_tiers,
    vllm_available,
    vllm_base_url,
)
from tests.fake_openai_server import FakeOpenAIServer

VLLM_INSTALLED = importlib.util.find_spec("vllm") is not None


def vcfg(**kwargs: Any) -> VllmTierConfig:
    return VllmTierConfig(**{"tier": "vllm", "model": "/models/Qwen2.5-0.5B-Instruct", **kwargs})


def internal_llm_config_cls() -> Any:
    """ray's LLMConfig pydantic model itself; the public ray.serve.llm import needs vLLM, this does not."""
    try:
        from ray.llm._internal.serve.core.configs.llm_config import LLMConfig
    except Exception as exc:  # pragma: no cover - depends on the installed ray
        pytest.skip(f"ray's LLMConfig model cannot be imported here: {exc}")
    return LLMConfig


# --------------------------------------------------------------------------------------------------
# Config building
# --------------------------------------------------------------------------------------------------


def test_model_id_defaults_to_the_last_part_of_model() -> None:
    assert served_model_id(vcfg()) == "Qwen2.5-0.5B-Instruct"
    assert served_model_id(vcfg(model="Qwen/Qwen2.5-0.5B-Instruct")) == "Qwen2.5-0.5B-Instruct"
    assert served_model_id(vcfg(model="/models/qwen/")) == "qwen"
    assert served_model_id(vcfg(model_id="planner-llm")) == "planner-llm"


def test_llm_config_dict_fields() -> None:
    cfg = vcfg(
        accelerator_type="H100",
        engine_kwargs={"max_model_len": 4096},
        min_replicas=0,
        max_replicas=3,
    )
    data = llm_config_dict(cfg)
    assert data["model_loading_config"] == {
        "model_id": "Qwen2.5-0.5B-Instruct",
        "model_source": "/models/Qwen2.5-0.5B-Instruct",
    }
    assert data["accelerator_type"] == "H100"
    assert data["engine_kwargs"] == {"max_model_len": 4096}
    assert data["deployment_config"] == {"autoscaling_config": {"min_replicas": 0, "max_replicas": 3}}
    assert data["placement_group_config"] == {"bundle_per_worker": {"GPU": 1.0}}
    assert data["runtime_env"] == {"env_vars": {"HF_HUB_OFFLINE": "1"}}


def test_no_engine_defaults_are_added_and_the_users_are_kept() -> None:
    assert llm_config_dict(vcfg())["engine_kwargs"] == {}
    assert "accelerator_type" not in llm_config_dict(vcfg())
    kwargs = {"max_model_len": 2048, "gpu_memory_utilization": 0.5}
    assert llm_config_dict(vcfg(engine_kwargs=kwargs))["engine_kwargs"] == kwargs


def test_config_dict_does_not_share_the_users_engine_kwargs() -> None:
    cfg = vcfg(num_gpus=2)
    llm_config_dict(cfg)["engine_kwargs"]["x"] = 1
    assert cfg.engine_kwargs == {}


def test_fractional_gpu_is_one_worker_with_that_share() -> None:
    data = llm_config_dict(vcfg(num_gpus=0.5))
    assert data["placement_group_config"] == {"bundle_per_worker": {"GPU": 0.5}}
    assert "tensor_parallel_size" not in data["engine_kwargs"]


def test_several_gpus_become_tensor_parallelism() -> None:
    data = llm_config_dict(vcfg(num_gpus=4))
    assert data["engine_kwargs"] == {"tensor_parallel_size": 4}
    assert data["placement_group_config"] == {"bundle_per_worker": {"GPU": 1.0}}


def test_users_parallelism_must_match_num_gpus() -> None:
    data = llm_config_dict(
        vcfg(num_gpus=4, engine_kwargs={"tensor_parallel_size": 2, "pipeline_parallel_size": 2})
    )
    assert data["engine_kwargs"] == {"tensor_parallel_size": 2, "pipeline_parallel_size": 2}
    with pytest.raises(ConfigError, match="num_gpus is 4 but engine_kwargs ask for tensor_parallel_size=2"):
        llm_config_dict(vcfg(num_gpus=4, engine_kwargs={"tensor_parallel_size": 2}))
    with pytest.raises(ConfigError, match="allows one engine worker"):
        llm_config_dict(vcfg(num_gpus=0.5, engine_kwargs={"tensor_parallel_size": 2}))


def test_num_gpus_above_one_must_be_whole() -> None:
    with pytest.raises(ConfigError, match="below 1 or a whole number, not 1.5"):
        llm_config_dict(vcfg(num_gpus=1.5))


def test_min_replicas_above_max_is_refused() -> None:
    with pytest.raises(ConfigError, match="min_replicas 3 is above max_replicas 1"):
        llm_config_dict(vcfg(min_replicas=3))


def test_fields_land_where_rays_llm_config_expects_them() -> None:
    llm_config_cls = internal_llm_config_cls()
    cfg = vcfg(accelerator_type="A10G", num_gpus=2, engine_kwargs={"max_model_len": 4096}, max_replicas=2)
    config = llm_config_cls(**llm_config_dict(cfg))
    assert config.model_id == "Qwen2.5-0.5B-Instruct"
    assert config.model_loading_config.model_source == "/models/Qwen2.5-0.5B-Instruct"
    assert config.accelerator_type == "A10G"
    assert config.engine_kwargs == {"max_model_len": 4096, "tensor_parallel_size": 2}
    assert config.max_request_context_length == 4096
    assert config.deployment_config["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 2}
    assert config.placement_group_config == {"bundle_per_worker": {"GPU": 1.0}}
    assert config.runtime_env == {"env_vars": {"HF_HUB_OFFLINE": "1"}}
    assert config.accelerator_config.kind == "gpu"


def test_rays_llm_config_refuses_an_unknown_accelerator() -> None:
    llm_config_cls = internal_llm_config_cls()
    with pytest.raises(ValueError, match="Unsupported accelerator type"):
        llm_config_cls(**llm_config_dict(vcfg(accelerator_type="GTX-1080")))


@pytest.mark.skipif(VLLM_INSTALLED, reason="checks the error raised without vLLM")
def test_build_llm_config_without_vllm_says_so() -> None:
    with pytest.raises(TierUnavailableError) as info:
        build_llm_config(vcfg())
    message = str(info.value)
    assert message.startswith("vLLM tier unavailable: ray.serve.llm cannot be imported")
    assert "pip install '.[gpu]'" in message


@pytest.mark.skipif(VLLM_INSTALLED, reason="checks the error raised without vLLM")
def test_build_vllm_app_without_vllm_says_so() -> None:
    with pytest.raises(TierUnavailableError, match="ray.serve.llm cannot be imported"):
        build_vllm_app([vcfg()])


@pytest.mark.skipif(not VLLM_INSTALLED, reason="needs vLLM (ray.serve.llm imports it)")
def test_build_llm_config_with_vllm() -> None:  # pragma: no cover - GPU nodes only
    config = build_llm_config(vcfg(accelerator_type="H100"))
    assert config.model_id == "Qwen2.5-0.5B-Instruct"
    with pytest.raises(ConfigError, match="invalid ray.serve.llm config"):
        build_llm_config(vcfg(accelerator_type="GTX-1080"))


def test_build_llm_config_checks_our_fields_before_importing() -> None:
    with pytest.raises(ConfigError, match="whole number"):
        build_llm_config(vcfg(num_gpus=2.5))


def test_no_vllm_tiers_no_app() -> None:
    assert build_vllm_app([EmbeddedTierConfig(), OpenAITierConfig(tier="openai", model="m")]) is None


def test_the_same_model_is_served_once() -> None:
    a = vcfg(timeout_s=10)
    b = vcfg(timeout_s=99, max_retries=3)
    c = vcfg(model="/models/other")
    assert unique_vllm_tiers([EmbeddedTierConfig(), a, b, c]) == [a, c]
    with pytest.raises(
        ConfigError, match="serve the model id 'Qwen2.5-0.5B-Instruct' with different settings"
    ):
        unique_vllm_tiers([a, vcfg(num_gpus=2)])


def test_configured_vllm_tiers_walks_every_role() -> None:
    models = ModelsSettings(
        planner=[vcfg(), EmbeddedTierConfig()],
        reviewer=[vcfg()],
        ai_tool=[vcfg(model="/m/small")],
    )
    assert [served_model_id(c) for c in configured_vllm_tiers(models)] == ["Qwen2.5-0.5B-Instruct", "small"]


def test_base_url_uses_the_route_prefix() -> None:
    assert VLLM_ROUTE_PREFIX == "/llm"
    assert vllm_base_url("127.0.0.5", 8123) == "http://127.0.0.5:8123/llm/v1"
    assert DEFAULT_VLLM_BASE_URL == "http://127.0.0.1:8000/llm/v1"


# --------------------------------------------------------------------------------------------------
# Availability
# --------------------------------------------------------------------------------------------------


def test_vllm_available_reports_a_missing_package() -> None:
    def never(*_args: Any) -> Any:
        raise AssertionError("no GPU probe without vllm")

    assert vllm_available(installed=lambda: False, cluster_gpus=never, local_gpus=never) == (
        False,
        "the vllm package is not installed",
    )


@pytest.mark.parametrize(
    ("cluster", "local", "expected"),
    [
        (None, 0, (False, "no GPU is visible on this machine")),
        (None, 2, (True, "vllm installed, 2 GPU(s) visible")),
        (0.0, 2, (False, "the Ray cluster has no GPU")),  # connected to a cluster: its GPUs count
        (8.0, 0, (True, "vllm installed, 8 GPU(s) in the Ray cluster")),
    ],
)
def test_vllm_available_needs_a_gpu(cluster: float | None, local: int, expected: tuple[bool, str]) -> None:
    answer = vllm_available(installed=lambda: True, cluster_gpus=lambda: cluster, local_gpus=lambda: local)
    assert answer == expected


def test_hidden_gpus_are_not_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert vllm_tier._local_gpu_count() == 0


def test_vllm_available_is_cheap_and_never_imports_vllm() -> None:
    import sys

    ok, why = vllm_available()
    assert isinstance(ok, bool) and why
    assert "vllm" not in sys.modules or VLLM_INSTALLED


# --------------------------------------------------------------------------------------------------
# The tier (against the loopback FakeOpenAIServer standing in for the ray.serve.llm app)
# --------------------------------------------------------------------------------------------------

TOOLS = ["code_analyzer", "math_calculator", "python_exec"]


def plan_call(description: str = "Compute 6*7 then calculate ans / 2") -> ModelCall:
    user = {
        "task_id": "t1",
        "description": description,
        "iteration": 1,
        "allowed_tools": TOOLS,
        "feedback": [],
    }
    return ModelCall(
        role="planner",
        messages=[
            {"role": "system", "content": "You plan tasks as JSON matching the schema."},
            {"role": "user", "content": json.dumps(user)},
        ],
        json_schema=plan_json_schema(),
        schema_name="plan",
        max_tokens=512,
    )


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(mode="plan", model="Qwen2.5-0.5B-Instruct") as fake:
        yield fake


@pytest.fixture
async def served(server: FakeOpenAIServer) -> AsyncIterator[VllmTier]:
    tier = VllmTier(vcfg(timeout_s=5), base_url=server.base_url, availability=lambda: (True, "test"))
    yield tier
    await tier.aclose()


def test_is_a_model_tier() -> None:
    tier = VllmTier(vcfg())
    assert isinstance(tier, ModelTier)
    assert (tier.name, tier.model) == ("vllm", "Qwen2.5-0.5B-Instruct")
    assert tier.base_url == DEFAULT_VLLM_BASE_URL


def test_openai_client_config() -> None:
    tier = VllmTier(vcfg(timeout_s=33, max_retries=4), base_url="http://127.0.0.5:8000/llm/v1/")
    config = tier.openai_config()
    assert config.model == "Qwen2.5-0.5B-Instruct"
    assert config.base_url == "http://127.0.0.5:8000/llm/v1"
    assert (config.timeout_s, config.max_retries, config.structured_output) == (33, 4, "json_schema")


async def test_unavailable_tier_raises_tier_unavailable() -> None:
    tier = VllmTier(vcfg(), availability=lambda: (False, "the vllm package is not installed"))
    with pytest.raises(TierUnavailableError) as info:
        await tier.generate(plan_call())
    assert str(info.value) == (
        "vLLM tier unavailable: the vllm package is not installed; "
        "install with pip install '.[gpu]' on a GPU node"
    )
    assert not info.value.retryable
    with pytest.raises(TierUnavailableError, match="vLLM tier unavailable"):
        async for _ in tier.stream(plan_call()):
            pass


@pytest.mark.skipif(VLLM_INSTALLED, reason="checks the default availability without vLLM")
async def test_default_availability_without_vllm() -> None:
    with pytest.raises(TierUnavailableError, match="vllm package is not installed"):
        await VllmTier(vcfg()).generate(plan_call())


def test_negative_availability_is_rechecked_after_a_while() -> None:
    answers = iter([(False, "no GPU"), (True, "GPU joined")])
    calls: list[int] = []
    now = [0.0]

    def availability() -> tuple[bool, str]:
        calls.append(1)
        return next(answers)

    tier = VllmTier(vcfg(), availability=availability, clock=lambda: now[0])
    assert tier.available() == (False, "no GPU")
    now[0] = 10.0
    assert tier.available() == (False, "no GPU")
    now[0] = 40.0
    assert tier.available() == (True, "GPU joined")
    now[0] = 1000.0
    assert tier.available() == (True, "GPU joined")
    assert len(calls) == 2


async def test_structured_plan_request_and_answer(server: FakeOpenAIServer, served: VllmTier) -> None:
    answer = await served.generate(plan_call())
    plan = Plan.model_validate(answer.data)
    assert [s.action for s in plan.steps] == ["math_calculator", "math_calculator"]
    assert (answer.tier, answer.model) == ("vllm", "Qwen2.5-0.5B-Instruct")
    assert answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0
    assert answer.usage.calls == 1
    request = server.chat_requests[-1]
    assert request["body"]["model"] == "Qwen2.5-0.5B-Instruct"
    assert request["body"]["max_tokens"] == 512
    response_format = request["body"]["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["name"] == "plan"
    assert response_format["json_schema"]["schema"] == plan_json_schema()
    assert request["headers"]["authorization"] == "Bearer not-needed"


async def test_text_answer_without_schema(server: FakeOpenAIServer, served: VllmTier) -> None:
    server.set_mode("text")
    answer = await served.generate(ModelCall(role="ai_tool", messages=[{"role": "user", "content": "hi"}]))
    assert answer.data == answer.content == "echo: hi"
    assert "response_format" not in server.chat_requests[-1]["body"]


async def test_stream(server: FakeOpenAIServer, served: VllmTier) -> None:
    server.set_mode("stream", stream_chunks=["a ", "b ", "c"])
    call = ModelCall(role="ai_tool", messages=[{"role": "user", "content": "hi"}])
    assert [piece async for piece in served.stream(call)] == ["a ", "b ", "c"]


async def test_errors_are_typed_and_named_vllm(server: FakeOpenAIServer, served: VllmTier) -> None:
    server.set_mode("garbage")
    with pytest.raises(MalformedAnswerError, match=r"^vllm tier \(model 'Qwen2.5-0.5B-Instruct' at http"):
        await served.generate(plan_call())
    server.set_mode("rate_limit", retry_after="2")
    with pytest.raises(RateLimitedError) as limited:
        await served.generate(plan_call())
    assert limited.value.retry_after_s == 2.0
    server.set_mode("server_error")
    with pytest.raises(ServerError, match="HTTP 500"):
        await served.generate(plan_call())


async def test_unreachable_app_is_a_server_error() -> None:
    with FakeOpenAIServer() as fake:
        url = fake.base_url  # a loopback port nobody listens on once the server stops
    tier = VllmTier(vcfg(timeout_s=5), base_url=url, availability=lambda: (True, "test"))
    try:
        with pytest.raises(ServerError, match="connection failed"):
            await tier.generate(plan_call())
    finally:
        await tier.aclose()


async def test_a_call_without_messages_is_refused(served: VllmTier) -> None:
    with pytest.raises(CannotAnswerError, match="answers chat messages"):
        await served.generate(ModelCall(role="planner", payload="x"))
