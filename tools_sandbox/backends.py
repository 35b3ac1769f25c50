"""Choosing and building a sandbox backend from plain settings."""

from __future__ import annotations

from typing import Any, Literal

from tools_sandbox.sandbox import Sandbox

Backend = Literal["docker", "local"]


def make_sandbox(
    backend: Backend, *, image: str | None = None, limits: dict[str, Any] | None = None
) -> Sandbox:
    """A sandbox of the named backend, not started yet.

    ``docker``: a hardened warm container of ``image`` (the project's versioned image, built when
    missing, when ``image`` is None) with :class:`~tools_sandbox.limits.SandboxLimits` from ``limits``.
    ``local``: a plain subprocess (tests only: no isolation).
    """
    if backend == "local":
        from tools_sandbox.testing import LocalProcessSandbox

        return LocalProcessSandbox()
    if backend == "docker":
        from tools_sandbox.docker_sandbox import DockerSandbox
        from tools_sandbox.image import ensure_image
        from tools_sandbox.limits import SandboxLimits

        return DockerSandbox(image=image or ensure_image(), limits=SandboxLimits(**(limits or {})))
    raise ValueError(f"unknown sandbox backend {backend!r}; use 'docker' or 'local'")
