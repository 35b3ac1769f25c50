"""``examples/subagents``: the client-side planner, the URL guard, the slow server and the trace tree,
without a server (the end-to-end run: tests/integration/test_subagents_example.py)."""

from __future__ import annotations

import time

import httpx
import pytest

from examples.subagents.subagents import (
    DEFAULT_QUESTION,
    JOIN_STEP_ID,
    MAX_QUESTION_CHARS,
    SlowServer,
    UsageError,
    build_plan,
    check_url,
    main,
    max_overlap,
    plan_subagents,
    render_tree,
)
from officeray.contracts import Plan

SLOW = "http://127.0.0.1:9/status"


def test_the_default_question_gets_five_parallel_subagents_and_a_join() -> None:
    agents = plan_subagents(DEFAULT_QUESTION, "Some text. More text.", SLOW)
    assert [a.step_id for a in agents] == [
        "agent-summarize", "agent-keywords", "agent-count", "agent-sentiment", "agent-fetch",
    ]  # fmt: skip
    assert [a.action for a in agents].count("http_client") == 1
    plan = Plan.model_validate({**build_plan(agents), "task_id": "t"})
    steps = {s.step_id: s for s in plan.steps}
    assert all(steps[a.step_id].parallelizable and not steps[a.step_id].dependencies for a in agents)
    assert steps[JOIN_STEP_ID].dependencies == [a.step_id for a in agents]
    assert steps[JOIN_STEP_ID].inputs["variables"]["words"] == {"from_step": "agent-count", "path": "answer"}
    assert steps["agent-fetch"].inputs == {"url": SLOW, "method": "GET", "timeout_s": 30.0}


@pytest.mark.parametrize(
    ("question", "why"),
    [
        ("summarize it and bake a cake", "bake a cake"),
        (" , ; and then ", "no sub-question"),
        ("x" * (MAX_QUESTION_CHARS + 1), "longer than"),
    ],
)
def test_a_question_the_planner_cannot_split_is_refused(question: str, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        plan_subagents(question, "text", SLOW)


def test_a_repeated_subquestion_gets_one_subagent() -> None:
    agents = plan_subagents("count the words; count them again; fetch the status", "a b", SLOW)
    assert [a.step_id for a in agents] == ["agent-count", "agent-fetch"]


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1:8000",
        "http://example.com",
        "http://127.0.0.1.evil.example:8000",
        "http://localhost@evil.example/",
        "ftp://127.0.0.1/",
        "127.0.0.1:8000",
        "",
    ],
)
def test_only_a_loopback_server_url_is_accepted(url: str) -> None:
    with pytest.raises(UsageError):
        check_url(url)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "https://localhost:1/", "http://[::1]:8000"])
def test_loopback_urls_are_accepted(url: str) -> None:
    assert check_url(url) == url


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--url", "http://192.0.2.1:8000", "--key", "k"]) == 2
    assert main(["--url", "http://127.0.0.1:9", "--key", "k", "--delay", "-1"]) == 2
    assert "error:" in capsys.readouterr().err


def test_the_slow_server_answers_after_its_delay_on_loopback() -> None:
    with SlowServer(0.2) as server:
        assert server.url.startswith("http://127.0.0.1:")
        started = time.monotonic()
        answer = httpx.get(server.url, timeout=5, trust_env=False)
        assert answer.status_code == 200 and time.monotonic() - started >= 0.2
        assert (
            httpx.get(server.url.replace("/status", "/other"), timeout=5, trust_env=False).status_code == 404
        )
        assert server.arrived.is_set() and server.requests == 1
        assert server.arrived_at is not None and server.answered_at is not None


def test_max_overlap_counts_spans_open_at_once() -> None:
    assert max_overlap([]) == 0
    assert max_overlap([(0, 10), (5, 15), (10, 20)]) == 2  # touching ends do not overlap
    assert max_overlap([(0, 10), (1, 9), (2, 8)]) == 3


def test_the_tree_nests_spans_and_marks_the_slow_call() -> None:
    ms = 1_000_000
    spans = [
        {"span_id": "a", "name": "task", "lane": "orchestrator", "start_ns": 0, "end_ns": 100 * ms},
        {"span_id": "b", "parent_span_id": "a", "name": "step agent-fetch", "lane": "orchestrator",
         "start_ns": 10 * ms, "end_ns": 90 * ms},
        {"span_id": "c", "parent_span_id": "b", "name": "tool http_client", "lane": "runner:1",
         "start_ns": 20 * ms, "end_ns": 80 * ms, "attributes": {"officeray.step_id": "agent-fetch"}},
        {"span_id": "d", "parent_span_id": "a", "name": "step x", "lane": "orchestrator",
         "start_ns": 5 * ms, "end_ns": 30 * ms, "status": "error", "status_message": "boom"},
        {"span_id": "e", "parent_span_id": "gone", "name": "orphan", "lane": "other",
         "start_ns": 50 * ms, "end_ns": 60 * ms},
    ]  # fmt: skip
    lines = render_tree(spans, ["agent-fetch"], bar_width=10)
    assert [line.split(" │ ", 1)[1].split("  @")[0] for line in lines] == [
        "orchestrator: task",
        "├─ orchestrator: step x",
        "└─ orchestrator: step agent-fetch",
        "   └─ runner:1: tool http_client",
        "other: orphan",
    ]
    assert lines[3].endswith("◀ slow call") and lines[1].endswith("✗ boom")
    assert lines[0].startswith("█" * 10)
    assert render_tree([]) == ["(no spans)"]
