"""Bringing officeray up on Ray: connect or start Ray, deploy the Serve app, reach the orchestrators
(through an :class:`~actors.client.OrchestratorClient`, the one way to them).

Used by the CLI (``officeray run``, ``officeray serve``, ``officeray examples``) and by the
``ray job submit`` entrypoint (:mod:`cluster.jobs.batch`). Relative paths in the settings (SQLite
file, trace file, workspace root) are made absolute here, in the driver, so every Ray worker sees
the same files whatever its working directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import ray
from ray import serve

from actors.client import OrchestratorClient, find_client
from actors.tool_runner import placement_problem
from cluster.prepare import absolutize as absolutize
from cluster.prepare import prepare_settings
from officeray.config import Settings
from officeray.contracts import TaskRecord, TaskRequest
from officeray.errors import OrchestratorUnavailableError
from serving.app import build_app

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"

SPAN_FLUSH_WAIT_S = 1.2
"""How long a local stack waits before it shuts down: every process's span batches (written every
0.5 s to the trace file, every ``telemetry.trace_store.flush_interval_s`` (1 s) to the trace store)
go out first; ``ray.shutdown`` kills the processes without flushing them."""

READY_TIMEOUT_S = 180.0
"""How long start-up may take (Ray, Serve, warm sandboxes) before it is reported as failed."""


def local_node_resources(settings: Settings) -> dict[str, float]:
    """Custom resources a local one-node instance advertises: enough for the whole runner pool."""
    runners = settings.runners
    pools = settings.workflow.orchestrators  # every orchestrator shard has a pool of its own
    return {name: amount * runners.max_runners * pools for name, amount in runners.resources.items()}


def local_metrics_options(settings: Settings) -> dict[str, Any]:
    """``ray.init`` options of a local instance for officeray's metrics: how often its processes report
    them (``telemetry.metrics.report_interval_ms``) and, when ``telemetry.metrics.export_port`` is set,
    the port of its Prometheus endpoint (``http://<node>:<port>/metrics``; Ray picks one otherwise)."""
    metrics = settings.telemetry.metrics
    options: dict[str, Any] = {"_system_config": {"metrics_report_interval_ms": metrics.report_interval_ms}}
    if metrics.export_port is not None:
        options["_metrics_export_port"] = metrics.export_port
    return options


SERVE_CONTROL_LOOP_INTERVAL_S = 1.0
"""How often Serve's controller reconciles the app on a local instance (Ray's default: every 0.1 s,
0.04 cores of an idle stack, and as much again in the GCS, which it asks for every node's resources
each time). Replica health checks keep their own period (10 s); a dead replica is replaced, and a
deployment scaled, at most this much later."""

SERVE_METRICS_EXPORT_INTERVAL_MS = 1000
"""How often every Serve replica and every process holding a handle hands its cached request metrics
to Ray on a local instance (Ray's default: every 100 ms, a 10 Hz loop in each). Ray exports them
every ``telemetry.metrics.report_interval_ms`` (10 s) anyway."""

REPORTER_MIN_INTERVAL_MS = 5000
"""Ray's default period of the node stats (``ray_node_*``: CPU, memory of every worker) its agent
collects with psutil: a local instance collects them as often as it exports metrics, never more
often than this."""


def local_ray_env(settings: Settings) -> dict[str, str]:
    """Environment variables of a local instance's Ray processes (read by them when they start): the
    periods of Ray's own idle loops, slowed from what a production cluster's dashboard wants to what
    one machine that runs tasks needs. A variable already set in this process wins."""
    return {
        "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": f"{SERVE_CONTROL_LOOP_INTERVAL_S:g}",
        "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": str(SERVE_METRICS_EXPORT_INTERVAL_MS),
        # the log monitor globs the session's log folder at each of its 10 Hz passes while the folder
        # holds fewer than this many files; at 0, every 0.5 s (its LOG_NAME_UPDATE_INTERVAL_S)
        "RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0",
        "REPORTER_UPDATE_INTERVAL_MS": str(
            max(REPORTER_MIN_INTERVAL_MS, settings.telemetry.metrics.report_interval_ms)
        ),
    }


@contextlib.contextmanager
def process_environment(updates: Mapping[str, str]) -> Iterator[None]:
    """``updates`` in ``os.environ`` (each only where the variable is not set already) while the
    block runs, so the processes it starts inherit them; this process's environment is as before
    afterwards."""
    added = [name for name in updates if name not in os.environ]
    for name in added:
        os.environ[name] = updates[name]
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


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
        # Everything of a local instance listens on loopback, never on another interface. This one
        # node runs the sandboxes, so it advertises the runners' custom resources (``docker``). Ray's
        # processes (raylet, agents, every worker) start here and keep the periods of local_ray_env.
        with process_environment(local_ray_env(settings)):
            ray.init(
                address="local",
                include_dashboard=False,
                _node_ip_address=LOOPBACK,
                resources=local_node_resources(settings),
                **local_metrics_options(settings),
                **kwargs,
            )
    else:
        ray.init(address=address, **kwargs)


def deploy(settings: Settings, *, http: bool, proxy_location: str = "EveryNode") -> None:
    """Deploy the Serve app (HTTP on ``serve.host:serve.port`` when ``http``, else handles only).
    ``proxy_location``: Serve's HTTP proxies on every node, or on the head only (``HeadOnly``: the
    nodes of a cluster on one machine share its ports)."""
    if http:
        http_options = {"host": settings.serve.host, "port": settings.serve.port}
        serve.start(http_options=http_options, proxy_location=proxy_location)
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


def orchestrators(settings: Settings, timeout_s: float = READY_TIMEOUT_S) -> OrchestratorClient:
    """A client of the app's orchestrators, once they and their tool runners are ready."""
    deadline = time.monotonic() + timeout_s
    client = find_client(settings, timeout_s)
    try:
        asyncio.run(client.ready(max(1.0, deadline - time.monotonic())))
    except OrchestratorUnavailableError:
        why = placement_problem(settings.runners.resources, ray.nodes()) or (
            "see `ray status` for demands no node can meet, and the Ray logs"
        )
        message = f"the orchestrator and its tool runners were not ready in {timeout_s:.0f}s: {why}"
        raise TimeoutError(message) from None
    return client


async def run_tasks(
    client: OrchestratorClient,
    requests: Sequence[TaskRequest],
    *,
    on_done: Callable[[int, TaskRecord], None] | None = None,
) -> list[TaskRecord]:
    """Submit every request, wait for all, and return the final records in input order."""

    async def one(index: int, request: TaskRequest) -> TaskRecord:
        record = await client.run(request)
        if on_done is not None:
            on_done(index, record)
        return record

    return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(requests))))


class LocalStack:
    """Ray + the Serve app + the orchestrators (:attr:`client`), as a context manager."""

    def __init__(
        self,
        settings: Settings,
        *,
        address: str | None = "local",
        http: bool = False,
        proxy_location: str = "EveryNode",
    ) -> None:
        self.settings = prepare_settings(settings)
        self.address = address
        self.http = http
        self.proxy_location = proxy_location
        self._client: OrchestratorClient | None = None

    def __enter__(self) -> LocalStack:
        init_ray(self.settings, self.address)
        if not (self.address not in (None, "local") and app_is_running(self.settings)):
            deploy(self.settings, http=self.http, proxy_location=self.proxy_location)
        self._client = orchestrators(self.settings)
        return self

    @property
    def client(self) -> OrchestratorClient:
        """The way to the orchestrators (inside the ``with`` block)."""
        if self._client is None:
            raise RuntimeError("the stack is not started: use it in a `with` block")
        return self._client

    @property
    def actor(self) -> Any:
        """Orchestrator shard 0's actor handle, for what the client does not do (fault injection and
        benchmarks: ``pid``, ``busy_runner_pids``); tasks go through :attr:`client`."""
        return self.client.handle(0)

    def run(self, requests: Sequence[TaskRequest], **kwargs: Any) -> list[TaskRecord]:
        return asyncio.run(run_tasks(self.client, requests, **kwargs))

    def __exit__(self, *exc: object) -> None:
        # A local instance goes away whole with ray.shutdown(); on a cluster the app, the
        # orchestrator and its runners stay up for the next job.
        if self.address == "local":
            time.sleep(SPAN_FLUSH_WAIT_S)  # the last spans of every process reach the trace file/store
        ray.shutdown()
