"""Workspace confinement, shared by the agent (its file ops, staged files) and the in-sandbox tools.

STDLIB ONLY: this module runs inside the sandbox (with :mod:`officeray.limits`, shipped in the image).

A path given by a caller is accepted when it is a non-empty string, relative, without NUL characters
and without ``..`` components, and when, with every symbolic link resolved, it still names the
workspace root or something under it::

    real = os.path.realpath(os.path.join(root, path))   # (root / path).resolve()
    os.path.commonpath([root, real]) == root            # .relative_to(root) succeeds

``root`` is always a real path (:func:`workspace_root`, or ``os.path.realpath`` of a folder).
Errors are :class:`~tools_sandbox.agent.errors.ToolInputError` (``bad_input``); the agent's own
ops turn them into its ``bad_input`` answer.
"""

from __future__ import annotations

import os

from officeray.limits import relative_path_problem
from tools_sandbox.agent.errors import ToolInputError

ROOT_ENV = "OFFICERAY_WORKSPACE"
"""Environment variable naming the workspace root (set by every backend)."""

DEFAULT_ROOT = "/workspace"
"""The workspace root when :data:`ROOT_ENV` is not set (the container's tmpfs)."""


def workspace_root() -> str:
    """The real path of this sandbox's workspace root (``$OFFICERAY_WORKSPACE``)."""
    return os.path.realpath(os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


def is_inside(root: str, real: str) -> bool:
    """Whether the real path ``real`` is ``root`` or under it (``root`` must be a real path too)."""
    return real == root or os.path.commonpath([root, real]) == root


def check_relative(path: object, what: str = "path") -> str:
    """``path`` if it is a non-empty relative path without NUL or ``..``; else ToolInputError.

    The rule is :func:`officeray.limits.relative_path_problem`, which the core's input models apply
    too (``file_operations``' ``path``)."""
    problem = relative_path_problem(path, what)
    if problem is not None:
        raise ToolInputError(problem)
    assert isinstance(path, str)
    return path


def confine(root: str, path: object, what: str = "path") -> str:
    """The real absolute path of ``path`` (relative to ``root``), refusing anything that escapes.

    Symbolic links are resolved (a dangling one to its target), so a link inside the workspace
    that points outside it is refused like an absolute path.
    """
    rel = check_relative(path, what)
    real = os.path.realpath(os.path.join(root, rel))
    if not is_inside(root, real):
        raise ToolInputError(f"{what} {rel!r} escapes the workspace (through a symbolic link)")
    return real
