"""Limits that the core's tool models and the in-container agent share, each defined once, here.

STDLIB ONLY (``os``, nothing else): this module is shipped in the sandbox image with the empty
``officeray/__init__.py`` (:func:`tools_sandbox.image.agent_sources`), and the agent imports it
there. So the host's input models (:mod:`officeray.tools.builtin`), ``sandbox.limits``
(:class:`officeray.config.SandboxLimits`) and the agent check the same numbers. Limits that only
the agent, or only one host module, uses stay with it (:mod:`tools_sandbox.agent.limits`, the
tools' modules).
"""

from __future__ import annotations

import os

MAX_OUTPUT_BYTES = 10 * 1024**2
"""A call result (or file read) whose JSON is larger than this is refused with ``output_limit``.
The default of ``sandbox.limits.output_bytes``; the Docker backend passes that to the agent as
``OFFICERAY_MAX_OUTPUT_BYTES``."""

MAX_PLUGIN_SOURCE_BYTES = 1024**2
"""Largest plugin module source: the catalog refuses a bigger module, the agent a bigger
``plugin.source``."""

MAX_PYTHON_CODE_CHARS = 100_000
"""Longest ``python_exec`` program (its input model and the tool in the sandbox)."""

MAX_EXPRESSION_CHARS = 1_000
"""Longest ``math_calculator`` expression (its input model, the tool, the embedded planner)."""

MAX_PATH_CHARS = 4_096
"""Longest ``file_operations`` path (its input model and the tool's default ``FileLimits``)."""

MAX_WRITE_BYTES = 1024**2
"""Largest ``file_operations`` write, in UTF-8 bytes (its input model and the tool's default
``FileLimits``)."""


def relative_path_problem(path: object, what: str = "path") -> str | None:
    """Why ``path`` is not a non-empty relative path without NUL or ``..``; None when it is one.

    The rule of every path a sandbox tool takes (``file_operations``' input model refuses such a
    path before the step runs; the agent refuses it again, raising its ``ToolInputError``)."""
    if not isinstance(path, str) or not path.strip():
        return f"{what} must be a non-empty string"
    if "\x00" in path:
        return f"{what} must not contain NUL characters"
    if os.path.isabs(path):
        return f"{what} {path!r} is absolute; paths are relative to the workspace"
    if ".." in path.replace("\\", "/").split("/"):
        return f"{what} {path!r} contains '..'"
    return None
