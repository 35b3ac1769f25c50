"""The ``sleep`` host tool: wait a given number of seconds, then return how long it waited.

Agents use it to wait for something outside (a rate limit's reset, a job they started elsewhere); load
tests use it for tool steps of a known duration (``bench overhead``, the shipped task mix), since it
costs no CPU and no sandbox. It runs host-side, in the host-tool runner's thread pool
(:class:`actors.tool_runner.HostToolRunner`), so a waiting step holds no sandbox and many wait at once.

IMPORT RULE: the catalog imports this module for :class:`SleepInput`; only pydantic at module level.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from tools_sandbox.catalog import HostContext

MAX_SLEEP_S = 600.0
"""Longest wait one step may ask for."""


class SleepInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(ge=0, le=MAX_SLEEP_S, description="How long to wait, in seconds.")


def run(inputs: BaseModel, context: HostContext) -> dict[str, Any]:
    """The :data:`~tools_sandbox.catalog.HostFunction` of ``sleep``: ``{"slept_s": measured seconds}``."""
    checked = inputs if isinstance(inputs, SleepInput) else SleepInput.model_validate(inputs.model_dump())
    started = time.monotonic()
    time.sleep(checked.seconds)
    return {"slept_s": round(time.monotonic() - started, 6)}
