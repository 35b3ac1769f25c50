"""One result format for the benchmarks (``bench sandbox``, ``bench overhead``).

A :class:`BenchResult` holds what a benchmark measured as tables of named figures, free-text notes
and *targets*: a figure compared with a limit, printed as one line each::

    target (a) median latency / ideal at 100 concurrent <= 1.1: met (1.04)

Printed as plain aligned text (:meth:`BenchResult.format_text`), or as one JSON object
(:meth:`BenchResult.to_dict`, read back with :meth:`BenchResult.from_dict`). A benchmark may put its
raw measurements next to the shared keys (``extra``); they are kept as they are in the JSON.

Both benchmark commands take ``--json [FILE]`` (:func:`add_json_argument`, :func:`emit`): without a
file the JSON object is printed instead of the text; with one, the text is printed and the JSON is
written to the file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

JSON_TO_STDOUT = "-"
"""The ``--json`` value meaning: print the JSON object on stdout instead of the text."""

MISSING = "-"
"""How a figure that was not measured (``None``) is printed."""

Comparison = Literal["<=", ">="]


def machine() -> dict[str, Any]:
    """Where the benchmark ran: CPU count and platform."""
    return {"cpus": os.cpu_count(), "platform": platform.platform()}


@dataclass(frozen=True)
class Column:
    """One column of a :class:`Table`: the row key it shows, its header, a format spec for numbers."""

    key: str
    header: str
    fmt: str = ""
    """``format()`` spec applied to numbers (``".2f"``); strings are shown as they are."""


@dataclass
class Table:
    """Rows of named figures (``{column key: value}``), printed with aligned columns."""

    title: str
    columns: list[Column]
    rows: list[dict[str, Any]] = field(default_factory=list)

    def cell(self, column: Column, row: dict[str, Any]) -> str:
        value = row.get(column.key)
        if value is None:
            return MISSING
        if isinstance(value, bool) or not isinstance(value, int | float):
            return str(value)
        return format(value, column.fmt)

    def format_text(self) -> str:
        cells = [[self.cell(c, row) for c in self.columns] for row in self.rows]
        widths = [max([len(c.header), *(len(r[i]) for r in cells)]) for i, c in enumerate(self.columns)]
        numeric = [
            all(isinstance(row.get(c.key), int | float | None) for row in self.rows) for c in self.columns
        ]

        def line(values: Sequence[str]) -> str:
            parts = [
                v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)
            ]
            return "  ".join(parts).rstrip()

        out = [f"== {self.title} ==", line([c.header for c in self.columns])]
        out.extend(line(r) for r in cells)
        return "\n".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "columns": [{"key": c.key, "header": c.header, "fmt": c.fmt} for c in self.columns],
            "rows": self.rows,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Table:
        return cls(data["title"], [Column(**c) for c in data["columns"]], list(data["rows"]))


@dataclass(frozen=True)
class Target:
    """A figure compared with a limit; ``value=None`` means it was not measured in this run."""

    name: str
    """Short label, e.g. ``(a)``."""
    description: str
    value: float | None
    limit: float
    comparison: Comparison
    unit: str = ""
    fmt: str = ".2f"

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value <= self.limit if self.comparison == "<=" else self.value >= self.limit

    def line(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        limit = format(self.limit, "g")
        verdict = {True: "met", False: "missed", None: "not measured"}[self.met]
        value = "" if self.value is None else f" ({format(self.value, self.fmt)}{unit})"
        return f"target {self.name} {self.description} {self.comparison} {limit}{unit}: {verdict}{value}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "value": self.value,
            "limit": self.limit,
            "comparison": self.comparison,
            "unit": self.unit,
            "fmt": self.fmt,
            "met": self.met,
            "line": self.line(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Target:
        keys = ("name", "description", "value", "limit", "comparison", "unit", "fmt")
        return cls(**{k: data[k] for k in keys if k in data})


def all_met(targets: Sequence[Target]) -> bool | None:
    """True when every measured target is met, False when one is missed, None when none was measured."""
    verdicts = [t.met for t in targets if t.met is not None]
    return all(verdicts) if verdicts else None


@dataclass
class BenchResult:
    """What one benchmark run measured, in the shared format (see the module docstring)."""

    benchmark: str
    title: str
    tables: list[Table] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=machine)
    extra: dict[str, Any] = field(default_factory=dict)
    """Benchmark-specific raw data, kept at the top level of the JSON object."""

    def format_text(self) -> str:
        cpus = self.machine.get("cpus")
        blocks = [f"{self.title} ({cpus} CPUs, {self.machine.get('platform', '?')})"]
        blocks.extend(f"note: {n}" for n in self.notes)
        text = "\n".join(blocks)
        for table in self.tables:
            text += "\n\n" + table.format_text()
        if self.targets:
            text += "\n\n" + "\n".join(t.line() for t in self.targets)
        return text

    def to_dict(self) -> dict[str, Any]:
        shared = {
            "benchmark": self.benchmark,
            "title": self.title,
            "notes": self.notes,
            "tables": [t.to_dict() for t in self.tables],
            "targets": {"met": all_met(self.targets), "items": [t.to_dict() for t in self.targets]},
            "machine": self.machine,
        }
        return {**self.extra, **shared}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchResult:
        shared = {"benchmark", "title", "notes", "tables", "targets", "machine"}
        return cls(
            benchmark=data["benchmark"],
            title=data.get("title", data["benchmark"]),
            tables=[Table.from_dict(t) for t in data.get("tables", [])],
            targets=[Target.from_dict(t) for t in data.get("targets", {}).get("items", [])],
            notes=list(data.get("notes", [])),
            machine=dict(data.get("machine", {})),
            extra={k: v for k, v in data.items() if k not in shared},
        )


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    """``--json [FILE]``: alone, print the JSON object instead of the text; with FILE, write it there."""
    parser.add_argument(
        "--json",
        nargs="?",
        const=JSON_TO_STDOUT,
        default=None,
        metavar="FILE",
        help="write the result as one JSON object to FILE (without FILE: print it instead of the table)",
    )


def emit(result: BenchResult, json_target: str | None) -> None:
    """Print ``result`` as text, or as JSON (``json_target == "-"``), and write the JSON to a file."""
    if json_target == JSON_TO_STDOUT:
        print(json.dumps(result.to_dict()))
        return
    print(result.format_text(), flush=True)
    if json_target:
        Path(json_target).write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
