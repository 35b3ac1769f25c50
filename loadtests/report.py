"""Build the report of a load-test run from its output folder, and gate it on SLOs.

    python -m loadtests.report OUT_DIR [--slo EXPR ...] [--slo-file FILE]

reads the files a run leaves (:mod:`loadtests.records`: ``samples.jsonl``, ``timeline.jsonl``,
``run.json``) and writes, into the same folder:

* ``report.json``: the summary (:func:`summarize`) plus the SLO results (``slos``, ``passed``);
* ``latency.png``, ``throughput.png``, ``users.png``, ``failures.png`` (:func:`write_plots`);
* ``report.html``: one self-contained page with the tables, the SLO results and the plots.

Exit status: 0 when every SLO is met (or none was given), 1 when one is violated, 2 with a one-line
message on bad input (a bad SLO, a missing or corrupt run folder).

Conventions:

* Latency statistics are over every sample of a group, failed ones included (as locust counts
  them). Percentiles are exact, computed from all samples with linear interpolation between the
  two closest ranks (:func:`officeray.stats.percentile`, numpy's default ``linear`` method, the
  same function the live progress line uses): the p50 of 1..100 ms is 50.5 ms.
* ``throughput_rps`` is the sample count divided by the run's duration (``ended_at - started_at``),
  or, for a stage, by the stage's duration; ``failure_rate`` is a fraction (0..1).
* A sample belongs to the stage whose ``[start_s, end_s)`` holds its end time ``t - started_at``;
  samples before the first stage count in the first one, samples after the last stage's end (the
  drain of in-flight tasks) in the last one.
* A JSON-lines file whose last line does not parse (a run cut short mid-write) is read without that
  line and the report lists a warning; a bad line elsewhere is an error.

Why one file of this length: the summary, the SLO gate, the plots and the HTML page are built from
the same samples in one pass; each is a section below.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import functools
import html
import json
import math
import statistics
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, cast

from loadtests.records import (
    COMPLETION_TYPE,
    DEFAULT_STAGE,
    REPORT_HTML,
    REPORT_JSON,
    RUN_FILE,
    SAMPLES_FILE,
    SUBMIT_NAME,
    SUBMIT_TYPE,
    TICK_S,
    TIMELINE_FILE,
    RunInfo,
    Sample,
    StageInfo,
    Tick,
)
from loadtests.slo import (
    COUNT_METRICS,
    LATENCY_METRICS,
    PERCENTILES,
    Slo,
    SloError,
    SloResult,
    evaluate,
    load_slo_file,
    parse_slo,
    trace_completeness,
)
from officeray.stats import percentile, percentiles

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MAX_PLOT_POINTS = 200
"""Most points of a time series in a plot: samples are bucketed into windows of
``max(TICK_S, duration / MAX_PLOT_POINTS)`` seconds, and the timeline is thinned to this many ticks."""

TOP_ERRORS = 10
"""How many distinct error messages (the most frequent) the report lists."""

MAX_ERROR_CHARS = 500
"""Error messages are cut to this many characters before they are grouped and reported."""


PLOT_NAMES = ("latency.png", "throughput.png", "users.png", "failures.png")
"""The plot files :func:`write_plots` writes, in order."""

PLOT_DPI = 100
"""Resolution of the plots (a 10-inch-wide figure is 1000 pixels wide)."""

_NUMBER = (int, float)


class ReportError(ValueError):
    """A run folder that cannot be reported: a missing or corrupt file (the message names it)."""


@dataclass
class RunData:
    """The three files of a run, read and checked (see :func:`load_run`)."""

    out_dir: Path
    info: RunInfo
    samples: list[Sample]
    timeline: list[Tick]
    warnings: list[str] = field(default_factory=list)
    """Things tolerated while reading (a truncated last line, a missing optional field)."""

    @property
    def started_at(self) -> float:
        return float(self.info["started_at"])

    @property
    def duration_s(self) -> float:
        """``ended_at - started_at`` in seconds."""
        return float(self.info["ended_at"]) - self.started_at

    @functools.cached_property
    def stages(self) -> list[StageInfo]:
        """run.json's stages by start, or one :data:`DEFAULT_STAGE` spanning the run when it has none."""
        if self.info["stages"]:
            return sorted(self.info["stages"], key=lambda stage: stage["start_s"])
        settings = self.info["settings"]
        users = _number_or(settings.get("users"), max((tick["users"] for tick in self.timeline), default=0))
        return [
            StageInfo(
                name=DEFAULT_STAGE,
                start_s=0.0,
                end_s=self.duration_s,
                users=int(users),
                spawn_rate=float(_number_or(settings.get("spawn_rate"), 0.0)),
            )
        ]

    @functools.cached_property
    def span_s(self) -> float:
        """Seconds from the start to the last thing to plot (the end, a late sample or tick)."""
        ends = [self.duration_s, *(float(s["t"]) - self.started_at for s in self.samples)]
        ends += [float(tick["t"]) - self.started_at for tick in self.timeline]
        return max(0.0, *ends)


# ---------------------------------------------------------------------------------------------
# Reading


def _is_number(value: object) -> bool:
    return isinstance(value, _NUMBER) and not isinstance(value, bool) and math.isfinite(value)


def _number_or(value: object, default: float) -> float:
    return float(cast(float, value)) if _is_number(value) else default


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise ReportError(f"{path}: missing (is {path.parent} a load-test output folder?)")
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise ReportError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _read_jsonl(path: Path, warnings: list[str]) -> list[tuple[int, Any]]:
    """The JSON values of a JSON-lines file with their line numbers; blank lines are skipped and a
    last line that does not parse is dropped with a warning (any other bad line raises)."""
    lines = _read_text(path).splitlines()
    numbered = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    rows = []
    for index, (number, line) in enumerate(numbered):
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            if index == len(numbered) - 1:
                warnings.append(f"{path.name}:{number}: truncated last line skipped")
                continue
            raise ReportError(f"{path}:{number}: not JSON ({exc.msg})") from exc
    return rows


def _require(row: object, spec: Mapping[str, Callable[[object], bool]], where: str) -> dict[str, Any]:
    """``row`` as a dict, after checking that each key of ``spec`` is present and passes its check."""
    if not isinstance(row, dict):
        raise ReportError(f"{where}: expected a JSON object")
    bad = [key for key, check in spec.items() if key not in row or not check(row[key])]
    if bad:
        raise ReportError(f"{where}: missing or invalid field(s): {', '.join(bad)}")
    return row


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _is_bool(value: object) -> bool:
    return isinstance(value, bool)


_SAMPLE_SPEC = {"t": _is_number, "type": _is_str, "name": _is_str, "ms": _is_number, "ok": _is_bool}
_TICK_SPEC = {"t": _is_number, "users": _is_number, "in_flight": _is_number}
_STAGE_SPEC = {"name": _is_str, "start_s": _is_number, "end_s": _is_number}
_RUN_SPEC = {"started_at": _is_number, "ended_at": _is_number}
_RUN_DEFAULTS: dict[str, Any] = {"host": "", "mode": "", "scenario": "", "stand_in_model": None}


def _load_samples(path: Path, warnings: list[str]) -> list[Sample]:
    return [
        cast(Sample, _require(row, _SAMPLE_SPEC, f"{path}:{number}"))
        for number, row in _read_jsonl(path, warnings)
    ]


def _load_timeline(path: Path, warnings: list[str]) -> list[Tick]:
    ticks = []
    for number, row in _read_jsonl(path, warnings):
        tick = _require(row, _TICK_SPEC, f"{path}:{number}")
        for key in ("submitted", "completed", "failures"):
            tick.setdefault(key, 0)
        tick.setdefault("stage", "")
        ticks.append(cast(Tick, tick))
    return sorted(ticks, key=lambda tick: tick["t"])


def _load_stages(raw: object, path: Path) -> list[StageInfo]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ReportError(f"{path}: 'stages' is not a list")
    stages = []
    for index, item in enumerate(raw):
        stage = _require(item, _STAGE_SPEC, f"{path}: stages[{index}]")
        stage["users"] = int(_number_or(stage.get("users"), 0))
        stage["spawn_rate"] = _number_or(stage.get("spawn_rate"), 0.0)
        stages.append(cast(StageInfo, stage))
    return stages


def _load_info(path: Path, warnings: list[str]) -> RunInfo:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from exc
    info = _require(data, _RUN_SPEC, str(path))
    if info["ended_at"] < info["started_at"]:
        raise ReportError(f"{path}: ended_at is before started_at")
    for key, default in _RUN_DEFAULTS.items():
        if key not in info:
            warnings.append(f"{path.name}: no {key!r}")
            info[key] = default
    if not isinstance(info.get("settings"), dict):
        info["settings"] = {}
    info["stages"] = _load_stages(info.get("stages"), path)
    return cast(RunInfo, info)


def load_run(out_dir: str | Path) -> RunData:
    """Read and check a run folder's ``run.json``, ``samples.jsonl`` and ``timeline.jsonl``.

    Raises :class:`ReportError` when the folder or a file is missing, or a file is corrupt (not
    JSON, a field missing or of the wrong type); a truncated last JSON line is tolerated.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise ReportError(f"{out_dir}: no such folder")
    warnings: list[str] = []
    info = _load_info(out_dir / RUN_FILE, warnings)
    samples = _load_samples(out_dir / SAMPLES_FILE, warnings)
    timeline = _load_timeline(out_dir / TIMELINE_FILE, warnings)
    return RunData(out_dir=out_dir, info=info, samples=samples, timeline=timeline, warnings=warnings)


# ---------------------------------------------------------------------------------------------
# Summary


def _latency(ms: Sequence[float]) -> dict[str, float | None]:
    """Percentiles (linear interpolation), max and mean of the latencies; None values when empty."""
    keys = LATENCY_METRICS
    if not ms:
        return dict.fromkeys(keys)
    values = [float(v) for v in ms]
    stats = percentiles(values, PERCENTILES)
    return dict(zip(keys, [*stats, max(values), statistics.fmean(values)], strict=True))


def _token_stats(samples: Sequence[Sample]) -> dict[str, float | int]:
    """Output-token statistics of samples that carry them (the LLM ``e2e`` samples); else empty."""
    rates = [float(s["tokens_per_s"]) for s in samples if _is_number(s.get("tokens_per_s"))]
    tokens = [int(s["tokens"]) for s in samples if _is_number(s.get("tokens"))]
    stats: dict[str, float | int] = {}
    if rates:
        stats["tokens_per_s_mean"] = statistics.fmean(rates)
        stats["tokens_per_s_p50"] = percentile(rates, 50)
    if tokens:
        stats["tokens_total"] = sum(tokens)
    return stats


def aggregate(samples: Sequence[Sample], duration_s: float) -> dict[str, Any]:
    """Count, failures, failure rate, throughput over ``duration_s`` and latency statistics of a
    group of samples (the keys are the SLO request metrics, see :data:`loadtests.slo.REQUEST_METRICS`).
    Rates are None when there is nothing to divide by."""
    count = len(samples)
    failures = sum(1 for sample in samples if not sample["ok"])
    return {
        "count": count,
        "failures": failures,
        "failure_rate": failures / count if count else None,
        "throughput_rps": count / duration_s if duration_s > 0 else None,
        **_latency([float(sample["ms"]) for sample in samples]),
        **_token_stats(samples),
    }


def _requests_table(samples: Iterable[Sample], duration_s: float) -> list[dict[str, Any]]:
    """One aggregate per (type, name), sorted by type then name."""
    groups: dict[tuple[str, str], list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[(sample["type"], sample["name"])].append(sample)
    return [
        {"type": kind, "name": name, **aggregate(group, duration_s)}
        for (kind, name), group in sorted(groups.items())
    ]


def _is_submit(sample: Sample) -> bool:
    return sample["type"] == SUBMIT_TYPE and sample["name"] == SUBMIT_NAME


def _is_completion(sample: Sample) -> bool:
    return sample["type"] == COMPLETION_TYPE


def _section(samples: Sequence[Sample], duration_s: float) -> dict[str, Any]:
    """The requests table and the submit and completion aggregates (None without samples)."""
    submits = [sample for sample in samples if _is_submit(sample)]
    completions = [sample for sample in samples if _is_completion(sample)]
    return {
        "requests": _requests_table(samples, duration_s),
        "submit": aggregate(submits, duration_s) if submits else None,
        "completion": aggregate(completions, duration_s) if completions else None,
    }


def split_by_stage(run: RunData) -> list[list[Sample]]:
    """The samples of each stage of ``run.stages`` (see the module's docstring for the rule)."""
    stages = run.stages
    starts = [float(stage["start_s"]) for stage in stages]
    split: list[list[Sample]] = [[] for _ in stages]
    for sample in run.samples:
        index = bisect.bisect_right(starts, float(sample["t"]) - run.started_at) - 1
        split[min(max(index, 0), len(stages) - 1)].append(sample)
    return split


def _stages(run: RunData) -> list[dict[str, Any]]:
    rows = []
    for stage, samples in zip(run.stages, split_by_stage(run), strict=True):
        duration = float(stage["end_s"]) - float(stage["start_s"])
        rows.append({**stage, "duration_s": duration, **_section(samples, duration)})
    return rows


def _errors(samples: Iterable[Sample]) -> list[dict[str, Any]]:
    """The :data:`TOP_ERRORS` most frequent error messages of failed samples, with their counts."""
    counts = Counter(
        str(sample.get("error") or "(no error message)")[:MAX_ERROR_CHARS]
        for sample in samples
        if not sample["ok"]
    )
    return [{"message": message, "count": count} for message, count in counts.most_common(TOP_ERRORS)]


def _run_section(run: RunData) -> dict[str, Any]:
    fields = {key: value for key, value in run.info.items() if key not in ("stages", "traces")}
    return {**fields, "duration_s": run.duration_s}


def summarize(run: RunData) -> dict[str, Any]:
    """The report dict of a run (``report.json`` without ``slos`` and ``passed``).

    Keys: ``run`` (run.json's fields except stages and traces, plus ``duration_s``), ``totals``
    (count, failures and failure rate of all samples: the ``run`` SLO selector), ``requests``,
    ``submit``, ``completion``, ``stages`` (each with its own requests/submit/completion),
    ``task_status`` (completion samples by status), ``traces`` (run.json's, or None),
    ``trace_completeness`` (0..1 or None), ``errors`` and ``warnings``.
    """
    count = len(run.samples)
    failures = sum(1 for sample in run.samples if not sample["ok"])
    statuses = Counter(sample.get("status") or "unknown" for sample in run.samples if _is_completion(sample))
    traces = run.info.get("traces")
    return {
        "run": _run_section(run),
        "totals": {"count": count, "failures": failures, "failure_rate": failures / count if count else None},
        **_section(run.samples, run.duration_s),
        "stages": _stages(run),
        "task_status": dict(sorted(statuses.items())),
        "traces": traces,
        "trace_completeness": trace_completeness(traces),
        "errors": _errors(run.samples),
        "warnings": list(run.warnings),
    }


# ---------------------------------------------------------------------------------------------
# Plots


@dataclass
class _Buckets:
    """Samples bucketed into windows of ``width`` seconds from the run's start."""

    width: float
    count: int
    groups: dict[int, list[Sample]]

    def centers(self) -> list[float]:
        return [(index + 0.5) * self.width for index in range(self.count)]

    def rate(self, keep: Callable[[Sample], bool]) -> list[float]:
        """Per-second rate of the kept samples in every bucket (zero for an empty one)."""
        return [sum(1 for s in self.groups.get(i, ()) if keep(s)) / self.width for i in range(self.count)]


def _bucket(run: RunData) -> _Buckets:
    span = run.span_s
    width = max(TICK_S, span / MAX_PLOT_POINTS)
    count = max(1, min(MAX_PLOT_POINTS, math.ceil(span / width)))
    groups: dict[int, list[Sample]] = defaultdict(list)
    for sample in run.samples:
        index = int((float(sample["t"]) - run.started_at) // width)
        groups[min(max(index, 0), count - 1)].append(sample)
    return _Buckets(width=width, count=count, groups=groups)


def _figure(rows: int) -> tuple[Figure, list[Axes]]:
    """A figure drawn by the Agg canvas (no pyplot, no GUI backend, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 3.2 * rows), dpi=PLOT_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, 1, squeeze=False)
    return figure, [row[0] for row in axes]


def _finish(ax: Axes, run: RunData, title: str, ylabel: str, drawn: bool) -> None:
    """Title, labels, x range, stage boundaries, and a legend or a "no data" note."""
    ax.set_title(title)
    ax.set_xlabel("seconds since start")
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, max(run.span_s, 1.0))
    for stage in run.stages:
        ax.axvline(float(stage["start_s"]), color="grey", linestyle="--", linewidth=0.8)
        ax.text(
            float(stage["start_s"]),
            0.98,
            f" {stage['name']}",
            transform=ax.get_xaxis_transform(),
            rotation=90,
            va="top",
            ha="left",
            fontsize=8,
            color="grey",
        )
    if drawn:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    else:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="grey")


def _latency_series(buckets: _Buckets, keep: Callable[[Sample], bool]) -> dict[int, list[float]]:
    """x positions then p50/p95/p99 per non-empty bucket, keyed by percentile (0 for x)."""
    series: dict[int, list[float]] = {0: [], 50: [], 95: [], 99: []}
    for index in sorted(buckets.groups):
        ms = [float(s["ms"]) for s in buckets.groups[index] if keep(s)]
        if not ms:
            continue
        series[0].append((index + 0.5) * buckets.width)
        for q, value in zip((50, 95, 99), percentiles(ms, (50, 95, 99)), strict=True):
            series[q].append(value)
    return series


def _plot_latency(run: RunData, buckets: _Buckets) -> Figure:
    figure, axes = _figure(2)
    for ax, label, keep in zip(
        axes, ("submit (POST /v1/tasks)", "task completion"), (_is_submit, _is_completion), strict=True
    ):
        series = _latency_series(buckets, keep)
        for q in (50, 95, 99):
            if series[0]:
                ax.plot(series[0], series[q], marker=".", linewidth=1, label=f"p{q}")
        _finish(ax, run, f"{label} latency per {buckets.width:g} s", "ms", bool(series[0]))
    return figure


def _plot_rates(
    run: RunData, buckets: _Buckets, lines: dict[str, Callable[[Sample], bool]], title: str
) -> Figure:
    figure, (ax,) = _figure(1)
    drawn = False
    for label, keep in lines.items():
        rates = buckets.rate(keep)
        if any(rates):
            ax.plot(buckets.centers(), rates, linewidth=1, label=label)
            drawn = True
    _finish(ax, run, f"{title} (per {buckets.width:g} s window)", "per second", drawn)
    return figure


def _thin(ticks: Sequence[Tick]) -> Sequence[Tick]:
    step = max(1, math.ceil(len(ticks) / MAX_PLOT_POINTS))
    return ticks[::step]


def _plot_users(run: RunData) -> Figure:
    figure, (ax,) = _figure(1)
    ticks = _thin(run.timeline)
    if ticks:
        x = [float(tick["t"]) - run.started_at for tick in ticks]
        ax.plot(x, [tick["users"] for tick in ticks], linewidth=1, label="users")
        ax.plot(x, [tick["in_flight"] for tick in ticks], linewidth=1, label="tasks in flight")
    _finish(ax, run, "users and tasks in flight", "count", bool(ticks))
    return figure


def write_plots(run: RunData, out_dir: str | Path) -> list[Path]:
    """Write :data:`PLOT_NAMES` into ``out_dir`` and return their paths.

    ``latency.png``: p50/p95/p99 of submissions and of completions per window; ``throughput.png``:
    completed tasks/s and submissions/s; ``users.png``: users and tasks in flight from the
    timeline; ``failures.png``: failed requests/s. Windows are ``max(TICK_S, span /
    MAX_PLOT_POINTS)`` seconds; stage starts are dashed lines with the stage's name; a plot without
    data shows "no data".
    """
    out_dir = Path(out_dir)
    buckets = _bucket(run)
    figures = [
        _plot_latency(run, buckets),
        _plot_rates(
            run, buckets, {"tasks completed": _is_completion, "submissions": _is_submit}, "throughput"
        ),
        _plot_users(run),
        _plot_rates(run, buckets, {"failed requests": lambda s: not s["ok"]}, "failures"),
    ]
    paths = []
    for name, figure in zip(PLOT_NAMES, figures, strict=True):
        path = out_dir / name
        figure.savefig(path, format="png")
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------
# HTML

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.text { text-align: left; }
.pass { color: #1a7f37; font-weight: bold; } .fail { color: #c62828; font-weight: bold; }
.note { background: #fff8e1; border-left: 4px solid #f9a825; padding: 0.5em 1em; }
img { max-width: 100%; display: block; margin-bottom: 1em; }
"""

_REQUEST_COLUMNS = (*COUNT_METRICS, *LATENCY_METRICS, "tokens_per_s_mean", "tokens_total")


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: object) -> str:
    """A cell's text: floats with 3 decimals below 1, 2 below 100 and 1 above, None as a dash, JSON
    for containers."""
    if value is None:
        return "–"
    if isinstance(value, float):
        decimals = 3 if abs(value) < 1 else 2 if abs(value) < 100 else 1
        return f"{value:,.{decimals}f}"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]], text_columns: int = 1) -> str:
    """An escaped HTML table; the first ``text_columns`` columns are left-aligned text."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = [
            f'<td class="text">{_e(_fmt(v))}</td>' if i < text_columns else f"<td>{_e(_fmt(v))}</td>"
            for i, v in enumerate(row)
        ]
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _verdict(report: Mapping[str, Any]) -> str:
    if not report.get("slos"):
        return "<p>No SLOs were checked.</p>"
    if report.get("passed"):
        return '<p class="pass">PASSED: every SLO is met.</p>'
    return '<p class="fail">FAILED: an SLO is violated.</p>'


def _stand_in_note(run: Mapping[str, Any]) -> str:
    stand_in = run.get("stand_in_model")
    if stand_in is True:
        text = (
            "The model tier was a stand-in (the embedded tier's latency model), not a real model: "
            "model latencies are simulated and say nothing about a real model's speed."
        )
    elif stand_in is False:
        text = "The model tier was a real model."
    else:
        text = "Whether the model tier was a stand-in is unknown (run.json does not say)."
    return f'<p class="note">{_e(text)}</p>'


def _slo_html(report: Mapping[str, Any]) -> str:
    slos = report.get("slos") or []
    if not slos:
        return "<p>None given.</p>"
    rows = []
    for slo in slos:
        verdict = '<span class="pass">pass</span>' if slo["ok"] else '<span class="fail">FAIL</span>'
        rows.append(
            f'<tr><td class="text">{_e(slo["expr"])}</td><td>{_e(_fmt(slo["value"]))}</td>'
            f'<td class="text">{verdict}</td><td class="text">{_e(slo["message"])}</td></tr>'
        )
    head = "<tr><th>SLO</th><th>value</th><th>result</th><th>message</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _requests_html(requests: Sequence[Mapping[str, Any]]) -> str:
    if not requests:
        return "<p>No samples.</p>"
    rows = [[r["type"], r["name"], *(r.get(c) for c in _REQUEST_COLUMNS)] for r in requests]
    return _table(["type", "name", *_REQUEST_COLUMNS], rows, text_columns=2)


def _stage_row(stage: Mapping[str, Any]) -> list[object]:
    submit, completion = stage.get("submit") or {}, stage.get("completion") or {}
    failures = sum(r["failures"] for r in stage.get("requests", ()))
    return [
        stage["name"],
        stage["start_s"],
        stage["end_s"],
        stage.get("users"),
        stage.get("spawn_rate"),
        sum(r["count"] for r in stage.get("requests", ())),
        failures,
        submit.get("count"),
        submit.get("p95_ms"),
        completion.get("count"),
        completion.get("throughput_rps"),
        completion.get("p50_ms"),
        completion.get("p95_ms"),
        completion.get("p99_ms"),
    ]


_STAGE_HEADERS = (
    "stage",
    "start s",
    "end s",
    "users",
    "spawn rate",
    "requests",
    "failures",
    "submits",
    "submit p95 ms",
    "completions",
    "completions/s",
    "completion p50 ms",
    "completion p95 ms",
    "completion p99 ms",
)


def _plots_html(plots: Iterable[Path]) -> str:
    images = []
    for path in plots:
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        images.append(f'<img alt="{_e(Path(path).stem)}" src="data:image/png;base64,{data}">')
    return "".join(images) or "<p>No plots.</p>"


def _run_html(run: Mapping[str, Any]) -> str:
    """The run's fields (times as UTC ISO 8601) and settings as a two-column table."""
    rows: list[list[object]] = []
    for key, value in run.items():
        if key in ("started_at", "ended_at") and _is_number(value):
            value = datetime.fromtimestamp(value, tz=UTC).isoformat(timespec="seconds")
        if key != "settings":
            rows.append([key, value])
    rows += [[f"settings.{key}", value] for key, value in sorted((run.get("settings") or {}).items())]
    return _table(["field", "value"], rows, text_columns=2)


def _traces_html(report: Mapping[str, Any]) -> str:
    traces = report.get("traces")
    if traces is None:
        return "<p>run.json holds no trace data.</p>"
    completeness = report.get("trace_completeness")
    shown = "unknown" if completeness is None else f"{completeness:.1%}"
    return f"<p>Complete traces: {_e(shown)}</p>" + _table(
        ["field", "value"], sorted(traces.items()), text_columns=2
    )


def _list_html(items: Iterable[str]) -> str:
    entries = "".join(f"<li>{_e(item)}</li>" for item in items)
    return f"<ul>{entries}</ul>" if entries else "<p>None.</p>"


def render_html(report: Mapping[str, Any], plots: Iterable[Path]) -> str:
    """The report page: every text from the run is HTML-escaped, the plots are inlined (base64)."""
    run = report.get("run", {})
    parts = [
        f"<h1>Load-test report: {_e(run.get('scenario', ''))} against {_e(run.get('host', ''))}</h1>",
        _verdict(report),
        _stand_in_note(run),
        "<h2>SLOs</h2>",
        _slo_html(report),
        "<h2>Requests</h2>",
        _requests_html(report.get("requests", [])),
        "<h2>Stages</h2>",
        _table(_STAGE_HEADERS, [_stage_row(stage) for stage in report.get("stages", [])]),
        "<h2>Task status</h2>",
        _table(["status", "count"], sorted((report.get("task_status") or {}).items())),
        "<h2>Traces</h2>",
        _traces_html(report),
        "<h2>Errors</h2>",
        _table(["message", "count"], [[e["message"], e["count"]] for e in report.get("errors", [])]),
        "<h2>Plots</h2>",
        _plots_html(plots),
        "<h2>Run</h2>",
        _run_html(run),
        "<h2>Warnings</h2>",
        _list_html(report.get("warnings", [])),
    ]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Load-test report</title>'
        f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>"
    )


def write_html(report: Mapping[str, Any], plots: Iterable[Path], out_dir: str | Path) -> Path:
    """Write the self-contained ``report.html`` (see :func:`render_html`) and return its path."""
    path = Path(out_dir) / REPORT_HTML
    path.write_text(render_html(report, plots), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# Building and the command line


def build_report(out_dir: str | Path, slos: Iterable[Slo] = ()) -> tuple[dict[str, Any], list[SloResult]]:
    """Load the run, summarize it, check the SLOs (``slos`` and ``passed`` in the report), and write
    ``report.json``, the plots and ``report.html`` into ``out_dir``. ``passed`` is True when every SLO
    is met (and when none is given). Raises :class:`ReportError` on a bad folder or a failed write."""
    run = load_run(out_dir)
    report = summarize(run)
    results = evaluate(slos, report)
    report["slos"] = [result.to_dict() for result in results]
    report["passed"] = all(result.ok for result in results)
    try:
        (run.out_dir / REPORT_JSON).write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
        plots = write_plots(run, run.out_dir)
        write_html(report, plots, run.out_dir)
    except OSError as exc:
        raise ReportError(f"cannot write the report into {run.out_dir}: {exc.strerror or exc}") from exc
    return report, results


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m loadtests.report", description="Build the report of a load-test run.")
    parser.add_argument("out_dir", help="the run's output folder (samples.jsonl, timeline.jsonl, run.json)")
    parser.add_argument(
        "--slo", action="append", default=[], metavar="EXPR", help="e.g. 'completion.p95_ms <= 30000'"
    )
    parser.add_argument("--slo-file", type=Path, help="YAML file: {slos: [EXPR, ...]}")
    return parser


def _print_summary(report: Mapping[str, Any], results: Sequence[SloResult], out_dir: Path) -> None:
    totals = report["totals"]
    print(f"{totals['count']} samples, {totals['failures']} failures; report: {out_dir / REPORT_HTML}")
    for result in results:
        print(f"{'PASS' if result.ok else 'FAIL'}  {result.expr}  ({result.message})")


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: 0 when the SLOs pass, 1 when one is violated, 2 on bad input."""
    args = _parser().parse_args(argv)
    try:
        slos = [parse_slo(expr) for expr in args.slo]
        if args.slo_file is not None:
            slos += load_slo_file(args.slo_file)
        report, results = build_report(args.out_dir, slos)
    except (ReportError, SloError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print_summary(report, results, Path(args.out_dir))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
