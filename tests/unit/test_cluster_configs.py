"""The cluster files users deploy from: parsed, validated against Ray's own schema, references resolved."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml
from ray.serve.schema import ServeDeploySchema

from serving.gateway import Gateway
from serving.models import AiToolDeployment, PlannerDeployment, ReviewerDeployment

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"


def _serve_config() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((CLUSTER / "serve_config.yaml").read_text())
    return data


def test_serve_config_is_a_valid_serve_deploy_config() -> None:
    schema = ServeDeploySchema.model_validate(_serve_config())
    (app,) = schema.applications
    assert app.name == "officeray" and app.route_prefix == "/"


def test_serve_config_import_path_and_deployment_names_resolve() -> None:
    (app,) = _serve_config()["applications"]
    module, _, attr = app["import_path"].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))
    names = {d.name for d in (Gateway, PlannerDeployment, ReviewerDeployment, AiToolDeployment)}
    assert {d["name"] for d in app["deployments"]} == names


def test_serve_config_model_deployments_autoscale_within_bounds() -> None:
    (app,) = _serve_config()["applications"]
    for deployment in app["deployments"]:
        scaling = deployment.get("autoscaling_config")
        if deployment["name"] == "Gateway":
            assert scaling is None
            continue
        assert scaling is not None, deployment["name"]
        assert 1 <= scaling["min_replicas"] <= scaling["max_replicas"]
        assert scaling["target_ongoing_requests"] <= deployment["max_ongoing_requests"]
