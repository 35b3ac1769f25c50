"""``officeray trace TASK_ID``: a task's timeline in the terminal, from ``GET /v1/tasks/{id}/trace``.

One lane per component (each runner its own: ``runner:0``, ``runner:1``; the span ``validate`` on
``validator``), in the order a task flows: gateway, orchestrator, planner, validator, the runners,
reviewer, ai_tool, webhooks, then any other lane by name. Each span is a bar over the task's time
span, scaled to the terminal's width (``--width`` to choose); spans of a lane that overlap (a span
and those nested in it) take rows of their own under the lane's label. A failed span is red
(``▓``); the others alternate two colours so that neighbours stay apart. A table of the spans
follows: lane, name, start (ms after the first span began), duration and status.

The server and the key are found as for every client command (:mod:`cluster.cli_client`):
``--address``, ``$OFFICERAY_ADDRESS``, else ``serve.host:serve.port`` of the config; ``--key`` (or
``--api-key``), ``$OFFICERAY_API_KEY``, else the local admin key file. ``--json`` prints the server's
answer as it came. Exit 0 on success, 1 when the server cannot be reached or answers an error (a task
that is not the key's is a 404), 2 for bad usage.

What is drawn is computed by pure functions (:func:`build_timeline`, :meth:`LaneRow.segments`,
:func:`axis`) tested without a terminal; only :func:`render_trace` builds rich objects.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cluster.cli_client import add_server_options, connect
from cluster.cli_output import EXIT_OK, UsageError, preview
from officeray.config import Settings
from officeray.telemetry import lane_sort_key as lane_key

OTHER_LANE = "other"
"""The lane of a span that names neither a lane nor a component."""
MIN_WIDTH = 40
"""Narrowest output ``--width`` accepts (a lane label, the separator and a usable bar)."""
MIN_BAR_WIDTH = 16
"""Fewest columns the bars get, however long the lane labels."""
MAX_ROWS_PER_LANE = 4
"""Most rows one lane takes for its overlapping spans."""
MAX_LABEL_CHARS = 24
"""Longest lane label shown (a longer one is cut with ``…``)."""
LABEL_SEPARATOR = " │ "

OK_GLYPH = "█"
ERROR_GLYPH = "▓"
OK_STYLES = ("cyan", "blue")
"""Colours of successive spans on one lane (alternating, so that touching spans stay apart)."""
ERROR_STYLE = "bold red"
NS_PER_MS = 1_000_000


@dataclass(frozen=True)
class TraceSpan:
    """One span as the timeline needs it (from one element of the answer's ``spans``)."""

    lane: str
    name: str
    start_ns: int
    end_ns: int
    status: str = "unset"
    status_message: str = ""

    @property
    def error(self) -> bool:
        return self.status == "error"

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)


@dataclass(frozen=True)
class Bar:
    """A span drawn on a lane: columns ``start`` to ``end`` (exclusive), ``span`` its index in
    :attr:`Timeline.spans`, ``shade`` its place among the lane's spans (for the alternating colour)."""

    start: int
    end: int
    span: int
    error: bool
    shade: int = 0


@dataclass(frozen=True)
class LaneRow:
    """One row of a lane's bars. Spans of a lane that overlap go to rows of their own (a span and the
    spans nested in it: ``task`` above ``plan``, ``step s1``, ``review``), the lane's label on its
    first row; past :data:`MAX_ROWS_PER_LANE` rows the last one holds the rest, drawn longer spans
    first, so the shorter ones stay visible on top, and failed spans last (an error is never hidden)."""

    lane: str
    bars: tuple[Bar, ...]
    first: bool = True
    """The lane's first row (the one with its label)."""

    @property
    def has_error(self) -> bool:
        return any(bar.error for bar in self.bars)

    def cells(self, width: int) -> list[Bar | None]:
        """For each of ``width`` columns, the bar drawn there (the last one drawn wins), or None."""
        out: list[Bar | None] = [None] * width
        for bar in self.bars:
            for column in range(max(0, bar.start), min(width, bar.end)):
                out[column] = bar
        return out

    def segments(self, width: int) -> list[tuple[str, str]]:
        """The row as ``(text, style)`` runs of equal style, ``width`` characters in all: spaces where
        no span is, :data:`OK_GLYPH` in an alternating colour, :data:`ERROR_GLYPH` in red."""
        runs: list[tuple[str, str]] = []
        for bar in self.cells(width):
            if bar is None:
                glyph, style = " ", ""
            elif bar.error:
                glyph, style = ERROR_GLYPH, ERROR_STYLE
            else:
                glyph, style = OK_GLYPH, OK_STYLES[bar.shade % len(OK_STYLES)]
            if runs and runs[-1][1] == style:
                runs[-1] = (runs[-1][0] + glyph, style)
            else:
                runs.append((glyph, style))
        return runs

    def text(self, width: int) -> str:
        """The row without styles (what a terminal without colours shows)."""
        return "".join(text for text, _style in self.segments(width))


@dataclass(frozen=True)
class Timeline:
    """The task's spans laid out on ``width`` columns from ``start_ns`` to ``end_ns``."""

    start_ns: int
    end_ns: int
    width: int
    spans: tuple[TraceSpan, ...]
    rows: tuple[LaneRow, ...]

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / NS_PER_MS

    def offset_ms(self, span: TraceSpan) -> float:
        return (span.start_ns - self.start_ns) / NS_PER_MS


def lane_of(span: Mapping[str, Any]) -> str:
    """The span's ``lane`` as the server gave it; else derived as the server does: ``runner:<instance>``
    for a runner's span, ``validator`` for ``validate``, else its component (:data:`OTHER_LANE`)."""
    lane = span.get("lane")
    if isinstance(lane, str) and lane.strip():
        return lane.strip()
    component = str(span.get("component") or "").strip()
    if component == "runner":
        return f"runner:{span.get('instance') or '?'}"
    if span.get("name") == "validate":
        return "validator"
    return component or OTHER_LANE


def _nanoseconds(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def parse_spans(raw: Sequence[Any]) -> tuple[list[TraceSpan], int]:
    """The answer's spans that can be drawn, and how many were left out (not an object, or without a
    ``start_ns``). A span without ``end_ns`` (or ending before it began) is drawn as an instant."""
    spans: list[TraceSpan] = []
    skipped = 0
    for item in raw:
        start = _nanoseconds(item.get("start_ns")) if isinstance(item, Mapping) else None
        if not isinstance(item, Mapping) or start is None:
            skipped += 1
            continue
        end = _nanoseconds(item.get("end_ns"))
        status = str(item.get("status") or "unset").lower()
        spans.append(
            TraceSpan(
                lane=lane_of(item),
                name=str(item.get("name") or "(unnamed)"),
                start_ns=start,
                end_ns=end if end is not None and end >= start else start,
                status=status,
                status_message=str(item.get("status_message") or ""),
            )
        )
    return spans, skipped


def _pack(columns: Sequence[tuple[int, int]], max_rows: int) -> list[list[int]]:
    """Indices of ``columns`` (first, end) in rows where no two overlap: each, in start order (the
    longer first on a tie), goes to the first row free from its first column, else to a new row,
    else (``max_rows`` reached) to the last row."""
    rows: list[list[int]] = []
    ends: list[int] = []
    for i in sorted(range(len(columns)), key=lambda i: (columns[i][0], columns[i][0] - columns[i][1])):
        first, end = columns[i]
        free = next((r for r, row_end in enumerate(ends) if row_end <= first), None)
        if free is None and len(rows) < max_rows:
            rows.append([])
            ends.append(0)
            free = len(rows) - 1
        row = free if free is not None else len(rows) - 1
        rows[row].append(i)
        ends[row] = max(ends[row], end)
    return rows


def build_timeline(spans: Sequence[TraceSpan], width: int, max_rows: int = MAX_ROWS_PER_LANE) -> Timeline:
    """Lay ``spans`` out on ``width`` columns: time runs from the first start to the last end; each
    span covers the columns its interval touches, at least one. Lanes in :func:`lane_key` order,
    each in as many :class:`LaneRow` as its overlapping spans need (at most ``max_rows``)."""
    if width < 1:
        raise ValueError("a timeline needs at least one column")
    ordered = tuple(sorted(spans, key=lambda s: (s.start_ns, s.end_ns)))
    if not ordered:
        return Timeline(0, 0, width, (), ())
    start = min(s.start_ns for s in ordered)
    end = max(s.end_ns for s in ordered)
    total = max(1, end - start)

    def columns(span: TraceSpan) -> tuple[int, int]:
        first = min(width - 1, (span.start_ns - start) * width // total)
        last = -(-(span.end_ns - start) * width // total)  # ceiling
        return first, max(first + 1, min(width, last))

    by_lane: dict[str, list[int]] = {}
    for index, span in enumerate(ordered):
        by_lane.setdefault(span.lane, []).append(index)
    rows = []
    for lane in sorted(by_lane, key=lane_key):
        lane_spans = by_lane[lane]
        placed = _pack([columns(ordered[i]) for i in lane_spans], max(1, max_rows))
        for number, row in enumerate(placed):
            members = sorted(lane_spans[k] for k in row)  # in start order: the shade alternates
            bars = [
                Bar(*columns(ordered[i]), span=i, error=ordered[i].error, shade=shade)
                for shade, i in enumerate(members)
            ]
            bars.sort(key=lambda b: (b.error, -ordered[b.span].duration_ns, ordered[b.span].start_ns))
            rows.append(LaneRow(lane, tuple(bars), first=number == 0))
    return Timeline(start, end, width, ordered, tuple(rows))


def format_ms(ms: float) -> str:
    """A duration or offset for the axis and the table: ``0.42 ms``, ``12.5 ms``, ``1,234 ms``."""
    if ms < 10:
        return f"{ms:.2f} ms"
    if ms < 100:
        return f"{ms:.1f} ms"
    return f"{ms:,.0f} ms"


def axis(width: int, duration_ms: float) -> str:
    """The time ruler under the bars, ``width`` characters: ``0`` at the left, the middle time in the
    middle and the whole duration at the right (the middle is left out when it does not fit)."""
    left, right = "0 ms", format_ms(duration_ms)
    middle = format_ms(duration_ms / 2)
    line = [" "] * width
    for i, ch in enumerate(left[:width]):
        line[i] = ch
    if len(left) + len(right) + 1 <= width:
        for i, ch in enumerate(right):
            line[width - len(right) + i] = ch
    at = width // 2 - len(middle) // 2
    if at > len(left) + 1 and at + len(middle) < width - len(right) - 1:
        for i, ch in enumerate(middle):
            line[at + i] = ch
    return "".join(line)


def label_width(lanes: Sequence[str]) -> int:
    """Columns of the lane labels: the longest lane name, at most :data:`MAX_LABEL_CHARS`."""
    return min(MAX_LABEL_CHARS, max((len(lane) for lane in lanes), default=0))


def bar_width(total_width: int, lanes: Sequence[str]) -> int:
    """Columns left for the bars in an output ``total_width`` wide, at least :data:`MIN_BAR_WIDTH`."""
    return max(MIN_BAR_WIDTH, total_width - label_width(lanes) - len(LABEL_SEPARATOR))


def _label(lane: str, width: int) -> str:
    text = lane if len(lane) <= width else lane[: width - 1] + "…"
    return text.ljust(width)


def render_trace(answer: Mapping[str, Any], width: int) -> Any:
    """The rich renderable of a ``/trace`` answer for an output ``width`` columns wide: a head line,
    one row per lane, the time axis and the table of spans."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    raw = answer.get("spans")
    spans, skipped = parse_spans(raw if isinstance(raw, list) else [])
    lanes = sorted({s.lane for s in spans}, key=lane_key)
    timeline = build_timeline(spans, bar_width(width, lanes))
    errors = sum(s.error for s in spans)
    head = Text.assemble(
        ("task ", "dim"),
        (str(answer.get("task_id") or ""), "bold"),
        ("  trace ", "dim"),
        str(answer.get("trace_id") or "-"),
        f"\n{len(spans)} span(s) on {len(lanes)} lane(s) over {format_ms(timeline.duration_ms)}",
        (f"  {errors} error(s)" if errors else "", ERROR_STYLE),
    )
    parts: list[Any] = [head]
    if skipped:
        parts.append(Text(f"{skipped} span(s) without a start time left out", style="yellow"))
    if not spans:
        parts.append(Text("no spans recorded for this task (yet: spans arrive in batches)", style="dim"))
        return Group(*parts)
    labels = label_width(lanes)
    failed_lanes = {s.lane for s in spans if s.error}
    for row in timeline.rows:
        label = _label(row.lane, labels) if row.first else " " * labels
        line = Text(label, style=ERROR_STYLE if row.lane in failed_lanes else "bold")
        line.append(LABEL_SEPARATOR, style="dim")
        for text, style in row.segments(timeline.width):
            line.append(text, style=style or None)
        parts.append(line)
    parts.append(
        Text(" " * labels + LABEL_SEPARATOR + axis(timeline.width, timeline.duration_ms), style="dim")
    )
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    table.add_column("lane")
    table.add_column("span", overflow="fold")
    table.add_column("start ms", justify="right")
    table.add_column("duration ms", justify="right")
    table.add_column("status", overflow="fold")
    for span in timeline.spans:
        status = Text(span.status, style=ERROR_STYLE if span.error else "")
        if span.error and span.status_message:
            status.append(f": {preview(span.status_message)}")
        table.add_row(
            Text(span.lane),
            Text(span.name),
            f"{timeline.offset_ms(span):.2f}",
            f"{span.duration_ns / NS_PER_MS:.2f}",
            status,
        )
    parts.extend([Text(""), table])
    return Group(*parts)


# -- the command --


def add_trace_parser(sub: Any) -> None:
    """The ``trace`` command."""
    trace = sub.add_parser(
        "trace", help="a task's timeline in the terminal: one row per component, spans as bars"
    )
    trace.add_argument("task_id", help="the task's id")
    add_server_options(trace)
    trace.add_argument("--api-key", dest="key", metavar="KEY", default=None, help="the same as --key")
    trace.add_argument(
        "--width", type=int, default=None, metavar="N", help="draw N columns wide (default: the terminal's)"
    )
    trace.add_argument("--json", action="store_true", help="print the server's answer as one JSON object")


def cmd_trace(args: argparse.Namespace, settings: Settings) -> int:
    """``officeray trace TASK_ID``."""
    if args.width is not None and args.width < MIN_WIDTH:
        raise UsageError(f"--width must be at least {MIN_WIDTH} (got {args.width})")
    width = args.width if args.width is not None else max(MIN_WIDTH, shutil.get_terminal_size().columns)
    with connect(args, settings) as client:
        answer = client.trace(args.task_id)
    if args.json:
        print(json.dumps(answer, default=str))
        return EXIT_OK
    from rich.console import Console

    Console(width=width, highlight=False).print(render_trace(answer, width))
    return EXIT_OK
