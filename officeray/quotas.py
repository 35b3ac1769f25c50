"""Per-tenant limits as pure logic: the submit rate, the ceilings a request may not pass, the token
budget a task gets, DLQ retries and the daily token budget's reason.

The operator sets the limits (``tenants:`` in the config, :class:`~officeray.config.TenantLimits`);
clients can only lower them. Nothing here does I/O: the gateway asks :class:`SubmitRateLimiter` before
it submits (429 with ``Retry-After`` when refused) and :func:`ceiling_problems` before it accepts a
request (422 naming the ceiling); the orchestrator asks :func:`dlq_retry_problem` before a DLQ retry;
the workflow takes :func:`effective_token_budget` and :func:`daily_budget_spent_reason`. The clock is
injected (monotonic seconds), so tests move time by hand.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from officeray.config import TenantLimits
from officeray.contracts import TaskRequest

MAX_TRACKED_TENANTS = 10_000
"""Tenants whose submit buckets :class:`SubmitRateLimiter` keeps; past it the one asked least recently
is forgotten (it starts again with a full bucket: at most one burst more for a tenant idle that long)."""

MAX_RETRY_AFTER_S = 3600.0
"""The longest wait a refused submission is told (a tiny ``submit_per_s`` would otherwise say years)."""


class TokenBucket:
    """A token bucket: ``capacity`` tokens at most, refilled at ``rate`` per second; one per submission.

    Time is the injected clock's (monotonic seconds). A clock that goes backwards refills nothing and
    the bucket counts on from the new reading, so a jump never blocks a tenant nor hands out a burst
    beyond ``capacity``."""

    def __init__(self, rate: float, capacity: int, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = float(capacity)
        self.updated = now

    def resize(self, rate: float, capacity: int) -> None:
        """Take new limits (a changed config): the tokens held are kept, up to the new capacity."""
        self.rate = rate
        self.capacity = capacity
        self.tokens = min(self.tokens, float(capacity))

    def take(self, now: float) -> float | None:
        """Take one token at ``now``: None when taken, else the seconds until one is there."""
        elapsed = now - self.updated
        self.updated = now
        if elapsed > 0:  # never 0 * inf, never a refill from a clock that went back
            self.tokens = min(float(self.capacity), self.tokens + elapsed * self.rate)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return None
        wait = (1.0 - self.tokens) / self.rate
        return min(wait, MAX_RETRY_AFTER_S) if math.isfinite(wait) else MAX_RETRY_AFTER_S


class SubmitRateLimiter:
    """The submit rate of each tenant (``submit_per_s``, ``submit_burst``): one :class:`TokenBucket`
    per tenant, the :data:`MAX_TRACKED_TENANTS` asked most recently kept. One per gateway replica
    (each replica admits its share: N replicas admit up to N times the rate)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def acquire(self, tenant: str, limits: TenantLimits) -> float | None:
        """Count one submission of ``tenant``: None when admitted, else the seconds to wait
        (``Retry-After``; positive, at most :data:`MAX_RETRY_AFTER_S`)."""
        now = self._clock()
        bucket = self._buckets.get(tenant)
        if bucket is None:
            bucket = self._buckets[tenant] = TokenBucket(limits.submit_per_s, limits.submit_burst, now)
            while len(self._buckets) > MAX_TRACKED_TENANTS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(tenant)
            if (bucket.rate, bucket.capacity) != (limits.submit_per_s, limits.submit_burst):
                bucket.resize(limits.submit_per_s, limits.submit_burst)
        return bucket.take(now)

    def __len__(self) -> int:
        """Tenants tracked now."""
        return len(self._buckets)


def ceiling_problems(request: TaskRequest, limits: TenantLimits) -> list[dict[str, Any]]:
    """What in ``request`` goes above the tenant's ceilings: ``{"field", "message", "ceiling"}`` each
    (empty when nothing does). The gateway answers them as a 422."""
    problems: list[dict[str, Any]] = []
    if request.token_budget is not None and request.token_budget > limits.max_token_budget:
        problems.append(
            _problem(
                "token_budget",
                f"token_budget {request.token_budget} is above this tenant's ceiling max_token_budget "
                f"({limits.max_token_budget}); ask for at most {limits.max_token_budget}",
                limits.max_token_budget,
            )
        )
    policy = request.retry_policy
    asked = policy.model_fields_set if policy is not None else set()  # what the client wrote, not defaults
    if (
        policy is not None
        and "maximum_step_attempts" in asked
        and policy.maximum_step_attempts > limits.max_step_attempts
    ):
        problems.append(
            _problem(
                "retry_policy.maximum_step_attempts",
                f"retry_policy.maximum_step_attempts {policy.maximum_step_attempts} is above this "
                f"tenant's ceiling max_step_attempts ({limits.max_step_attempts}); ask for at most "
                f"{limits.max_step_attempts}",
                limits.max_step_attempts,
            )
        )
    if (
        policy is not None
        and "maximum_duration_s" in asked
        and policy.maximum_duration_s > limits.max_task_duration_s
    ):
        problems.append(
            _problem(
                "retry_policy.maximum_duration_s",
                f"retry_policy.maximum_duration_s {policy.maximum_duration_s} is above this tenant's "
                f"ceiling max_task_duration_s ({limits.max_task_duration_s} seconds); ask for at most "
                f"{limits.max_task_duration_s}",
                limits.max_task_duration_s,
            )
        )
    return problems


def _problem(field: str, message: str, ceiling: float) -> dict[str, Any]:
    return {"field": field, "message": message, "ceiling": ceiling}


def shard_tenant_cap(cap: int, shards: int) -> int:
    """A tenant's running tasks allowed on one of ``shards`` orchestrators (each schedules its own
    tasks): ``ceil(cap / shards)``, at least 1, so all shards together run about ``cap`` (up to
    ``shards - 1`` more when ``cap`` does not divide evenly, ``shards`` when ``cap < shards``)."""
    return max(1, math.ceil(cap / max(1, shards)))


def effective_token_budget(request: TaskRequest, limits: TenantLimits, configured: int | None) -> int:
    """The tokens a task may spend: its own ``token_budget``, else ``models.task_token_budget``
    (``configured``), never above the tenant's ``max_token_budget``."""
    wanted = request.token_budget if request.token_budget is not None else configured
    return limits.max_token_budget if wanted is None else min(wanted, limits.max_token_budget)


def dlq_retry_problem(retries_done: int, limits: TenantLimits) -> str | None:
    """Why one more DLQ retry of a task already retried ``retries_done`` times is refused, if it is."""
    if retries_done < limits.max_dlq_retries:
        return None
    return (
        f"the task was retried from the dead-letter queue {retries_done} time(s); this tenant's ceiling "
        f"max_dlq_retries is {limits.max_dlq_retries}"
    )


def daily_budget_spent_reason(tenant: str, spent_tokens: int, limits: TenantLimits) -> str | None:
    """Why a new model call of ``tenant`` is refused, having spent ``spent_tokens`` today (stored and
    this task's so far); None while under its ``daily_token_budget`` (or without one)."""
    budget = limits.daily_token_budget
    if budget is None or spent_tokens < budget:
        return None
    return f"tenant {tenant}'s daily token budget of {budget} tokens is spent; it resets at 00:00 UTC"
