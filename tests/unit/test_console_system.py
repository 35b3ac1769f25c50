"""The console's System view as data (serving.system): message rates between lanes from span
parentage, heartbeats, the components made of Serve's status, the orchestrator shards' answers, the
runner pools and the collector, and the pending approvals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from ray.serve._private.common import DeploymentStatus, DeploymentStatusTrigger, ReplicaState
from ray.serve.schema import (
    ApplicationStatus,
    ApplicationStatusOverview,
    DeploymentStatusOverview,
    ServeStatus,
)

from officeray.contracts import Plan, PlanStep, StepResult, StepStatus, TaskRecord, TaskStatus
from serving.system import (
    MessageRate,
    SpanLink,
    lane_heartbeats,
    message_rates,
    ns_to_datetime,
    pending_approvals,
    system_view,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
NS = 1_000_000_000
T0 = int(NOW.timestamp()) * NS


def link(span_id: str, parent: str | None, lane: str, end_s: float = 0.0) -> SpanLink:
    return SpanLink(span_id, parent, lane, T0 + int(end_s * NS))


# one task: gateway submit -> orchestrator task -> plan -> planner model call; validate; two steps,
# each handed to a runner; review -> reviewer
TASK = [
    link("submit", None, "gateway", 0.1),
    link("task", "submit", "orchestrator", 9.0),
    link("plan", "task", "orchestrator", 2.0),
    link("model-p", "plan", "planner", 1.9),
    link("validate", "task", "validator", 2.1),
    link("step-1", "task", "orchestrator", 4.0),
    link("tool-1", "step-1", "runner:r1", 3.9),
    link("step-2", "task", "orchestrator", 5.0),
    link("tool-2", "step-2", "runner:r2", 4.9),
    link("tool-2b", "step-2", "runner:r2", 4.95),
    link("review", "task", "orchestrator", 8.0),
    link("model-r", "review", "reviewer", 7.9),
]


def test_messages_are_parent_child_pairs_across_lanes_busiest_first() -> None:
    rates = message_rates(TASK, window_s=60)
    assert [(r.source, r.target, r.count) for r in rates] == [
        ("orchestrator", "runner:r2", 2),
        ("gateway", "orchestrator", 1),
        ("orchestrator", "planner", 1),
        ("orchestrator", "reviewer", 1),
        ("orchestrator", "runner:r1", 1),
        ("orchestrator", "validator", 1),
    ]
    assert rates[0].per_s == pytest.approx(2 / 60, abs=1e-3)


def test_spans_on_one_lane_and_parents_outside_the_window_count_nothing() -> None:
    inside = [link("plan", "task-not-in-window", "orchestrator"), link("step", "plan", "orchestrator")]
    assert message_rates(inside, 60) == []
    assert message_rates([], 60) == []
    assert message_rates([link("root", None, "gateway")], 60) == []


def test_rates_are_per_second_of_the_window() -> None:
    spans = [link("p", None, "a")] + [link(f"c{i}", "p", "b") for i in range(30)]
    assert message_rates(spans, 10) == [MessageRate(source="a", target="b", count=30, per_s=3.0)]
    with pytest.raises(ValueError, match="window_s"):
        message_rates(spans, 0)


def test_heartbeats_are_the_last_span_end_of_each_lane() -> None:
    beats = lane_heartbeats(TASK)
    assert beats["orchestrator"] == ns_to_datetime(T0 + 9 * NS) == NOW + timedelta(seconds=9)
    assert beats["runner:r2"] == NOW + timedelta(seconds=4.95)
    assert set(beats) == {
        "gateway",
        "orchestrator",
        "planner",
        "validator",
        "runner:r1",
        "runner:r2",
        "reviewer",
    }


def _deployment(status: DeploymentStatus, running: int, starting: int = 0) -> DeploymentStatusOverview:
    replicas = {ReplicaState.RUNNING: running}
    if starting:
        replicas[ReplicaState.STARTING] = starting
    return DeploymentStatusOverview(
        status=status,
        status_trigger=DeploymentStatusTrigger.CONFIG_UPDATE_COMPLETED,
        replica_states=replicas,
        message="",
    )


SERVE = ServeStatus(
    applications={
        "officeray": ApplicationStatusOverview(
            status=ApplicationStatus.RUNNING,
            message="",
            last_deployed_time_s=0.0,
            deployments={
                "Gateway": _deployment(DeploymentStatus.HEALTHY, 1),
                "Planner": _deployment(DeploymentStatus.UPSCALING, 1, starting=1),
                "Reviewer": _deployment(DeploymentStatus.UNHEALTHY, 0),
                "AiTool": _deployment(DeploymentStatus.UPDATING, 0, starting=1),
            },
        )
    }
)

POOL = {
    "runners": 2,
    "idle": 1,
    "starting": 0,
    "waiting_steps": 0,
    "placement_problem": None,
    "tasks": {"running": 1, "queued": 0},
}


def test_the_system_view_names_every_component_with_its_health_and_heartbeat() -> None:
    view = system_view(
        checked_at=NOW,
        serve_status=SERVE,
        shards=[POOL, RuntimeError("actor died\ntraceback...")],
        spans=TASK,
        collector={"written": 12, "pruned": 0},
    )
    by_name = {c.name: c for c in view.components}
    assert {n: (c.kind, c.status) for n, c in by_name.items()} == {
        "AiTool": ("deployment", "starting"),
        "Gateway": ("deployment", "healthy"),
        "Planner": ("deployment", "healthy"),
        "Reviewer": ("deployment", "unhealthy"),
        "orchestrator:0": ("orchestrator", "healthy"),
        "orchestrator:1": ("orchestrator", "unhealthy"),
        "runner pool": ("runner_pool", "healthy"),
        "trace collector": ("collector", "healthy"),
        "validator": ("lane", "healthy"),
        "runner:r1": ("runner", "healthy"),
        "runner:r2": ("runner", "healthy"),
    }
    assert by_name["Planner"].detail["replicas"] == {"RUNNING": 1, "STARTING": 1}
    # the heartbeat: the later of the probe answer and the lane's last span
    assert by_name["Gateway"].heartbeat == NOW + timedelta(seconds=0.1)
    assert by_name["Reviewer"].heartbeat == NOW + timedelta(seconds=7.9)  # unhealthy: its spans only
    assert by_name["orchestrator:0"].detail["tasks"] == {"running": 1, "queued": 0}
    assert by_name["orchestrator:1"].detail == {"error": "actor died"}
    assert by_name["runner pool"].detail["runners"] == 2 and by_name["runner pool"].detail["shards"] == 1
    assert by_name["runner:r2"].heartbeat == NOW + timedelta(seconds=4.95)
    assert view.messages == message_rates(TASK, view.window_s)


def test_without_serve_status_spans_or_collector_the_view_still_answers() -> None:
    view = system_view(checked_at=NOW, serve_status=None, shards=[RuntimeError("")], spans=[], collector=None)
    assert [(c.name, c.status) for c in view.components] == [
        ("serve", "unknown"),
        ("orchestrator:0", "unhealthy"),
    ]
    assert view.components[1].detail == {"error": "RuntimeError"}
    assert view.messages == []


@pytest.mark.parametrize(
    ("pools", "status"),
    [
        ([{**POOL, "placement_problem": "no node has the 'docker' resource"}], "unhealthy"),
        ([{**POOL, "runners": 0, "idle": 0, "starting": 2}], "starting"),
        ([POOL, {**POOL, "runners": 0}], "healthy"),
    ],
)
def test_the_runner_pool_sums_the_shards(pools: list[dict[str, object]], status: str) -> None:
    view = system_view(checked_at=NOW, serve_status=SERVE, shards=list(pools), spans=[])
    [pool] = [c for c in view.components if c.kind == "runner_pool"]
    assert pool.status == status
    assert pool.detail["runners"] == sum(int(p["runners"]) for p in pools)  # type: ignore[call-overload]


def test_an_unreachable_collector_is_unhealthy() -> None:
    view = system_view(
        checked_at=NOW, serve_status=SERVE, shards=[], spans=[], collector=TimeoutError("slow")
    )
    [collector] = [c for c in view.components if c.kind == "collector"]
    assert (collector.status, collector.detail) == ("unhealthy", {"error": "slow"})


# -- pending approvals -------------------------------------------------------------------------------


def _waiting(task_id: str, *step_ids: str, started: datetime | None = None) -> TaskRecord:
    steps = [
        PlanStep(
            step_id=s,
            action="python_exec",
            inputs={"code": f"print({i})"},
            idempotency_key=f"{task_id}:1:{s}",
        )
        for i, s in enumerate(step_ids)
    ]
    results = [
        StepResult(
            step_id=s.step_id,
            action=s.action,
            idempotency_key=s.idempotency_key,
            status=StepStatus.WAITING_APPROVAL,
            started_at=started,
        )
        for s in steps
    ]
    results.append(
        StepResult(step_id="done", action="math", idempotency_key="k", status=StepStatus.SUCCEEDED)
    )
    return TaskRecord(
        task_id=task_id,
        description=f"do {task_id}",
        tenant="acme",
        status=TaskStatus.WAITING_APPROVAL,
        steps=results,
        plan=Plan(plan_id="p", task_id=task_id, steps=steps),
    )


def test_pending_approvals_are_waiting_steps_without_a_decision_oldest_first() -> None:
    late = _waiting("t-late", "s1", started=NOW)
    early = _waiting("t-early", "s1", "s2", started=NOW - timedelta(minutes=5))
    pending = pending_approvals([late, early], decided={("t-early", "t-early:1:s2")})
    assert [(p.task_id, p.step_id) for p in pending] == [("t-early", "s1"), ("t-late", "s1")]
    assert pending[0].inputs == {"code": "print(0)"} and pending[0].tenant == "acme"
    assert pending[0].waiting_since == NOW - timedelta(minutes=5)


def test_a_waiting_step_without_a_plan_or_start_time_is_still_listed() -> None:
    record = _waiting("t", "s1").model_copy(update={"plan": None})
    record.steps[0].started_at = None
    record.updated_at = datetime(2026, 1, 1, 11, 0)  # naive, as an old store row: taken as UTC
    [pending] = pending_approvals([record], decided=set())
    assert pending.inputs == {} and pending.waiting_since == datetime(2026, 1, 1, 11, 0, tzinfo=UTC)
