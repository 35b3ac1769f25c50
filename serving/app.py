"""The Serve application: gateway (ingress) + planner + reviewer deployments.

``build_app(settings)`` is the builder used by the CLI, the batch job and ``serve run``
(``serve run serving.app:app_builder config_file=...``).
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from officeray.config import DeploymentSettings, Settings, load_settings
from serving.gateway import Gateway
from serving.models import PlannerDeployment, ReviewerDeployment


def _options(dep: DeploymentSettings) -> dict[str, Any]:
    return {
        "num_replicas": dep.num_replicas,
        "max_ongoing_requests": dep.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": dep.num_cpus},
    }


def build_app(settings: Settings) -> Application:
    serve_cfg = settings.serve
    models = settings.models
    planner = PlannerDeployment.options(**_options(serve_cfg.planner)).bind(
        [t.model_dump() for t in models.planner]
    )
    reviewer = ReviewerDeployment.options(**_options(serve_cfg.reviewer)).bind(
        [t.model_dump() for t in models.reviewer]
    )
    return Gateway.options(**_options(serve_cfg.gateway)).bind(settings, planner, reviewer)


def app_builder(args: dict[str, str]) -> Application:
    """Entry point for ``serve run`` / ``serve deploy``: ``args`` may name a ``config_file``."""
    return build_app(load_settings(args.get("config_file")))
