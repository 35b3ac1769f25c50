"""officeray.stats: the one percentile every report uses (linear interpolation, numpy's default)."""

from __future__ import annotations

import math
import random

import pytest

from officeray.stats import percentile, percentiles

CASES = [
    # (values, q, expected): the virtual index is h = (n - 1) * q / 100
    ([7.0], 0, 7.0),
    ([7.0], 50, 7.0),
    ([7.0], 100, 7.0),  # one sample is every percentile of itself
    ([1, 2, 3, 4], 0, 1.0),  # the minimum
    ([1, 2, 3, 4], 100, 4.0),  # the maximum
    ([1, 2, 3, 4], 50, 2.5),  # h = 1.5: halfway between 2 and 3
    ([1, 2, 3, 4, 5], 50, 3.0),  # odd count: the middle value
    ([3, 1, 2], 50, 2.0),  # unsorted input is sorted first
    ([0, 10], 25, 2.5),
    ([10, 20, 30, 40], 95, 38.5),  # h = 2.85: 30 + 0.85 * 10
    ([15, 20, 35, 40, 50], 40, 29.0),  # h = 1.6: 20 + 0.6 * 15
    ([5, 5, 5], 99, 5.0),
    ([100, 200, 300, 400, 500, 600, 700, 800, 900, 1000], 90, 910.0),  # h = 8.1
    (list(range(1, 101)), 95, 95.05),  # h = 94.05
    (list(range(1, 101)), 99, 99.01),  # h = 98.01
]


@pytest.mark.parametrize(("values", "q", "expected"), CASES)
def test_percentile_interpolates_linearly(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == pytest.approx(expected, rel=1e-12)


def test_percentiles_sorts_once_for_several() -> None:
    assert percentiles([40, 10, 30, 20], (0, 50, 95, 100)) == [10.0, 25.0, 38.5, 40.0]
    assert percentiles(iter([2.0, 1.0]), [50]) == [1.5]  # any iterable of values


@pytest.mark.parametrize(
    ("values", "q", "message"),
    [
        ([], 50, "no values"),
        ([1.0], -1, r"\[0, 100\]"),
        ([1.0], 100.5, r"\[0, 100\]"),
        ([1.0], math.nan, r"\[0, 100\]"),
    ],
)
def test_bad_input_is_a_value_error(values: list[float], q: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        percentile(values, q)


def test_agrees_with_numpy_to_the_last_bit() -> None:
    """numpy's default method, and its rounding: report.json once came from ``numpy.percentile``."""
    import numpy as np  # installed with Ray and matplotlib; used here only as the reference

    rng = random.Random(7)
    for _ in range(500):
        values = [rng.expovariate(0.01) for _ in range(rng.randint(1, 40))]
        q = rng.choice([0, 1, 50, 90, 95, 99, 99.9, 100, rng.uniform(0, 100)])
        assert percentile(values, q) == float(np.percentile(values, q)), (values, q)
