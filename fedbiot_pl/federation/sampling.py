"""Which clients take part in a round: seeded, and a pure function of (seed, round, retry attempt)."""

from __future__ import annotations

import math

import numpy as np

from fedbiot_pl.errors import ConfigError


def clients_per_round(num_clients: int, per_round: int | float | None) -> int:  # noqa: PYI041 - a count or a fraction
    """How many clients a round samples.

    ``None`` = all, an int = that many, a float in (0, 1] = that fraction (rounded up, at least 1).

    Raises:
        ValueError: naming the bad value and the allowed range.
    """
    if per_round is None:
        return num_clients
    if isinstance(per_round, bool):
        raise ConfigError(f"clients_per_round must be null, an int or a fraction, got {per_round!r}.")
    if isinstance(per_round, int):
        if not 1 <= per_round <= num_clients:
            raise ConfigError(f"clients_per_round={per_round} must be between 1 and num_clients={num_clients}.")
        return per_round
    if not 0.0 < per_round <= 1.0:
        raise ConfigError(f"clients_per_round={per_round} as a fraction must be in (0, 1].")
    return max(1, math.ceil(per_round * num_clients))


def sample_clients(
    num_clients: int, per_round: int | float | None, seed: int, round_idx: int, attempt: int = 0,  # noqa: PYI041
) -> list[int]:
    """Sorted ids of the clients of round ``round_idx``.

    The same (seed, round) gives the same set, so a resumed run samples exactly as an uninterrupted one.

    ``attempt`` > 0 draws the set for a retry of the round (see ``FederatedLoop.on_too_few``): a
    different draw, still a pure function of (seed, round, attempt). Attempt 0 is the plain draw.
    """
    count = clients_per_round(num_clients, per_round)
    if count == num_clients:
        return list(range(num_clients))
    rng = np.random.default_rng([seed, round_idx] if attempt == 0 else [seed, round_idx, attempt])
    return sorted(int(i) for i in rng.choice(num_clients, size=count, replace=False))
