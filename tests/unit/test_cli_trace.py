"""``officeray trace TASK_ID``: the pure layout of a task's timeline (spans → lanes of bars, no
terminal), and the command against :class:`serving.testing.FakeTaskApi` served on loopback (no Ray)."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from cluster import cli
from cluster.cli_trace import (
    ERROR_GLYPH,
    ERROR_STYLE,
    LABEL_SEPARATOR,
    OK_GLYPH,
    OK_STYLES,
    TraceSpan,
    axis,
    build_timeline,
    lane_key,
    lane_of,
    parse_spans,
)
from officeray.contracts import TaskStatus
from serving.testing import FAKE_ADMIN_KEY, FAKE_OTHER_USER_KEY, FAKE_USER_KEY
from tests.unit.conftest import Server

MS = 1_000_000
SPAN_FIELDS = {
    "trace_id",
    "span_id",
    "parent_span_id",
    "task_id",
    "name",
    "component",
    "instance",
    "node",
    "start_ns",
    "end_ns",
    "status",
    "status_message",
    "attributes",
    "events",
    "lane",
    "duration_ms",
}
"""What every span of a ``/trace`` answer carries: the store's span record, its lane and duration."""


def _span(lane: str, start_ms: float, end_ms: float, status: str = "ok", name: str = "x") -> TraceSpan:
    return TraceSpan(lane, name, int(start_ms * MS), int(end_ms * MS), status)


# -- lanes ------------------------------------------------------------------------------------------


def test_lanes_follow_the_flow_of_a_task_then_the_others_by_name() -> None:
    shuffled = [
        "webhooks",
        "runner:10",
        "zeta",
        "planner",
        "runner:2",
        "gateway",
        "other",
        "validator",
        "reviewer",
        "ai_tool",
        "orchestrator",
        "runner:b",
    ]
    assert sorted(shuffled, key=lane_key) == [
        "gateway",
        "orchestrator",
        "planner",
        "validator",
        "runner:2",
        "runner:10",
        "runner:b",
        "reviewer",
        "ai_tool",
        "webhooks",
        "other",
        "zeta",
    ]


@pytest.mark.parametrize(
    ("span", "lane"),
    [
        ({"lane": "runner:7", "component": "runner", "instance": "1"}, "runner:7"),  # the server's word wins
        ({"component": "runner", "instance": "3", "name": "tool echo"}, "runner:3"),
        ({"component": "runner", "name": "step s1"}, "runner:?"),
        ({"component": "planner", "name": "validate"}, "validator"),
        ({"component": "planner", "name": "plan"}, "planner"),
        ({"lane": "  ", "component": "webhooks"}, "webhooks"),
        ({"name": "mystery"}, "other"),
    ],
)
def test_a_span_without_a_lane_gets_the_one_the_server_would_give(span: dict[str, Any], lane: str) -> None:
    assert lane_of(span) == lane


def test_spans_that_cannot_be_drawn_are_counted_not_drawn() -> None:
    spans, skipped = parse_spans(
        [
            {"lane": "gateway", "name": "submit", "start_ns": 5, "end_ns": 9, "status": "OK"},
            {"lane": "gateway", "name": "no end", "start_ns": "7"},
            {"lane": "gateway", "name": "backwards", "start_ns": 9, "end_ns": 3},
            {"lane": "gateway", "name": "no start", "end_ns": 3},
            {"lane": "gateway", "name": "bool start", "start_ns": True, "end_ns": 3},
            "not a span",
        ]
    )
    assert skipped == 3
    assert [(s.name, s.start_ns, s.end_ns, s.status) for s in spans] == [
        ("submit", 5, 9, "ok"),
        ("no end", 7, 7, "unset"),
        ("backwards", 9, 9, "unset"),
    ]


# -- bars -------------------------------------------------------------------------------------------


def test_bars_sit_over_the_tasks_time_span_scaled_to_the_width() -> None:
    timeline = build_timeline(
        [
            _span("runner:0", 500, 750, name="step s1"),
            _span("orchestrator", 0, 1000, name="task"),
            _span("gateway", 0, 100, name="submit"),
        ],
        width=100,
    )
    assert timeline.duration_ms == 1000
    assert [row.lane for row in timeline.rows] == ["gateway", "orchestrator", "runner:0"]
    columns = {row.lane: [(bar.start, bar.end) for bar in row.bars] for row in timeline.rows}
    assert columns == {"gateway": [(0, 10)], "orchestrator": [(0, 100)], "runner:0": [(50, 75)]}
    runner = timeline.rows[2].text(100)
    assert runner == " " * 50 + OK_GLYPH * 25 + " " * 25
    assert [s.name for s in timeline.spans] == ["submit", "task", "step s1"]  # by start


def test_a_span_shorter_than_a_column_still_shows_and_the_last_one_reaches_the_edge() -> None:
    timeline = build_timeline(
        [_span("orchestrator", 0, 1000), _span("gateway", 0, 0.001), _span("webhooks", 999.999, 1000)],
        width=50,
    )
    rows = {row.lane: row.text(50) for row in timeline.rows}
    assert rows["gateway"] == OK_GLYPH + " " * 49
    assert rows["webhooks"] == " " * 49 + OK_GLYPH


def test_one_instant_span_fills_one_column() -> None:
    timeline = build_timeline([_span("gateway", 5, 5)], width=20)
    assert timeline.rows[0].text(20) == OK_GLYPH + " " * 19


def test_nested_spans_of_a_lane_get_a_row_of_their_own_under_its_label() -> None:
    timeline = build_timeline(
        [
            _span("orchestrator", 0, 1000, name="task"),
            _span("orchestrator", 100, 400, name="plan"),
            _span("orchestrator", 400, 600, name="step s1"),
            _span("orchestrator", 600, 900, name="review"),
            _span("gateway", 0, 50, name="submit"),
        ],
        width=10,
    )
    assert [(row.lane, row.first) for row in timeline.rows] == [
        ("gateway", True),
        ("orchestrator", True),
        ("orchestrator", False),
    ]
    assert timeline.rows[1].text(10) == OK_GLYPH * 10
    assert timeline.rows[2].segments(10) == [
        (" ", ""),
        (OK_GLYPH * 3, OK_STYLES[0]),
        (OK_GLYPH * 2, OK_STYLES[1]),
        (OK_GLYPH * 3, OK_STYLES[0]),
        (" ", ""),
    ]


def test_an_error_is_red_on_its_row() -> None:
    timeline = build_timeline(
        [_span("orchestrator", 0, 1000, name="task"), _span("orchestrator", 200, 300, "error", "tool x")],
        width=100,
    )
    task, tool = timeline.rows
    assert not task.has_error and tool.has_error
    assert tool.segments(100) == [(" " * 20, ""), (ERROR_GLYPH * 10, ERROR_STYLE), (" " * 70, "")]


def test_past_the_most_rows_the_last_row_holds_the_rest_and_errors_stay_on_top() -> None:
    spans = [
        _span("runner:0", 0, 100, name="step s1"),
        _span("runner:0", 10, 90, name="tool a"),
        _span("runner:0", 20, 80, "error", "tool b"),
        _span("runner:0", 30, 70, name="tool c"),
    ]
    timeline = build_timeline(spans, width=10, max_rows=2)
    assert len(timeline.rows) == 2
    assert timeline.rows[1].text(10) == " " + OK_GLYPH + ERROR_GLYPH * 6 + OK_GLYPH + " "
    (row,) = build_timeline(spans[:3], width=10, max_rows=1).rows
    assert row.segments(10) == [
        (OK_GLYPH, OK_STYLES[0]),  # step s1
        (OK_GLYPH, OK_STYLES[1]),  # tool a, over it
        (ERROR_GLYPH * 6, ERROR_STYLE),  # tool b, shorter but failed: on top
        (OK_GLYPH, OK_STYLES[1]),
        (OK_GLYPH, OK_STYLES[0]),
    ]
    (row,) = build_timeline([spans[2], spans[3]], width=10, max_rows=1).rows
    assert row.text(10) == ERROR_GLYPH * 10  # tool c is shorter, but under the failed span


def test_touching_spans_on_one_lane_alternate_colours() -> None:
    timeline = build_timeline(
        [_span("runner:0", 0, 50, name="step s1"), _span("runner:0", 50, 100, name="step s2")], width=10
    )
    assert timeline.rows[0].segments(10) == [(OK_GLYPH * 5, OK_STYLES[0]), (OK_GLYPH * 5, OK_STYLES[1])]


def test_no_spans_no_rows() -> None:
    timeline = build_timeline([], width=30)
    assert timeline.rows == () and timeline.duration_ms == 0


def test_the_axis_shows_zero_the_middle_and_the_whole_duration() -> None:
    line = axis(40, 1234.0)
    assert len(line) == 40
    assert line.startswith("0 ms ") and line.endswith("1,234 ms")
    assert line.split() == ["0", "ms", "617", "ms", "1,234", "ms"]
    assert axis(14, 1234.0).split() == ["0", "ms", "1,234", "ms"]  # no room for the middle
    assert axis(40, 0.5).endswith("0.50 ms")


# -- the command against the fake server -------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("no_ambient_key")  # every test here names its own key and address


def _officeray(url: str, *args: str, key: str = FAKE_ADMIN_KEY) -> int:
    return cli.main([*args, "--address", url, "--key", key])


def _finished_task(url: str, capsys: pytest.CaptureFixture[str], expected: int = 0) -> str:
    assert _officeray(url, "run", "echo me", "--json") == expected
    return str(json.loads(capsys.readouterr().out)["task_id"])


def _lane_lines(out: str) -> list[str]:
    """The rows of the timeline (a lane's label, or blanks on its further rows, then the bars)."""
    return [
        line
        for line in out.splitlines()
        if LABEL_SEPARATOR in line and (OK_GLYPH in line or ERROR_GLYPH in line)
    ]


def _labels(out: str) -> list[str]:
    return [line.split(LABEL_SEPARATOR)[0].strip() for line in _lane_lines(out)]


def _table(out: str) -> list[list[str]]:
    """The rows of the spans table: lane, span, start ms, duration ms, status."""
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[:2] == ["lane", "span"])
    return [re.split(r"\s{2,}", line.strip()) for line in lines[head + 1 :] if line.strip()]


def test_trace_prints_one_row_per_lane_in_order_and_a_table_of_spans(
    start: Callable[..., Server], capsys: pytest.CaptureFixture[str]
) -> None:
    _api, url = start(transition_delay_s=0.02)
    task_id = _finished_task(url, capsys)
    assert _officeray(url, "trace", task_id, "--width", "100") == 0
    out = capsys.readouterr().out
    rows = _lane_lines(out)
    assert _labels(out) == ["gateway", "orchestrator", "planner", "validator", "runner:0", "reviewer"]
    assert all(len(row) <= 100 for row in rows)
    # the orchestrator's task span covers the whole trace: its bar is the full width of the bars
    orchestrator = rows[1].split(LABEL_SEPARATOR, 1)[1]
    assert orchestrator == OK_GLYPH * (100 - len("orchestrator") - len(LABEL_SEPARATOR))
    assert f"task {task_id}" in out and "6 span(s) on 6 lane(s)" in out and "error" not in out
    table = _table(out)
    assert [(row[0], row[1], row[4]) for row in table] == [
        ("gateway", "submit", "ok"),
        ("orchestrator", "task", "ok"),
        ("planner", "plan", "ok"),
        ("validator", "validate", "ok"),
        ("runner:0", "step s1", "ok"),
        ("reviewer", "review", "ok"),
    ]
    starts = [float(row[2]) for row in table]
    assert starts[0] == 0.0 and starts == sorted(starts)
    assert (
        float(table[1][3]) >= max(float(row[2]) + float(row[3]) for row in table) - 0.02
    )  # each figure is rounded to 0.01


def test_a_failed_task_shows_its_errors(
    start: Callable[..., Server], capsys: pytest.CaptureFixture[str]
) -> None:
    _api, url = start(finish_as=TaskStatus.FAILED, transition_delay_s=0.01)
    task_id = _finished_task(url, capsys, expected=1)
    assert _officeray(url, "trace", task_id, "--width", "90") == 0
    out = capsys.readouterr().out
    assert "2 error(s)" in out
    assert any(ERROR_GLYPH in line for line in _lane_lines(out) if line.startswith("runner:0"))
    assert not any(ERROR_GLYPH in line for line in _lane_lines(out) if line.startswith("planner"))
    failed = [(row[0], row[1]) for row in _table(out) if row[4] == "error: the fake task ended failed"]
    assert failed == [("orchestrator", "task"), ("runner:0", "step s1")]


def test_json_prints_the_servers_answer(
    start: Callable[..., Server], capsys: pytest.CaptureFixture[str]
) -> None:
    api, url = start()
    task_id = _finished_task(url, capsys)
    assert _officeray(url, "trace", task_id, "--json") == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer == api.trace(task_id)
    assert answer["task_id"] == task_id and answer["trace_id"]
    assert answer["events"] and all(set(span) == SPAN_FIELDS for span in answer["spans"])
    assert {span["trace_id"] for span in answer["spans"]} == {answer["trace_id"]}
    starts = [span["start_ns"] for span in answer["spans"]]
    assert starts == sorted(starts)


def test_the_fake_answers_ndjson_one_span_a_line_in_start_order(
    start: Callable[..., Server], capsys: pytest.CaptureFixture[str]
) -> None:
    api, url = start()
    task_id = _finished_task(url, capsys)
    response = httpx.get(
        f"{url}/v1/tasks/{task_id}/trace",
        headers={"Authorization": f"Bearer {FAKE_ADMIN_KEY}", "Accept": "application/x-ndjson"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines == api.trace(task_id)["spans"] and len(lines) == 6


def test_spans_set_on_the_fake_are_drawn_as_given(
    start: Callable[..., Server], capsys: pytest.CaptureFixture[str]
) -> None:
    api, url = start()
    task_id = _finished_task(url, capsys)
    base = api.trace(task_id)["spans"][0]
    api.spans[task_id] = [
        {**base, "lane": "runner:1", "name": "tool [red]x[/]", "start_ns": 0, "end_ns": 10 * MS},
        {
            **base,
            "lane": "runner:0",
            "name": "step s2",
            "start_ns": 5 * MS,
            "end_ns": 20 * MS,
            "status": "error",
            "status_message": "boom",
        },
    ]
    assert _officeray(url, "trace", task_id, "--width", "60") == 0
    out = capsys.readouterr().out
    assert _labels(out) == ["runner:0", "runner:1"]
    assert "tool [red]x[/]" in out  # a span's name is text, never rich markup
    assert "error: boom" in out and "15.00" in out and "over 20.0 ms" in out

    api.spans[task_id] = []
    assert _officeray(url, "trace", task_id) == 0
    assert "no spans recorded" in capsys.readouterr().out


def test_another_tenants_task_and_an_unknown_task_are_not_found(
    start: Callable[..., Server], capsys: pytest.CaptureFixture[str]
) -> None:
    _api, url = start()
    assert _officeray(url, "run", "mine", "--json", key=FAKE_USER_KEY) == 0
    task_id = json.loads(capsys.readouterr().out)["task_id"]
    assert _officeray(url, "trace", task_id, key=FAKE_OTHER_USER_KEY) == 1
    assert "404" in capsys.readouterr().err
    assert _officeray(url, "trace", "task-nope") == 1
    err = capsys.readouterr().err
    assert "404" in err and "task_not_found" in err
    assert _officeray(url, "trace", task_id, key="ofr_bogus") == 1
    assert "refused the API key" in capsys.readouterr().err


def test_api_key_is_another_name_for_key(
    start: Callable[..., Server], capsys: pytest.CaptureFixture[str]
) -> None:
    _api, url = start()
    task_id = _finished_task(url, capsys)
    assert cli.main(["trace", task_id, "--address", url, "--api-key", FAKE_ADMIN_KEY, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["task_id"] == task_id


def test_an_unreachable_server_and_a_narrow_width(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert _officeray(f"http://127.0.0.1:{port}", "trace", "task-1") == 1
    assert f"cannot reach the officeray server at http://127.0.0.1:{port}" in capsys.readouterr().err
    assert _officeray(f"http://127.0.0.1:{port}", "trace", "task-1", "--width", "10") == 2
    assert "--width" in capsys.readouterr().err
