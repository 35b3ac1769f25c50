"""The trace collector: one actor of the cluster that writes every process's spans to the store.

Every process that makes spans gets a :class:`CollectorSink` from :func:`tracer_for`: its batch span
processor hands each batch of finished spans to the collector (one Ray call per batch, waited for
with a timeout in the processor's own thread, so a slow collector makes the process drop spans,
never wait). The collector writes each batch in one transaction, so ``GET /v1/tasks/{id}/trace``
finds the spans of every node in one indexed place, and enforces the retention of
``telemetry.trace_store`` (age and number of spans) every ``prune_interval_s``.

The collector is a detached named actor, created by whichever process needs it first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import ray
from opentelemetry import trace

from officeray.config import Settings
from officeray.contracts import utcnow
from officeray.store import SqlStore
from officeray.telemetry import SpanRecord, setup_tracing

logger = logging.getLogger(__name__)

COLLECTOR_NAME = "officeray-trace-collector"
COLLECTOR_MAX_CONCURRENCY = 64
HEAD_NODE_RESOURCE = "node:__internal_head__"
"""The resource Ray gives the head node only (what pins an actor there)."""
HEAD_NODE_SHARE = 0.001
SINK_CALL_TIMEOUT_S = 10.0
"""How long a process's export thread waits for the collector to take a batch."""


class TraceCollector:
    """Writes span batches to the store; prunes them by age and count."""

    def __init__(self, settings: Settings, clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings.telemetry.trace_store
        self.store = SqlStore(settings.store.url)
        self.clock = clock
        self.written = 0
        self.pruned = 0
        self._pruner: asyncio.Task[None] | None = None

    def _ensure_pruner(self) -> None:
        if self._pruner is None:
            self._pruner = asyncio.get_running_loop().create_task(self._prune_forever())

    async def ingest(self, spans: Sequence[SpanRecord]) -> int:
        """Store one batch; how many spans."""
        self._ensure_pruner()
        written = await self.store.add_spans(spans, now=self.clock())
        self.written += written
        return written

    async def prune(self) -> int:
        older_than = self.clock() - timedelta(seconds=self.settings.max_age_s)
        deleted = await self.store.prune_spans(older_than, self.settings.max_spans)
        self.pruned += deleted
        return deleted

    async def _prune_forever(self) -> None:
        while True:
            try:
                await self.prune()
            except Exception:  # a locked database now is no reason to stop pruning later
                logger.exception("pruning the trace store failed")
            await asyncio.sleep(self.settings.prune_interval_s)

    async def stats(self) -> dict[str, Any]:
        self._ensure_pruner()
        return {"written": self.written, "pruned": self.pruned}


def detached_on_head(cls: type, name: str, settings: Settings, max_concurrency: int, *args: Any) -> Any:
    """The cluster's one ``name`` actor of ``cls`` (its handle), created on first use with ``args``:
    detached, restarted when it dies, asking for no CPU, on the head node."""
    actor_cls: Any = ray.remote(cls).options(
        name=name,
        namespace=settings.ray_namespace,
        get_if_exists=True,
        lifetime="detached",
        num_cpus=0,
        # on the head node: a detached actor on a worker node would keep that node from ever being
        # idle, so the autoscaler could not remove it
        resources={HEAD_NODE_RESOURCE: HEAD_NODE_SHARE},
        max_concurrency=max_concurrency,
        max_restarts=-1,
    )
    try:
        return actor_cls.remote(*args)
    except ValueError:  # another process created it between the lookup and the creation
        return ray.get_actor(name, namespace=settings.ray_namespace)


def collector_handle(settings: Settings) -> Any:
    """The cluster's trace collector (its handle), created (detached) on first use."""
    return detached_on_head(TraceCollector, COLLECTOR_NAME, settings, COLLECTOR_MAX_CONCURRENCY, settings)


class CollectorSink:
    """A process's :data:`~officeray.telemetry.SpanSink`: each batch goes to the collector."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._handle: Any = None
        self._lock = threading.Lock()

    def _collector(self) -> Any:
        with self._lock:
            if self._handle is None:
                self._handle = collector_handle(self._settings)
            return self._handle

    def __call__(self, spans: Sequence[SpanRecord]) -> None:
        if not ray.is_initialized():  # a process outside Ray (a unit test): nowhere to send them
            raise RuntimeError("not connected to Ray: spans are not collected")
        handle = self._collector()
        try:
            ray.get(handle.ingest.remote(list(spans)), timeout=SINK_CALL_TIMEOUT_S)
        except Exception:
            with self._lock:  # the collector may have died: look it up again next time
                self._handle = None
            raise


def node_name() -> str:
    """This process's Ray node id, or "" outside Ray (asking Ray's runtime context outside it would
    connect to, or start, a cluster)."""
    if not ray.is_initialized():
        return ""
    with contextlib.suppress(Exception):
        return str(ray.get_runtime_context().get_node_id())
    return ""


def tracer_for(settings: Settings, component: str, instance: str | None = None) -> trace.Tracer:
    """The tracer of ``component`` in this Ray process: spans go to the trace collector (when
    ``telemetry.trace_store.enabled``) and to OTLP (when configured)."""
    sink = CollectorSink(settings) if settings.telemetry.trace_store.enabled else None
    return setup_tracing(settings.telemetry, component, sink=sink, instance=instance, node=node_name())
