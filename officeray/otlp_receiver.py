"""A loopback OTLP trace receiver (HTTP/protobuf and gRPC), shipped for tests and benchmarks.

It stands in for an OpenTelemetry Collector, Jaeger or Tempo: point ``OTEL_EXPORTER_OTLP_ENDPOINT``
(or ``telemetry.otlp.endpoint``) at :attr:`OtlpReceiver.endpoint` and read what arrived from
:meth:`OtlpReceiver.spans`. It listens on 127.0.0.1 only.
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

LOOPBACK = "127.0.0.1"
SHUTDOWN_POLL_S = 0.05
"""How often the receiver's loop looks for a stop (its shutdown waits at most this long)."""
MAX_BODY_BYTES = 64 * 1024**2
"""Largest export request the receiver reads."""


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as an OTLP receiver got it."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    service_name: str
    attributes: dict[str, Any] = field(default_factory=dict)
    resource: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    """The request headers the span arrived with (lower-case names)."""


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


def decode_export(body: bytes, headers: dict[str, str] | None = None) -> list[ReceivedSpan]:
    """The spans of one ``ExportTraceServiceRequest`` (protobuf bytes)."""
    request = trace_service_pb2.ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex() or None,
                        name=span.name,
                        service_name=str(resource.get("service.name", "")),
                        attributes={kv.key: _value(kv.value) for kv in span.attributes},
                        resource=resource,
                        headers=dict(headers or {}),
                    )
                )
    return spans


class OtlpReceiver:
    """Receives OTLP trace exports on loopback (``protocol``: ``http/protobuf`` or ``grpc``); use it
    as a context manager."""

    def __init__(self, protocol: Literal["http/protobuf", "grpc"] = "http/protobuf") -> None:
        self.protocol = protocol
        self._lock = threading.Lock()
        self._spans: list[ReceivedSpan] = []
        self.requests = 0
        self._stop: Callable[[], None] | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        """What ``OTEL_EXPORTER_OTLP_ENDPOINT`` takes (HTTP: the base URL, ``/v1/traces`` is added)."""
        return f"http://{LOOPBACK}:{self.port}"

    def _add(self, spans: list[ReceivedSpan]) -> None:
        with self._lock:
            self._spans.extend(spans)
            self.requests += 1

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], timeout_s: float
    ) -> list[ReceivedSpan]:
        """The spans once ``predicate(spans)`` holds; TimeoutError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            spans = self.spans()
            if predicate(spans):
                return spans
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the OTLP receiver did not get the spans in {timeout_s}s: {len(spans)} so far"
                )
            time.sleep(0.1)

    def __enter__(self) -> OtlpReceiver:
        if self.protocol == "grpc":
            self._start_grpc()
        else:
            self._start_http()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None

    def _start_http(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                length = int(self.headers.get("Content-Length") or 0)
                if self.path != "/v1/traces" or not 0 <= length <= MAX_BODY_BYTES:
                    self.send_response(404 if self.path != "/v1/traces" else 413)
                    self.end_headers()
                    return
                body = self.rfile.read(length)
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver._add(decode_export(body, headers))
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the API's name
                return None

        server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.port = server.server_address[1]
        thread = threading.Thread(
            target=server.serve_forever, args=(SHUTDOWN_POLL_S,), name="otlp-receiver", daemon=True
        )
        thread.start()

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

        self._stop = stop

    def _start_grpc(self) -> None:
        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

        receiver = self

        class Servicer(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - the gRPC API
                headers = {k.lower(): v for k, v in context.invocation_metadata()}
                receiver._add(decode_export(request.SerializeToString(), headers))
                return trace_service_pb2.ExportTraceServiceResponse()

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), server)
        self.port = server.add_insecure_port(f"{LOOPBACK}:0")
        server.start()
        self._stop = lambda: server.stop(grace=1).wait(5)
