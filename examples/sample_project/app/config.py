"""Configuration: built-in defaults merged with ``key=value`` command-line overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEFAULTS: dict[str, Any] = {
    "source": str(Path(__file__).resolve().parent.parent / "data" / "records.csv"),
    "stages": ["full"],
    "options": {"batch_size": 2, "weight": 1.5},
}


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base`` (recursive for nested sections)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_args(argv: list[str]) -> dict[str, Any]:
    """``options.batch_size=10 stages=clean,process`` -> nested overrides."""
    overrides: dict[str, Any] = {}
    for arg in argv:
        key, sep, raw = arg.partition("=")
        if not sep:
            raise SystemExit(f"expected key=value, got {arg!r}")
        value: Any = raw.split(",") if key == "stages" else _coerce(raw)
        section = overrides
        *parents, leaf = key.split(".")
        for parent in parents:
            section = section.setdefault(parent, {})
        section[leaf] = value
    return overrides


def _coerce(raw: str) -> Any:
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def load_config(argv: list[str]) -> dict[str, Any]:
    return merge(DEFAULTS, parse_args(argv))
