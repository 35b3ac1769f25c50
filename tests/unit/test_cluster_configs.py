"""The cluster files users deploy from: parsed, validated against Ray's own schema, references resolved."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from officeray.config import VllmTierConfig, load_settings
from officeray.errors import ConfigError
from serving.app import app_builder
from serving.encoder import EncoderDeployment
from serving.gateway import Gateway
from serving.models import AiToolDeployment, PlannerDeployment, ReviewerDeployment
from serving.tiers.vllm_tier import VLLM_APP_NAME, VLLM_ROUTE_PREFIX, llm_config_dict

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
RAY_LAUNCHER_SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"


def _yaml(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((CLUSTER / name).read_text())
    return data


def _apps() -> dict[str, dict[str, Any]]:
    return {app["name"]: app for app in _yaml("serve_config.yaml")["applications"]}


def test_serve_config_is_a_valid_serve_deploy_config() -> None:
    schema = ServeDeploySchema.model_validate(_yaml("serve_config.yaml"))
    assert {(a.name, a.route_prefix) for a in schema.applications} == {
        ("officeray", "/"),
        (VLLM_APP_NAME, VLLM_ROUTE_PREFIX),
    }


def test_serve_config_import_path_and_deployment_names_resolve() -> None:
    app = _apps()["officeray"]
    module, _, attr = app["import_path"].partition(":")
    assert getattr(importlib.import_module(module), attr) is app_builder
    deployments = (Gateway, PlannerDeployment, ReviewerDeployment, AiToolDeployment, EncoderDeployment)
    names = {d.name for d in deployments}
    assert {d["name"] for d in app["deployments"]} == names


def test_serve_config_app_args_are_valid_officeray_settings() -> None:
    settings = load_settings(None, **_apps()["officeray"]["args"]["settings"])
    assert [t.tier for t in settings.models.planner] == ["vllm", "embedded"]
    assert settings.models.reviewer == settings.models.planner
    assert settings.runners.autoscaling is not None and settings.runners.autoscaling.max_runners >= 2
    # the builder itself accepts them (the vllm tier is skipped at call time where vLLM is missing)
    assert type(app_builder(_apps()["officeray"]["args"])).__name__ == "Application"


def test_app_builder_refuses_unknown_args_and_bad_settings_with_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="unknown app args \\['confg_file'\\]"):
        app_builder({"confg_file": "x.yaml"})
    with pytest.raises(ConfigError, match="runners.autoscaling"):
        app_builder({"settings": {"runners.autoscaling": {"min_runners": 9, "max_runners": 1}}})


def test_the_llm_app_serves_exactly_the_vllm_tier_the_planner_calls() -> None:
    apps = _apps()
    (tier,) = [t for t in apps["officeray"]["args"]["settings"]["models.planner"] if t["tier"] == "vllm"]
    (llm_config,) = apps[VLLM_APP_NAME]["args"]["llm_configs"]
    assert apps[VLLM_APP_NAME]["import_path"] == "ray.serve.llm:build_openai_app"
    assert llm_config == llm_config_dict(VllmTierConfig(**tier))
    assert llm_config["accelerator_type"] and llm_config["placement_group_config"]["bundle_per_worker"]["GPU"]


def test_serve_config_model_deployments_autoscale_within_bounds() -> None:
    app = _apps()["officeray"]
    for deployment in app["deployments"]:
        scaling = deployment.get("autoscaling_config")
        if deployment["name"] == "Gateway":
            assert scaling is None
            continue
        assert scaling is not None, deployment["name"]
        assert 1 <= scaling["min_replicas"] <= scaling["max_replicas"]
        assert scaling["target_ongoing_requests"] <= deployment["max_ongoing_requests"]


def test_local_autoscaling_config_validates_against_rays_launcher_schema() -> None:
    schema = json.loads(RAY_LAUNCHER_SCHEMA.read_text())
    config = _yaml("local-autoscaling.yaml")
    jsonschema.validate(config, schema)
    broken = {**config, "idle_timeout_minute": 1}  # a typo'd key is refused by the same schema
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_local_autoscaling_config_has_cpu_sandbox_nodes_and_gpu_nodes_and_a_plain_head() -> None:
    config = _yaml("local-autoscaling.yaml")
    assert config["provider"]["type"] == "fake_multinode"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]["resources"]
    assert "docker" not in head and "GPU" not in head  # runners and models never land on the head
    assert types["cpu_worker"]["resources"]["docker"] >= 1 and "GPU" not in types["cpu_worker"]["resources"]
    gpu = types["gpu_worker"]["resources"]
    (llm_config,) = _apps()[VLLM_APP_NAME]["args"]["llm_configs"]
    assert gpu["GPU"] >= 1 and f"accelerator_type:{llm_config['accelerator_type']}" in gpu
    assert all(t.get("min_workers", 0) == 0 for t in types.values())  # everything scales from zero
    assert config["idle_timeout_minutes"] > 0
