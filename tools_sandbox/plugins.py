"""The plugin API: register your own functions as tools. (Being built: see load_plugins.)"""

from __future__ import annotations

import importlib
from collections.abc import Iterable


def load_plugins(modules: Iterable[str]) -> None:
    """Import each module so that its ``@tool`` functions register themselves."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ImportError(f"plugins: cannot import {name!r}: {exc}") from None
