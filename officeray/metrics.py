"""Metrics: what officeray counts, gauges and measures, as a port the components call.

The core never talks to a metrics backend. Components take a :class:`Metrics` (a constructor
parameter whose default is :data:`NO_METRICS`, which records nothing) and tell it what happened in
words of the domain: a task finished, a step finished, a model was called, a breaker changed state...
The composition root hands them :class:`actors.metrics.RayMetrics`, which records through
``ray.util.metrics``; Ray's Prometheus endpoint on each node exports it (every name below with Ray's
``ray_`` prefix: ``officeray_tasks_finished_total`` is scraped as ``ray_officeray_tasks_finished_total``).
Tests hand them :class:`RecordingMetrics` and read back what was recorded.

:data:`CATALOG` lists every metric once (name, type, labels, meaning, histogram boundaries): the Ray
adapter creates its instruments from it, and the Grafana dashboard (``cluster/grafana/officeray.json``)
and ``docs/observability.md`` are checked against it. :class:`CatalogMetrics` turns the port's calls
into counter increments, gauge values and histogram observations of those metrics, once for every
backend.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from officeray.contracts import StepOutcome, TaskRecord

MetricKind = Literal["counter", "gauge", "histogram"]

METRIC_PREFIX = "officeray_"
"""Every officeray metric's name starts with this."""

EXPORTED_PREFIX = "ray_"
"""What Ray's Prometheus exporter puts before the name of an application metric."""

# -- histogram boundaries (seconds; Ray wants them positive and increasing) ------------------------

TASK_LATENCY_BUCKETS_S: tuple[float, ...] = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
"""A task's run, from acceptance (or its DLQ retry) to its end: sub-second (embedded models, ready
plans) to the hour (``maximum_duration_s`` defaults)."""

STEP_LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300,
)  # fmt: skip
"""One tool step, from the hand-off to the runner pool to its outcome: a warm-sandbox call takes
milliseconds, a slow tool minutes (``timeout_seconds`` defaults to 300)."""

MODEL_LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120,
)  # fmt: skip
"""One try on one model tier: the embedded tier answers in a millisecond, a remote model in seconds
(a tier's ``timeout_s`` defaults to 60)."""

BREAKER_STATE_VALUES: Mapping[str, int] = {"closed": 0, "half_open": 1, "open": 2}
"""The value of ``officeray_breaker_state`` for each state of a tier's circuit breaker."""

NO_TIER = "none"
"""The ``tier`` label of a model call no tier answered."""


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its name (with :data:`METRIC_PREFIX`), type, labels, meaning, and for a histogram
    its bucket boundaries."""

    name: str
    kind: MetricKind
    description: str
    labels: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()

    @property
    def exported_name(self) -> str:
        """The name Prometheus scrapes (Ray's prefix; a histogram adds ``_bucket``, ``_sum``, ``_count``)."""
        return EXPORTED_PREFIX + self.name


TASKS_FINISHED = MetricSpec(
    "officeray_tasks_finished_total",
    "counter",
    "Tasks that reached a final status (completed, failed, cancelled...), by tenant and status.",
    ("tenant", "status"),
)
TASK_LATENCY = MetricSpec(
    "officeray_task_latency_seconds",
    "histogram",
    "Run time of finished tasks, from acceptance (or their DLQ retry) to their end, by final status.",
    ("status",),
    TASK_LATENCY_BUCKETS_S,
)
STEP_LATENCY = MetricSpec(
    "officeray_step_latency_seconds",
    "histogram",
    "Tool step attempts, from the hand-off to the runner pool (waiting for an idle runner included) "
    "to the outcome, by tool and outcome (ok, or the error type).",
    ("tool", "outcome"),
    STEP_LATENCY_BUCKETS_S,
)
MODEL_CALLS = MetricSpec(
    "officeray_model_calls_total",
    "counter",
    "Model calls by role and tier: every try on a tier (outcome ok or error), a tier skipped because "
    "its circuit is open (skipped_open_circuit), an answer from the response cache (cache_hit).",
    ("role", "tier", "outcome"),
)
MODEL_LATENCY = MetricSpec(
    "officeray_model_call_latency_seconds",
    "histogram",
    "Latency of one try on one model tier (answered or failed), by role and tier.",
    ("role", "tier"),
    MODEL_LATENCY_BUCKETS_S,
)
MODEL_TOKENS = MetricSpec(
    "officeray_model_tokens_total",
    "counter",
    "Tokens billed by model tiers, by role, tier and direction (in: prompt, out: completion).",
    ("role", "tier", "direction"),
)
MODEL_FALLBACKS = MetricSpec(
    "officeray_model_fallbacks_total",
    "counter",
    "Times the model router gave a tier up and went on to the next one of the chain, by role, the "
    "tier given up and why (the last error's type, or skipped_open_circuit).",
    ("role", "tier", "reason"),
)
BREAKER_STATE = MetricSpec(
    "officeray_breaker_state",
    "gauge",
    "Circuit breaker of each model tier, per router (one per role and replica): 0 closed, "
    "1 half-open, 2 open.",
    ("role", "tier"),
)
RUNNER_POOL_SIZE = MetricSpec(
    "officeray_runner_pool_size",
    "gauge",
    "Tool runners (one warm sandbox each) in an orchestrator's pool.",
)
RUNNER_POOL_BUSY = MetricSpec(
    "officeray_runner_pool_busy",
    "gauge",
    "Tool runners of an orchestrator's pool running a step now.",
)
TASKS_QUEUED = MetricSpec(
    "officeray_tasks_queued",
    "gauge",
    "Tasks waiting for a task slot in an orchestrator (they stay queued), per tenant.",
    ("tenant",),
)
DLQ_DEPTH = MetricSpec(
    "officeray_dlq_depth",
    "gauge",
    "Tasks in the dead-letter queue (read from the store every few seconds).",
)
WEBHOOK_BACKLOG = MetricSpec(
    "officeray_webhook_backlog",
    "gauge",
    "Webhook deliveries not delivered yet and not given up (read from the store every few seconds).",
)
WEBHOOK_ATTEMPTS = MetricSpec(
    "officeray_webhook_attempts_total",
    "counter",
    "Webhook delivery attempts, by the delivery's state after it: delivered, pending (failed, tried "
    "again later), given_up, not_sent.",
    ("outcome",),
)
SANDBOX_STARTS = MetricSpec(
    "officeray_sandbox_starts_total",
    "counter",
    "Sandboxes started by tool runners (a runner's first, its pre-warmed spares, replacements), by backend.",
    ("backend",),
)

CATALOG: tuple[MetricSpec, ...] = (
    TASKS_FINISHED,
    TASK_LATENCY,
    STEP_LATENCY,
    MODEL_CALLS,
    MODEL_LATENCY,
    MODEL_TOKENS,
    MODEL_FALLBACKS,
    BREAKER_STATE,
    RUNNER_POOL_SIZE,
    RUNNER_POOL_BUSY,
    TASKS_QUEUED,
    DLQ_DEPTH,
    WEBHOOK_BACKLOG,
    WEBHOOK_ATTEMPTS,
    SANDBOX_STARTS,
)
"""Every metric officeray defines."""

SPECS: Mapping[str, MetricSpec] = {spec.name: spec for spec in CATALOG}


class Metrics(Protocol):
    """What components report. Every method returns at once and never raises for a good call."""

    def task_finished(self, tenant: str, status: str, latency_s: float) -> None:
        """A task reached final ``status`` after ``latency_s`` (:func:`task_latency_s`)."""

    def step_finished(self, tool: str, outcome: str, latency_s: float) -> None:
        """An attempt of a ``tool`` step ended: ``outcome`` is ``ok`` or the error type
        (:func:`step_outcome`)."""

    def model_called(
        self,
        role: str,
        tier: str,
        outcome: str,
        latency_s: float | None = None,
        tokens_in: int = 0,
        tokens_out: int = 0,
    ) -> None:
        """One try on a model ``tier`` for ``role`` (``ok``, ``error``), or a skip or cache hit
        (``latency_s`` None: no try was made)."""

    def model_fell_back(self, role: str, tier: str, reason: str) -> None:
        """The router gave ``tier`` up (for ``reason``) and goes on to the next tier of the chain."""

    def breaker_state(self, role: str, tier: str, state: str) -> None:
        """The circuit breaker of ``tier`` is now ``closed``, ``half_open`` or ``open``."""

    def runner_pool(self, size: int, busy: int) -> None:
        """The tool-runner pool has ``size`` runners, ``busy`` of them running a step."""

    def tasks_queued(self, tenant: str, depth: int) -> None:
        """``depth`` tasks of ``tenant`` wait for a task slot."""

    def dlq_depth(self, depth: int) -> None:
        """The dead-letter queue holds ``depth`` tasks."""

    def webhook_backlog(self, pending: int) -> None:
        """``pending`` webhook deliveries are neither delivered nor given up."""

    def webhook_attempted(self, outcome: str) -> None:
        """A webhook delivery was attempted; the delivery is now ``outcome`` (delivered, pending...)."""

    def sandbox_started(self, backend: str) -> None:
        """A tool runner started a sandbox of ``backend`` (docker, local)."""


class CatalogMetrics:
    """The port's calls as increments, values and observations of the :data:`CATALOG`'s metrics.

    A backend subclasses it and implements :meth:`_add` (a counter), :meth:`_set` (a gauge) and
    :meth:`_observe` (a histogram); the labels it gets are exactly the metric's."""

    def _add(self, spec: MetricSpec, value: float, labels: dict[str, str]) -> None:
        raise NotImplementedError

    def _set(self, spec: MetricSpec, value: float, labels: dict[str, str]) -> None:
        raise NotImplementedError

    def _observe(self, spec: MetricSpec, value: float, labels: dict[str, str]) -> None:
        raise NotImplementedError

    def task_finished(self, tenant: str, status: str, latency_s: float) -> None:
        self._add(TASKS_FINISHED, 1, {"tenant": tenant, "status": status})
        self._observe(TASK_LATENCY, max(0.0, latency_s), {"status": status})

    def step_finished(self, tool: str, outcome: str, latency_s: float) -> None:
        self._observe(STEP_LATENCY, max(0.0, latency_s), {"tool": tool, "outcome": outcome})

    def model_called(
        self,
        role: str,
        tier: str,
        outcome: str,
        latency_s: float | None = None,
        tokens_in: int = 0,
        tokens_out: int = 0,
    ) -> None:
        self._add(MODEL_CALLS, 1, {"role": role, "tier": tier, "outcome": outcome})
        if latency_s is not None:
            self._observe(MODEL_LATENCY, max(0.0, latency_s), {"role": role, "tier": tier})
        for direction, tokens in (("in", tokens_in), ("out", tokens_out)):
            if tokens > 0:
                self._add(MODEL_TOKENS, tokens, {"role": role, "tier": tier, "direction": direction})

    def model_fell_back(self, role: str, tier: str, reason: str) -> None:
        self._add(MODEL_FALLBACKS, 1, {"role": role, "tier": tier, "reason": reason})

    def breaker_state(self, role: str, tier: str, state: str) -> None:
        if state not in BREAKER_STATE_VALUES:
            raise ValueError(
                f"unknown breaker state {state!r}; expected one of {sorted(BREAKER_STATE_VALUES)}"
            )
        self._set(BREAKER_STATE, BREAKER_STATE_VALUES[state], {"role": role, "tier": tier})

    def runner_pool(self, size: int, busy: int) -> None:
        self._set(RUNNER_POOL_SIZE, size, {})
        self._set(RUNNER_POOL_BUSY, busy, {})

    def tasks_queued(self, tenant: str, depth: int) -> None:
        self._set(TASKS_QUEUED, depth, {"tenant": tenant})

    def dlq_depth(self, depth: int) -> None:
        self._set(DLQ_DEPTH, depth, {})

    def webhook_backlog(self, pending: int) -> None:
        self._set(WEBHOOK_BACKLOG, pending, {})

    def webhook_attempted(self, outcome: str) -> None:
        self._add(WEBHOOK_ATTEMPTS, 1, {"outcome": outcome})

    def sandbox_started(self, backend: str) -> None:
        self._add(SANDBOX_STARTS, 1, {"backend": backend})


class NoopMetrics(CatalogMetrics):
    """Records nothing: the default of every component that takes a :class:`Metrics`."""

    def _add(self, spec: MetricSpec, value: float, labels: dict[str, str]) -> None:
        pass

    def _set(self, spec: MetricSpec, value: float, labels: dict[str, str]) -> None:
        pass

    def _observe(self, spec: MetricSpec, value: float, labels: dict[str, str]) -> None:
        pass


NO_METRICS: Metrics = NoopMetrics()


LabelSet = tuple[tuple[str, str], ...]


class RecordingMetrics(CatalogMetrics):
    """The fake for tests: keeps what was recorded, as Prometheus would hold it (counter totals, the
    last gauge value, every histogram observation), per metric and label set. Thread-safe. Raises
    ``ValueError`` for labels that are not exactly the metric's (as Ray does)::

        metrics = RecordingMetrics()
        pool = RunnerPool(settings, actors=LocalRunnerActors(), metrics=metrics)
        ...
        assert metrics.gauge("officeray_runner_pool_size") == 2
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[tuple[str, LabelSet], float] = {}
        self.gauges: dict[tuple[str, LabelSet], float] = {}
        self.histograms: dict[tuple[str, LabelSet], list[float]] = {}
        self.history: list[tuple[str, dict[str, str], float]] = []
        """Every recording, in order: ``(metric name, labels, value)``."""

    @staticmethod
    def _key(spec: MetricSpec, labels: Mapping[str, str]) -> tuple[str, LabelSet]:
        if set(labels) != set(spec.labels):
            raise ValueError(f"{spec.name} takes labels {list(spec.labels)}, not {sorted(labels)}")
        if not all(isinstance(value, str) for value in labels.values()):
            raise ValueError(f"{spec.name}: label values must be strings, not {dict(labels)}")
        return spec.name, tuple(sorted(labels.items()))

    def _add(self, spec: MetricSpec, value: float, labels: dict[str, str]) -> None:
        if value <= 0:
            raise ValueError(f"{spec.name}: a counter only grows (got {value})")
        with self._lock:
            key = self._key(spec, labels)
            self.counters[key] = self.counters.get(key, 0.0) + value
            self.history.append((spec.name, dict(labels), value))

    def _set(self, spec: MetricSpec, value: float, labels: dict[str, str]) -> None:
        with self._lock:
            self.gauges[self._key(spec, labels)] = value
            self.history.append((spec.name, dict(labels), value))

    def _observe(self, spec: MetricSpec, value: float, labels: dict[str, str]) -> None:
        with self._lock:
            self.histograms.setdefault(self._key(spec, labels), []).append(value)
            self.history.append((spec.name, dict(labels), value))

    # -- reading back ------------------------------------------------------------------------------

    @staticmethod
    def _matches(labels: LabelSet, wanted: Mapping[str, str]) -> bool:
        have = dict(labels)
        return all(have.get(name) == value for name, value in wanted.items())

    def counter(self, name: str, **labels: str) -> float:
        """The total of counter ``name`` over its label sets that have ``labels`` (0 if none)."""
        with self._lock:
            return sum(v for (n, ls), v in self.counters.items() if n == name and self._matches(ls, labels))

    def gauge(self, name: str, **labels: str) -> float | None:
        """The last value of gauge ``name`` with exactly ``labels`` (None: never set)."""
        with self._lock:
            return self.gauges.get((name, tuple(sorted(labels.items()))))

    def observations(self, name: str, **labels: str) -> list[float]:
        """Every observation of histogram ``name`` in its label sets that have ``labels``."""
        with self._lock:
            return [
                value
                for (n, ls), values in self.histograms.items()
                if n == name and self._matches(ls, labels)
                for value in values
            ]

    def values(self, name: str, **labels: str) -> list[float]:
        """Every value recorded for ``name`` (any kind) with ``labels``, in order."""
        with self._lock:
            return [
                value
                for n, ls, value in self.history
                if n == name and all(ls.get(k) == v for k, v in labels.items())
            ]


def task_latency_s(record: TaskRecord) -> float:
    """A final task's run time: from its acceptance (or its last DLQ retry) to its end."""
    started = record.run_started_at or record.created_at
    ended = record.finished_at or record.updated_at
    return max(0.0, (ended - started).total_seconds())


def step_outcome(outcome: StepOutcome) -> str:
    """The ``outcome`` label of a step attempt: ``ok``, or its error type (``timeout``...)."""
    return "ok" if outcome.error is None else outcome.error.type.value
