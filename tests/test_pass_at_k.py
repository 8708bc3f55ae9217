"""The unbiased pass@k estimator against its closed form."""

from __future__ import annotations

from fractions import Fraction
from math import comb

import pytest

from fedbiot_pl.evaluation.pass_at_k import mean_pass_at_k, pass_at_k


def closed_form(n: int, c: int, k: int) -> Fraction:
    """1 - C(n - c, k) / C(n, k) in exact arithmetic (math.comb is 0 when k > n - c)."""
    return 1 - Fraction(comb(n - c, k), comb(n, k))


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (1, 0, 1, 0.0),
        (1, 1, 1, 1.0),
        (2, 1, 1, 0.5),
        (10, 1, 1, 0.1),
        (10, 3, 2, 24 / 45),  # 1 - C(7,2)/C(10,2) = 1 - 21/45
        (5, 4, 2, 1.0),  # n - c < k: every pair holds a pass
        (20, 0, 10, 0.0),
    ],
)
def test_hand_computed_values(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_matches_the_closed_form_on_a_grid() -> None:
    for n in range(1, 16):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(float(closed_form(n, c, k)), abs=1e-12), (n, c, k)


@pytest.mark.parametrize(("n", "c", "k"), [(200, 10, 100), (1000, 3, 10), (1000, 999, 1), (500, 1, 250)])
def test_large_n_stays_accurate(n: int, c: int, k: int) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(float(closed_form(n, c, k)), rel=1e-12)


def test_pass_at_1_is_the_pass_rate() -> None:
    assert pass_at_k(20, 7, 1) == pytest.approx(7 / 20, abs=1e-15)


def test_mean_over_problems() -> None:
    assert mean_pass_at_k([2, 4], [1, 4], k=1) == pytest.approx(0.75)
    assert mean_pass_at_k([3], [0], k=3) == 0.0


@pytest.mark.parametrize(
    ("n", "c", "k", "message"),
    [
        (2, 1, 3, "k=3 > n=2"),
        (0, 0, 1, "n=0"),
        (5, 6, 1, "c=6"),
        (5, -1, 1, "c=-1"),
        (5, 1, 0, "k=0"),
    ],
)
def test_invalid_arguments_are_named(n: int, c: int, k: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pass_at_k(n, c, k)


def test_mean_names_the_bad_problem() -> None:
    with pytest.raises(ValueError, match=r"Problem 1: .*k=5 > n=3"):
        mean_pass_at_k([10, 3], [1, 1], k=5)
    with pytest.raises(ValueError, match="2 entries but num_correct has 1"):
        mean_pass_at_k([1, 2], [1], k=1)
    with pytest.raises(ValueError, match="empty"):
        mean_pass_at_k([], [], k=1)
