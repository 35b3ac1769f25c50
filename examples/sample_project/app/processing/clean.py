"""Cleaning: normalized keys, stripped strings, empty records dropped."""

from __future__ import annotations

from typing import Any


def clean_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [_clean(record) for record in records if record]


def _clean(record: dict[str, Any]) -> dict[str, Any]:
    return {
        key.strip().lower(): value.strip() if isinstance(value, str) else value
        for key, value in record.items()
    }
