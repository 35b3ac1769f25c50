"""Tenant usage per UTC day (migration 7, ``tenant_daily_usage``): every store adds a finished task's
usage to its tenant's day in the same write as the tenant's totals, and answers it by day."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import sqlalchemy as sa

from officeray.contracts import ModelUsage, TaskStatus, utcnow
from officeray.store import SqlStore, TaskStore, migrate

from .conftest import record as make_record
from .conftest import request_for

DAY = date(2030, 3, 14)
LATE = datetime(2030, 3, 14, 23, 59, 59, tzinfo=UTC)
NEXT_MORNING = datetime(2030, 3, 15, 0, 0, 1, tzinfo=UTC)
USAGE = ModelUsage(prompt_tokens=30, completion_tokens=12, cost_usd=0.25, calls=2)


async def _finish(
    store: TaskStore, task_id: str, tenant: str, finished_at: datetime, usage: ModelUsage
) -> None:
    assert await store.create_task(make_record(task_id, TaskStatus.EXECUTING), request_for(task_id, tenant))
    done = make_record(task_id, TaskStatus.COMPLETED, tenant=tenant, usage=usage, finished_at=finished_at)
    assert await store.finish_task(done, "completed", {})


async def test_a_finished_tasks_usage_counts_on_the_utc_day_it_finished(store: TaskStore) -> None:
    await _finish(store, "t1", "acme", LATE, USAGE)
    await _finish(store, "t2", "acme", LATE - timedelta(hours=5), USAGE)
    await _finish(store, "t3", "acme", NEXT_MORNING, ModelUsage(prompt_tokens=1, calls=1))
    await _finish(store, "t4", "globex", LATE, ModelUsage(prompt_tokens=500, calls=1))

    assert await store.tenant_usage_on("acme", DAY) == USAGE + USAGE
    assert await store.tenant_usage_on("acme", DAY + timedelta(days=1)) == ModelUsage(
        prompt_tokens=1, calls=1
    )
    assert await store.tenant_usage_on("acme", DAY - timedelta(days=1)) == ModelUsage()
    assert (await store.tenant_usage_on("globex", DAY)).total_tokens == 500
    assert await store.tenant_usage_on("nobody", DAY) == ModelUsage()
    assert await store.tenant_usage("acme") == USAGE + USAGE + ModelUsage(prompt_tokens=1, calls=1)


async def test_the_day_is_utcs_whatever_the_offset_of_finished_at(store: TaskStore) -> None:
    tokyo = timezone(timedelta(hours=9))
    eight_in_tokyo = datetime(2030, 3, 15, 8, 0, tzinfo=tokyo)  # 23:00 UTC on the 14th
    await _finish(store, "t1", "acme", eight_in_tokyo, USAGE)
    assert await store.tenant_usage_on("acme", DAY) == USAGE


async def test_added_usage_counts_on_the_day_given_or_today(store: TaskStore) -> None:
    await store.add_tenant_usage("acme", USAGE, DAY)
    await store.add_tenant_usage("acme", USAGE)
    assert await store.tenant_usage_on("acme", DAY) == USAGE
    assert await store.tenant_usage_on("acme", utcnow().date()) == USAGE
    assert await store.tenant_usage("acme") == USAGE + USAGE


async def test_a_refused_finish_adds_usage_neither_to_the_totals_nor_to_the_day(store: TaskStore) -> None:
    assert await store.create_task(make_record("t1", TaskStatus.EXECUTING), request_for("t1", "acme"))
    assert await store.acquire_lease("t1", "orch-a", ttl_s=60)
    done = make_record("t1", TaskStatus.COMPLETED, tenant="acme", usage=USAGE, finished_at=LATE)
    assert not await store.finish_task(done, "completed", {}, owner="orch-b")  # not the lease holder
    assert await store.tenant_usage_on("acme", DAY) == ModelUsage()
    assert await store.tenant_usage("acme") == ModelUsage()


async def test_a_version_6_database_gets_the_daily_table(url: str) -> None:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        assert migrate(engine, target=6) <= 6
        assert "tenant_daily_usage" not in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
    opened = SqlStore(url)
    try:
        await _finish(opened, "t1", "acme", LATE, USAGE)
        assert await opened.tenant_usage_on("acme", DAY) == USAGE
    finally:
        opened.close()
