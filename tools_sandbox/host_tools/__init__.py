"""Host-side tools: they run in the tool runner's process (not in the sandbox) behind the SSRF guard.

The catalog (:mod:`officeray.tools`) names each by ``"module:function"`` and imports it only when the
tool runs; their input and settings models are in the core, :mod:`officeray.tools.host_inputs`.

Every host step is bounded by its ``timeout_seconds`` (:func:`tools_sandbox.executor.run_host_step`
stops waiting for it then, with error type ``timeout``, and sets its cancel event); tools that wait on
something outside use :func:`within_step` to never wait longer than their step may.
"""

from __future__ import annotations

from typing import Any

CANCELLED_SERVICE = "cancelled"
"""The key, in a host tool's ``context.services``, of a :class:`threading.Event` set when the step is
cancelled or ran out of time: a tool that waits (``sleep``) waits on it and stops early."""

STEP_TIMEOUT_SERVICE = "step_timeout_s"
"""The key, in a host tool's ``context.services``, of its step's ``timeout_seconds`` (a float)."""


def within_step(own_timeout_s: float | None, services: dict[str, Any]) -> float | None:
    """A tool's own timeout capped by its step's (``services[STEP_TIMEOUT_SERVICE]``); None: neither."""
    step = services.get(STEP_TIMEOUT_SERVICE)
    if not isinstance(step, int | float) or step <= 0:
        return own_timeout_s
    return float(step) if own_timeout_s is None else min(own_timeout_s, float(step))
