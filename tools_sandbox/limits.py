"""Resource limits of a sandbox container."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from tools_sandbox.agent.limits import MAX_OUTPUT_BYTES

DEFAULT_MEMORY_MB = 512
DEFAULT_CPUS = 1.0
DEFAULT_PIDS = 128
DEFAULT_WORKSPACE_MB = 64
DEFAULT_TMP_MB = 16
DEFAULT_OUTPUT_BYTES = MAX_OUTPUT_BYTES


class SandboxLimits(BaseModel):
    """What one sandbox container may use. Every field is validated; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    memory_mb: int = Field(default=DEFAULT_MEMORY_MB, ge=32, le=1024**2)
    """Memory limit of the whole container (agent + tools), in MiB. Swap is disabled (memswap = memory):
    a call that exceeds it is killed by the kernel and fails with ``sandbox_error``."""

    cpus: float = Field(default=DEFAULT_CPUS, gt=0, le=256)
    """CPU quota, in CPUs (``nano_cpus``)."""

    pids: int = Field(default=DEFAULT_PIDS, ge=8, le=65_536)
    """Most processes/threads alive at once in the container (bounds fork bombs)."""

    workspace_mb: int = Field(default=DEFAULT_WORKSPACE_MB, ge=1, le=64 * 1024)
    """Size of the ``/workspace`` tmpfs (counts against ``memory_mb`` as it fills)."""

    tmp_mb: int = Field(default=DEFAULT_TMP_MB, ge=1, le=64 * 1024)
    """Size of the ``/tmp`` tmpfs."""

    output_bytes: int = Field(default=DEFAULT_OUTPUT_BYTES, ge=1024, le=256 * 1024**2)
    """Largest serialized call result (or file read); larger ones fail with ``output_limit``."""
