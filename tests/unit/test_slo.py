"""SLO expressions: parsing, errors, evaluation against a report dict, and SLO files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loadtests.slo import (
    NO_SAMPLES,
    REQUEST_METRICS,
    Slo,
    SloError,
    evaluate,
    load_slo_file,
    parse_slo,
    trace_completeness,
)


def _aggregate(**values: Any) -> dict[str, Any]:
    base = dict.fromkeys(REQUEST_METRICS, 0.0)
    base.update(count=10, failures=0)
    base.update(values)
    return base


REPORT: dict[str, Any] = {
    "totals": {"count": 40, "failures": 2, "failure_rate": 0.05},
    "submit": _aggregate(p95_ms=120.0, failure_rate=0.0, throughput_rps=4.0),
    "completion": _aggregate(count=20, p95_ms=25_000.0, p99_ms=31_000.0),
    "requests": [
        {"type": "POST", "name": "/v1/tasks", **_aggregate(p95_ms=120.0)},
        {"type": "TASK", "name": "research", **_aggregate(p95_ms=28_000.0)},
        {"type": "TASK", "name": "idle", **_aggregate(count=0)},
        {"type": "GET", "name": "/v1/tasks/[id]", **_aggregate(p99_ms=900.0)},
        {"type": "LLM", "name": "ttft", **_aggregate(p50_ms=180.0)},
    ],
    "traces": {"completeness": 0.98},
}


@pytest.mark.parametrize(
    ("expr", "selector", "metric", "op", "threshold"),
    [
        ("completion.p95_ms <= 30000", "completion", "p95_ms", "<=", 30000.0),
        ("submit.failure_rate<0.01", "submit", "failure_rate", "<", 0.01),
        ("  run.trace_completeness   >=   0.99 ", "run", "trace_completeness", ">=", 0.99),
        ("completion[research].p99_ms > 1e3", "completion[research]", "p99_ms", ">", 1000.0),
        ("request[LLM   ttft].p50_ms <= 250", "request[LLM ttft]", "p50_ms", "<=", 250.0),
        ("request[GET /v1/tasks/[id]].p99_ms<=1000", "request[GET /v1/tasks/[id]]", "p99_ms", "<=", 1000.0),
        ("run.failures <= 0", "run", "failures", "<=", 0.0),
        ("submit.count >= -.5", "submit", "count", ">=", -0.5),
    ],
)
def test_parse_valid_expressions(expr: str, selector: str, metric: str, op: str, threshold: float) -> None:
    slo = parse_slo(expr)
    assert slo == Slo(expr=expr.strip(), selector=selector, metric=metric, op=op, threshold=threshold)


def test_selector_parts() -> None:
    slo = parse_slo("request[GET /v1/tasks/[id]].p99_ms <= 1")
    assert (slo.base, slo.argument) == ("request", "GET /v1/tasks/[id]")
    assert parse_slo("submit.count > 0").argument is None


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ("completion.p95_ms", "no '<op> <number>'"),
        ("completion.p95_ms == 3", "no '<op> <number>'"),
        ("completion.p95_ms <= fast", "no '<op> <number>'"),
        ("completion <= 3", "no '.<metric>'"),
        ("latency.p95_ms <= 3", "unknown selector 'latency'"),
        ("completion.p42_ms <= 3", "unknown metric 'p42_ms'"),
        ("run.p95_ms <= 3", "unknown metric 'p95_ms' for selector 'run'"),
        ("submit.trace_completeness >= 1", "unknown metric 'trace_completeness'"),
        ("submit[x].count > 0", "takes no [argument]"),
        ("request[LLM].p50_ms <= 3", "needs a type and a name"),
        ("completion[ ].count > 0", "empty brackets"),
        ("request.count > 0", "unknown selector 'request'"),
        ("   ", "empty expression"),
    ],
)
def test_bad_expressions_name_the_expression_and_the_valid_forms(expr: str, fragment: str) -> None:
    with pytest.raises(SloError) as exc:
        parse_slo(expr)
    message = str(exc.value)
    assert fragment in message
    assert repr(expr) in message
    assert "completion[KIND]" in message and "request[TYPE NAME]" in message
    assert "p95_ms" in message and "trace_completeness" in message
    assert isinstance(exc.value, ValueError)


@pytest.mark.parametrize(
    ("expr", "value", "ok"),
    [
        ("completion.p95_ms <= 30000", 25_000.0, True),
        ("completion.p99_ms <= 30000", 31_000.0, False),
        ("submit.p95_ms <= 120", 120.0, True),
        ("submit.p95_ms < 120", 120.0, False),
        ("submit.throughput_rps >= 4", 4.0, True),
        ("submit.throughput_rps > 4", 4.0, False),
        ("completion[research].p95_ms <= 30000", 28_000.0, True),
        ("request[GET /v1/tasks/[id]].p99_ms <= 500", 900.0, False),
        ("request[LLM ttft].p50_ms <= 200", 180.0, True),
        ("run.failure_rate <= 0.01", 0.05, False),
        ("run.failures <= 2", 2.0, True),
        ("run.trace_completeness >= 0.95", 0.98, True),
    ],
)
def test_evaluate_compares_the_measured_value(expr: str, value: float, ok: bool) -> None:
    (result,) = evaluate([parse_slo(expr)], REPORT)
    assert result.expr == expr
    assert result.value == pytest.approx(value)
    assert result.ok is ok
    assert result.message.startswith("met" if ok else "violated")


@pytest.mark.parametrize(
    ("expr", "report"),
    [
        ("completion[code].p95_ms <= 30000", REPORT),
        ("completion[idle].failure_rate <= 0", REPORT),
        ("request[LLM itl].p50_ms <= 100", REPORT),
        ("submit.failures <= 0", {**REPORT, "submit": None}),
        ("completion.count >= 0", {"requests": []}),
        ("run.failures <= 0", {"totals": {"count": 0, "failures": 0, "failure_rate": None}}),
        ("run.trace_completeness >= 0", {**REPORT, "traces": None}),
    ],
)
def test_a_selector_without_samples_fails(expr: str, report: dict[str, Any]) -> None:
    (result,) = evaluate([parse_slo(expr)], report)
    assert result.ok is False
    assert result.value is None
    assert result.message.startswith(NO_SAMPLES)


def test_evaluate_keeps_the_order_and_result_json() -> None:
    results = evaluate((parse_slo(e) for e in ("submit.count > 0", "submit.count > 100")), REPORT)
    assert [r.ok for r in results] == [True, False]
    assert results[1].to_dict() == {
        "expr": "submit.count > 100",
        "value": 10.0,
        "ok": False,
        "message": "violated: submit.count = 10 (> 100)",
    }


@pytest.mark.parametrize(
    ("traces", "expected"),
    [
        ({"completeness": 0.5}, 0.5),
        ({"complete": 9, "checked": 10}, 0.9),
        ({"complete": 3, "total": 4}, 0.75),
        ({"complete": 0, "checked": 0}, None),
        ({"completeness": True}, None),
        ({}, None),
        (None, None),
    ],
)
def test_trace_completeness(traces: dict[str, Any] | None, expected: float | None) -> None:
    assert trace_completeness(traces) == expected


def test_load_slo_file(tmp_path: Path) -> None:
    path = tmp_path / "slos.yaml"
    path.write_text("slos:\n  - completion.p95_ms <= 30000\n  - 'submit.failure_rate < 0.01'\n")
    slos = load_slo_file(path)
    assert [(s.selector, s.metric, s.threshold) for s in slos] == [
        ("completion", "p95_ms", 30000.0),
        ("submit", "failure_rate", 0.01),
    ]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "cannot read SLO file"),
        ("slos: [a: b: c]\n", "not valid YAML"),
        ("- completion.count > 0\n", "must be a mapping with a list"),
        ("slos: completion.count > 0\n", "must be a mapping with a list"),
        ("slos:\n  - 3\n", "slos[0] is not a string"),
        ("slos:\n  - submit.count > 0\n  - submit.speed > 0\n", "slos[1]: bad SLO 'submit.speed > 0'"),
    ],
)
def test_bad_slo_files_raise_with_the_file_name(tmp_path: Path, content: str | None, fragment: str) -> None:
    path = tmp_path / "slos.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SloError) as exc:
        load_slo_file(path)
    assert fragment in str(exc.value)
    assert "slos.yaml" in str(exc.value)
