"""Reading records from a CSV file or from (possibly nested) in-memory lists."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


def read_records(source: str | list[Any]) -> list[dict[str, Any]]:
    if isinstance(source, list):
        return flatten(source)
    with Path(source).open(newline="", encoding="utf-8") as handle:
        return [dict(row) for row in csv.DictReader(handle)]


def flatten(items: list[Any]) -> list[dict[str, Any]]:
    """Flatten nested lists of records (recursive)."""
    records: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, list):
            records.extend(flatten(item))
        else:
            records.append(item)
    return records
