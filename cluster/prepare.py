"""Settings as the runtime needs them, without importing Ray: absolute paths, tools checked, image built."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from officeray.config import Settings, apply_overrides
from officeray.errors import ConfigError


def absolutize(settings: Settings, base: Path | None = None) -> Settings:
    """``settings`` with relative file paths made absolute against ``base`` (default: the cwd)."""
    base = (base or Path.cwd()).resolve()
    url = sa.make_url(settings.store.url)
    overrides: dict[str, Any] = {
        "telemetry.trace_file": str((base / settings.telemetry.trace_file).resolve()),
        "workspace_root": str((base / settings.workspace_root).resolve()),
    }
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        overrides["store.url"] = url.set(database=str((base / url.database).resolve())).render_as_string(
            hide_password=False
        )
    return apply_overrides(settings, overrides)


def check_tools(settings: Settings) -> None:
    """Check the sandbox limits, import the plugins, check every ``tools:`` section.

    Raises :class:`ConfigError` naming the bad key.
    """
    from pydantic import ValidationError

    from tools_sandbox.catalog import describe_input_errors, validate_tool_settings
    from tools_sandbox.limits import SandboxLimits
    from tools_sandbox.plugins import load_plugins

    try:
        SandboxLimits(**settings.sandbox.limits)
    except ValidationError as exc:
        lines = [f"sandbox.limits.{line}" for line in describe_input_errors(exc)]
        raise ConfigError("; ".join(lines)) from None
    try:
        load_plugins(settings.plugins)
        validate_tool_settings(settings.tools)
    except (ImportError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def prepare_settings(settings: Settings) -> Settings:
    """Absolute paths, tool settings checked, and the sandbox image built (once) for Docker."""
    settings = absolutize(settings)
    check_tools(settings)
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
