"""Limits shared by the agent and the host side of the sandbox (tools_sandbox), each defined once, here.

STDLIB ONLY, NO IMPORTS: this module runs inside the sandbox image with the agent. Host modules
(:mod:`tools_sandbox._channel`, :mod:`tools_sandbox.executor`, :mod:`tools_sandbox.limits`, ...)
import these constants from here, never the other way round. The limits that the core's models
check too (a tool input's longest text, the output cap, the plugin source cap) are in
:mod:`officeray.limits`, which the image ships and the agent imports.
"""

from __future__ import annotations

MAX_STAGED_FILES = 2_000
"""Most files one call may stage: the executor stops copying a host folder there, the agent refuses more."""

MAX_STAGED_BYTES = 8 * 1024**2
"""Most bytes (UTF-8, all files together) one call may stage: the executor stops copying a host
folder there (checking each file's size before reading it), the agent refuses more."""

READ_CHUNK_BYTES = 1024**2
"""Largest single read or write on a protocol stream (agent pipes, host pipes, the Docker socket)."""

MAX_WORKSPACE_FILES = 20_000
"""Most files ``ws_list`` reports; a workspace with more answers ``output_limit`` (the store's cap,
``workspace.max_task_files``, is far lower)."""

WORKSPACE_READ_BYTES = 4 * 1024**2
"""Most bytes one ``ws_read`` answers (base64 in the response: well under the output cap)."""
