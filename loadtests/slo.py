"""Service-level objectives (SLOs) checked against a load-test report: the gate of a run.

An SLO is one threshold, written the same way on the command line (``--slo EXPR``) and in a YAML
file (``slos: [EXPR, ...]``)::

    <selector>.<metric> <op> <number>

with ``<op>`` one of ``<=``, ``<``, ``>=``, ``>`` (whitespace around the parts is optional). Selectors:

* ``submit``: task submissions (``POST /v1/tasks``);
* ``completion``: all task completions together (locust request type ``TASK``);
* ``completion[KIND]``: the completions of one task kind;
* ``request[TYPE NAME]``: any locust request type and name, e.g. ``request[LLM ttft]`` or
  ``request[GET /v1/tasks/[id]]`` (the type is the first word, the name the rest);
* ``run``: the whole run.

Metrics of the request selectors (:data:`REQUEST_METRICS`): ``p50_ms p90_ms p95_ms p99_ms max_ms
mean_ms`` (milliseconds), ``count``, ``failures``, ``failure_rate`` (a fraction, 0..1) and
``throughput_rps`` (requests per second over the run). Metrics of ``run`` (:data:`RUN_METRICS`):
``failures`` and ``failure_rate`` over all requests of any type, and ``trace_completeness`` (the
fraction, 0..1, of completed tasks whose trace was complete, from ``run.json``'s ``traces``).

Examples: ``completion.p95_ms <= 30000``, ``submit.failure_rate < 0.01``,
``run.trace_completeness >= 0.99``.

A gate must not pass vacuously: an SLO whose selector has no samples (or, for
``trace_completeness``, a run without trace data) is violated, with the message ``no samples``.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loadtests.records import COMPLETION_TYPE
from officeray.config import read_yaml_file

SELECTORS = ("submit", "completion", "completion[KIND]", "request[TYPE NAME]", "run")
"""The selector forms, as shown in error messages."""

PERCENTILES = (50, 90, 95, 99)
"""The latency percentiles of every aggregate (``p50_ms`` ...)."""

LATENCY_METRICS = (*(f"p{q}_ms" for q in PERCENTILES), "max_ms", "mean_ms")
"""The latency keys of an aggregate, in milliseconds."""

COUNT_METRICS = ("count", "failures", "failure_rate", "throughput_rps")
"""The count and rate keys of an aggregate."""

REQUEST_METRICS = (*LATENCY_METRICS, *COUNT_METRICS)
"""Metrics of ``submit``, ``completion``, ``completion[KIND]`` and ``request[TYPE NAME]``: keys of an
aggregate in the report (see :func:`loadtests.report.aggregate`)."""

RUN_METRICS = ("failures", "failure_rate", "trace_completeness")
"""Metrics of the ``run`` selector."""

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
}

NO_SAMPLES = "no samples"
"""The message of an SLO whose selector has nothing to measure (it is violated)."""

TRACE_FRACTION_KEYS = ("completeness", "complete_fraction", "fraction_complete")
"""Keys of ``run.json``'s ``traces`` that may hold the complete fraction (0..1) directly."""

TRACE_COUNT_KEYS = (("complete", "checked"), ("complete", "total"), ("complete", "completed"))
"""(complete, of) count pairs of ``traces`` from which the fraction is computed when no fraction key
is present."""

_EXPR = re.compile(
    r"^\s*(?P<left>.+?)\s*(?P<op><=|>=|<|>)\s*"
    r"(?P<number>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)
_LEFT = re.compile(r"^(?P<selector>.+)\.(?P<metric>[A-Za-z0-9_]+)$")
_SELECTOR = re.compile(r"^(?P<base>[A-Za-z_]+)\s*(?:\[(?P<arg>.*)\])?$")
_BASES_WITH_ARG = {"completion", "request"}
_BASES_WITHOUT_ARG = {"submit", "completion", "run"}


class SloError(ValueError):
    """A bad SLO expression or SLO file; the message names the expression and the valid forms."""


@dataclass(frozen=True)
class Slo:
    """One parsed threshold: ``<selector>.<metric> <op> <threshold>``.

    ``selector`` is normalised (``completion[KIND]``, ``request[TYPE NAME]`` with single spaces).
    """

    expr: str
    selector: str
    metric: str
    op: str
    threshold: float

    @property
    def base(self) -> str:
        """The selector without its argument: ``submit``, ``completion``, ``request`` or ``run``."""
        return self.selector.split("[", 1)[0]

    @property
    def argument(self) -> str | None:
        """What is inside the selector's brackets (a kind, or ``TYPE NAME``), or None."""
        if "[" not in self.selector:
            return None
        return self.selector.split("[", 1)[1][:-1]

    def holds(self, value: float) -> bool:
        """Whether ``value`` meets the threshold."""
        return OPERATORS[self.op](value, self.threshold)


@dataclass(frozen=True)
class SloResult:
    """The outcome of one SLO: the measured value (None when there was nothing to measure)."""

    expr: str
    value: float | None
    ok: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written into ``report.json``'s ``slos``."""
        return asdict(self)


def _help() -> str:
    return (
        f"expected '<selector>.<metric> <op> <number>' with op one of {', '.join(OPERATORS)}; "
        f"selectors: {', '.join(SELECTORS)}; request metrics: {', '.join(REQUEST_METRICS)}; "
        f"run metrics: {', '.join(RUN_METRICS)}"
    )


def _fail(expr: str, why: str) -> SloError:
    return SloError(f"bad SLO {expr!r}: {why}; {_help()}")


def _parse_selector(expr: str, text: str) -> str:
    """Validate and normalise a selector; raises :class:`SloError`."""
    match = _SELECTOR.match(text.strip())
    if match is None:
        raise _fail(expr, f"unknown selector {text.strip()!r}")
    base, arg = match["base"].lower(), match["arg"]
    if arg is None:
        if base not in _BASES_WITHOUT_ARG:
            raise _fail(expr, f"unknown selector {text.strip()!r}")
        return base
    if base not in _BASES_WITH_ARG:
        raise _fail(expr, f"selector {base!r} takes no [argument]")
    words = arg.split()
    if not words:
        raise _fail(expr, f"empty brackets in {text.strip()!r}")
    if base == "request" and len(words) < 2:
        raise _fail(expr, "request[...] needs a type and a name, e.g. request[LLM ttft]")
    return f"{base}[{' '.join(words)}]"


def _check_metric(expr: str, selector: str, metric: str) -> None:
    valid = RUN_METRICS if selector == "run" else REQUEST_METRICS
    if metric not in valid:
        raise _fail(expr, f"unknown metric {metric!r} for selector {selector!r}")


def parse_slo(expr: str) -> Slo:
    """Parse one SLO expression (see the module's docstring); raises :class:`SloError`."""
    if not isinstance(expr, str) or not expr.strip():
        raise _fail(str(expr), "empty expression")
    match = _EXPR.match(expr)
    if match is None:
        raise _fail(expr, "no '<op> <number>' at the end")
    left = _LEFT.match(match["left"])
    if left is None:
        raise _fail(expr, "no '.<metric>' after the selector")
    selector = _parse_selector(expr, left["selector"])
    metric = left["metric"].lower()
    _check_metric(expr, selector, metric)
    threshold = float(match["number"])
    if not math.isfinite(threshold):
        raise _fail(expr, "the threshold is not a finite number")
    return Slo(expr=expr.strip(), selector=selector, metric=metric, op=match["op"], threshold=threshold)


def parse_slos(exprs: Iterable[str]) -> list[Slo]:
    """Parse several expressions; the first bad one raises :class:`SloError`."""
    return [parse_slo(expr) for expr in exprs]


def load_slo_file(path: str | Path) -> list[Slo]:
    """Read a YAML file ``{slos: [EXPR, ...]}``; a missing file, bad YAML, another shape or a bad
    expression raises :class:`SloError` naming the file."""
    path = Path(path)
    data = read_yaml_file(path, f"SLO file {str(path)!r}", SloError)
    if not isinstance(data, dict) or not isinstance(data.get("slos"), list):
        raise SloError(f"SLO file {str(path)!r} must be a mapping with a list 'slos: [EXPR, ...]'")
    slos = []
    for index, item in enumerate(data["slos"]):
        if not isinstance(item, str):
            raise SloError(f"SLO file {str(path)!r}: slos[{index}] is not a string: {item!r}")
        try:
            slos.append(parse_slo(item))
        except SloError as exc:
            raise SloError(f"SLO file {str(path)!r}: slos[{index}]: {exc}") from exc
    return slos


def trace_completeness(traces: Mapping[str, Any] | None) -> float | None:
    """The complete-trace fraction (0..1) from ``run.json``'s ``traces``, or None when unknown.

    Reads a fraction key (:data:`TRACE_FRACTION_KEYS`) if present, else a count pair
    (:data:`TRACE_COUNT_KEYS`) with a positive denominator.
    """
    if not isinstance(traces, Mapping):
        return None
    for key in TRACE_FRACTION_KEYS:
        value = _number(traces.get(key))
        if value is not None:
            return value
    for complete_key, of_key in TRACE_COUNT_KEYS:
        complete, of = _number(traces.get(complete_key)), _number(traces.get(of_key))
        if complete is not None and of is not None and of > 0:
            return complete / of
    return None


def _number(value: object) -> float | None:
    """``value`` as a float when it is a finite JSON number (not a bool), else None."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _request_aggregate(slo: Slo, report: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The aggregate the SLO's request selector names, or None when the report has none."""
    if slo.selector in ("submit", "completion"):
        return report.get(slo.selector)
    if slo.base == "completion":
        kind_type, name = COMPLETION_TYPE, slo.argument
    else:
        kind_type, name = (slo.argument or "").split(" ", 1)
    for entry in report.get("requests") or ():
        if entry.get("type") == kind_type and entry.get("name") == name:
            return entry
    return None


def _run_value(slo: Slo, report: Mapping[str, Any]) -> float | None:
    if slo.metric == "trace_completeness":
        return trace_completeness(report.get("traces"))
    totals = report.get("totals") or {}
    if not totals.get("count"):
        return None
    return totals.get(slo.metric)


def measure(slo: Slo, report: Mapping[str, Any]) -> float | None:
    """The value of the SLO's metric in the report, or None when there is nothing to measure."""
    if slo.selector == "run":
        return _run_value(slo, report)
    aggregate = _request_aggregate(slo, report)
    if not aggregate or not aggregate.get("count"):
        return None
    return aggregate.get(slo.metric)


def _format(value: float) -> str:
    return f"{value:.6g}"


def evaluate_one(slo: Slo, report: Mapping[str, Any]) -> SloResult:
    """Check one SLO against a report dict (as :func:`loadtests.report.summarize` makes it)."""
    value = measure(slo, report)
    if value is None:
        message = NO_SAMPLES
        if slo.metric == "trace_completeness":
            message = f"{NO_SAMPLES}: run.json has no trace completeness"
        return SloResult(slo.expr, None, False, message)
    value = float(value)
    ok = slo.holds(value)
    verdict = "met" if ok else "violated"
    message = f"{verdict}: {slo.selector}.{slo.metric} = {_format(value)} ({slo.op} {_format(slo.threshold)})"
    return SloResult(slo.expr, value, ok, message)


def evaluate(slos: Iterable[Slo], report: Mapping[str, Any]) -> list[SloResult]:
    """Check every SLO against the report; one result per SLO, in order."""
    return [evaluate_one(slo, report) for slo in slos]
