"""``examples/subagents``: a client-side planner's sub-agents run in parallel, a slow external call does
not block the orchestrator (a quick task submitted meanwhile finishes first), and the trace shows it all.

The stack's ``tools.http_client.allow_hosts`` lists 127.0.0.1 (``integration_settings``): the example's
slow server listens there."""

from __future__ import annotations

from typing import Any

import pytest

from examples.subagents.subagents import (
    DEFAULT_DELAY_S,
    JOIN_STEP_ID,
    Api,
    main,
    max_overlap,
    render_tree,
    run_demo,
    step_seconds,
    tool_spans_by_step,
)
from tests.integration.conftest import base_url

pytestmark = pytest.mark.integration


def test_subagents_run_in_parallel_and_the_slow_call_blocks_nothing(stack: Any, admin_key: str) -> None:
    api = Api(base_url(stack), admin_key)
    try:
        report = run_demo(api)
    finally:
        api.close()

    # every sub-agent step and the join succeeded; the join saw every sub-agent's result
    assert report.main["status"] == "completed", report.main.get("error")
    agent_ids = [agent.step_id for agent in report.agents]
    assert len(agent_ids) == 5 and "agent-fetch" in agent_ids
    for step_id in [*agent_ids, JOIN_STEP_ID]:
        assert report.step(step_id)["status"] == "succeeded", report.step(step_id)
    assert report.step("agent-fetch")["output"]["status"] == 200
    assert report.step("agent-count")["output"]["answer"].isdigit()
    join = report.step(JOIN_STEP_ID)
    assert all(step_seconds(report.step(s)) >= 0 for s in agent_ids)
    assert max(report.step(s)["finished_at"] for s in agent_ids) <= join["started_at"]

    # the slow call took its 2 s; the quick task, submitted while it was in flight, finished first
    assert step_seconds(report.slow_step) >= DEFAULT_DELAY_S
    assert report.quick["status"] == "completed" and report.quick["result"] == 42
    assert report.quick_finished_first(), (report.quick["finished_at"], report.slow_step["finished_at"])
    assert report.quick_done_while_slow_in_flight

    # the trace holds a runner span per sub-agent step (overlapping) and the slow call's span
    spans = report.trace["spans"]
    tools = tool_spans_by_step(spans)
    assert set(agent_ids) <= set(tools), sorted(tools)
    slow_span = tools["agent-fetch"]
    assert slow_span["name"] == "tool http_client" and slow_span["duration_ms"] >= DEFAULT_DELAY_S * 1000
    assert max_overlap([(int(tools[s]["start_ns"]), int(tools[s]["end_ns"])) for s in agent_ids]) >= 2
    assert {f"step {s}" for s in agent_ids} <= {s["name"] for s in spans}
    tree = render_tree(spans, ["agent-fetch"])
    assert any("tool http_client" in line and "slow call" in line for line in tree)


def test_the_script_prints_timings_and_the_trace_tree(
    stack: Any, admin_key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["--url", base_url(stack), "--key", admin_key, "--question", "count its words; fetch the status"]
    )
    out = capsys.readouterr().out

    assert code == 0, out
    assert "sub-agent agent-count" in out and "sub-agent agent-fetch" in out
    assert "the quick task finished FIRST" in out
    assert "◀ slow call" in out and "tool http_client" in out
