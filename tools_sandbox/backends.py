"""Choosing and building a sandbox backend from plain settings."""

from __future__ import annotations

from typing import Literal

from officeray.config import SandboxLimits
from tools_sandbox.sandbox import Sandbox

Backend = Literal["docker", "local"]


def make_sandbox(
    backend: Backend, *, image: str | None = None, limits: SandboxLimits | None = None
) -> Sandbox:
    """A sandbox of the named backend, not started yet.

    ``docker``: a hardened warm container of ``image`` (the project's versioned image, built when
    missing, when ``image`` is None) with ``limits`` (default :class:`~officeray.config.SandboxLimits()`).
    ``local``: a plain subprocess (tests only: no isolation).
    """
    if backend == "local":
        from tools_sandbox.testing import LocalProcessSandbox

        return LocalProcessSandbox()
    if backend == "docker":
        from tools_sandbox.docker_sandbox import DockerSandbox
        from tools_sandbox.image import ensure_image

        return DockerSandbox(image=image or ensure_image(), limits=limits)
    raise ValueError(f"unknown sandbox backend {backend!r}; use 'docker' or 'local'")
