"""Tracing with OpenTelemetry: one trace per task, across every process and node.

Each process that makes spans (gateway, orchestrators, model replicas, tool runners, webhook
deliverers) calls :func:`setup_tracing` with its component's name. The first call installs the
process's tracer provider with:

* an identity processor that stamps every span with ``officeray.component``, ``officeray.instance``
  and ``officeray.task_id`` (the task id travels as W3C baggage next to ``traceparent``, so a span
  of a runner or a model replica knows its task without being told);
* a batch processor that hands finished spans, as :class:`SpanRecord`, to the process's *sink*
  (on a cluster: the trace collector actor, which writes them to the store, indexed by task id);
* a batch processor with an OTLP exporter (HTTP or gRPC) when ``telemetry.otlp`` or the standard
  ``OTEL_EXPORTER_OTLP_*`` variables name a collector;
* optionally a JSON-lines file (``telemetry.trace_file``), rotated at ``trace_file_max_mb``.

The trace context crosses process boundaries as a carrier dict (:func:`inject_context` /
:func:`extract_context`). Span names of a task: ``submit`` (gateway), ``task``, ``plan``,
``validate``, ``step <step_id>``, ``review`` (orchestrator), ``model <role>`` (model replicas),
``tool <action>`` (runners), ``webhook`` (deliverer).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal

from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.util import ns_to_iso_str
from opentelemetry.trace import NonRecordingSpan, SpanContext, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pydantic import BaseModel, Field

from officeray.config import OtlpSettings, TelemetrySettings

TRACER_NAME = "officeray"
TASK_ID_ATTR = "officeray.task_id"
COMPONENT_ATTR = "officeray.component"
INSTANCE_ATTR = "officeray.instance"
NODE_ATTR = "officeray.node"
TASK_BAGGAGE_KEY = "officeray.task_id"

LANE_ORDER = ("gateway", "orchestrator", "planner", "validator", "runner", "reviewer", "ai_tool", "webhooks")
"""The order of a task's lanes on a timeline (a runner lane is ``runner:<instance>``)."""

MAX_ATTRIBUTE_CHARS = 4096
"""A span attribute's value is cut to this many characters when stored."""

OTLP_HTTP_TRACES_PATH = "/v1/traces"
OTLP_DEFAULT_PROTOCOL = "http/protobuf"

PROPAGATOR = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
"""How the trace context and the task id (baggage) travel between processes: W3C ``traceparent`` and
``baggage``, whatever the process's global propagator is."""

SpanStatus = Literal["ok", "error", "unset"]
_STATUS: dict[StatusCode, SpanStatus] = {StatusCode.OK: "ok", StatusCode.ERROR: "error"}


class SpanEventRecord(BaseModel):
    name: str
    time_ns: int
    attributes: dict[str, Any] = Field(default_factory=dict)


class SpanRecord(BaseModel):
    """One finished span as the trace store keeps it (and ``GET /v1/tasks/{id}/trace`` answers it)."""

    trace_id: str
    """32 hex digits."""
    span_id: str
    """16 hex digits."""
    parent_span_id: str | None = None
    task_id: str | None = None
    name: str
    component: str = "unknown"
    instance: str = ""
    node: str = ""
    start_ns: int
    end_ns: int
    status: SpanStatus = "unset"
    status_message: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    events: list[SpanEventRecord] = Field(default_factory=list)

    @property
    def lane(self) -> str:
        return lane_of(self)

    @property
    def duration_ms(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e6

    def public_view(self) -> dict[str, Any]:
        """The span as the API answers it: its fields plus ``lane`` and ``duration_ms``."""
        return {**self.model_dump(mode="json"), "lane": self.lane, "duration_ms": round(self.duration_ms, 3)}


SpanSink = Callable[[Sequence[SpanRecord]], None]
"""Where a process's finished spans go, in batches (called from the batch processor's thread)."""


def lane_of(span: SpanRecord) -> str:
    """The timeline lane of a span: ``validator`` for plan validation (done by the orchestrator),
    ``runner:<instance>`` for a tool runner, else the component that made it."""
    if span.name == "validate":
        return "validator"
    if span.component == "runner":
        return f"runner:{span.instance}" if span.instance else "runner"
    return span.component


def lane_sort_key(lane: str) -> tuple[int, str, tuple[int, int, str]]:
    """Sort key of a lane: :data:`LANE_ORDER` first, other lanes by name; instances of one component
    in natural order (``runner:2`` before ``runner:10``)."""
    base, _, instance = lane.partition(":")
    known = base in LANE_ORDER
    rank = LANE_ORDER.index(base) if known else len(LANE_ORDER)
    natural = (0, int(instance), "") if instance.isdigit() else (1, 0, instance)
    return rank, "" if known else base, natural


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def _plain(value: Any) -> Any:
    if isinstance(value, str):
        return value[:MAX_ATTRIBUTE_CHARS]
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)[:MAX_ATTRIBUTE_CHARS]


def _plain_map(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: _plain(v) for k, v in (attributes or {}).items()}


def span_record(span: ReadableSpan) -> SpanRecord:
    """The :class:`SpanRecord` of a finished SDK span."""
    context = span.get_span_context()
    attributes = _plain_map(span.attributes)
    status = _STATUS.get(span.status.status_code, "unset")
    resource = span.resource.attributes if span.resource is not None else {}
    task_id = attributes.get(TASK_ID_ATTR)
    return SpanRecord(
        trace_id=_hex(context.trace_id if context else 0, 32),
        span_id=_hex(context.span_id if context else 0, 16),
        parent_span_id=_hex(span.parent.span_id, 16) if span.parent is not None else None,
        task_id=str(task_id) if task_id else None,
        name=span.name,
        component=str(attributes.get(COMPONENT_ATTR, "unknown")),
        instance=str(attributes.get(INSTANCE_ATTR, "")),
        node=str(resource.get(NODE_ATTR, "")),
        start_ns=span.start_time or 0,
        end_ns=span.end_time or span.start_time or 0,
        status=status,
        status_message=span.status.description,
        attributes=attributes,
        events=[
            SpanEventRecord(name=e.name, time_ns=e.timestamp, attributes=_plain_map(e.attributes))
            for e in span.events
        ],
    )


class SinkSpanExporter(SpanExporter):
    """Hands each batch of finished spans to a :data:`SpanSink` as :class:`SpanRecord` objects."""

    def __init__(self, sink: SpanSink) -> None:
        self._sink = sink

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            self._sink([span_record(s) for s in spans])
        except Exception:  # the trace store is best effort: a task never fails for its telemetry
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


class JsonLinesSpanExporter(SpanExporter):
    """Appends each finished span as one JSON line (``span.to_json()``); whole lines go out in one
    ``write`` call. Past ``max_bytes`` the file is renamed to ``<name>.1`` (replacing an older one)
    and a new file is started."""

    def __init__(self, path: Path, max_bytes: int | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._resource_json: tuple[Any, str] | None = None
        self._fd = self._open()

    def _open(self) -> int:
        return os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def _line(self, span: ReadableSpan) -> str:
        """``span.to_json(indent=None)`` and a newline, with the span's resource written as JSON once
        per process rather than once per span (it is the same for every span of a process, and
        writing it was most of the line's cost)."""
        resource = span.resource
        cached = self._resource_json
        if cached is None or cached[0] is not resource:
            cached = self._resource_json = (resource, json.dumps(json.loads(resource.to_json())))
        try:
            start = ns_to_iso_str(span.start_time) if span.start_time else None
            end = ns_to_iso_str(span.end_time) if span.end_time else None
            status: dict[str, Any] = {"status_code": str(span.status.status_code.name)}
            if span.status.description:
                status["description"] = span.status.description
            fields = {
                "name": span.name,
                "context": ReadableSpan._format_context(span.context) if span.context else None,
                "kind": str(span.kind),
                "parent_id": f"0x{trace.format_span_id(span.parent.span_id)}" if span.parent else None,
                "start_time": start,
                "end_time": end,
                "status": status,
                "attributes": ReadableSpan._format_attributes(span.attributes),
                "events": ReadableSpan._format_events(span.events),
                "links": ReadableSpan._format_links(span.links),
            }
        except Exception:  # an SDK whose private formatters changed: its own (slower) writer
            return span.to_json(indent=None) + "\n"
        return json.dumps(fields)[:-1] + ', "resource": ' + cached[1] + "}\n"

    def export(self, spans: Any) -> SpanExportResult:
        payload = "".join(self._line(span) for span in spans).encode()
        with self._lock:
            if self._fd < 0:
                return SpanExportResult.FAILURE
            if self._max_bytes is not None and os.fstat(self._fd).st_size + len(payload) > self._max_bytes:
                os.close(self._fd)
                os.replace(self._path, self._path.with_name(self._path.name + ".1"))
                self._fd = self._open()
            os.write(self._fd, payload)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class IdentitySpanProcessor(SpanProcessor):
    """Stamps each span at its start with its component and instance (the tracer's instrumentation
    scope, see :func:`setup_tracing`) and its task id (from the baggage of its parent context)."""

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        scope = span.instrumentation_scope
        if scope is not None and scope.name.startswith(TRACER_NAME + "."):
            span.set_attribute(COMPONENT_ATTR, scope.name.removeprefix(TRACER_NAME + "."))
            instance = (scope.attributes or {}).get(INSTANCE_ATTR)
            if instance:
                span.set_attribute(INSTANCE_ATTR, str(instance))
        if not (span.attributes or {}).get(TASK_ID_ATTR):
            task_id = baggage.get_baggage(TASK_BAGGAGE_KEY, parent_context)
            if not task_id:  # a child of a span of this process that knows its task
                parent = trace.get_current_span(parent_context)
                task_id = (getattr(parent, "attributes", None) or {}).get(TASK_ID_ATTR)
            if task_id:
                span.set_attribute(TASK_ID_ATTR, str(task_id))

    def on_end(self, span: ReadableSpan) -> None:
        return None


class OtlpTarget(BaseModel):
    """Where OTLP spans go, resolved from ``telemetry.otlp`` and the environment."""

    endpoint: str
    protocol: Literal["grpc", "http/protobuf"]
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = 10.0
    insecure: bool = True


def _parse_headers(text: str) -> dict[str, str]:
    """``OTEL_EXPORTER_OTLP_HEADERS``: ``k1=v1,k2=v2`` (values URL-encoded)."""
    from urllib.parse import unquote

    headers = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            headers[unquote(key.strip()).lower()] = unquote(value.strip())
    return headers


def resolve_otlp(otlp: OtlpSettings, environ: Mapping[str, str]) -> OtlpTarget | None:
    """The OTLP target of ``otlp``, with unset fields taken from the standard variables (the traces
    form first, e.g. ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); None when no endpoint is named or
    ``OTEL_TRACES_EXPORTER`` is ``none``. An HTTP endpoint gets ``/v1/traces`` unless it came from the
    traces variable (which names the full URL, as the specification says)."""
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none" and otlp.endpoint is None:
        return None
    protocol = (
        otlp.protocol
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or OTLP_DEFAULT_PROTOCOL
    ).strip()
    if protocol not in ("grpc", "http/protobuf"):
        raise ValueError(f"OTLP protocol {protocol!r} is not supported: use grpc or http/protobuf")
    full = False
    endpoint = otlp.endpoint
    if endpoint is None and environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        endpoint, full = environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"], True
    if endpoint is None:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint:
        return None
    endpoint = endpoint.strip()
    if protocol == "http/protobuf" and not full and not endpoint.rstrip("/").endswith(OTLP_HTTP_TRACES_PATH):
        endpoint = endpoint.rstrip("/") + OTLP_HTTP_TRACES_PATH
    headers = _parse_headers(environ.get("OTEL_EXPORTER_OTLP_HEADERS", ""))
    headers.update(_parse_headers(environ.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "")))
    headers.update({k.lower(): v for k, v in otlp.headers.items()})
    return OtlpTarget(
        endpoint=endpoint,
        protocol=protocol,  # type: ignore[arg-type]  # checked above
        headers=headers,
        timeout_s=otlp.timeout_s,
        insecure=otlp.insecure,
    )


def otlp_exporter(target: OtlpTarget) -> SpanExporter:
    """The OpenTelemetry SDK's OTLP span exporter for ``target``."""
    if target.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        endpoint = target.endpoint.removeprefix("http://").removeprefix("https://")
        return GrpcExporter(
            endpoint=endpoint,
            insecure=target.insecure,
            headers=tuple(target.headers.items()) or None,
            timeout=target.timeout_s,
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter(endpoint=target.endpoint, headers=target.headers or None, timeout=target.timeout_s)


class _Installed:
    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.has_sink = False


_lock = threading.Lock()
_installed: _Installed | None = None


def setup_tracing(
    telemetry: TelemetrySettings,
    component: str,
    *,
    sink: SpanSink | None = None,
    instance: str | None = None,
    node: str | None = None,
) -> trace.Tracer:
    """A tracer of ``component`` (``instance``: which one, e.g. a runner's index) for this process.

    The first call in a process installs the provider (see the module docstring); a later call with
    a ``sink`` adds the sink when none was added yet. ``node`` names the machine in each span
    (default: the host name).
    """
    global _installed
    with _lock:
        if _installed is None:
            service = os.environ.get("OTEL_SERVICE_NAME") or telemetry.service_name
            resource = Resource.create(
                {
                    "service.name": service,
                    "service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
                    "host.name": socket.gethostname(),
                    NODE_ATTR: node or socket.gethostname(),
                }
            )
            provider = TracerProvider(resource=resource)
            provider.add_span_processor(IdentitySpanProcessor())
            target = resolve_otlp(telemetry.otlp, os.environ)
            if target is not None:
                provider.add_span_processor(BatchSpanProcessor(otlp_exporter(target)))
            if telemetry.trace_file is not None:
                max_bytes = telemetry.trace_file_max_mb * 1024**2
                exporter = JsonLinesSpanExporter(Path(telemetry.trace_file), max_bytes)
                provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
            _installed = _Installed(provider)
        if sink is not None and telemetry.trace_store.enabled and not _installed.has_sink:
            store = telemetry.trace_store
            _installed.provider.add_span_processor(
                BatchSpanProcessor(
                    SinkSpanExporter(sink),
                    max_queue_size=store.max_queue,
                    schedule_delay_millis=store.flush_interval_s * 1000,
                    max_export_batch_size=min(store.max_batch, store.max_queue),
                )
            )
            _installed.has_sink = True
        attributes = {INSTANCE_ATTR: instance} if instance else None
        return _installed.provider.get_tracer(f"{TRACER_NAME}.{component}", attributes=attributes)


def trace_id_hex(span: trace.Span) -> str:
    return format(span.get_span_context().trace_id, "032x")


def traceparent_of(span: trace.Span) -> str:
    """The W3C ``traceparent`` header value naming ``span``."""
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def parse_traceparent(value: str | None) -> otel_context.Context | None:
    """The context a W3C ``traceparent`` names, or None for a missing or malformed one."""
    if not value:
        return None
    context = PROPAGATOR.extract({"traceparent": value})
    span_context = trace.get_current_span(context).get_span_context()
    return context if span_context.is_valid else None


def remote_parent(trace_id: str, span_id: str | None = None) -> otel_context.Context:
    """A context whose parent is span ``span_id`` of trace ``trace_id`` (made elsewhere, earlier);
    without ``span_id``, a placeholder parent derived from the trace id (spans made under it join
    the trace)."""
    span = int(span_id, 16) if span_id else int(hashlib.sha256(trace_id.encode()).hexdigest()[:16], 16) or 1
    parent = SpanContext(
        trace_id=int(trace_id, 16), span_id=span, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED)
    )
    return trace.set_span_in_context(NonRecordingSpan(parent))


@contextlib.contextmanager
def attached(context: otel_context.Context) -> Iterator[None]:
    """Make ``context`` the current one inside the block. Needed for baggage: a tracer's
    ``start_as_current_span(context=...)`` parents the span on ``context`` but makes it current in
    the *current* context, where ``context``'s baggage is missing."""
    token = otel_context.attach(context)
    try:
        yield
    finally:
        otel_context.detach(token)


def with_task(task_id: str, context: otel_context.Context | None = None) -> otel_context.Context:
    """``context`` (default: the current one) carrying ``task_id`` as baggage, so every span made
    under it, in this process or one it calls, records the task."""
    return baggage.set_baggage(TASK_BAGGAGE_KEY, task_id, context)


def inject_context() -> dict[str, str]:
    """The current trace context (and baggage) as a carrier dict to send to another process."""
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier)
    return carrier


def extract_context(carrier: dict[str, str] | None) -> otel_context.Context:
    return PROPAGATOR.extract(carrier or {})


# -- JSON-lines files (telemetry.trace_file) ------------------------------------------------------------


def read_trace(trace_file: Path, trace_id: str) -> list[dict[str, Any]]:
    """The spans of one trace from a JSON-lines file, ordered by start time."""
    spans = []
    for span in iter_spans(trace_file):
        if span.get("context", {}).get("trace_id", "").removeprefix("0x") == trace_id:
            spans.append(span)
    spans.sort(key=lambda s: s.get("start_time") or "")
    return spans


def iter_spans(trace_file: Path) -> Iterator[dict[str, Any]]:
    try:
        handle: IO[str] = open(trace_file, encoding="utf-8")  # noqa: SIM115
    except FileNotFoundError:
        return
    with handle:
        for line in handle:
            line = line.strip()
            if line:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue


def span_name_of(span: ReadableSpan | dict[str, Any]) -> str:
    return span["name"] if isinstance(span, dict) else span.name
