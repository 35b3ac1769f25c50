"""What the console's System view shows (``GET /v1/system``, ``GET /v1/approvals``), computed from
plain data: the gateway gathers it (Serve's status, the orchestrator shards' answers, the trace
store's recent spans, the store's waiting tasks) and these functions decide what it means. No I/O here.

* **Components**: each Serve deployment (its status and replicas), each orchestrator shard (whether
  it answered, its running and queued tasks), the tool-runner pools summed over the shards, every
  lane of the timeline that sent spans lately (each runner on its own), and the trace collector when
  there is one. A component's ``status`` is one of :data:`COMPONENT_STATUSES`; its ``heartbeat`` is the
  last time it was heard from: it answered the health probe (``checked_at``) or ended a span.
* **Messages**: a span whose parent span is on another lane is one message from the parent's lane to
  the span's (a call, a handle call, a step handed to a runner); :func:`message_rates` counts them per
  pair of lanes over the window (:data:`MESSAGE_WINDOW_S`) and gives the rate per second.
* **Pending approvals**: the steps that wait for a person and have no decision yet
  (:func:`pending_approvals`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, Field

from officeray.contracts import StepStatus, TaskRecord

MESSAGE_WINDOW_S = 60.0
"""The window the message rates count over (seconds back from now)."""

PENDING_APPROVALS_LIMIT = 200
"""Most waiting tasks ``GET /v1/approvals`` looks at unless ``?limit=`` says otherwise."""

ComponentStatus = Literal["healthy", "starting", "unhealthy", "unknown"]
COMPONENT_STATUSES: tuple[ComponentStatus, ...] = ("healthy", "starting", "unhealthy", "unknown")

DEPLOYMENT_LANES = {"Gateway": "gateway", "Planner": "planner", "Reviewer": "reviewer", "AiTool": "ai_tool"}
"""The timeline lane (span component) of each Serve deployment of the app."""

_DEPLOYMENT_STATUS: dict[str, ComponentStatus] = {
    "HEALTHY": "healthy",
    "UPSCALING": "healthy",
    "DOWNSCALING": "healthy",
    "UPDATING": "starting",
    "UNHEALTHY": "unhealthy",
    "DEPLOY_FAILED": "unhealthy",
}
"""Serve's deployment statuses as component statuses (any other: ``unknown``)."""

RUNNER_POOL_FIELDS = ("runners", "idle", "starting", "waiting_steps")
"""The runner-pool figures summed over the orchestrator shards."""


class SpanLink(NamedTuple):
    """What the rates and heartbeats need of one span: its id, its parent's, its lane, when it ended."""

    span_id: str
    parent_span_id: str | None
    lane: str
    end_ns: int


class Component(BaseModel):
    """One component of the running system as the System view lists it."""

    name: str
    kind: Literal["deployment", "orchestrator", "runner_pool", "runner", "lane", "collector"]
    status: ComponentStatus
    lane: str | None = Field(default=None, description="Its lane on a task's timeline, if it has one.")
    heartbeat: datetime | None = Field(
        default=None, description="The last time it was heard from (a probe answer or a span)."
    )
    detail: dict[str, Any] = Field(default_factory=dict)


class MessageRate(BaseModel):
    """Messages from one lane to another over the window."""

    source: str
    target: str
    count: int
    per_s: float


class SystemView(BaseModel):
    """The answer of ``GET /v1/system``."""

    checked_at: datetime
    window_s: float
    components: list[Component]
    messages: list[MessageRate]


def ns_to_datetime(ns: int) -> datetime:
    """A span time (nanoseconds since the epoch) as an aware UTC datetime."""
    return datetime.fromtimestamp(ns / 1e9, tz=UTC)


def message_rates(spans: Iterable[SpanLink], window_s: float = MESSAGE_WINDOW_S) -> list[MessageRate]:
    """Messages between lanes among ``spans``: each span whose parent is among them on another lane is
    one message from the parent's lane to its own. Per pair of lanes: the count and the rate per
    second over ``window_s``, the busiest pair first (ties: by names). A parent outside ``spans`` (it
    ended before the window) counts nothing. ValueError for ``window_s <= 0``."""
    if window_s <= 0:
        raise ValueError(f"window_s must be positive, not {window_s}")
    spans = list(spans)
    lane_of_span = {span.span_id: span.lane for span in spans}
    pairs: Counter[tuple[str, str]] = Counter()
    for span in spans:
        parent_lane = lane_of_span.get(span.parent_span_id) if span.parent_span_id else None
        if parent_lane is not None and parent_lane != span.lane:
            pairs[(parent_lane, span.lane)] += 1
    ordered = sorted(pairs.items(), key=lambda item: (-item[1], item[0]))
    return [
        MessageRate(source=source, target=target, count=count, per_s=round(count / window_s, 3))
        for (source, target), count in ordered
    ]


def lane_heartbeats(spans: Iterable[SpanLink]) -> dict[str, datetime]:
    """The last time each lane ended a span."""
    latest: dict[str, int] = {}
    for span in spans:
        latest[span.lane] = max(latest.get(span.lane, span.end_ns), span.end_ns)
    return {lane: ns_to_datetime(ns) for lane, ns in latest.items()}


def _later(*moments: datetime | None) -> datetime | None:
    known = [m for m in moments if m is not None]
    return max(known) if known else None


def deployment_components(
    serve_status: Any, checked_at: datetime, heartbeats: Mapping[str, datetime]
) -> list[Component]:
    """One component per deployment of every Serve application in ``serve_status`` (what
    ``serve.status()`` answers): its status, replicas by state and message. None (the controller
    did not answer): one ``serve`` component of unknown status."""
    if serve_status is None:
        return [
            Component(
                name="serve",
                kind="deployment",
                status="unknown",
                detail={"error": "Serve's controller did not answer"},
            )
        ]
    components = []
    for app_name, app in sorted(getattr(serve_status, "applications", {}).items()):
        for name, deployment in sorted(app.deployments.items()):
            status = _DEPLOYMENT_STATUS.get(
                str(getattr(deployment.status, "value", deployment.status)), "unknown"
            )
            replicas = {
                str(getattr(state, "value", state)): count
                for state, count in deployment.replica_states.items()
            }
            lane = DEPLOYMENT_LANES.get(name)
            components.append(
                Component(
                    name=name,
                    kind="deployment",
                    status=status,
                    lane=lane,
                    heartbeat=_later(
                        checked_at if status == "healthy" else None, heartbeats.get(lane) if lane else None
                    ),
                    detail={"application": app_name, "replicas": replicas, "message": deployment.message},
                )
            )
    return components


def orchestrator_components(
    shards: list[dict[str, Any] | BaseException], checked_at: datetime, heartbeats: Mapping[str, datetime]
) -> list[Component]:
    """One component per orchestrator shard (its ``pool_stats`` answer, or why it did not answer),
    and the tool-runner pools summed over the shards that answered."""
    components = []
    pools: list[dict[str, Any]] = []
    for shard, answer in enumerate(shards):
        if isinstance(answer, BaseException):
            text = str(answer).strip()
            components.append(
                Component(
                    name=f"orchestrator:{shard}",
                    kind="orchestrator",
                    status="unhealthy",
                    lane="orchestrator",
                    heartbeat=heartbeats.get("orchestrator"),
                    detail={"error": text.splitlines()[0] if text else type(answer).__name__},
                )
            )
            continue
        pools.append(answer)
        tasks = answer.get("tasks") or {}
        components.append(
            Component(
                name=f"orchestrator:{shard}",
                kind="orchestrator",
                status="healthy",
                lane="orchestrator",
                heartbeat=_later(checked_at, heartbeats.get("orchestrator")),
                detail={"tasks": tasks, "runners": {k: answer.get(k, 0) for k in RUNNER_POOL_FIELDS}},
            )
        )
    if pools:
        components.append(runner_pool_component(pools, checked_at))
    return components


def runner_pool_component(pools: list[dict[str, Any]], checked_at: datetime) -> Component:
    """The tool-runner pools of the shards that answered, summed: unhealthy when runners cannot be
    placed, starting while none runs but some start, healthy otherwise."""
    totals: dict[str, Any] = {key: sum(int(p.get(key) or 0) for p in pools) for key in RUNNER_POOL_FIELDS}
    problems = sorted({str(p["placement_problem"]) for p in pools if p.get("placement_problem")})
    status: ComponentStatus = "healthy"
    if problems:
        status = "unhealthy"
    elif totals["runners"] == 0 and totals["starting"] > 0:
        status = "starting"
    return Component(
        name="runner pool",
        kind="runner_pool",
        status=status,
        heartbeat=checked_at,
        detail={**totals, "shards": len(pools), "problems": problems},
    )


def lane_components(heartbeats: Mapping[str, datetime], covered: Iterable[str | None]) -> list[Component]:
    """A component for each lane that sent spans in the window and no other component stands for
    (each runner, the validator, webhooks...): healthy, its heartbeat its last span."""
    taken = {lane for lane in covered if lane}
    return [
        Component(
            name=lane,
            kind="runner" if lane.startswith("runner") else "lane",
            status="healthy",
            lane=lane,
            heartbeat=moment,
        )
        for lane, moment in sorted(heartbeats.items())
        if lane not in taken
    ]


def collector_component(
    answer: dict[str, Any] | BaseException | None, checked_at: datetime
) -> list[Component]:
    """The trace collector (its stats, or why it did not answer); nothing when there is none."""
    if answer is None:
        return []
    if isinstance(answer, BaseException):
        text = str(answer).strip()
        error = text.splitlines()[0] if text else type(answer).__name__
        return [
            Component(name="trace collector", kind="collector", status="unhealthy", detail={"error": error})
        ]
    return [
        Component(
            name="trace collector", kind="collector", status="healthy", heartbeat=checked_at, detail=answer
        )
    ]


def system_view(
    *,
    checked_at: datetime,
    serve_status: Any,
    shards: list[dict[str, Any] | BaseException],
    spans: list[SpanLink],
    collector: dict[str, Any] | BaseException | None = None,
    window_s: float = MESSAGE_WINDOW_S,
) -> SystemView:
    """The System view from what the gateway gathered at ``checked_at``."""
    heartbeats = lane_heartbeats(spans)
    components = [
        *deployment_components(serve_status, checked_at, heartbeats),
        *orchestrator_components(shards, checked_at, heartbeats),
        *collector_component(collector, checked_at),
    ]
    components += lane_components(heartbeats, (c.lane for c in components))
    return SystemView(
        checked_at=checked_at,
        window_s=window_s,
        components=components,
        messages=message_rates(spans, window_s),
    )


# -- pending approvals -------------------------------------------------------------------------------


class PendingApproval(BaseModel):
    """A step that waits for a person's decision (``GET /v1/approvals``)."""

    task_id: str
    tenant: str
    description: str
    step_id: str
    action: str
    inputs: dict[str, Any] = Field(default_factory=dict)
    waiting_since: datetime | None = None


def _aware(moment: datetime) -> datetime:
    """``moment`` with UTC as its zone when it has none (as the store reads it back)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def waiting_steps(record: TaskRecord) -> list[tuple[str, str]]:
    """``(step_id, idempotency_key)`` of each step of ``record`` that waits for approval."""
    return [(s.step_id, s.idempotency_key) for s in record.steps if s.status == StepStatus.WAITING_APPROVAL]


def pending_approvals(records: Iterable[TaskRecord], decided: set[tuple[str, str]]) -> list[PendingApproval]:
    """The waiting steps of ``records`` without a decision (``decided``: ``(task_id, idempotency_key)``
    of the decisions stored; the workflow may not have taken one up yet), oldest wait first."""
    pending = []
    for record in records:
        steps = {s.step_id: s for s in (record.plan.steps if record.plan else [])}
        for result in record.steps:
            if result.status != StepStatus.WAITING_APPROVAL:
                continue
            if (record.task_id, result.idempotency_key) in decided:
                continue
            planned = steps.get(result.step_id)
            pending.append(
                PendingApproval(
                    task_id=record.task_id,
                    tenant=record.tenant,
                    description=record.description,
                    step_id=result.step_id,
                    action=result.action,
                    inputs=planned.inputs if planned is not None else {},
                    waiting_since=_aware(result.started_at or record.updated_at),
                )
            )
    epoch = datetime.min.replace(tzinfo=UTC)
    return sorted(pending, key=lambda p: (p.waiting_since or epoch, p.task_id, p.step_id))
