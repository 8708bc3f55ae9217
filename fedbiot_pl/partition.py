"""Split a data set's indices across federated clients."""

from __future__ import annotations

import numpy as np


def iid_partition(num_items: int, num_clients: int, seed: int) -> list[list[int]]:
    """Shuffle ``range(num_items)`` and cut it into ``num_clients`` near-equal IID shards.

    The permutation comes from ``numpy.random.default_rng(seed)``; ``numpy.array_split`` then
    gives the first ``num_items % num_clients`` clients one item more than the others, so shard
    sizes differ by at most one. The shards are disjoint and together cover every index.

    Args:
        num_items: Size of the data set to split.
        num_clients: Number of shards to produce.
        seed: Seed of the permutation; the same seed always yields the same shards.

    Returns:
        One ascending list of python ``int`` indices per client, client 0 first.

    Raises:
        ValueError: ``num_clients`` is below 1, or larger than ``num_items`` (some client
            would receive nothing).
    """
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}.")
    if num_clients > num_items:
        raise ValueError(
            f"Cannot give each of num_clients={num_clients} clients at least one item from "
            f"num_items={num_items} items; use num_clients <= {num_items} or more data."
        )
    permutation = np.random.default_rng(seed).permutation(num_items)
    shards = np.array_split(permutation, num_clients)
    return [sorted(int(index) for index in shard) for shard in shards]
