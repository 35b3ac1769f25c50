"""Bringing officeray up on Ray: connect or start Ray, deploy the Serve app, reach the orchestrator.

Used by the CLI (``officeray run``, ``officeray serve``, ``officeray examples``) and by the
``ray job submit`` entrypoint (:mod:`cluster.jobs.batch`). Relative paths in the settings (SQLite
file, trace file, workspace root) are made absolute here, in the driver, so every Ray worker sees
the same files whatever its working directory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray
import sqlalchemy as sa
from ray import serve

from actors.orchestrator import ORCHESTRATOR_NAME
from officeray.config import Settings, apply_overrides
from officeray.contracts import TaskRecord, TaskRequest
from officeray.errors import ConfigError
from serving.app import build_app

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 180.0
"""How long start-up may take (Ray, Serve, warm sandboxes) before it is reported as failed."""


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
    """Import the configured plugins and check every ``tools:`` section; ConfigError names the key."""
    from tools_sandbox.catalog import validate_tool_settings
    from tools_sandbox.plugins import load_plugins

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


def init_ray(settings: Settings, address: str | None, *, quiet: bool = True) -> None:
    """Connect to ``address`` (``"auto"``: the running cluster) or start a local Ray instance."""
    if ray.is_initialized():
        return
    if quiet:
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    kwargs: dict[str, Any] = {
        "namespace": settings.ray_namespace,
        "log_to_driver": not quiet,
        "logging_level": logging.WARNING if quiet else logging.INFO,
    }
    if address in (None, "local"):
        ray.init(address="local", include_dashboard=False, **kwargs)
    else:
        ray.init(address=address, **kwargs)


def deploy(settings: Settings, *, http: bool) -> None:
    """Deploy the Serve app (HTTP on ``serve.host:serve.port`` when ``http``, else handles only)."""
    if http:
        serve.start(http_options={"host": settings.serve.host, "port": settings.serve.port})
    else:
        serve.start(proxy_location="Disabled")
    serve.run(build_app(settings), name=settings.serve.app_name, route_prefix="/", blocking=False)


def app_is_running(settings: Settings) -> bool:
    try:
        status = serve.status()
    except Exception:
        return False
    app = status.applications.get(settings.serve.app_name)
    return app is not None and str(app.status).endswith("RUNNING")


def orchestrator(settings: Settings, timeout_s: float = READY_TIMEOUT_S) -> Any:
    """The orchestrator actor, once it and its tool runners are ready."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            actor = ray.get_actor(ORCHESTRATOR_NAME, namespace=settings.ray_namespace)
            break
        except ValueError:
            if time.monotonic() > deadline:
                raise TimeoutError("the orchestrator did not start; see the Ray logs") from None
            time.sleep(0.2)
    ray.get(actor.ready.remote(), timeout=max(1.0, deadline - time.monotonic()))
    return actor


async def run_tasks(
    actor: Any,
    requests: Sequence[TaskRequest],
    *,
    on_done: Callable[[int, TaskRecord], None] | None = None,
) -> list[TaskRecord]:
    """Submit every request, wait for all, and return the final records in input order."""

    async def one(index: int, request: TaskRequest) -> TaskRecord:
        record = await actor.run.remote(request)
        if on_done is not None:
            on_done(index, record)
        return record

    return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(requests))))


class LocalStack:
    """Ray + the Serve app + the orchestrator, as a context manager."""

    def __init__(self, settings: Settings, *, address: str | None = "local", http: bool = False) -> None:
        self.settings = prepare_settings(settings)
        self.address = address
        self.http = http
        self.actor: Any = None

    def __enter__(self) -> LocalStack:
        init_ray(self.settings, self.address)
        if not (self.address not in (None, "local") and app_is_running(self.settings)):
            deploy(self.settings, http=self.http)
        self.actor = orchestrator(self.settings)
        return self

    def run(self, requests: Sequence[TaskRequest], **kwargs: Any) -> list[TaskRecord]:
        return asyncio.run(run_tasks(self.actor, requests, **kwargs))

    def __exit__(self, *exc: object) -> None:
        # A local instance goes away whole with ray.shutdown(); on a cluster the app, the
        # orchestrator and its runners stay up for the next job.
        ray.shutdown()
