"""Tracing across processes: identity stamps, the task id as baggage, the trace store's records, the
OTLP target from settings and the standard variables, and export to a loopback OTLP receiver over
HTTP and gRPC."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode

from cluster.prepare import with_otel_environment
from officeray.config import OtlpSettings, load_settings
from officeray.otlp_receiver import OtlpReceiver
from officeray.telemetry import (
    IdentitySpanProcessor,
    JsonLinesSpanExporter,
    OtlpTarget,
    SinkSpanExporter,
    SpanRecord,
    attached,
    extract_context,
    inject_context,
    lane_of,
    lane_sort_key,
    otlp_exporter,
    parse_traceparent,
    remote_parent,
    resolve_otlp,
    traceparent_of,
    with_task,
)


class Sink:
    def __init__(self) -> None:
        self.batches: list[list[SpanRecord]] = []

    def __call__(self, spans: Sequence[SpanRecord]) -> None:
        self.batches.append(list(spans))

    @property
    def spans(self) -> list[SpanRecord]:
        return [s for batch in self.batches for s in batch]


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
def provider(sink: Sink) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(IdentitySpanProcessor())
    provider.add_span_processor(SimpleSpanProcessor(SinkSpanExporter(sink)))
    yield provider
    provider.shutdown()


def tracer_of(provider: TracerProvider, component: str, instance: str | None = None) -> trace.Tracer:
    """What :func:`officeray.telemetry.setup_tracing` answers, on a private provider."""
    attributes = {"officeray.instance": instance} if instance else None
    return provider.get_tracer(f"officeray.{component}", attributes=attributes)


def test_every_span_records_its_component_instance_and_task_across_processes(
    provider: TracerProvider, sink: Sink
) -> None:
    orchestrator = tracer_of(provider, "orchestrator", "0")
    runner = tracer_of(provider, "runner", "4711")
    with (
        attached(with_task("task-9", otel_context.Context())),
        orchestrator.start_as_current_span("task"),
        orchestrator.start_as_current_span("step s1"),
    ):
        carrier = inject_context()  # what travels to the runner's process with the step
    assert "traceparent" in carrier and "baggage" in carrier
    with runner.start_as_current_span("tool code_analyzer", context=extract_context(carrier)) as span:
        span.set_status(Status(StatusCode.ERROR, "sandbox died"))
        with runner.start_as_current_span("sandbox exec"):  # made current without the baggage
            pass

    task, step, tool, nested = sorted(sink.spans, key=lambda s: s.start_ns)
    assert nested.task_id == "task-9"
    assert {s.task_id for s in (task, step, tool)} == {"task-9"}
    assert {s.trace_id for s in (task, step, tool)} == {task.trace_id}
    assert (step.parent_span_id, tool.parent_span_id) == (task.span_id, step.span_id)
    assert (tool.component, tool.instance, lane_of(tool)) == ("runner", "4711", "runner:4711")
    assert (task.component, lane_of(task)) == ("orchestrator", "orchestrator")
    assert (tool.status, tool.status_message, task.status) == ("error", "sandbox died", "unset")
    assert tool.public_view()["lane"] == "runner:4711" and tool.public_view()["duration_ms"] >= 0


def test_a_span_without_a_task_records_none_and_its_own_task_id_wins(
    provider: TracerProvider, sink: Sink
) -> None:
    gateway = tracer_of(provider, "gateway")
    with gateway.start_as_current_span("healthz"):
        pass
    with gateway.start_as_current_span("submit", attributes={"officeray.task_id": "mine"}):
        pass
    assert [(s.name, s.task_id) for s in sink.spans] == [("healthz", None), ("submit", "mine")]


def test_span_attributes_events_and_lanes_are_kept_plainly(provider: TracerProvider, sink: Sink) -> None:
    tracer = tracer_of(provider, "orchestrator")
    with tracer.start_as_current_span(
        "validate", attributes={"ok": True, "xs": (1, 2), "big": "x" * 10_000}
    ) as s:
        s.add_event("review", {"officeray.event": '{"event_type":"review"}'})
    [span] = sink.spans
    assert lane_of(span) == "validator"
    assert span.attributes["xs"] == [1, 2] and len(span.attributes["big"]) == 4096
    assert [(e.name, e.attributes) for e in span.events] == [
        ("review", {"officeray.event": '{"event_type":"review"}'})
    ]
    lanes = ["reviewer", "runner:2", "custom", "gateway", "validator", "runner:1", "planner", "orchestrator"]
    assert sorted(lanes, key=lane_sort_key) == [
        "gateway", "orchestrator", "planner", "validator", "runner:1", "runner:2", "reviewer", "custom",
    ]  # fmt: skip


def test_a_sink_that_fails_never_fails_the_span(provider: TracerProvider) -> None:
    def broken(_spans: Sequence[SpanRecord]) -> None:
        raise RuntimeError("collector gone")

    exporter = SinkSpanExporter(broken)
    tracer = tracer_of(provider, "gateway")
    with tracer.start_as_current_span("submit") as span:
        pass
    assert exporter.export([span]).name == "FAILURE"  # type: ignore[list-item]


def test_traceparent_round_trip_and_hostile_values() -> None:
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("caller") as caller:
        header = traceparent_of(caller)
    context = parse_traceparent(header)
    assert context is not None
    with tracer.start_as_current_span("child", context=context) as child:
        assert child.get_span_context().trace_id == caller.get_span_context().trace_id
        assert child.parent is not None and child.parent.span_id == caller.get_span_context().span_id
    for bad in [
        None,
        "",
        "junk",
        "00-" + "0" * 32 + "-" + "0" * 16 + "-01",
        "00-xyz-abc-01",
        "ff-" + "a" * 32,
    ]:
        assert parse_traceparent(bad) is None, bad
    resumed = remote_parent("c" * 32)
    with tracer.start_as_current_span("task", context=resumed) as span:
        assert format(span.get_span_context().trace_id, "032x") == "c" * 32


# -- where spans go over OTLP ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "environ", "expected"),
    [
        ({}, {}, None),
        ({}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"},
         ("http://127.0.0.1:4318/v1/traces", "http/protobuf", {})),
        ({}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318/", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
         ("http://127.0.0.1:4318/", "grpc", {})),
        ({}, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:9/custom/path",
              "OTEL_EXPORTER_OTLP_ENDPOINT": "http://ignored:1"},
         ("http://c:9/custom/path", "http/protobuf", {})),
        ({"endpoint": "http://cfg:4318", "headers": {"X-Key": "s"}},
         {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:1", "OTEL_EXPORTER_OTLP_HEADERS": "a=1,b=x%3Dy,junk"},
         ("http://cfg:4318/v1/traces", "http/protobuf", {"a": "1", "b": "x=y", "x-key": "s"})),
        ({"endpoint": "http://cfg:4318/v1/traces"}, {}, ("http://cfg:4318/v1/traces", "http/protobuf", {})),
        ({}, {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:1"}, None),
    ],
)  # fmt: skip
def test_the_otlp_target_comes_from_settings_then_the_standard_variables(
    settings: dict[str, object], environ: dict[str, str], expected: tuple[str, str, dict[str, str]] | None
) -> None:
    target = resolve_otlp(OtlpSettings.model_validate(settings), environ)
    if expected is None:
        assert target is None
    else:
        assert target is not None
        assert (target.endpoint, target.protocol, target.headers) == expected


def test_an_unknown_otlp_protocol_is_refused() -> None:
    with pytest.raises(ValueError, match="http/json"):
        resolve_otlp(
            OtlpSettings(),
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
        )


def test_the_driver_hands_its_otel_variables_to_every_process_through_the_settings() -> None:
    settings = load_settings(None)
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SERVICE_NAME": "acme-agents"}
    handed = with_otel_environment(settings, environ)
    assert handed.telemetry.otlp.endpoint == "http://127.0.0.1:4318/v1/traces"
    assert handed.telemetry.service_name == "acme-agents"
    # what a worker resolves from the settings alone is the same target
    target = resolve_otlp(handed.telemetry.otlp, {})
    assert target is not None and target.endpoint == "http://127.0.0.1:4318/v1/traces"
    assert with_otel_environment(settings, {}) is settings


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_spans_reach_an_otlp_receiver(protocol: str) -> None:
    with OtlpReceiver(protocol) as receiver:  # type: ignore[arg-type]
        environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol}
        target = resolve_otlp(OtlpSettings(headers={"x-tenant-key": "k1"}), environ)
        assert isinstance(target, OtlpTarget)
        provider = TracerProvider()
        provider.add_span_processor(IdentitySpanProcessor())
        provider.add_span_processor(SimpleSpanProcessor(otlp_exporter(target)))
        tracer = tracer_of(provider, "planner")
        with (
            attached(with_task("t-1", otel_context.Context())),
            tracer.start_as_current_span("task") as root,
            tracer.start_as_current_span("model planner"),
        ):
            pass
        provider.shutdown()
        spans = receiver.wait_for(lambda got: len(got) == 2, timeout_s=10)
    trace_id = format(root.get_span_context().trace_id, "032x")
    assert {s.trace_id for s in spans} == {trace_id}
    child = next(s for s in spans if s.name == "model planner")
    assert child.parent_span_id == format(root.get_span_context().span_id, "016x")
    assert child.attributes["officeray.task_id"] == "t-1"
    assert child.attributes["officeray.component"] == "planner"
    assert child.headers["x-tenant-key"] == "k1"


def test_the_trace_file_rotates_at_its_size(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(path, max_bytes=2000)))
    tracer = provider.get_tracer("t")
    for i in range(20):
        with tracer.start_as_current_span(f"span{i}"):
            pass
    provider.shutdown()
    older = path.with_name("spans.jsonl.1")
    assert older.exists() and path.exists()
    assert path.stat().st_size <= 2000 and older.stat().st_size <= 2000
    assert '"span19"' in path.read_text()
