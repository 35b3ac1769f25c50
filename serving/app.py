"""The Serve application: gateway (ingress) + planner + reviewer + ai_tool (+ encoder) deployments.

``build_app(settings)`` is the builder used by the CLI, the batch job and ``serve run``
(``serve run serving.app:app_builder config_file=...``). Each model deployment takes its
``serve.<role>`` settings: fixed ``num_replicas`` or ``autoscaling`` (min/max replicas, target
ongoing requests), ``max_ongoing_requests``, ``max_queued_requests`` (past it: backpressure) and
health-check period and timeout.

It is the composition root of the models: the orchestrators call the planner and reviewer through
the workflow's ports, :class:`~serving.models.ServePlanner` and :class:`~serving.models.ServeReviewer`
over the deployments' handles, built here and handed to the gateway, which creates the orchestrator
shards with them (:class:`actors.orchestrator.ModelPorts`; :mod:`actors` never imports
:mod:`serving`). With ``memory.enabled``, the ``encoder`` deployment serves the memory actor
(:class:`actors.memory.MemoryClient` over :class:`~serving.encoder.ServeEncoder`). Serve turns the
deployments bound inside them into handles when the app is built.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from actors.memory import MemoryClient
from actors.orchestrator import ModelPorts
from officeray.config import DeploymentSettings, EmbeddedTierConfig, Settings, absolutize, load_settings
from officeray.decompose import EmbeddedDecomposer
from officeray.errors import ConfigError
from officeray.tools.catalog import build_catalog
from serving.encoder import EncoderDeployment, ServeEncoder
from serving.gateway import Gateway
from serving.models import (
    AiToolDeployment,
    PlannerDeployment,
    ReviewerDeployment,
    ServeDecomposer,
    ServeGatekeeper,
    ServePlanner,
    ServeReviewer,
)


def deployment_options(dep: DeploymentSettings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "max_ongoing_requests": dep.max_ongoing_requests,
        "max_queued_requests": dep.max_queued_requests,
        "health_check_period_s": dep.health_check_period_s,
        "health_check_timeout_s": dep.health_check_timeout_s,
        "ray_actor_options": {"num_cpus": dep.num_cpus},
    }
    if dep.autoscaling is not None:
        options["autoscaling_config"] = dep.autoscaling.model_dump()
    else:
        options["num_replicas"] = dep.num_replicas
    return options


def build_app(settings: Settings) -> Application:
    serve_cfg = settings.serve
    # serve.deployment turns each class into a Deployment, which mypy cannot see.
    planner_dep: Any = PlannerDeployment
    reviewer_dep: Any = ReviewerDeployment
    ai_tool_dep: Any = AiToolDeployment
    gateway_dep: Any = Gateway
    planner = planner_dep.options(**deployment_options(serve_cfg.planner)).bind(settings)
    reviewer = reviewer_dep.options(**deployment_options(serve_cfg.reviewer)).bind(settings)
    ai_tool = ai_tool_dep.options(**deployment_options(serve_cfg.ai_tool)).bind(settings)
    memory = None
    if settings.memory.enabled:
        encoder_dep: Any = EncoderDeployment
        encoder = encoder_dep.options(**deployment_options(serve_cfg.encoder)).bind(settings)
        memory = MemoryClient(settings, ServeEncoder(encoder))
    gatekeeper = None
    if settings.models.gatekeeper:  # else: the rules alone, in the orchestrators (no Serve hop)
        risks = {name: spec.risk for name, spec in build_catalog(settings).items()}
        gatekeeper = ServeGatekeeper(reviewer, risks)
    ports = ModelPorts(
        planner=ServePlanner(planner),
        reviewer=ServeReviewer(reviewer),
        ai_tool=ai_tool,
        memory=memory,
        gatekeeper=gatekeeper,
        # embedded only: the rules run in the orchestrators (a task of one part costs no Serve hop)
        decomposer=(
            EmbeddedDecomposer()
            if all(isinstance(t, EmbeddedTierConfig) for t in settings.models.decomposer)
            else ServeDecomposer(planner)
        ),
    )
    app: Application = gateway_dep.options(**deployment_options(serve_cfg.gateway)).bind(
        settings, planner, reviewer, ai_tool, ports
    )
    return app


APP_BUILDER_ARGS = frozenset({"config_file", "settings"})
"""What ``args`` of :func:`app_builder` may hold."""


def app_builder(args: dict[str, Any]) -> Application:
    """Entry point for ``serve run`` / ``serve deploy`` (``import_path: serving.app:app_builder``).

    ``args`` may name a ``config_file`` (officeray's YAML, relative to the working directory) and
    give ``settings``: dotted keys applied over that file and the ``OFFICERAY_*`` environment, e.g.
    ``{"models.planner": [...], "runners.autoscaling": {"max_runners": 64}}``, so a Serve config
    file (``cluster/serve_config.yaml``) can carry officeray's settings itself.
    """
    unknown = set(args) - APP_BUILDER_ARGS
    if unknown:
        raise ConfigError(f"unknown app args {sorted(unknown)}; expected {sorted(APP_BUILDER_ARGS)}")
    overrides = args.get("settings") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(
            f"app args 'settings' must be a mapping of dotted keys, not {type(overrides).__name__}"
        )
    settings = absolutize(load_settings(args.get("config_file"), **overrides))
    build_catalog(settings)  # a bad plugin or tools: section fails here, before any deployment
    return build_app(settings)
