"""The unbiased pass@k estimator of Chen et al. (2021), "Evaluating Large Language Models Trained on Code".

With ``n`` samples for a problem of which ``c`` pass, the probability that at least one of ``k``
samples drawn without replacement passes is

    pass@k = 1 - C(n - c, k) / C(n, k).

The binomial coefficients overflow floats for large ``n``; the ratio is computed as the product

    C(n - c, k) / C(n, k) = prod_{i = n - c + 1}^{n} (1 - k / i),

which only multiplies numbers in ``[0, 1]``. When ``n - c < k`` every draw of ``k`` contains a
passing sample and pass@k is exactly 1.
"""

from __future__ import annotations

from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k for one problem.

    Args:
        n: Number of samples generated for the problem (``n >= 1``).
        c: Number of those samples that pass (``0 <= c <= n``).
        k: Samples the user is allowed (``1 <= k <= n``).

    Returns:
        ``1 - C(n - c, k) / C(n, k)``, a float in ``[0, 1]``.

    Raises:
        ValueError: ``n < 1``, ``c`` outside ``[0, n]``, or ``k`` outside ``[1, n]``; the message
            names the values.

    Examples:
        >>> pass_at_k(n=2, c=1, k=1)
        0.5
        >>> pass_at_k(n=5, c=4, k=2)
        1.0
    """
    _check(n, c, k)
    if n - c < k:
        return 1.0
    survive = 1.0  # probability that k draws all fail
    for i in range(n - c + 1, n + 1):
        survive *= 1.0 - k / i
    return 1.0 - survive


def mean_pass_at_k(num_samples: Sequence[int], num_correct: Sequence[int], k: int) -> float:
    """Mean of :func:`pass_at_k` over problems, as reported for a benchmark.

    Args:
        num_samples: ``n`` of each problem.
        num_correct: ``c`` of each problem, aligned with ``num_samples``.
        k: The same ``k`` for all problems; must not exceed any problem's ``n``.

    Returns:
        The average pass@k over the problems.

    Raises:
        ValueError: The sequences are empty or of different lengths, or a problem's values are
            invalid for :func:`pass_at_k` (the message names the problem's position).
    """
    if len(num_samples) != len(num_correct):
        raise ValueError(
            f"num_samples has {len(num_samples)} entries but num_correct has {len(num_correct)}; "
            "give one n and one c per problem."
        )
    if not num_samples:
        raise ValueError("No problems given: num_samples and num_correct are empty.")
    total = 0.0
    for index, (n, c) in enumerate(zip(num_samples, num_correct, strict=True)):
        try:
            total += pass_at_k(n, c, k)
        except ValueError as error:
            raise ValueError(f"Problem {index}: {error}") from error
    return total / len(num_samples)


def _check(n: int, c: int, k: int) -> None:
    if n < 1:
        raise ValueError(f"n (samples per problem) must be >= 1, got n={n}.")
    if not 0 <= c <= n:
        raise ValueError(f"c (passing samples) must be in [0, n={n}], got c={c}.")
    if k < 1:
        raise ValueError(f"k must be >= 1, got k={k}.")
    if k > n:
        raise ValueError(f"pass@k needs k <= n, got k={k} > n={n}; generate at least {k} samples per problem.")
