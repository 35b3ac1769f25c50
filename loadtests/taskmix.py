"""The weighted task mix a load test's task users draw from: a JSONL file, one task kind per line.

Each line is ``{"kind": str, "description": str, "weight": number > 0 (default 1), "tenant": str
(optional)}``: ``kind`` names the locust request type's name of the task's completion (the report
gives each kind its own latency figures), ``description`` is the task as a user would send it. The
shipped mix is :data:`DEFAULT_TASK_MIX` (``loadtests/tasks.jsonl``). A bad file fails before any
load starts, with the file, the line and what is wrong.
"""

from __future__ import annotations

import json
import random
from bisect import bisect_right
from itertools import accumulate
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEFAULT_TASK_MIX = Path(__file__).resolve().parent / "tasks.jsonl"
MAX_MIX_LINES = 10_000
MAX_DESCRIPTION_CHARS = 20_000


class TaskMixError(ValueError):
    """A task-mix file that cannot be used; the message names the file and the line."""


class TaskKind(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    description: str = Field(min_length=1, max_length=MAX_DESCRIPTION_CHARS)
    weight: float = Field(default=1.0, gt=0)
    tenant: str | None = Field(default=None, min_length=1, max_length=200)


def load_task_mix(path: Path | str) -> list[TaskKind]:
    """The task kinds of the JSONL file ``path`` (blank lines and ``#`` comments skipped)."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise TaskMixError(f"cannot read task mix {source}: {exc.strerror or exc}") from None
    kinds: list[TaskKind] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if len(kinds) >= MAX_MIX_LINES:
            raise TaskMixError(f"task mix {source}: more than {MAX_MIX_LINES} lines")
        try:
            kinds.append(TaskKind.model_validate(json.loads(line)))
        except json.JSONDecodeError as exc:
            raise TaskMixError(f"task mix {source} line {number}: not JSON ({exc.msg})") from None
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "(line)"
            raise TaskMixError(f"task mix {source} line {number}: {where}: {err['msg']}") from None
    if not kinds:
        raise TaskMixError(f"task mix {source} has no tasks")
    return kinds


class TaskPicker:
    """Draws task kinds with probability proportional to their weights."""

    def __init__(self, kinds: list[TaskKind], rng: random.Random | None = None) -> None:
        self.kinds = kinds
        self._cumulative = list(accumulate(k.weight for k in kinds))
        self._rng = rng or random.Random()

    def pick(self) -> TaskKind:
        point = self._rng.random() * self._cumulative[-1]
        return self.kinds[min(bisect_right(self._cumulative, point), len(self.kinds) - 1)]
