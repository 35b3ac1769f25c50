"""The ``sleep`` host tool: wait a given number of seconds, then return how long it waited.

Agents use it to wait for something outside (a rate limit's reset, a job they started elsewhere); load
tests use it for tool steps of a known duration (``bench overhead``, the shipped task mix), since it
costs no CPU and no sandbox. It runs host-side, in the host-tool runner's thread pool
(:class:`actors.tool_runner.HostToolRunner`), so a waiting step holds no sandbox and many wait at once;
a cancelled step stops waiting at once (``context.services[CANCELLED_SERVICE]``).
Its input model is :class:`officeray.tools.host_inputs.SleepInput`.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from pydantic import BaseModel

from officeray.contracts import ErrorType
from officeray.tools.host_inputs import SleepInput
from officeray.tools.spec import HostContext, HostToolError
from tools_sandbox.host_tools import CANCELLED_SERVICE


def run(inputs: BaseModel, context: HostContext) -> dict[str, Any]:
    """The :data:`~officeray.tools.spec.HostFunction` of ``sleep``: ``{"slept_s": measured seconds}``."""
    checked = inputs if isinstance(inputs, SleepInput) else SleepInput.model_validate(inputs.model_dump())
    started = time.monotonic()
    cancelled = context.services.get(CANCELLED_SERVICE)
    if isinstance(cancelled, threading.Event):
        if cancelled.wait(checked.seconds):  # the step was cancelled: stop waiting now
            raise HostToolError(ErrorType.CANCELLED, "the wait was cancelled")
    else:
        time.sleep(checked.seconds)
    return {"slept_s": round(time.monotonic() - started, 6)}
