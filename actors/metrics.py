"""officeray's metrics through Ray's metrics API (``ray.util.metrics``).

:class:`RayMetrics` is the :class:`~officeray.metrics.Metrics` the composition root hands to the
orchestrators (which pass it on to their runner pools, schedulers, webhook deliverers and tool
runners) and to the model routers of the Serve replicas. Each process records into its own
Counter/Gauge/Histogram objects, one per metric of :data:`~officeray.metrics.CATALOG`, created on the
first recording in that process (they need a connected Ray worker, so a ``RayMetrics`` is created
anywhere and pickled into actors). Ray aggregates them per node and exports them on the node's
Prometheus endpoint (``ray start --metrics-export-port``, or ``telemetry.metrics.export_port`` for a
local instance) with the ``ray_`` prefix and the labels ``WorkerId``, ``NodeAddress``, ``SessionName``
and ``Component`` besides officeray's.

A metrics failure never fails a task: instruments that cannot be created (no Ray worker in this
process) are replaced by a no-op, with one warning.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from officeray.config import Settings
from officeray.metrics import CATALOG, NO_METRICS, CatalogMetrics, Metrics, MetricSpec

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_instruments: dict[int, dict[str, Any]] = {}
"""This process's Ray instruments (by process id: a forked child makes its own), by metric name."""


def _create(spec: MetricSpec) -> Any:
    from ray.util import metrics as ray_metrics

    if spec.kind == "counter":
        return ray_metrics.Counter(spec.name, spec.description, tag_keys=spec.labels)
    if spec.kind == "gauge":
        return ray_metrics.Gauge(spec.name, spec.description, tag_keys=spec.labels)
    return ray_metrics.Histogram(
        spec.name, spec.description, boundaries=list(spec.boundaries), tag_keys=spec.labels
    )


def process_instruments() -> dict[str, Any]:
    """The Ray instruments of every catalogued metric in this process (created on the first call);
    empty when they cannot be created here (no Ray worker)."""
    pid = os.getpid()
    with _lock:
        found = _instruments.get(pid)
        if found is None:
            try:
                found = {spec.name: _create(spec) for spec in CATALOG}
            except Exception as exc:  # not in a Ray worker: metrics are off in this process
                logger.warning("officeray metrics are off in process %s: %s", pid, exc)
                found = {}
            _instruments[pid] = found
        return found


class RayMetrics(CatalogMetrics):
    """Records through ``ray.util.metrics`` (see the module). Picklable: it holds no instrument."""

    def _instrument(self, spec: MetricSpec) -> Any:
        return process_instruments().get(spec.name)

    def _add(self, spec: MetricSpec, value: float, labels: dict[str, str]) -> None:
        counter = self._instrument(spec)
        if counter is not None:
            counter.inc(value, tags=labels)

    def _set(self, spec: MetricSpec, value: float, labels: dict[str, str]) -> None:
        gauge = self._instrument(spec)
        if gauge is not None:
            gauge.set(value, tags=labels)

    def _observe(self, spec: MetricSpec, value: float, labels: dict[str, str]) -> None:
        histogram = self._instrument(spec)
        if histogram is not None:
            histogram.observe(value, tags=labels)


def metrics_for(settings: Settings) -> Metrics:
    """:class:`RayMetrics`, or :data:`~officeray.metrics.NO_METRICS` when ``telemetry.metrics.enabled``
    is off."""
    return RayMetrics() if settings.telemetry.metrics.enabled else NO_METRICS
