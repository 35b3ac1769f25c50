"""Settings as the runtime needs them, without importing Ray: absolute paths, tools checked, image built."""

from __future__ import annotations

import os

from officeray.config import Settings, absolutize, apply_overrides
from officeray.tools.catalog import build_catalog


def prepare_settings(settings: Settings) -> Settings:
    """Absolute paths, the tool catalog checked (plugins, ``tools:`` sections: a
    :class:`~officeray.errors.ConfigError` before Ray starts), and the sandbox image built (once)
    for Docker."""
    settings = absolutize(settings)
    build_catalog(settings)
    if settings.sandbox.backend == "docker" and not settings.sandbox.image:
        from tools_sandbox.docker_sandbox import remove_sandbox_containers
        from tools_sandbox.image import ensure_image

        settings = apply_overrides(settings, {"sandbox.image": ensure_image()})
        remove_sandbox_containers(only_exited=True)  # left by runners of an earlier local cluster
    return settings


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
