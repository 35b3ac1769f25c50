"""Limits shared by the agent and the host side of the sandbox, each defined once, here.

STDLIB ONLY, NO IMPORTS: this module runs inside the sandbox image with the agent. Host modules
(:mod:`tools_sandbox._channel`, :mod:`tools_sandbox.executor`, :mod:`tools_sandbox.plugins`,
:mod:`tools_sandbox.limits`, ...) import these constants from here, never the other way round.
The limits of one tool (e.g. ``python_exec``'s longest program) live in that tool's module under
``tools_sandbox.agent.tools`` and the catalog imports them from there.
"""

from __future__ import annotations

MAX_OUTPUT_BYTES = 10 * 1024**2
"""A call result (or file read) whose JSON is larger than this is refused with ``output_limit``.
The default of ``SandboxLimits.output_bytes``; the Docker backend passes that to the agent as
``OFFICERAY_MAX_OUTPUT_BYTES``."""

MAX_STAGED_FILES = 2_000
"""Most files one call may stage: the executor stops copying a host folder there, the agent refuses more."""

MAX_STAGED_BYTES = 8 * 1024**2
"""Most bytes (UTF-8, all files together) one call may stage: the executor stops copying a host
folder there (checking each file's size before reading it), the agent refuses more."""

MAX_PLUGIN_SOURCE_BYTES = 1024**2
"""Largest plugin module source: ``@tool`` refuses a bigger module, the agent a bigger ``plugin.source``."""

READ_CHUNK_BYTES = 1024**2
"""Largest single read or write on a protocol stream (agent pipes, host pipes, the Docker socket)."""
