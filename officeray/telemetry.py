"""Tracing with OpenTelemetry: one trace per task, spans exported to a JSON-lines file.

Each process that creates spans (the orchestrator, tool runners) calls :func:`setup_tracing` once;
spans are appended to the same file, one JSON object per line (``span.to_json()`` of the SDK), as
soon as each span ends. The trace context crosses process boundaries as a W3C ``traceparent``
carrier dict (:func:`inject_context` / :func:`extract_context`).

Span names a task produces: ``task``, ``plan``, ``validate``, ``step <step_id>``, ``review``
(one set of plan/validate/step/review per iteration), all children of ``task``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

TRACER_NAME = "officeray"

_lock = threading.Lock()
_provider: TracerProvider | None = None


class JsonLinesSpanExporter(SpanExporter):
    """Appends each finished span as one JSON line; whole lines go out in one ``write`` call."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._lock = threading.Lock()

    def export(self, spans: Any) -> SpanExportResult:
        payload = "".join(span.to_json(indent=None) + "\n" for span in spans).encode()
        with self._lock:
            os.write(self._fd, payload)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def setup_tracing(trace_file: Path | None, service_name: str = "officeray") -> trace.Tracer:
    """A tracer for this process; the first call installs the provider and the file exporter."""
    global _provider
    with _lock:
        if _provider is None:
            provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
            if trace_file is not None:
                provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(Path(trace_file))))
            _provider = provider
        return _provider.get_tracer(TRACER_NAME)


def trace_id_hex(span: trace.Span) -> str:
    return format(span.get_span_context().trace_id, "032x")


def inject_context() -> dict[str, str]:
    """The current trace context as a carrier dict to send to another process."""
    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier


def extract_context(carrier: dict[str, str] | None) -> otel_context.Context:
    return extract(carrier or {})


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
