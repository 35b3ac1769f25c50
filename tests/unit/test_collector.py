"""The trace collector writes span batches to the store and enforces the trace store's retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from actors.collector import CollectorSink, TraceCollector
from officeray.config import load_settings
from officeray.telemetry import SpanRecord

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def _span(name: str, start_ns: int) -> SpanRecord:
    return SpanRecord(
        trace_id="a" * 32,
        span_id=format(start_ns, "016x"),
        task_id="t1",
        name=name,
        start_ns=start_ns,
        end_ns=start_ns,
    )


async def test_batches_are_stored_and_old_or_surplus_spans_pruned(tmp_path: Path) -> None:
    now = [T0]
    settings = load_settings(
        None,
        **{
            "store.url": f"sqlite:///{tmp_path}/o.db",
            "telemetry.trace_store.max_age_s": 3600,
            "telemetry.trace_store.max_spans": 1000,
        },
    )
    collector = TraceCollector(settings, clock=lambda: now[0])
    try:
        assert await collector.ingest([_span("old", 1), _span("older", 0)]) == 2
        now[0] = T0 + timedelta(minutes=59)
        assert await collector.ingest([_span(f"s{i}", 10 + i) for i in range(1001)]) == 1001
        now[0] = T0 + timedelta(minutes=61)  # the first batch is past max_age_s
        assert await collector.prune() == 2 + 1  # the two old ones, then the oldest beyond 1000
        names = [s.name for s in await collector.store.task_spans("t1")]
        assert len(names) == 1000 and names[0] == "s1" and names[-1] == "s1000"
        assert await collector.stats() == {"written": 1003, "pruned": 3}
    finally:
        collector.store.close()


def test_a_sink_outside_ray_refuses_without_starting_ray(tmp_path: Path) -> None:
    import ray

    sink = CollectorSink(load_settings(None, **{"store.url": f"sqlite:///{tmp_path}/o.db"}))
    try:
        sink([_span("x", 1)])
    except RuntimeError as exc:
        assert "not connected to Ray" in str(exc)
    else:
        raise AssertionError("the sink took spans with nowhere to send them")
    assert not ray.is_initialized()
