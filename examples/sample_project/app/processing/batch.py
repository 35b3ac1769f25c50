"""Batch mode: score a whole file in one go, without the configurable pipeline.

Used by maintenance scripts, e.g. ``from app.processing.batch import run; run("data/records.csv")``;
the command-line app (``app.main``) does not go through here.
"""

from __future__ import annotations

from typing import Any

from app.io.loader import read_records
from app.processing.core import process_data


def run(path: str) -> list[dict[str, Any]]:
    return process_data(read_records(path))
