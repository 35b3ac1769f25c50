"""The telemetry cost part of ``bench overhead``: the on/off settings, the CPU accounting, the figures
and the loopback receiver's process (no Ray)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections import Counter

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from loadtests import bench_overhead as bo
from officeray.config import load_settings
from officeray.telemetry import resolve_otlp


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench", exit_on_error=False)
    bo.add_arguments(parser)
    return parser.parse_args(list(argv))


# -- arguments --------------------------------------------------------------------------------------


def test_telemetry_runs_are_on_by_default_and_sized_by_their_own_options() -> None:
    cfg = bo.config_from_args(_parse())
    assert not cfg.skip_telemetry
    assert (cfg.telemetry_level, cfg.telemetry_tasks) == (
        bo.DEFAULT_TELEMETRY_LEVEL,
        bo.DEFAULT_TELEMETRY_TASKS,
    )
    cfg = bo.config_from_args(_parse("--telemetry-level", "4", "--telemetry-tasks", "20", "--skip-telemetry"))
    assert (cfg.telemetry_level, cfg.telemetry_tasks, cfg.skip_telemetry) == (4, 20, True)
    with pytest.raises(argparse.ArgumentError):
        _parse("--telemetry-level", "0")


def test_the_telemetry_runs_alone_are_something_to_measure() -> None:
    assert bo.check_args(_parse("--skip-latency", "--skip-instant", "--skip-gateway")) is None
    assert "nothing to measure" in (
        bo.check_args(_parse("--skip-latency", "--skip-instant", "--skip-telemetry", "--skip-gateway")) or ""
    )


# -- settings ---------------------------------------------------------------------------------------


def test_export_on_and_off_differ_only_in_what_is_exported() -> None:
    base = load_settings(
        **{"telemetry.trace_file": "/tmp/x.jsonl", "telemetry.otlp.endpoint": "http://10.0.0.9:4318"}
    )
    on = bo.telemetry_variant(base.telemetry, "http://127.0.0.1:4318")
    off = bo.telemetry_variant(base.telemetry, None)
    assert on.trace_store.enabled and on.metrics.enabled
    assert on.otlp.endpoint == "http://127.0.0.1:4318" and on.otlp.protocol == "http/protobuf"
    assert not off.trace_store.enabled and not off.metrics.enabled and off.otlp.endpoint is None
    assert on.trace_file is None and off.trace_file is None
    assert base.telemetry.otlp.endpoint == "http://10.0.0.9:4318"  # the settings given are not changed
    for variant in (on, off):
        rest = {k: v for k, v in variant if k not in ("trace_file", "otlp", "trace_store", "metrics")}
        assert rest == {k: v for k, v in base.telemetry if k in rest}
    # what the processes will make of them, with no OTEL_* variable around
    target = resolve_otlp(on.otlp, {})
    assert target is not None and "127.0.0.1:4318" in target.endpoint
    assert resolve_otlp(off.otlp, {}) is None


def test_the_tail_waits_for_the_slowest_batch() -> None:
    settings = load_settings()
    assert bo.export_tail_s(settings.telemetry) == bo.OTLP_BATCH_DELAY_S + bo.EXPORT_TAIL_MARGIN_S
    slow = load_settings(None, **{"telemetry.trace_store.flush_interval_s": 30})
    assert bo.export_tail_s(slow.telemetry) == 30 + bo.EXPORT_TAIL_MARGIN_S


def test_otel_variables_are_set_aside_for_the_block_and_come_back() -> None:
    env = {"PATH": "/bin", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SERVICE_NAME": "x"}
    with bo.without_otel_environment(env) as names:
        assert names == ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME"]
        assert env == {"PATH": "/bin"}
        env["OTEL_TRACES_EXPORTER"] = "none"  # set meanwhile: gone afterwards
    assert env == {
        "PATH": "/bin",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        "OTEL_SERVICE_NAME": "x",
    }


# -- figures ----------------------------------------------------------------------------------------


def test_cpu_per_task_leaves_out_the_idle_cpu_of_the_tail() -> None:
    assert bo.cpu_ms_per_task(2.0, 100, 0.1, 6.0) == pytest.approx(14.0)
    assert bo.cpu_ms_per_task(2.0, 100, None, 6.0) == pytest.approx(20.0)
    assert bo.cpu_ms_per_task(0.1, 10, 1.0, 6.0) == 0.0  # never below zero
    assert bo.cpu_ms_per_task(2.0, 0, 0.1, 6.0) is None


def _measured(export: bool, cpu_s: float, *, spans: int | None = None) -> bo.TelemetryRun:
    run = bo.LevelRun(
        concurrency=10,
        tasks=100,
        latencies_s=[0.1] * 99,
        failures=Counter({"timeout": 1}),
        wall_s=4.0,
        cpu_s={"orchestrator": cpu_s / 2, "raylet": cpu_s / 2},
        processes=Counter({"orchestrator": 1, "raylet": 1}),
    )
    return bo.TelemetryRun(
        export=export,
        run=run,
        tail_s=6.0,
        idle_cores=0.05,
        exported_requests=12 if export else None,
        exported_spans=spans,
    )


def test_rows_ratio_and_difference_of_export_on_and_off() -> None:
    on, off = bo.telemetry_row(_measured(True, 5.3, spans=1100)), bo.telemetry_row(_measured(False, 4.3))
    # (5.3 s - 0.05 cores x 6 s) / 100 tasks = 50 ms; (4.3 - 0.3) / 100 = 40 ms
    assert on["cpu_ms_per_task"] == pytest.approx(50.0) and off["cpu_ms_per_task"] == pytest.approx(40.0)
    assert on["orch_cpu_ms_per_task"] == pytest.approx(26.5)
    assert on["tasks_per_s"] == pytest.approx(99 / 4.0) and on["failed"] == 1
    assert on["spans_per_task"] == pytest.approx(11.0) and on["export_requests"] == 12
    assert off["spans_per_task"] is None and (on["export"], off["export"]) == ("on", "off")
    cost = bo.export_cost(on, off)
    assert cost["ratio"] == pytest.approx(1.25) and cost["extra_ms_per_task"] == pytest.approx(10.0)
    assert bo.export_cost(on, {**off, "cpu_ms_per_task": None}) == {"ratio": None, "extra_ms_per_task": None}
    assert bo.export_cost(on, {**off, "cpu_ms_per_task": 0.0})["ratio"] is None


def test_the_result_prints_both_figures_and_the_ratio() -> None:
    cfg = bo.BenchConfig(skip_latency=True, skip_instant=True)
    result = bo.build_result(cfg, None, [], (_measured(True, 5.3, spans=1100), _measured(False, 4.3)))
    text = result.format_text()
    assert "telemetry export on and off, instant, at 10 concurrent" in text
    assert "telemetry export costs +10.0 ms CPU per task: 50.0 ms with it on / 40.0 ms off = 1.250" in text
    assert "telemetry on c=10: failures by reason: timeout: 1" in text
    data = result.to_dict()
    assert data["telemetry"]["ratio"] == pytest.approx(1.25)
    assert data["telemetry"]["on"]["cpu_ms_per_task"] == pytest.approx(50.0)
    assert data["config"]["telemetry_level"] == bo.DEFAULT_TELEMETRY_LEVEL
    assert "telemetry" not in bo.build_result(cfg, None, []).to_dict()
    assert "CPU by process, telemetry export on and off" in text


def test_the_breakdown_shows_where_export_costs_most_first() -> None:
    on, off = _measured(True, 5.0).run, _measured(False, 4.0).run
    on.cpu_s["trace collector"] = 0.8  # a process only the export-on run has
    rows = bo.telemetry_breakdown(on, off)
    assert [r["group"] for r in rows] == ["trace collector", "orchestrator", "raylet"]  # ties by name
    by_group = {r["group"]: r for r in rows}
    assert by_group["trace collector"]["off_ms_per_task"] is None
    assert by_group["trace collector"]["extra_ms_per_task"] == pytest.approx(8.0)
    assert by_group["orchestrator"]["on_ms_per_task"] == pytest.approx(25.0)
    assert by_group["orchestrator"]["extra_ms_per_task"] == pytest.approx(5.0)


# -- the receiver's process and the CPU accounting -----------------------------------------------------


def test_the_receiver_runs_in_its_own_process_and_counts_what_it_got() -> None:
    request = trace_service_pb2.ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for name in ("task", "plan"):
        span = scope.spans.add()
        span.name, span.trace_id, span.span_id = name, b"\x01" * 16, name.encode().ljust(8, b"\0")
    with bo.ReceiverProcess() as receiver:
        assert receiver.endpoint.startswith("http://127.0.0.1:") and receiver.pid not in (None, 0)
        assert receiver.counts() == (0, 0)
        answer = httpx.post(
            f"{receiver.endpoint}/v1/traces",
            content=request.SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
        )
        assert answer.status_code == 200
        assert receiver.counts() == (1, 2)
        pid = receiver.pid
    assert pid is not None
    with pytest.raises(OSError):
        os.kill(pid, 0)  # gone with the block


def test_excluded_processes_are_left_out_of_the_session_cpu() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        everything = bo.SessionCpu(orchestrator_pids=[]).snapshot()
        without = bo.SessionCpu(orchestrator_pids=[], exclude=[child.pid]).snapshot()
        assert child.pid in everything and child.pid not in without
        assert set(everything) - {child.pid} >= set(without) and bo.psutil.Process().pid in without
    finally:
        child.kill()
        child.wait()


def test_the_trace_collector_is_a_process_group_of_its_own() -> None:
    group = bo.process_group(
        "ray::TraceColle", ["ray::TraceCollector.ingest"], 7, driver_pid=1, orchestrator_pids={2}
    )
    assert group == "trace collector"
