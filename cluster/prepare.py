"""Settings as the runtime needs them, without importing Ray: absolute paths, tools checked, image built."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from officeray.config import Settings, absolutize, apply_overrides
from officeray.telemetry import resolve_otlp
from officeray.tools.catalog import build_catalog


def prepare_settings(settings: Settings) -> Settings:
    """Absolute paths, the tool catalog checked (plugins, ``tools:`` sections: a
    :class:`~officeray.errors.ConfigError` before Ray starts), and the sandbox image built (once)
    for Docker."""
    settings = absolutize(settings)
    settings = with_otel_environment(settings, os.environ)
    build_catalog(settings)
    if settings.sandbox.backend == "docker" and not settings.sandbox.image:
        from tools_sandbox.docker_sandbox import remove_sandbox_containers
        from tools_sandbox.image import ensure_image

        settings = apply_overrides(settings, {"sandbox.image": ensure_image()})
        remove_sandbox_containers(only_exited=True)  # left by runners of an earlier local cluster
    return settings


def with_otel_environment(settings: Settings, environ: Mapping[str, str]) -> Settings:
    """``settings`` with the OTLP target and service name that the standard OpenTelemetry variables
    of this (the driver's) environment name, where the settings name none: the settings travel to
    every process of the cluster, the driver's environment does not."""
    overrides: dict[str, Any] = {}
    otlp = settings.telemetry.otlp
    target = resolve_otlp(otlp, environ)
    if target is not None and otlp.endpoint is None:
        overrides["telemetry.otlp.endpoint"] = target.endpoint
        overrides["telemetry.otlp.protocol"] = target.protocol
        overrides["telemetry.otlp.headers"] = target.headers
    if environ.get("OTEL_SERVICE_NAME"):
        overrides["telemetry.service_name"] = environ["OTEL_SERVICE_NAME"]
    return apply_overrides(settings, overrides) if overrides else settings


RAY_SINGLE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray's switch that keeps a one-machine instance on 127.0.0.1 (off, Ray binds the node's first
network interface even for a purely local instance)."""


def prefer_loopback() -> None:
    """Keep a local Ray instance on loopback, unless the process joins a cluster (``RAY_ADDRESS``).

    Must run before ``ray`` is imported: Ray reads the switch once, at import.
    """
    if os.environ.get("RAY_ADDRESS"):
        return
    os.environ.setdefault(RAY_SINGLE_NODE_ENV, "0")
