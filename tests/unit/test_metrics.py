"""Metrics: the catalog, the recording fake, each component's reports (through the fake), the Ray
adapter's instruments, the Grafana dashboard, the docs and the cluster configs. No Ray cluster: the
components run in process (fake runners, scripted tiers, an in-memory store); the scrape of a running
system is tests/integration/test_metrics_scrape.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import pickle
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from actors.fake_runners import LocalRunnerActors
from actors.metrics import RayMetrics, metrics_for, process_instruments
from actors.orchestrator import ModelPorts, Orchestrator
from actors.tool_runner import PoolLimits, RunnerPool, ToolRunner
from actors.webhooks import WebhookDeliverer
from cluster.runtime import local_metrics_options
from officeray.auth import Role, mint_key
from officeray.config import CircuitBreakerSettings, RouterSettings, Settings, WebhookSettings
from officeray.contracts import (
    ErrorType,
    PlanStep,
    Review,
    ReviewRequest,
    ReviewVerdict,
    StepError,
    StepOutcome,
    StepStatus,
    TaskRecord,
    TaskRequest,
    TaskStatus,
)
from officeray.metrics import (
    CATALOG,
    METRIC_PREFIX,
    NO_METRICS,
    SPECS,
    RecordingMetrics,
    task_latency_s,
)
from officeray.scheduling import FairScheduler
from officeray.testing import InMemoryStore, ScriptedPlanner
from officeray.webhooks import DeliveryStatus
from serving.breaker import CircuitBreaker
from serving.router import Router
from serving.testing import FakeClock, ScriptedTier, chain
from serving.tiers.base import ModelAnswer, ModelCall, ServerError, Usage

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "cluster" / "grafana" / "officeray.json"
DOCS = REPO / "docs" / "observability.md"
WAIT_S = 10.0

# -- the catalog and the fake -------------------------------------------------------------------------


def test_the_catalog_names_are_prometheus_names_with_the_officeray_prefix() -> None:
    assert len(SPECS) == len(CATALOG)  # no name twice
    for spec in CATALOG:
        assert re.fullmatch(r"officeray_[a-z][a-z0-9_]*", spec.name), spec.name
        assert spec.exported_name == "ray_" + spec.name
        assert spec.description.strip(), spec.name
        assert all(re.fullmatch(r"[a-z][a-z_]*", label) for label in spec.labels), spec.name
        if spec.kind == "counter":
            assert spec.name.endswith("_total"), spec.name
        else:
            assert not spec.name.endswith("_total"), spec.name
        if spec.kind == "histogram":
            assert spec.name.endswith("_seconds") and spec.boundaries, spec.name
            assert all(b > 0 for b in spec.boundaries), spec.name  # Ray refuses 0 and below
            assert list(spec.boundaries) == sorted(set(spec.boundaries)), spec.name
        else:
            assert not spec.boundaries, spec.name


def test_the_fake_refuses_labels_that_are_not_the_metrics() -> None:
    metrics = RecordingMetrics()
    spec = SPECS["officeray_tasks_queued"]
    with pytest.raises(ValueError, match="takes labels"):
        metrics._set(spec, 1, {"tenant": "acme", "extra": "x"})
    with pytest.raises(ValueError, match="takes labels"):
        metrics._set(spec, 1, {})
    with pytest.raises(ValueError, match="only grows"):
        metrics._add(SPECS["officeray_sandbox_starts_total"], 0, {"backend": "docker"})
    with pytest.raises(ValueError, match="breaker state"):
        metrics.breaker_state("planner", "embedded", "ajar")


def test_a_task_is_counted_by_tenant_and_status_and_its_latency_by_status() -> None:
    metrics = RecordingMetrics()
    metrics.task_finished("acme", "completed", 2.5)
    metrics.task_finished("acme", "failed", 1.0)
    metrics.task_finished("globex", "completed", 0.5)
    assert metrics.counter("officeray_tasks_finished_total", tenant="acme") == 2
    assert metrics.counter("officeray_tasks_finished_total", status="completed") == 2
    assert metrics.observations("officeray_task_latency_seconds", status="completed") == [2.5, 0.5]


def test_task_latency_counts_from_the_run_start_when_there_is_one() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    record = TaskRecord(task_id="t", description="d", created_at=t0, finished_at=t0 + timedelta(seconds=90))
    assert task_latency_s(record) == 90
    retried = record.model_copy(update={"run_started_at": t0 + timedelta(seconds=60)})
    assert task_latency_s(retried) == 30  # a DLQ retry is a new run


def test_no_metrics_records_nothing_and_takes_every_call() -> None:
    for name in ("task_finished", "step_finished", "model_called", "model_fell_back", "breaker_state"):
        assert callable(getattr(NO_METRICS, name))
    NO_METRICS.model_called("planner", "embedded", "ok", 0.1, 1, 2)
    NO_METRICS.runner_pool(1, 0)


# -- the Ray adapter ------------------------------------------------------------------------------------


def test_ray_metrics_makes_one_instrument_per_catalogued_metric_with_its_labels() -> None:
    instruments = process_instruments()
    assert set(instruments) == set(SPECS)
    for name, instrument in instruments.items():
        spec = SPECS[name]
        assert type(instrument).__name__.lower() == spec.kind
        assert instrument._tag_keys == spec.labels
        if spec.kind == "histogram":
            assert list(instrument.boundaries) == list(spec.boundaries)
    assert process_instruments() is instruments  # once per process


def test_ray_metrics_pickles_without_instruments_and_can_be_turned_off() -> None:
    metrics = RayMetrics()
    metrics.task_finished("acme", "completed", 1.0)  # records (into nothing: no Ray worker here)
    assert pickle.loads(pickle.dumps(metrics)).__dict__ == {}
    assert isinstance(metrics_for(Settings()), RayMetrics)
    assert metrics_for(Settings.model_validate({"telemetry": {"metrics": {"enabled": False}}})) is NO_METRICS


def test_a_local_ray_instance_gets_the_metrics_port_and_report_interval() -> None:
    settings = Settings.model_validate(
        {"telemetry": {"metrics": {"export_port": 9123, "report_interval_ms": 1000}}}
    )
    assert local_metrics_options(settings) == {
        "_metrics_export_port": 9123,
        "_system_config": {"metrics_report_interval_ms": 1000},
    }
    default = local_metrics_options(Settings())
    assert default == {"_system_config": {"metrics_report_interval_ms": 10_000}}  # Ray picks the port


# -- the components' reports ------------------------------------------------------------------------------


async def test_the_scheduler_reports_each_tenants_queue_depth() -> None:
    metrics = RecordingMetrics()
    scheduler = FairScheduler(1, lambda tenant: 10, metrics)
    await scheduler.acquire("acme")
    waiting = [asyncio.ensure_future(scheduler.acquire(t)) for t in ("acme", "acme", "globex")]
    await asyncio.sleep(0)
    assert metrics.gauge("officeray_tasks_queued", tenant="acme") == 2
    assert metrics.gauge("officeray_tasks_queued", tenant="globex") == 1
    scheduler.release("acme")  # globex was served longest ago
    await asyncio.sleep(0)
    assert metrics.gauge("officeray_tasks_queued", tenant="globex") == 0
    waiting[1].cancel()  # one of acme's leaves its queue
    await asyncio.sleep(0)
    assert metrics.gauge("officeray_tasks_queued", tenant="acme") == 1
    scheduler.release("globex")
    await asyncio.sleep(0)
    assert metrics.values("officeray_tasks_queued", tenant="acme") == [0, 1, 2, 1, 0]
    assert waiting[0].done() and not waiting[2].cancelled()


def test_the_breaker_reports_each_state_it_moves_to() -> None:
    clock = FakeClock()
    states: list[str] = []
    breaker = CircuitBreaker(CircuitBreakerSettings(failure_threshold=2, cooldown_s=10), clock, states.append)
    breaker.record_failure()
    assert states == []
    breaker.record_failure()
    assert states == ["open"]
    clock.advance(10)
    assert breaker.allow()  # the trial call
    breaker.record_failure()
    clock.advance(10)
    assert breaker.allow()
    breaker.record_success()
    breaker.record_success()  # no change: nothing reported
    assert states == ["open", "half_open", "open", "half_open", "closed"]


def _call() -> ModelCall:
    return ModelCall(role="planner", messages=[{"role": "user", "content": "hi"}], task_id="t1")


def _router(*tiers: ScriptedTier, metrics: RecordingMetrics, **settings: Any) -> Router:
    clock = FakeClock()
    router_settings = RouterSettings.model_validate(
        {"breaker": {"failure_threshold": 1, "cooldown_s": 30.0}, **settings}
    )
    return Router("planner", chain(*tiers), router_settings, clock=clock, sleep=clock.sleep, metrics=metrics)


async def test_the_router_reports_tries_tokens_fallbacks_and_breaker_states() -> None:
    metrics = RecordingMetrics()
    answer = ModelAnswer(content="plan", usage=Usage(prompt_tokens=12, completion_tokens=5))
    first = ScriptedTier("openai", "gpt-4o", [ServerError("HTTP 503")])
    second = ScriptedTier("embedded", "rules", [answer, answer])
    router = _router(first, second, metrics=metrics)
    assert metrics.gauge("officeray_breaker_state", role="planner", tier="openai(gpt-4o)") == 0
    assert metrics.gauge("officeray_breaker_state", role="planner", tier="embedded") == 0

    await router.call(_call(), lambda a: a.content)  # openai fails: its breaker opens; embedded answers
    await router.call(_call(), lambda a: a.content)  # openai skipped (open circuit)

    calls = "officeray_model_calls_total"
    assert metrics.counter(calls, tier="openai(gpt-4o)", outcome="error") == 1
    assert metrics.counter(calls, tier="openai(gpt-4o)", outcome="skipped_open_circuit") == 1
    assert metrics.counter(calls, tier="embedded", outcome="ok") == 2
    assert len(metrics.observations("officeray_model_call_latency_seconds", tier="embedded")) == 2
    assert len(metrics.observations("officeray_model_call_latency_seconds", tier="openai(gpt-4o)")) == 1
    tokens = "officeray_model_tokens_total"
    assert metrics.counter(tokens, tier="embedded", direction="in") == 24
    assert metrics.counter(tokens, tier="embedded", direction="out") == 10
    fallbacks = "officeray_model_fallbacks_total"
    assert metrics.counter(fallbacks, tier="openai(gpt-4o)", reason="ServerError") == 1
    assert metrics.counter(fallbacks, tier="openai(gpt-4o)", reason="skipped_open_circuit") == 1
    assert metrics.counter(fallbacks, tier="embedded") == 0
    assert metrics.gauge("officeray_breaker_state", role="planner", tier="openai(gpt-4o)") == 2


async def test_a_cache_hit_is_a_model_call_without_latency() -> None:
    metrics = RecordingMetrics()
    tier = ScriptedTier("openai", "gpt-4o", [ModelAnswer(content="plan")])
    router = _router(tier, metrics=metrics, cache={"enabled": True})
    await router.call(_call(), lambda a: a.content)
    await router.call(_call(), lambda a: a.content)
    assert metrics.counter("officeray_model_calls_total", outcome="cache_hit") == 1
    assert len(metrics.observations("officeray_model_call_latency_seconds")) == 1  # the try only


def _step(action: str = "math_calculator", step_id: str = "s1") -> PlanStep:
    return PlanStep(step_id=step_id, action=action, inputs={}, idempotency_key=f"k-{step_id}")


async def test_the_pool_reports_its_size_busy_runners_and_each_steps_latency() -> None:
    metrics = RecordingMetrics()
    gate = asyncio.Event()

    async def step(task_id: str, plan_step: PlanStep, inputs: dict[str, Any]) -> StepOutcome:
        if plan_step.step_id == "bad":
            return StepOutcome(error=StepError(type=ErrorType.TOOL_ERROR, message="no"))
        await gate.wait()
        return StepOutcome(output=1)

    settings = Settings.model_validate({"runners": {"count": 2}})
    pool = RunnerPool(settings, actors=LocalRunnerActors(step=step), metrics=metrics)
    assert (metrics.gauge("officeray_runner_pool_size"), metrics.gauge("officeray_runner_pool_busy")) == (
        2,
        0,
    )
    running = asyncio.ensure_future(pool.execute("t1", _step(), {}, {}))
    await _until(lambda: metrics.gauge("officeray_runner_pool_busy") == 1)
    assert await pool.execute("t2", _step(step_id="bad"), {}, {}) == StepOutcome(
        error=StepError(type=ErrorType.TOOL_ERROR, message="no")
    )
    gate.set()
    assert (await running).output == 1
    assert metrics.gauge("officeray_runner_pool_busy") == 0
    assert metrics.values("officeray_runner_pool_busy") == [0, 1, 2, 1, 0]
    assert (
        len(metrics.observations("officeray_step_latency_seconds", tool="math_calculator", outcome="ok")) == 1
    )
    assert len(metrics.observations("officeray_step_latency_seconds", outcome="tool_error")) == 1


async def test_an_autoscaling_pool_reports_the_runners_it_adds_and_stops() -> None:
    metrics = RecordingMetrics()
    clock = FakeClock(1000.0)
    settings = Settings.model_validate(
        {"runners": {"autoscaling": {"min_runners": 0, "max_runners": 2, "idle_timeout_s": 5}}}
    )
    pool = RunnerPool(
        settings,
        actors=LocalRunnerActors(),
        metrics=metrics,
        clock=clock,
        limits=PoolLimits(wait_recheck_s=0.01),
    )
    assert metrics.gauge("officeray_runner_pool_size") == 0
    await pool.execute("t1", _step(), {}, {})
    assert metrics.gauge("officeray_runner_pool_size") == 1
    clock.advance(10)
    assert await pool.scale_down_once() == 1
    assert metrics.values("officeray_runner_pool_size")[-1] == 0


def test_a_tool_runner_counts_the_sandboxes_it_starts(tmp_path: Path) -> None:
    metrics = RecordingMetrics()
    settings = Settings.model_validate(
        {"workspace_root": str(tmp_path), "sandbox": {"backend": "local", "spares": 0, "recycle": "replace"}}
    )
    runner = ToolRunner(settings, metrics=metrics)
    try:
        assert metrics.counter("officeray_sandbox_starts_total", backend="local") == 1
        step = PlanStep(
            step_id="s1", action="math_calculator", inputs={"expression": "1"}, idempotency_key="k"
        )
        assert runner.run("t1", step, {"expression": "1"}, {}).error is None
        assert runner.run("t2", step, {"expression": "1"}, {}).error is None  # another task: a new sandbox
        assert metrics.counter("officeray_sandbox_starts_total", backend="local") == 2
    finally:
        runner.sandboxes.close()


async def test_the_webhook_deliverer_counts_attempts_by_the_state_they_leave() -> None:
    metrics, store = RecordingMetrics(), InMemoryStore()
    _, key = mint_key("default", Role.USER)
    await store.create_api_key(key)
    statuses = [500, 204]
    transport = httpx.MockTransport(lambda request: httpx.Response(statuses.pop(0)))
    for task_id, url in (("t1", "http://127.0.0.1:9/hook"), ("t2", "http://localhost/hook")):
        request = TaskRequest(description="x", task_id=task_id, webhook_url=url, submitted_by=key.key_id)
        await store.create_task(TaskRecord(task_id=task_id, description="x"), request)
        done = TaskRecord(task_id=task_id, description="x", status=TaskStatus.COMPLETED)
        await store.finish_task(done, "completed", {"status": "completed", "error": None})
    now = datetime.now(UTC)
    clock = [now + timedelta(seconds=1)]
    settings = WebhookSettings(allow_hosts=["127.0.0.1"], initial_backoff_s=1, jitter=0.0)
    deliverer = WebhookDeliverer(
        store, settings, "o", transport=transport, now=lambda: clock[0], rand=lambda: 0.0, metrics=metrics
    )
    assert await deliverer.deliver_due() == 2  # t1 fails (500), t2's URL is refused (an internal name)
    clock[0] += timedelta(seconds=5)
    assert await deliverer.deliver_due() == 1  # t1 again: delivered
    attempts = "officeray_webhook_attempts_total"
    assert metrics.counter(attempts, outcome=DeliveryStatus.PENDING.value) == 1
    assert metrics.counter(attempts, outcome=DeliveryStatus.GIVEN_UP.value) == 1
    assert metrics.counter(attempts, outcome=DeliveryStatus.DELIVERED.value) == 1


# -- an orchestrator, in process -----------------------------------------------------------------------


class _Reviewer:
    async def review(self, request: ReviewRequest) -> Review:
        if any(result.status != StepStatus.SUCCEEDED for result in request.results):
            return Review(verdict=ReviewVerdict.FAILED, feedback="a step failed")
        return Review(verdict=ReviewVerdict.APPROVED, final_output=request.results[-1].output)


def _task(task_id: str, tenant: str, expression: str) -> TaskRequest:
    plan = {
        "plan_id": "p",
        "task_id": task_id,
        "confidence": 1.0,
        "metadata": {
            "priority": 0,
            "required_tools": ["math_calculator"],
            "estimated_cost_tokens": 0,
            "estimated_duration_seconds": 1,
        },
        "steps": [
            {
                "step_id": "s1",
                "action": "math_calculator",
                "inputs": {"expression": expression},
                "outputs_expectation": None,
                "timeout_seconds": 30,
                "parallelizable": False,
                "idempotency_key": "k1",
                "dependencies": [],
            }
        ],
    }
    return TaskRequest(description="compute", task_id=task_id, tenant=tenant, plan=plan)


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT_S):
        while not condition():
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def _orchestrator(tmp_path: Path, metrics: RecordingMetrics | None) -> AsyncIterator[Orchestrator]:
    async def step(task_id: str, plan_step: PlanStep, inputs: dict[str, Any]) -> StepOutcome:
        if inputs["expression"] == "1/0":
            return StepOutcome(error=StepError(type=ErrorType.BAD_INPUT, message="division by zero"))
        return StepOutcome(output={"value": 42})

    settings = Settings.model_validate(
        {
            "store": {"url": f"sqlite:///{tmp_path / 'officeray.db'}"},
            "runners": {"count": 2},
        }
    )
    ports = ModelPorts(planner=ScriptedPlanner([]), reviewer=_Reviewer())
    actors = LocalRunnerActors(step=step)
    orchestrator = (
        Orchestrator(settings, ports, runner_actors=actors)
        if metrics is None
        else Orchestrator(settings, ports, runner_actors=actors, metrics=metrics, metrics_poll_s=0.05)
    )
    try:
        yield orchestrator
    finally:
        runs: list[asyncio.Future[Any]] = [*orchestrator._background, *orchestrator._running.values()]
        for running in runs:
            running.cancel()
            with contextlib.suppress(BaseException):
                await running
        orchestrator.store.close()


async def test_an_orchestrator_reports_finished_tasks_queues_and_the_dead_letter_queue(
    tmp_path: Path,
) -> None:
    metrics = RecordingMetrics()
    async with _orchestrator(tmp_path, metrics) as orchestrator:
        done = await orchestrator.run(_task("ok-1", "acme", "6 * 7"), timeout_s=WAIT_S)
        failed = await orchestrator.run(_task("bad-1", "globex", "1/0"), timeout_s=WAIT_S)
        assert (done.status, failed.status) == (TaskStatus.COMPLETED, TaskStatus.FAILED)
        await _until(lambda: metrics.gauge("officeray_dlq_depth") == 1)
        assert metrics.gauge("officeray_webhook_backlog") == 0

    finished = "officeray_tasks_finished_total"
    assert metrics.counter(finished, tenant="acme", status="completed") == 1
    assert metrics.counter(finished, tenant="globex", status="failed") == 1
    assert metrics.counter(finished) == 2
    [latency] = metrics.observations("officeray_task_latency_seconds", status="completed")
    assert latency == pytest.approx(task_latency_s(done)) and 0 < latency < WAIT_S
    assert metrics.gauge("officeray_tasks_queued", tenant="acme") == 0
    assert metrics.gauge("officeray_runner_pool_size") == 2
    assert metrics.counter("officeray_sandbox_starts_total") == 0  # fake runners start no sandbox
    assert len(metrics.observations("officeray_step_latency_seconds", outcome="bad_input")) == 1


def _loops(orchestrator: Orchestrator) -> set[str]:
    return {task.get_coro().__qualname__ for task in orchestrator._background}  # type: ignore[attr-defined]


async def test_only_shard_0_with_metrics_counts_the_backlogs(tmp_path: Path) -> None:
    async with _orchestrator(tmp_path, RecordingMetrics()) as orchestrator:
        assert await orchestrator.ready()
        assert "Orchestrator._report_backlogs" in _loops(orchestrator)
    async with _orchestrator(tmp_path, None) as orchestrator:  # NO_METRICS, the default
        assert await orchestrator.ready()
        assert orchestrator.metrics is NO_METRICS
        assert "Orchestrator._report_backlogs" not in _loops(orchestrator)
        assert "Orchestrator._renew_leases" in _loops(orchestrator)


# -- the dashboard, the docs, the cluster configs ------------------------------------------------------------

_EXPORTED = re.compile(r"\bray_(officeray_[a-z0-9_]+)")


def _expressions(dashboard: dict[str, Any]) -> list[str]:
    found = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            found += [target["expr"] for target in inner.get("targets", [])]
    return found


def _metric_of(exported: str) -> str:
    """The catalogued metric an exported series name belongs to (a histogram's _bucket/_sum/_count)."""
    if exported in SPECS:
        return exported
    base, _, suffix = exported.rpartition("_")
    if base in SPECS and SPECS[base].kind == "histogram" and suffix in ("bucket", "sum", "count"):
        return base
    raise AssertionError(f"the dashboard uses ray_{exported}, which officeray does not define")


def test_the_dashboard_uses_every_metric_and_only_those() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    expressions = _expressions(dashboard)
    used = {_metric_of(name) for expr in expressions for name in _EXPORTED.findall(expr)}
    assert used == set(SPECS), f"not on the dashboard: {sorted(set(SPECS) - used)}"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_the_docs_list_every_metric_with_its_type_and_labels() -> None:
    text = DOCS.read_text()
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    for spec in CATALOG:
        row = next((line for line in section.splitlines() if f"`{spec.exported_name}`" in line), None)
        assert row is not None, f"{spec.exported_name} is not in docs/observability.md"
        assert spec.kind in row, spec.name
        for label in spec.labels:
            assert f"`{label}`" in row, (spec.name, label)
    assert "cluster/grafana/officeray.json" in section
    assert all(name.startswith(METRIC_PREFIX) for name in _EXPORTED.findall(section))


def _start_commands(path: Path) -> list[str]:
    config = yaml.safe_load(path.read_text())
    return [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in config[key]]


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_cloud_nodes_export_metrics_on_8080(name: str) -> None:
    starts = [c for c in _start_commands(REPO / "cluster" / name) if "ray start" in c]
    assert len(starts) == 2
    assert all("--metrics-export-port=8080" in c for c in starts)


def test_kuberay_pods_export_metrics_on_8080() -> None:
    documents = list(yaml.safe_load_all((REPO / "cluster" / "kuberay-rayservice.yaml").read_text()))
    cluster = documents[0]["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        assert group["rayStartParams"]["metrics-export-port"] == "8080"
        [container] = group["template"]["spec"]["containers"]
        assert {"containerPort": 8080, "name": "metrics"} in container["ports"]
    policy = documents[1]["spec"]["ingress"]
    assert any({"port": 8080, "protocol": "TCP"} in rule.get("ports", []) for rule in policy)
