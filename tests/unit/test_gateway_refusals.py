"""What the task API answers to hostile or refused requests, through the gateway's pure helpers and
its exception handlers: list filters out of UTC's range, the orchestrator's refusals, a refused
submission that must not spend the tenant's submit rate, and the chat routes' daily token budget."""

from __future__ import annotations

import base64
import json
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient

from officeray.auth import Principal, Role
from officeray.config import Settings, TenantLimits, WebhookSettings
from officeray.contracts import ModelUsage, TaskRequest, WorkflowRetryPolicy
from officeray.errors import (
    ApprovalConflictError,
    LimitExceededError,
    TaskFinalError,
    TaskNotFoundError,
)
from officeray.quotas import SubmitRateLimiter
from officeray.testing import InMemoryStore
from officeray.tools.catalog import build_catalog
from serving import gateway
from serving.gateway import ApiError, admitted_task, created_after_utc, decode_cursor
from serving.testing import FakeClock

# -- list filters ------------------------------------------------------------------------------------


def _cursor_of(moment: str, task_id: str = "t-1") -> str:
    return base64.urlsafe_b64encode(json.dumps([moment, task_id]).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        _cursor_of("0001-01-01T00:00:00+01:00"),  # before year 1 in UTC
        _cursor_of("9999-12-31T23:59:59-05:00"),  # after year 9999 in UTC
        _cursor_of("2024-01-01T00:00:00+25:00"),
        _cursor_of("not a time"),
        _cursor_of("2024-01-01T00:00:00", "../etc"),
        "%%%",
        "",
    ],
)
def test_a_forged_cursor_is_a_422_naming_the_cursor(cursor: str) -> None:
    with pytest.raises(ApiError) as refused:
        decode_cursor(cursor)
    assert (refused.value.status_code, refused.value.code) == (422, "invalid_request")
    assert refused.value.extra["errors"][0]["field"] == "cursor"


@pytest.mark.parametrize(
    "moment",
    [
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-5))),
        datetime(1, 1, 1, 0, 0, 0, tzinfo=timezone(timedelta(hours=1))),
        datetime(1, 1, 1, 0, 0, 0, tzinfo=timezone(timedelta(hours=23, minutes=59))),
    ],
)
def test_created_after_out_of_range_in_utc_is_a_422(moment: datetime) -> None:
    with pytest.raises(ApiError) as refused:
        created_after_utc(moment)
    assert (refused.value.status_code, refused.value.code) == (422, "invalid_request")
    assert refused.value.extra["errors"] == [
        {"field": "created_after", "message": "the moment is out of range once converted to UTC"}
    ]


def test_created_after_in_range_is_the_same_moment_in_utc() -> None:
    assert created_after_utc(None) is None
    plus_two = datetime(2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    assert created_after_utc(plus_two) == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert created_after_utc(datetime(2024, 5, 1, 12, 0)) == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert created_after_utc(datetime.max.replace(tzinfo=UTC)) == datetime.max.replace(tzinfo=UTC)


# -- the orchestrator's refusals --------------------------------------------------------------------


@pytest.fixture
def refusing_app() -> TestClient:
    """An app with the gateway's exception handlers and a route raising what it is told."""
    app = FastAPI()
    for cls, handler in gateway.app.exception_handlers.items():
        app.add_exception_handler(cls, handler)
    raised: list[Exception] = []

    @app.get("/raise")
    async def raise_it() -> None:
        raise raised[-1]

    client = TestClient(app, raise_server_exceptions=False)
    client.raised = raised  # type: ignore[attr-defined]
    return client


@pytest.mark.parametrize(
    ("error", "status", "code", "extra"),
    [
        (LimitExceededError("task 't': max_dlq_retries is 2"), 422, "over_ceiling", {}),
        (
            TaskFinalError("task 't' already ended: completed", "completed"),
            409,
            "task_final",
            {"status": "completed"},
        ),
        (TaskNotFoundError("task 't' not found"), 404, "task_not_found", {}),
        (ApprovalConflictError("step 's' was decided already"), 409, "approval_conflict", {}),
    ],
)
def test_every_refusal_of_the_orchestrator_is_a_4xx_in_the_error_shape(
    refusing_app: TestClient, error: Exception, status: int, code: str, extra: dict[str, Any]
) -> None:
    refusing_app.raised.append(error)  # type: ignore[attr-defined]
    answer = refusing_app.get("/raise")
    assert answer.status_code == status
    assert answer.json() == {"detail": str(error), "code": code, **extra}


# -- submissions: refused ones spend no rate ---------------------------------------------------------

USER = Principal(key_id="0123456789ab", tenant="acme", role=Role.USER)
ONE_A_MINUTE = TenantLimits(submit_per_s=1 / 60, submit_burst=1, max_token_budget=1000, max_step_attempts=5)


@pytest.fixture
def settings() -> Settings:
    return Settings(tenants={"default": ONE_A_MINUTE}, webhooks=WebhookSettings(allow_hosts=[]))


def _refused_submissions() -> list[tuple[TaskRequest, str | None, int]]:
    bad_plan = {"plan_id": "p", "task_id": "x", "steps": [{"step_id": "s", "action": "no_such_tool"}]}
    return [
        (TaskRequest(description="d", token_budget=1001), None, 422),
        (TaskRequest(description="d", retry_policy=WorkflowRetryPolicy(maximum_step_attempts=6)), None, 422),
        (TaskRequest(description="d", allowed_tools=["no_such_tool"]), None, 422),
        (TaskRequest(description="d", webhook_url="http://127.0.0.1:9/hook"), None, 422),
        (TaskRequest(description="d", webhook_url="http://169.254.169.254/latest"), None, 422),
        (TaskRequest(description="d", plan=bad_plan), None, 422),
        (TaskRequest(description="d", idempotency_key="a"), "b", 422),
        (TaskRequest(description="d", tenant="beta"), None, 403),
        (TaskRequest(description="d", parent_id="another-tenants-task"), None, 422),
    ]


@pytest.mark.parametrize(("task", "header_key", "status"), _refused_submissions())
def test_a_refused_submission_does_not_spend_the_tenants_rate(
    settings: Settings, task: TaskRequest, header_key: str | None, status: int
) -> None:
    catalog, rate = build_catalog(settings), SubmitRateLimiter(clock=FakeClock())
    with pytest.raises(HTTPException) as refused:  # ApiError, AccessError, or FastAPI's own
        admitted_task(task, header_key, USER, settings, catalog, rate)
    assert refused.value.status_code == status
    # the burst of one is still there for a valid request; the one after it waits
    admitted = admitted_task(TaskRequest(description="d"), None, USER, settings, catalog, rate)
    assert (admitted.tenant, admitted.submitted_by) == ("acme", USER.key_id)
    with pytest.raises(ApiError) as limited:
        admitted_task(TaskRequest(description="d"), None, USER, settings, catalog, rate)
    assert (limited.value.status_code, limited.value.code) == (429, "rate_limited")
    assert limited.value.headers == {"Retry-After": "60"}


def test_the_idempotency_header_is_kept_on_the_admitted_task(settings: Settings) -> None:
    catalog, rate = build_catalog(settings), SubmitRateLimiter(clock=FakeClock())
    admitted = admitted_task(TaskRequest(description="d"), "k-1", USER, settings, catalog, rate)
    assert admitted.idempotency_key == "k-1"


def test_a_client_may_not_name_a_parent_task(settings: Settings) -> None:
    """Only a decomposed task's coordinator makes subtasks: a client's parent_id would share the
    named task's workspace (another tenant's) and keep its own task from being decomposed."""
    catalog, rate = build_catalog(settings), SubmitRateLimiter(clock=FakeClock())
    with pytest.raises(ApiError) as refused:
        admitted_task(TaskRequest(description="d", parent_id="t-b"), None, USER, settings, catalog, rate)
    assert (refused.value.status_code, refused.value.code) == (422, "invalid_request")
    assert "parent_id" in str(refused.value.detail)


# -- the chat routes' daily token budget --------------------------------------------------------------

TODAY = datetime(2024, 5, 1, 23, 0, tzinfo=UTC)


async def test_the_chat_budget_is_spent_once_todays_usage_reaches_the_daily_budget() -> None:
    store = InMemoryStore()
    dispatch = gateway._HandleDispatch(now=lambda: TODAY)
    dispatch.store = store
    dispatch.settings = Settings(
        tenants={"default": TenantLimits(), "acme": TenantLimits(daily_token_budget=100)}
    )
    assert await dispatch.budget_spent("acme") is None
    await store.add_tenant_usage("acme", ModelUsage(prompt_tokens=60, completion_tokens=39), day=TODAY.date())
    await store.add_tenant_usage("acme", ModelUsage(prompt_tokens=500), day=date(2024, 4, 30))  # yesterday
    assert await dispatch.budget_spent("acme") is None  # 99 of 100 today
    await store.add_tenant_usage("acme", ModelUsage(completion_tokens=1), day=TODAY.date())
    reason = await dispatch.budget_spent("acme")
    assert reason is not None and "daily token budget of 100 tokens is spent" in reason
    await store.add_tenant_usage("beta", ModelUsage(prompt_tokens=10**6), day=TODAY.date())
    assert await dispatch.budget_spent("beta") is None  # no daily budget
