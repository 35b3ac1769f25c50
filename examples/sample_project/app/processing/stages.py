"""The stage registry: applies named stages, or composites of stages, to a batch of records."""

from __future__ import annotations

from typing import Any

from .clean import clean_records

Records = list[dict[str, Any]]

COMPOSITES: dict[str, list[str]] = {"full": ["clean", "process"]}


def apply_all(names: list[str], records: Records, options: dict[str, Any]) -> Records:
    for name in names:
        records = apply(name, records, options)
    return records


def apply(name: str, records: Records, options: dict[str, Any]) -> Records:
    if name in COMPOSITES:
        return apply_all(COMPOSITES[name], records, options)
    if name == "clean":
        return clean_records(records)
    if name == "process":
        # Imported lazily: the core is only needed by runs that reach the "process" stage.
        import app.processing.core

        return app.processing.core.process_data(records, weight=float(options.get("weight", 1.0)))
    raise ValueError(f"unknown stage {name!r}; known: clean, process, {', '.join(COMPOSITES)}")
