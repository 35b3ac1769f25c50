"""Tenant limits as pure logic: the submit rate (token buckets on a hand-moved clock), the ceilings a
request may not pass, the token budget a task gets, DLQ retries and the daily budget's reason."""

from __future__ import annotations

import math

import pytest

from officeray.config import Settings, TenantLimits
from officeray.contracts import TaskRequest, WorkflowRetryPolicy
from officeray.quotas import (
    MAX_RETRY_AFTER_S,
    MAX_TRACKED_TENANTS,
    SubmitRateLimiter,
    TokenBucket,
    ceiling_problems,
    daily_budget_spent_reason,
    dlq_retry_problem,
    effective_token_budget,
    shard_tenant_cap,
)


class Clock:
    """Monotonic seconds moved by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def limits(**values: object) -> TenantLimits:
    return TenantLimits.model_validate(values)


# -- submit rate ---------------------------------------------------------------------------------


def test_a_burst_is_admitted_then_the_next_submission_waits_one_refill() -> None:
    clock = Clock()
    limiter = SubmitRateLimiter(clock)
    acme = limits(submit_per_s=2.0, submit_burst=3)
    assert [limiter.acquire("acme", acme) for _ in range(3)] == [None, None, None]
    assert limiter.acquire("acme", acme) == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.acquire("acme", acme) is None
    assert limiter.acquire("acme", acme) == pytest.approx(0.5)


def test_refused_submissions_cost_nothing_and_an_idle_tenant_refills_to_its_burst_only() -> None:
    clock = Clock()
    limiter = SubmitRateLimiter(clock)
    acme = limits(submit_per_s=1.0, submit_burst=2)
    limiter.acquire("acme", acme)
    limiter.acquire("acme", acme)
    for _ in range(100):  # hammering while refused does not push the wait further out
        assert limiter.acquire("acme", acme) == pytest.approx(1.0)
    clock.now += 3600
    assert [limiter.acquire("acme", acme) for _ in range(3)] == [None, None, pytest.approx(1.0)]


def test_tenants_have_their_own_buckets() -> None:
    limiter = SubmitRateLimiter(Clock())
    one = limits(submit_per_s=1.0, submit_burst=1)
    assert limiter.acquire("acme", one) is None
    assert limiter.acquire("acme", one) is not None
    assert limiter.acquire("globex", one) is None


def test_the_default_tenant_allows_a_burst_of_20_then_5_per_second() -> None:
    clock = Clock()
    limiter = SubmitRateLimiter(clock)
    default = Settings().tenant_limits("anyone")
    assert all(limiter.acquire("anyone", default) is None for _ in range(20))
    assert limiter.acquire("anyone", default) == pytest.approx(0.2)


def test_a_changed_limit_applies_at_once_and_a_smaller_burst_clamps_the_tokens() -> None:
    clock = Clock()
    limiter = SubmitRateLimiter(clock)
    assert limiter.acquire("acme", limits(submit_per_s=1.0, submit_burst=100)) is None
    smaller = limits(submit_per_s=10.0, submit_burst=2)
    assert [limiter.acquire("acme", smaller) for _ in range(2)] == [None, None]
    assert limiter.acquire("acme", smaller) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("rate", "burst", "expected_wait"),
    [
        (1e-300, 1, MAX_RETRY_AFTER_S),  # a tiny rate: capped, not years
        (1e-9, 1, MAX_RETRY_AFTER_S),
        (1e300, 1, 0.0),  # a huge rate: the next instant refills (a wait of ~0)
        (math.inf, 1, 0.0),
        (1.0, 10**18, None),  # a huge burst: no overflow, admitted
    ],
)
def test_hostile_rates_and_bursts_give_a_bounded_finite_answer(
    rate: float, burst: int, expected_wait: float | None
) -> None:
    clock = Clock()
    limiter = SubmitRateLimiter(clock)
    tenant = limits(submit_per_s=rate, submit_burst=burst)
    assert limiter.acquire("t", tenant) is None
    wait = limiter.acquire("t", tenant)
    if expected_wait is None:
        assert wait is None
    else:
        assert wait is not None and math.isfinite(wait) and 0.0 <= wait <= MAX_RETRY_AFTER_S
        assert wait == pytest.approx(expected_wait, abs=1e-6)
    clock.now += 1.0
    assert limiter.acquire("t", tenant) is None or rate < 1e-6


@pytest.mark.parametrize("jump", [-1.0, -3600.0, -1e12])
def test_a_clock_that_goes_back_refills_nothing_and_does_not_lock_the_tenant_out(jump: float) -> None:
    clock = Clock(now=5000.0)
    bucket = TokenBucket(rate=1.0, capacity=1, now=clock.now)
    assert bucket.take(clock.now) is None
    clock.now += jump
    assert bucket.take(clock.now) == pytest.approx(1.0)  # nothing refilled by going back
    clock.now += 1.0  # one second on from the new reading is one token, wherever the clock went
    assert bucket.take(clock.now) is None


def test_a_clock_that_goes_back_and_forth_never_hands_out_more_than_the_burst() -> None:
    clock = Clock()
    limiter = SubmitRateLimiter(clock)
    tenant = limits(submit_per_s=1.0, submit_burst=3)
    admitted = 0
    for step in range(200):
        clock.now += 1e9 if step % 2 else -1e9
        admitted += sum(limiter.acquire("t", tenant) is None for _ in range(10))
    assert admitted <= 3 + 100 * 3  # the first burst, then at most one burst per forward jump


def test_many_tenants_keep_a_bounded_number_of_buckets() -> None:
    limiter = SubmitRateLimiter(Clock())
    one = limits(submit_per_s=1.0, submit_burst=1)
    for i in range(MAX_TRACKED_TENANTS + 500):
        limiter.acquire(f"tenant-{i}", one)
    assert len(limiter) == MAX_TRACKED_TENANTS
    # the most recent ones are kept: their bucket is still empty
    assert limiter.acquire(f"tenant-{MAX_TRACKED_TENANTS + 499}", one) is not None


def test_a_tenant_asked_recently_is_kept_when_others_are_forgotten() -> None:
    limiter = SubmitRateLimiter(Clock())
    one = limits(submit_per_s=1.0, submit_burst=1)
    limiter.acquire("busy", one)
    for i in range(MAX_TRACKED_TENANTS + 10):
        limiter.acquire(f"tenant-{i}", one)
        if i % 1000 == 0:
            limiter.acquire("busy", one)  # refused, but counted as asked
    assert limiter.acquire("busy", one) is not None  # still remembered: no fresh burst


# -- ceilings ------------------------------------------------------------------------------------

ACME = limits(max_token_budget=10_000, max_step_attempts=20, max_task_duration_s=7200)


@pytest.mark.parametrize(
    ("request_fields", "fields_at_fault"),
    [
        ({}, []),
        ({"token_budget": 10_000}, []),
        ({"token_budget": 1}, []),
        ({"token_budget": 10_001}, ["token_budget"]),
        ({"token_budget": 10**18}, ["token_budget"]),
        ({"retry_policy": {"maximum_step_attempts": 20}}, []),
        ({"retry_policy": {"maximum_step_attempts": 21}}, ["retry_policy.maximum_step_attempts"]),
        ({"retry_policy": {"maximum_step_attempts": 10_000}}, ["retry_policy.maximum_step_attempts"]),
        (
            {"token_budget": 99_999, "retry_policy": {"maximum_step_attempts": 10_000}},
            ["token_budget", "retry_policy.maximum_step_attempts"],
        ),
        ({"retry_policy": {"maximum_step_attempts": 20, "maximum_duration_s": 7200}}, []),
        ({"retry_policy": {"maximum_step_attempts": 20, "maximum_duration_s": 0.5}}, []),
        (
            {"retry_policy": {"maximum_step_attempts": 20, "maximum_duration_s": 7200.5}},
            ["retry_policy.maximum_duration_s"],
        ),
        (
            {"retry_policy": {"maximum_step_attempts": 1, "maximum_duration_s": 7 * 24 * 3600}},
            ["retry_policy.maximum_duration_s"],
        ),
        (
            {"retry_policy": {"maximum_step_attempts": 21, "maximum_duration_s": 86_400}},
            ["retry_policy.maximum_step_attempts", "retry_policy.maximum_duration_s"],
        ),
    ],
)
def test_ceiling_problems_name_each_field_above_its_ceiling(
    request_fields: dict[str, object], fields_at_fault: list[str]
) -> None:
    request = TaskRequest.model_validate({"description": "x", **request_fields})
    problems = ceiling_problems(request, ACME)
    assert [p["field"] for p in problems] == fields_at_fault
    for problem in problems:
        assert set(problem) == {"field", "message", "ceiling"}
        assert str(problem["ceiling"]) in problem["message"]
        assert problem["field"] in problem["message"]


def test_the_default_ceilings_refuse_what_the_issue_names() -> None:
    default = Settings().tenant_limits("default")
    policy = WorkflowRetryPolicy(maximum_step_attempts=10_000, maximum_duration_s=2 * 86_400)
    request = TaskRequest(description="x", token_budget=10**9, retry_policy=policy)
    problems = ceiling_problems(request, default)
    assert {p["field"]: p["ceiling"] for p in problems} == {
        "token_budget": 200_000,
        "retry_policy.maximum_step_attempts": 100,
        "retry_policy.maximum_duration_s": 86_400.0,  # a day
    }
    assert ceiling_problems(TaskRequest(description="x", retry_policy=WorkflowRetryPolicy()), default) == []


def test_only_what_a_request_asks_for_is_held_to_the_ceilings() -> None:
    """A policy that names one cap is not refused for the defaults of the others, even below them."""
    low = limits(max_step_attempts=5, max_task_duration_s=600)  # both below the policy's defaults
    only_attempts = TaskRequest.model_validate(
        {"description": "x", "retry_policy": {"maximum_step_attempts": 4}}
    )
    assert ceiling_problems(only_attempts, low) == []
    only_duration = TaskRequest.model_validate(
        {"description": "x", "retry_policy": {"maximum_duration_s": 60}}
    )
    assert ceiling_problems(only_duration, low) == []
    too_long = TaskRequest.model_validate({"description": "x", "retry_policy": {"maximum_duration_s": 601}})
    assert [p["field"] for p in ceiling_problems(too_long, low)] == ["retry_policy.maximum_duration_s"]


@pytest.mark.parametrize(
    ("cap", "shards", "per_shard"),
    [(64, 1, 64), (64, 2, 32), (64, 3, 22), (10, 4, 3), (1, 4, 1), (3, 64, 1), (100_000, 64, 1563)],
)
def test_a_tenants_running_tasks_are_split_between_the_shards(cap: int, shards: int, per_shard: int) -> None:
    assert shard_tenant_cap(cap, shards) == per_shard
    assert per_shard * shards >= cap  # together the shards never run fewer than the cap
    assert per_shard == 1 or (per_shard - 1) * shards < cap  # and at most shards - 1 more


def test_a_task_may_not_last_longer_than_a_day_by_default_and_the_ceiling_must_be_positive() -> None:
    assert Settings().tenant_limits("anyone").max_task_duration_s == 86_400.0
    with pytest.raises(ValueError, match="max_task_duration_s"):
        limits(max_task_duration_s=0)


@pytest.mark.parametrize(
    ("asked", "configured", "ceiling", "expected"),
    [
        (None, None, 200_000, 200_000),  # nothing anywhere: the ceiling
        (None, 20_000, 200_000, 20_000),  # the config's per-task budget
        (None, 500_000, 200_000, 200_000),  # a config above the tenant's ceiling is capped
        (5_000, 20_000, 200_000, 5_000),  # a task may lower it
        (50_000, 20_000, 200_000, 50_000),  # or raise it up to the ceiling
        (10**12, None, 200_000, 200_000),  # never above the ceiling
    ],
)
def test_effective_token_budget(
    asked: int | None, configured: int | None, ceiling: int, expected: int
) -> None:
    request = TaskRequest(description="x", token_budget=asked)
    assert effective_token_budget(request, limits(max_token_budget=ceiling), configured) == expected


# -- DLQ retries and the daily budget --------------------------------------------------------------


@pytest.mark.parametrize(
    ("done", "ceiling", "refused"),
    [(0, 3, False), (2, 3, False), (3, 3, True), (10**9, 3, True), (0, 0, True)],
)
def test_dlq_retry_problem(done: int, ceiling: int, refused: bool) -> None:
    problem = dlq_retry_problem(done, limits(max_dlq_retries=ceiling))
    assert (problem is not None) == refused
    if problem is not None:
        assert f"max_dlq_retries is {ceiling}" in problem


@pytest.mark.parametrize(
    ("spent", "budget", "refused"),
    [(0, None, False), (10**18, None, False), (999, 1000, False), (1000, 1000, True), (10**18, 1000, True)],
)
def test_daily_budget_spent_reason(spent: int, budget: int | None, refused: bool) -> None:
    reason = daily_budget_spent_reason("acme", spent, limits(daily_token_budget=budget))
    if refused:
        assert reason == (
            f"tenant acme's daily token budget of {budget} tokens is spent; it resets at 00:00 UTC"
        )
    else:
        assert reason is None
