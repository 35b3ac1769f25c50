"""A one-line summary of the scored records."""

from __future__ import annotations

from typing import Any


def summarize(results: list[dict[str, Any]]) -> str:
    if not results:
        return "no records"
    total = sum(float(result.get("score", 0)) for result in results)
    best = max(results, key=lambda result: float(result.get("score", 0)))
    return f"{len(results)} records, total score {total:.2f}, best: {best.get('name', '?')}"
