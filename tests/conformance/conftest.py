"""Shared fixtures of the sandbox conformance suite.

``sandbox_image`` ensures the Docker sandbox image once per session. When the Docker engine is not
reachable the Docker cases FAIL with a clear message, unless ``OFFICERAY_SKIP_DOCKER=1`` is set,
in which case they are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from tools_sandbox._channel import AgentSandbox

SKIP_DOCKER_ENV = "OFFICERAY_SKIP_DOCKER"

BACKENDS = ["local", pytest.param("docker", marks=pytest.mark.integration)]


@pytest.fixture(scope="session")
def sandbox_image() -> str:
    """The sandbox image tag (built on first use; reused afterwards)."""
    from tools_sandbox.image import DockerUnavailable, ImageBuildError, docker_client, ensure_image

    problem = None
    try:
        client = docker_client()
    except DockerUnavailable as exc:
        problem = str(exc)
    if problem is not None:
        if os.environ.get(SKIP_DOCKER_ENV) == "1":
            pytest.skip(f"{SKIP_DOCKER_ENV}=1 and {problem}")
        pytest.fail(
            f"{problem}. The Docker sandbox tests need Docker; set {SKIP_DOCKER_ENV}=1 to skip them.",
            pytrace=False,
        )
    try:
        return ensure_image(client)
    except ImageBuildError as exc:
        problem = f"cannot build the sandbox image: {exc}"
    pytest.fail(problem, pytrace=False)


def make_sandbox(kind: str, request: pytest.FixtureRequest, **kwargs: object) -> AgentSandbox:
    """A started sandbox of the given backend (``local`` or ``docker``); the caller stops it."""
    if kind == "docker":
        from tools_sandbox.docker_sandbox import DockerSandbox

        image = request.getfixturevalue("sandbox_image")
        sandbox: AgentSandbox = DockerSandbox(image, **kwargs)  # type: ignore[arg-type]
    else:
        from tools_sandbox.testing import LocalProcessSandbox

        sandbox = LocalProcessSandbox(**kwargs)  # type: ignore[arg-type]
    sandbox.start()
    return sandbox


@pytest.fixture(scope="module", params=BACKENDS)
def sandbox(request: pytest.FixtureRequest) -> Iterator[AgentSandbox]:
    """One warm sandbox per backend, shared by a test module."""
    box = make_sandbox(request.param, request)
    yield box
    box.stop()


@pytest.fixture(scope="module")
def docker_sandbox(request: pytest.FixtureRequest) -> Iterator[AgentSandbox]:
    """A warm Docker sandbox with the default limits (for the Docker-only cases)."""
    box = make_sandbox("docker", request)
    yield box
    box.stop()


@pytest.fixture
def new_sandbox(request: pytest.FixtureRequest) -> Iterator[Callable[..., AgentSandbox]]:
    """A factory of extra started sandboxes (``new_sandbox("docker", limits=...)``), stopped afterwards."""
    boxes: list[AgentSandbox] = []

    def factory(kind: str, **kwargs: object) -> AgentSandbox:
        box = make_sandbox(kind, request, **kwargs)
        boxes.append(box)
        return box

    yield factory
    for box in boxes:
        box.stop()
