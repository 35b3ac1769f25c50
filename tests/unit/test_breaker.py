"""Circuit breaker: closed -> open after N failures -> half-open after the cooldown -> closed or open."""

from __future__ import annotations

import pytest

from officeray.config import CircuitBreakerSettings
from serving.breaker import CircuitBreaker
from serving.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=100.0)


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker(CircuitBreakerSettings(failure_threshold=3, cooldown_s=30.0), clock=clock)


def test_starts_closed(breaker: CircuitBreaker) -> None:
    assert breaker.state == "closed"
    assert breaker.opened_at is None
    assert breaker.allow()


def test_opens_after_threshold_consecutive_failures(breaker: CircuitBreaker, clock: FakeClock) -> None:
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed"
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    assert breaker.opened_at == 100.0
    assert not breaker.allow()


def test_a_success_resets_the_count(breaker: CircuitBreaker) -> None:
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed"


def _open(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.settings.failure_threshold):
        breaker.record_failure()
    assert breaker.state == "open"


def test_half_opens_after_cooldown_with_one_trial(breaker: CircuitBreaker, clock: FakeClock) -> None:
    _open(breaker)
    clock.advance(29.9)
    assert breaker.state == "open"
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.state == "half_open"
    assert breaker.allow()  # the trial
    assert not breaker.allow()  # only one at a time
    assert breaker.state == "half_open"


def test_trial_success_closes(breaker: CircuitBreaker, clock: FakeClock) -> None:
    _open(breaker)
    clock.advance(30)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed"
    assert breaker.opened_at is None
    assert breaker.allow() and breaker.allow()


def test_trial_failure_reopens_and_restarts_cooldown(breaker: CircuitBreaker, clock: FakeClock) -> None:
    _open(breaker)
    clock.advance(45)
    assert breaker.allow()
    breaker.record_failure()  # one failure is enough in half-open
    assert breaker.state == "open"
    assert breaker.opened_at == 145.0
    clock.advance(29)
    assert not breaker.allow()
    clock.advance(1)
    assert breaker.allow()


def test_release_frees_the_trial_slot(breaker: CircuitBreaker, clock: FakeClock) -> None:
    _open(breaker)
    clock.advance(30)
    assert breaker.allow()
    breaker.release()  # e.g. the call was cancelled, or the tier refused it for good
    assert breaker.state == "half_open"
    assert breaker.allow()


def test_late_failure_while_open_does_not_extend_cooldown(breaker: CircuitBreaker, clock: FakeClock) -> None:
    _open(breaker)
    clock.advance(10)
    breaker.record_failure()
    assert breaker.opened_at == 100.0
    clock.advance(20)
    assert breaker.allow()


def test_threshold_one(clock: FakeClock) -> None:
    breaker = CircuitBreaker(CircuitBreakerSettings(failure_threshold=1, cooldown_s=1), clock=clock)
    breaker.record_failure()
    assert breaker.state == "open"
