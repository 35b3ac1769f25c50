"""A circuit breaker per model tier: stop calling a tier that keeps failing, try it again later.

States (the classic three, as in Nygard's *Release It!*)::

    closed ──(failure_threshold consecutive failures)──▶ open
    open ──(cooldown_s elapsed)──▶ half_open: the next allow() lets one trial call through
    half_open ──trial succeeds──▶ closed
    half_open ──trial fails──▶ open (the cooldown starts again)

The breaker is pure state: no I/O, no sleeping, the clock injected. The caller asks :meth:`allow`
before a call and reports its outcome with :meth:`record_success`, :meth:`record_failure`, or
:meth:`release` when the outcome says nothing about the tier's health (the tier refused the call
for good, or the call was cancelled): a half-open trial slot must always be given back, or the tier
stays skipped forever.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

from officeray.config import CircuitBreakerSettings

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """One tier's breaker. ``clock`` returns seconds (monotonic); inject a fake one in tests.

    ``on_change`` hears every state the breaker moves to (``closed``, ``open``, ``half_open`` when a
    trial call goes through), e.g. to export it as a gauge; ``open`` turning into ``half_open`` by
    the clock alone is heard with the next :meth:`allow`."""

    def __init__(
        self,
        settings: CircuitBreakerSettings,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._on_change = on_change
        self._state: BreakerState = "closed"
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False

    @property
    def state(self) -> BreakerState:
        """``open`` turns into ``half_open`` by itself once ``cooldown_s`` has passed."""
        if self._state == "open" and self._cooldown_over():
            return "half_open"
        return self._state

    @property
    def opened_at(self) -> float | None:
        """Clock reading when the breaker last opened; ``None`` while closed."""
        return self._opened_at

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def allow(self) -> bool:
        """Whether a call may go to the tier now. In half-open, only one trial call at a time."""
        state = self.state
        if state == "closed":
            return True
        if state == "open" or self._trial_in_flight:
            return False
        self._move("half_open")
        self._trial_in_flight = True
        return True

    def record_success(self) -> None:
        """The tier answered: close (also when an older call succeeds while the breaker is open)."""
        self._move("closed")
        self._failures = 0
        self._opened_at = None
        self._trial_in_flight = False

    def record_failure(self) -> None:
        """The tier failed a call (after its retries)."""
        self._failures += 1
        tripped = self._state == "closed" and self._failures >= self.settings.failure_threshold
        if self._state == "half_open" or tripped:  # a failed trial re-opens at once
            self._open()
        # Already open: a late failure of a call started earlier does not extend the cooldown.

    def release(self) -> None:
        """The call ended without telling anything about the tier's health: free the trial slot."""
        self._trial_in_flight = False

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._trial_in_flight = False
        self._move("open")

    def _move(self, state: BreakerState) -> None:
        changed = state != self._state
        self._state = state
        if changed and self._on_change is not None:
            self._on_change(state)

    def _cooldown_over(self) -> bool:
        return self._opened_at is not None and self._clock() - self._opened_at >= self.settings.cooldown_s

    def __repr__(self) -> str:
        return f"CircuitBreaker(state={self.state!r}, failures={self._failures})"
