"""Fixtures of the CLI tests that talk to :class:`serving.testing.FakeTaskApi` over loopback HTTP.

``start`` serves a fake API; a module whose tests name their own key marks them
``pytest.mark.usefixtures("no_ambient_key")``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from serving.testing import FakeTaskApi, serve_in_thread

Server = tuple[FakeTaskApi, str]


@pytest.fixture
def start() -> Iterator[Callable[..., Server]]:
    """Start a fake API (``FakeTaskApi(**kwargs)``) on a free loopback port: ``(api, url)``."""
    blocks: list[Any] = []

    def _start(**kwargs: Any) -> Server:
        api = FakeTaskApi(**kwargs)
        block = serve_in_thread(api.app)
        blocks.append(block)
        return api, block.__enter__()

    yield _start
    for block in reversed(blocks):
        block.__exit__(None, None, None)


@pytest.fixture
def no_ambient_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No key or address from the environment, and no admin key file: the test names its own."""
    monkeypatch.delenv("OFFICERAY_API_KEY", raising=False)
    monkeypatch.delenv("OFFICERAY_ADDRESS", raising=False)
    monkeypatch.setenv("OFFICERAY_AUTH__ADMIN_KEY_FILE", str(tmp_path / "absent" / "admin.key"))
