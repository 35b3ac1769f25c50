"""Percentiles: one definition for every figure officeray reports.

Live load-test progress, ``report.json``, the benchmarks and the batch job's summary all call
:func:`percentile` (or :func:`percentiles` for several at once), so the same samples give the same
p50/p95 wherever they are shown.

The method is linear interpolation between the closest ranks, numpy's default (``method="linear"``,
Hyndman and Fan's definition 7, also Excel's ``PERCENTILE.INC``): for ``n`` ascending values
``x[0] ... x[n-1]`` the ``q``-th percentile (``0 <= q <= 100``) sits at the virtual index
``h = (n - 1) * q / 100``, and is ``x[floor(h)] + (h - floor(h)) * (x[floor(h) + 1] - x[floor(h)])``.
So ``q=0`` is the minimum, ``q=100`` the maximum, ``q=50`` the usual median, and one sample is every
percentile of itself. The interpolation is computed as numpy computes it, so results agree with
``numpy.percentile`` to the last bit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

__all__ = ["percentile", "percentiles"]


def _lerp(low: float, high: float, t: float) -> float:
    """``low + t * (high - low)``, rounded as numpy's ``_lerp`` (from the nearer end)."""
    diff = high - low
    return high - diff * (1 - t) if t >= 0.5 else low + diff * t


def percentiles(values: Iterable[float], qs: Sequence[float]) -> list[float]:
    """The ``q``-th percentile of ``values`` for each ``q`` of ``qs`` (0..100), linear interpolation.

    Raises :class:`ValueError` when ``values`` is empty or a ``q`` is outside ``[0, 100]``.
    """
    ordered = sorted(float(v) for v in values)
    if not ordered:
        raise ValueError("percentile of no values")
    last = len(ordered) - 1
    out: list[float] = []
    for q in qs:
        if not 0 <= q <= 100:  # also refuses NaN
            raise ValueError(f"percentile must be in [0, 100], got {q!r}")
        h = last * (q / 100)
        below = math.floor(h)
        above = min(below + 1, last)
        out.append(_lerp(ordered[below], ordered[above], h - below))
    return out


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, by linear interpolation (see the module).

    Raises :class:`ValueError` when ``values`` is empty or ``q`` is outside ``[0, 100]``.
    """
    return percentiles(values, (q,))[0]
