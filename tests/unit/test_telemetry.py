"""Tracing: spans go to a JSON-lines file, read_trace finds one trace, the context crosses processes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from officeray.telemetry import (
    JsonLinesSpanExporter,
    extract_context,
    inject_context,
    iter_spans,
    read_trace,
    span_name_of,
    trace_id_hex,
)
from officeray.testing import in_memory_tracer


@pytest.fixture
def trace_file(tmp_path: Path) -> Path:
    return tmp_path / "traces" / "spans.jsonl"  # the folder is created by the exporter


@pytest.fixture
def tracer(trace_file: Path) -> Iterator[trace.Tracer]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(trace_file)))
    yield provider.get_tracer("test")
    provider.shutdown()


def test_one_json_line_per_span(trace_file: Path, tracer: trace.Tracer) -> None:
    with tracer.start_as_current_span("task"):
        with tracer.start_as_current_span("plan"):
            pass
        with tracer.start_as_current_span("review"):
            pass

    lines = trace_file.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    spans = [json.loads(line) for line in lines]
    assert [s["name"] for s in spans] == ["plan", "review", "task"]  # written as each span ends
    assert all("\n" not in line for line in lines)


def test_each_line_is_the_sdk_s_own_json_of_the_span(trace_file: Path) -> None:
    """The exporter writes the resource once per process, not per span; the lines stay exactly what
    ``ReadableSpan.to_json`` writes (readers of the file see no difference)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "officeray", "instance": "7"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(trace_file)))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("task", attributes={"officeray.task_id": "t-1", "n": [1, 2]}) as task:
        task.add_event("llm_request", {"officeray.event": "{}"})
        with tracer.start_as_current_span("step s1") as step:
            step.set_status(trace.Status(trace.StatusCode.ERROR, "timeout"))
    provider.shutdown()
    lines = trace_file.read_text(encoding="utf-8").splitlines()
    assert lines == [span.to_json(indent=None) for span in memory.get_finished_spans()]


def test_read_trace_filters_by_trace_and_orders_by_start(trace_file: Path, tracer: trace.Tracer) -> None:
    second_ns = 1_000_000_000

    def span_at(name: str, start_s: int, parent: trace.Span | None = None) -> trace.Span:
        context = trace.set_span_in_context(parent) if parent is not None else None
        span = tracer.start_span(name, context=context, start_time=start_s * second_ns)
        span.end(end_time=(start_s + 1) * second_ns)
        return span

    # Written out of start order (a span is written when it ends; here: plan, step, task).
    first = tracer.start_span("task", start_time=10 * second_ns)
    span_at("step s1", 12, first)
    span_at("plan", 11, first)
    first.end(end_time=20 * second_ns)
    second = span_at("task", 5)
    span_at("plan", 6, second)

    first_id = trace_id_hex(first)
    spans = read_trace(trace_file, first_id)
    assert [span_name_of(s) for s in spans] == ["task", "plan", "step s1"]
    assert {s["context"]["trace_id"].removeprefix("0x") for s in spans} == {first_id}
    assert [span_name_of(s) for s in read_trace(trace_file, trace_id_hex(second))] == ["task", "plan"]
    assert read_trace(trace_file, "0" * 32) == []


def test_read_trace_skips_broken_lines_and_missing_files(trace_file: Path, tracer: trace.Tracer) -> None:
    with tracer.start_as_current_span("task") as span:
        pass
    with trace_file.open("a", encoding="utf-8") as handle:
        handle.write("{not json\n\n")
    assert [s["name"] for s in read_trace(trace_file, trace_id_hex(span))] == ["task"]
    assert len(list(iter_spans(trace_file))) == 1
    assert read_trace(trace_file.parent / "absent.jsonl", trace_id_hex(span)) == []


def test_exporter_appends_to_an_existing_file(trace_file: Path, tracer: trace.Tracer) -> None:
    with tracer.start_as_current_span("first"):
        pass
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(trace_file)))
    try:
        with provider.get_tracer("other").start_as_current_span("second"):
            pass
    finally:
        provider.shutdown()
    assert [s["name"] for s in iter_spans(trace_file)] == ["first", "second"]


def test_trace_id_hex_is_32_hex_digits() -> None:
    tracer, _ = in_memory_tracer()
    with tracer.start_as_current_span("task") as span:
        value = trace_id_hex(span)
    assert len(value) == 32
    assert int(value, 16) == span.get_span_context().trace_id


def test_inject_and_extract_keep_the_trace() -> None:
    tracer, exporter = in_memory_tracer()
    with tracer.start_as_current_span("task") as parent:
        carrier = inject_context()
    assert "traceparent" in carrier
    assert trace_id_hex(parent) in carrier["traceparent"]

    # On the other side of the process boundary: a child span in the same trace.
    with tracer.start_as_current_span("step s1", context=extract_context(carrier)) as child:
        pass
    assert child.get_span_context().trace_id == parent.get_span_context().trace_id
    finished = {s.name: s for s in exporter.get_finished_spans()}
    assert finished["step s1"].parent is not None
    assert finished["step s1"].parent.span_id == parent.get_span_context().span_id


def test_extract_of_nothing_starts_a_new_trace() -> None:
    tracer, _ = in_memory_tracer()
    with tracer.start_as_current_span("task") as existing:
        pass
    for carrier in (None, {}):
        with tracer.start_as_current_span("orphan", context=extract_context(carrier)) as span:
            pass
        assert span.get_span_context().trace_id != existing.get_span_context().trace_id


def test_inject_outside_a_span_gives_no_traceparent() -> None:
    assert "traceparent" not in inject_context()
