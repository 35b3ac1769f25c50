"""Core processing: scores every record."""

from __future__ import annotations

from typing import Any


def process_data(records: list[dict[str, Any]], weight: float = 1.0) -> list[dict[str, Any]]:
    """Return copies of ``records`` with a ``score`` (the record's value times ``weight``)."""
    return [dict(record, score=round(_value(record) * weight, 3)) for record in records]


def _value(record: dict[str, Any]) -> float:
    try:
        return float(record.get("value", 0))
    except (TypeError, ValueError):
        return 0.0
