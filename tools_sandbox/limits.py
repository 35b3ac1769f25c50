"""How much of a host folder one call may stage.

A container's resource limits are settings (``sandbox.limits``): :class:`officeray.config.SandboxLimits`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from tools_sandbox.agent.limits import MAX_STAGED_BYTES, MAX_STAGED_FILES


class StagingLimits(BaseModel):
    """How much of a host folder :func:`tools_sandbox.executor.stage_folder` copies for one call.

    The defaults are the agent's own limits (:data:`~tools_sandbox.agent.limits.MAX_STAGED_FILES`,
    :data:`~tools_sandbox.agent.limits.MAX_STAGED_BYTES`), which it enforces again; smaller ones
    stop the walk sooner, larger ones would only be refused by the agent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_files: int = Field(default=MAX_STAGED_FILES, ge=1, le=MAX_STAGED_FILES)
    """Most files staged; the walk stops (with :class:`~tools_sandbox.executor.StagingError`) at one more."""

    max_bytes: int = Field(default=MAX_STAGED_BYTES, ge=1, le=MAX_STAGED_BYTES)
    """Most bytes (UTF-8, all files together) staged; checked from each file's size before reading it."""
