"""The store from the integration tests, which are not async: each use runs in an event loop of its
own, on a SqlStore of its own (the store's API is async only)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from officeray.store import SqlStore

T = TypeVar("T")


def with_store(url: str, use: Callable[[SqlStore], Awaitable[T]]) -> T:
    """``await use(store)`` on a store opened on ``url`` for it, and closed after."""

    async def run() -> T:
        store = SqlStore(url)
        try:
            return await use(store)
        finally:
            store.close()

    return asyncio.run(run())
