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
    # serve.deployment turns each class into a Deployment, which mypy cannot see.
    planner_dep: Any = PlannerDeployment
    reviewer_dep: Any = ReviewerDeployment
    gateway_dep: Any = Gateway
    planner = planner_dep.options(**_options(serve_cfg.planner)).bind(
        [t.model_dump() for t in models.planner]
    )
    reviewer = reviewer_dep.options(**_options(serve_cfg.reviewer)).bind(
        [t.model_dump() for t in models.reviewer]
    )
    app: Application = gateway_dep.options(**_options(serve_cfg.gateway)).bind(settings, planner, reviewer)
    return app


def app_builder(args: dict[str, str]) -> Application:
    """Entry point for ``serve run`` / ``serve deploy``: ``args`` may name a ``config_file``."""
    return build_app(load_settings(args.get("config_file")))
