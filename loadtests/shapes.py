"""Load shapes: how many users (or arrivals per second) a run has over time, as named stages.

A shape is given on the command line as ``KIND`` or ``KIND:key=value,...`` (``--shape
spike:spike_users=200``) or as a YAML file holding the same keys (``kind: spike``). Every kind
expands to a list of :class:`Stage` (name, duration, users, spawn rate, optional open-loop arrival
rate); the locust :class:`~locust.LoadTestShape` in :mod:`loadtests.shape_locustfile` plays them
back, and the report splits its figures by stage. Values not given come from the run's
``--users``, ``--spawn-rate`` and ``--duration``.

Kinds:

``ramp``
    ``steps`` equal stages climbing to ``users`` over ``duration_s`` (default 5 steps).
``step``
    start at ``step_users``, add ``step_users`` every ``step_duration_s`` until ``users``.
``spike``
    ``base_users`` for ``base_duration_s``, ``spike_users`` for ``spike_duration_s``, then
    ``base_users`` again for ``after_duration_s`` (a recovery stage).
``soak``
    ramp to ``users`` over ``ramp_s``, then hold for the rest of ``duration_s``.
``stages``
    an explicit list (YAML only): ``stages: [{name, duration_s, users, spawn_rate, arrival_rate}]``.

Limits: a run lasts at most :data:`MAX_RUN_S`, has at most :data:`MAX_STAGES` stages and
:data:`MAX_USERS` users, so every shape stops by itself.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from officeray.config import read_yaml_file

MAX_RUN_S = 6 * 3600.0
"""Longest run a shape may describe (a soak test of six hours)."""

MAX_STAGES = 500
MAX_USERS = 100_000
MAX_ARRIVAL_RATE = 10_000.0
"""Most open-loop task arrivals per second."""

KINDS = ("ramp", "step", "spike", "soak", "stages")


class ShapeError(ValueError):
    """A shape that cannot be read or makes no sense; the message says which value and why."""


class Stage(BaseModel):
    """One stage of a run: ``users`` for ``duration_s`` seconds (reached at ``spawn_rate`` users/s)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    duration_s: float = Field(gt=0, le=MAX_RUN_S)
    users: int = Field(ge=0, le=MAX_USERS)
    spawn_rate: float = Field(gt=0, le=MAX_USERS)
    arrival_rate: float | None = Field(default=None, ge=0, le=MAX_ARRIVAL_RATE)
    """Open-loop task arrivals per second in this stage (None: the run's ``--arrival-rate``)."""


class _Defaults(BaseModel):
    users: int
    spawn_rate: float
    duration_s: float


class _Ramp(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["ramp"]
    users: int | None = Field(default=None, ge=1, le=MAX_USERS)
    duration_s: float | None = Field(default=None, gt=0, le=MAX_RUN_S)
    spawn_rate: float | None = Field(default=None, gt=0)
    steps: int = Field(default=5, ge=1, le=MAX_STAGES)


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["step"]
    users: int | None = Field(default=None, ge=1, le=MAX_USERS)
    step_users: int = Field(default=10, ge=1, le=MAX_USERS)
    step_duration_s: float = Field(default=10.0, gt=0, le=MAX_RUN_S)
    spawn_rate: float | None = Field(default=None, gt=0)


class _Spike(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["spike"]
    base_users: int = Field(default=10, ge=0, le=MAX_USERS)
    spike_users: int | None = Field(default=None, ge=1, le=MAX_USERS)
    base_duration_s: float = Field(default=10.0, gt=0, le=MAX_RUN_S)
    spike_duration_s: float = Field(default=10.0, gt=0, le=MAX_RUN_S)
    after_duration_s: float = Field(default=10.0, gt=0, le=MAX_RUN_S)
    spawn_rate: float | None = Field(default=None, gt=0)


class _Soak(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["soak"]
    users: int | None = Field(default=None, ge=1, le=MAX_USERS)
    duration_s: float | None = Field(default=None, gt=0, le=MAX_RUN_S)
    ramp_s: float = Field(default=10.0, gt=0, le=MAX_RUN_S)
    spawn_rate: float | None = Field(default=None, gt=0)


class _Explicit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["stages"]
    stages: list[Stage] = Field(min_length=1, max_length=MAX_STAGES)


_SPECS: dict[str, type[BaseModel]] = {
    "ramp": _Ramp,
    "step": _Step,
    "spike": _Spike,
    "soak": _Soak,
    "stages": _Explicit,
}


def _ramp(spec: _Ramp, d: _Defaults) -> list[Stage]:
    users = spec.users or d.users
    duration = spec.duration_s or d.duration_s
    rate = spec.spawn_rate or d.spawn_rate
    steps = min(spec.steps, users)
    return [
        Stage(
            name=f"ramp-{i}",
            duration_s=duration / steps,
            users=math.ceil(users * i / steps),
            spawn_rate=rate,
        )
        for i in range(1, steps + 1)
    ]


def _step(spec: _Step, d: _Defaults) -> list[Stage]:
    users = spec.users or d.users
    rate = spec.spawn_rate or d.spawn_rate
    levels = list(range(spec.step_users, users, spec.step_users)) + [users]
    if len(levels) > MAX_STAGES:
        raise ShapeError(f"step shape: {len(levels)} stages; at most {MAX_STAGES} (raise step_users)")
    return [
        Stage(name=f"step-{n}", duration_s=spec.step_duration_s, users=n, spawn_rate=rate) for n in levels
    ]


def _spike(spec: _Spike, d: _Defaults) -> list[Stage]:
    rate = spec.spawn_rate or d.spawn_rate
    peak = spec.spike_users or d.users
    return [
        Stage(name="base", duration_s=spec.base_duration_s, users=spec.base_users, spawn_rate=rate),
        Stage(name="spike", duration_s=spec.spike_duration_s, users=peak, spawn_rate=max(rate, peak)),
        Stage(name="recovery", duration_s=spec.after_duration_s, users=spec.base_users, spawn_rate=rate),
    ]


def _soak(spec: _Soak, d: _Defaults) -> list[Stage]:
    users = spec.users or d.users
    duration = spec.duration_s or d.duration_s
    rate = spec.spawn_rate or d.spawn_rate
    if spec.ramp_s >= duration:
        raise ShapeError(
            f"soak shape: ramp_s ({spec.ramp_s:g}) must be shorter than duration_s ({duration:g})"
        )
    return [
        Stage(name="ramp", duration_s=spec.ramp_s, users=users, spawn_rate=max(rate, users / spec.ramp_s)),
        Stage(name="soak", duration_s=duration - spec.ramp_s, users=users, spawn_rate=rate),
    ]


def expand(raw: dict[str, Any], *, users: int, spawn_rate: float, duration_s: float) -> list[Stage]:
    """The stages of the shape ``raw`` (a ``kind`` plus its keys), filled from the run's defaults."""
    kind = raw.get("kind")
    if kind not in _SPECS:
        raise ShapeError(f"shape kind {kind!r} is not one of: {', '.join(KINDS)}")
    try:
        spec = _SPECS[kind].model_validate(raw)
    except ValidationError as exc:
        raise ShapeError(f"{kind} shape: {_describe(exc)}") from None
    defaults = _Defaults(users=users, spawn_rate=spawn_rate, duration_s=duration_s)
    try:
        stages = _expand_spec(spec, defaults)
    except ValidationError as exc:
        raise ShapeError(f"{kind} shape: {_describe(exc)}") from None
    total = sum(s.duration_s for s in stages)
    if total > MAX_RUN_S:
        raise ShapeError(f"{kind} shape lasts {total:g} s; at most {MAX_RUN_S:g} s")
    return stages


def _expand_spec(spec: BaseModel, defaults: _Defaults) -> list[Stage]:
    if isinstance(spec, _Ramp):
        return _ramp(spec, defaults)
    if isinstance(spec, _Step):
        return _step(spec, defaults)
    if isinstance(spec, _Spike):
        return _spike(spec, defaults)
    if isinstance(spec, _Soak):
        return _soak(spec, defaults)
    assert isinstance(spec, _Explicit)
    return list(spec.stages)


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "(shape)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def parse_cli_shape(text: str) -> dict[str, Any]:
    """``KIND`` or ``KIND:key=value,...`` as a shape mapping (numbers parsed)."""
    kind, _, rest = text.partition(":")
    raw: dict[str, Any] = {"kind": kind.strip()}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ShapeError(f"shape {text!r}: {item!r} is not key=value")
        raw[key.strip()] = _number(value.strip())
    return raw


def _number(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            continue
    return value


def load_shape(source: str, *, users: int, spawn_rate: float, duration_s: float) -> list[Stage]:
    """The stages of ``source``: a YAML file (``.yaml``/``.yml``/``.json``) or the CLI form."""
    path = Path(source)
    if path.suffix in (".yaml", ".yml", ".json"):
        raw = read_yaml_file(path, f"shape file {source}", ShapeError)
        if not isinstance(raw, dict):
            raise ShapeError(f"shape file {source} must hold a mapping with a 'kind' key")
    else:
        raw = parse_cli_shape(source)
    return expand(raw, users=users, spawn_rate=spawn_rate, duration_s=duration_s)


def steady(users: int, spawn_rate: float, duration_s: float, name: str = "steady") -> list[Stage]:
    """The one stage of a run without a shape."""
    return [Stage(name=name, duration_s=duration_s, users=users, spawn_rate=spawn_rate)]


def stage_at(stages: list[Stage], elapsed_s: float) -> Stage | None:
    """The stage running ``elapsed_s`` seconds into the run; None once the last one is over."""
    end = 0.0
    for stage in stages:
        end += stage.duration_s
        if elapsed_s < end:
            return stage
    return None


def read_stages(path: str) -> list[Stage]:
    """The stages of a shape file as ``officeray loadtest`` writes it (a JSON list of stages)."""
    return [Stage.model_validate(item) for item in json.loads(Path(path).read_text(encoding="utf-8"))]
