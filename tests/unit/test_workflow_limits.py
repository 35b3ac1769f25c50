"""The workflow under tenant limits: a task's token budget is capped by ``max_token_budget``, and a
tenant whose ``daily_token_budget`` is spent (its tasks finished today, and this one so far) makes no
new model call: the task fails saying so. Shipped fakes only; the wall clock is injected."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from typing import Any

from officeray.config import Settings
from officeray.contracts import (
    ModelCallRecord,
    ModelUsage,
    Planned,
    PlanRequest,
    Review,
    Reviewed,
    ReviewRequest,
    ReviewVerdict,
    TaskRecord,
    TaskRequest,
    TaskStatus,
)
from officeray.testing import (
    FunctionExecutor,
    InMemoryStore,
    ScriptedPlanner,
    ScriptedReviewer,
    in_memory_tracer,
    make_plan,
)
from officeray.tools.builtin import BUILTIN_TOOLS
from officeray.workflow import Workflow

TOOLS = {name: spec.input_model for name, spec in BUILTIN_TOOLS.items()}
NOON = datetime(2030, 3, 14, 12, 0, tzinfo=UTC)
TODAY = NOON.date()


def spent(message: str, budget: int, tenant: str = "acme") -> bool:
    return (
        message == f"tenant {tenant}'s daily token budget of {budget} tokens is spent; it resets at 00:00 UTC"
    )


def planned(tokens: int) -> Any:
    """A planner answer: a one-step plan, its call costing ``tokens``."""

    def answer(request: PlanRequest) -> Planned:
        plan = make_plan(
            request.task_id,
            [{"step_id": "s1", "action": "math_calculator", "inputs": {"expression": "1 + 1"}}],
        )
        usage = ModelUsage(prompt_tokens=tokens, calls=1)
        return Planned(plan=plan, call=ModelCallRecord(role="planner", tier="scripted", usage=usage))

    return answer


def approved(tokens: int) -> Any:
    def answer(request: ReviewRequest) -> Reviewed:
        usage = ModelUsage(completion_tokens=tokens, calls=1)
        return Reviewed(
            review=Review(verdict=ReviewVerdict.APPROVED, final_output={"ok": True}),
            call=ModelCallRecord(role="reviewer", tier="scripted", usage=usage),
        )

    return answer


class Tenants:
    """The limits port (``Settings.tenant_limits``) and a usage port over a store that counts reads."""

    def __init__(self, store: InMemoryStore, **tenants: dict[str, Any]) -> None:
        self.settings = Settings.model_validate({"tenants": tenants})
        self.store = store
        self.reads: list[tuple[str, date]] = []

    async def usage_on(self, tenant: str, day: date) -> ModelUsage:
        self.reads.append((tenant, day))
        return await self.store.tenant_usage_on(tenant, day)


def workflow(
    plans: list[Any],
    reviews: list[Any],
    tenants: Tenants,
    *,
    token_budget: int | None = None,
    now: Any = lambda: NOON,
) -> tuple[Workflow, ScriptedPlanner, ScriptedReviewer]:
    tracer, _ = in_memory_tracer()
    planner, reviewer = ScriptedPlanner(plans), ScriptedReviewer(reviews)
    wf = Workflow(
        planner=planner,
        reviewer=reviewer,
        executor=FunctionExecutor({"math_calculator": lambda inputs: {"value": 1}}),
        store=tenants.store,
        tracer=tracer,
        tools=TOOLS,
        token_budget=token_budget,
        tenant_limits=tenants.settings.tenant_limits,
        usage_on=tenants.usage_on,
        now=now,
    )
    return wf, planner, reviewer


async def run(wf: Workflow, task_id: str, tenant: str = "acme", **fields: Any) -> TaskRecord:
    request = TaskRequest(description="add", tenant=tenant, **fields)
    record = await asyncio.wait_for(wf.run(request, task_id), timeout=5)
    assert record.status.is_final
    return record


async def test_a_tenant_whose_daily_budget_is_spent_makes_no_model_call() -> None:
    store = InMemoryStore()
    await store.add_tenant_usage("acme", ModelUsage(prompt_tokens=1000, calls=3), TODAY)
    tenants = Tenants(store, acme={"daily_token_budget": 1000})
    wf, planner, reviewer = workflow([], [], tenants)
    record = await run(wf, "t1")
    assert record.status == TaskStatus.FAILED
    assert record.error is not None and spent(record.error, 1000)
    assert planner.requests == [] and reviewer.requests == []
    assert "t1" in store.dead_letters


async def test_the_tasks_own_calls_count_and_stop_the_next_call() -> None:
    store = InMemoryStore()
    await store.add_tenant_usage("acme", ModelUsage(prompt_tokens=60, calls=1), TODAY)
    tenants = Tenants(store, acme={"daily_token_budget": 100})
    wf, planner, reviewer = workflow([planned(50)], [], tenants)  # 60 stored + 50 planned: spent
    record = await run(wf, "t1")
    assert record.status == TaskStatus.FAILED
    assert record.error is not None and spent(record.error, 100)
    assert len(planner.requests) == 1 and reviewer.requests == []
    assert record.usage.total_tokens == 50
    assert await store.tenant_usage_on("acme", TODAY) == ModelUsage(prompt_tokens=110, calls=2)


async def test_finished_tasks_spend_the_day_and_the_next_utc_day_starts_afresh() -> None:
    store = InMemoryStore()
    tenants = Tenants(store, acme={"daily_token_budget": 100})
    clock = {"now": NOON}
    wf, _, _ = workflow([planned(40), planned(40)], [approved(30)], tenants, now=lambda: clock["now"])
    first = await run(wf, "t1")
    assert first.status == TaskStatus.COMPLETED
    assert (await store.tenant_usage_on("acme", TODAY)).total_tokens == 70
    second = await run(wf, "t2")  # 70 + 40 planned: the review is not asked for
    assert second.status == TaskStatus.FAILED and second.error is not None and spent(second.error, 100)

    clock["now"] = datetime(2030, 3, 15, 0, 0, 1, tzinfo=UTC)
    wf, _, _ = workflow([planned(40)], [approved(30)], tenants, now=lambda: clock["now"])
    assert (await run(wf, "t3")).status == TaskStatus.COMPLETED
    assert tenants.reads[-1] == ("acme", date(2030, 3, 15))


async def test_one_tenants_spent_budget_does_not_stop_another() -> None:
    store = InMemoryStore()
    await store.add_tenant_usage("acme", ModelUsage(prompt_tokens=10**6, calls=1), TODAY)
    tenants = Tenants(store, acme={"daily_token_budget": 1000})
    wf, _, _ = workflow([planned(40)], [approved(30)], tenants)
    assert (await run(wf, "t1", tenant="globex")).status == TaskStatus.COMPLETED


async def test_without_a_daily_budget_the_store_is_not_read() -> None:
    store = InMemoryStore()
    tenants = Tenants(store)
    wf, _, _ = workflow([planned(40)], [approved(30)], tenants)
    assert (await run(wf, "t1")).status == TaskStatus.COMPLETED
    assert tenants.reads == []


async def test_the_tenants_max_token_budget_caps_a_task_that_names_no_budget() -> None:
    tenants = Tenants(InMemoryStore(), acme={"max_token_budget": 100})
    wf, _, _ = workflow([planned(150)], [], tenants, token_budget=20_000)
    record = await run(wf, "t1")
    assert record.status == TaskStatus.FAILED
    assert record.error == "token budget exceeded: 150 tokens used, the budget is 100"


async def test_a_task_may_lower_its_budget_below_the_ceiling() -> None:
    tenants = Tenants(InMemoryStore(), acme={"max_token_budget": 1000})
    wf, _, _ = workflow([planned(150)], [], tenants)
    record = await run(wf, "t1", token_budget=100)
    assert record.error == "token budget exceeded: 150 tokens used, the budget is 100"


async def test_the_configured_budget_applies_below_the_ceiling() -> None:
    tenants = Tenants(InMemoryStore(), acme={"max_token_budget": 1000})
    wf, _, _ = workflow([planned(150)], [], tenants, token_budget=120)
    record = await run(wf, "t1")
    assert record.error == "token budget exceeded: 150 tokens used, the budget is 120"


async def test_a_step_that_calls_a_model_does_not_run_once_the_daily_budget_is_spent() -> None:
    """The planner's call spends the day's budget: the ai_tool step (a model call too) is not made."""
    store = InMemoryStore()
    tenants = Tenants(store, acme={"daily_token_budget": 100})
    calls: list[dict[str, Any]] = []

    def plan_with_ai_tool(request: PlanRequest) -> Planned:
        plan = make_plan(
            request.task_id, [{"step_id": "s1", "action": "ai_tool", "inputs": {"prompt": "summarize: x"}}]
        )
        usage = ModelUsage(prompt_tokens=100, calls=1)
        return Planned(plan=plan, call=ModelCallRecord(role="planner", tier="scripted", usage=usage))

    tracer, _ = in_memory_tracer()
    wf = Workflow(
        planner=ScriptedPlanner([plan_with_ai_tool]),
        reviewer=ScriptedReviewer([]),
        executor=FunctionExecutor({"ai_tool": lambda inputs: calls.append(inputs) or {"answer": "x"}}),
        store=store,
        tracer=tracer,
        tools=TOOLS,
        tenant_limits=tenants.settings.tenant_limits,
        usage_on=tenants.usage_on,
        calls_model=lambda action: BUILTIN_TOOLS[action].calls_model,
        now=lambda: NOON,
    )
    record = await run(wf, "t-ai")
    assert calls == []  # the model was not called
    (step,) = record.steps
    assert step.status.value == "failed" and step.error is not None
    assert spent(step.error.message, 100)
    assert (
        record.status == TaskStatus.FAILED
        and record.error is not None
        and "daily token budget" in record.error
    )
