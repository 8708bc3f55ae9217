"""Split a data set's row indices across federated clients: IID, by a meta key, or Dirichlet over a key.

Every function is pure: indices in, one ascending list of indices per client out. Together the
clients always hold every input index exactly once; no key value is ever dropped (the reference
code's ``MetaSplitter`` drops categories when there are fewer clients than categories, bug B9).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedbiot_pl.errors import ConfigError


def iid_partition(num_items: int, num_clients: int, seed: int) -> list[list[int]]:
    """Shuffle ``range(num_items)`` and cut it into ``num_clients`` near-equal IID shards.

    The permutation comes from ``numpy.random.default_rng(seed)``; ``numpy.array_split`` then
    gives the first ``num_items % num_clients`` clients one item more than the others, so shard
    sizes differ by at most one (the reference's ``IIDSplitter``).

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
        raise ConfigError(f"num_clients must be >= 1, got {num_clients}.")
    if num_clients > num_items:
        raise ConfigError(
            f"Cannot give each of num_clients={num_clients} clients at least one item from "
            f"num_items={num_items} items (client {num_items} would get none); use num_clients <= {num_items} "
            "or more data."
        )
    permutation = np.random.default_rng(seed).permutation(num_items)
    shards = np.array_split(permutation, num_clients)
    return [sorted(int(index) for index in shard) for shard in shards]


def group_by_key(keys: Sequence[str]) -> dict[str, list[int]]:
    """Indices of each key value, values in sorted order, indices ascending."""
    groups: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    return {key: groups[key] for key in sorted(groups)}


def bucket_values(sizes: dict[str, int], num_buckets: int) -> list[list[str]]:
    """Merge key values into ``num_buckets`` buckets of near-equal total size.

    Largest value first, each value goes to the bucket with the smallest total so far (ties: the
    lower bucket). Buckets are then ordered by their alphabetically first value, and list their
    values sorted. With as many buckets as values each bucket holds one value, alphabetically.

    Args:
        sizes: Number of rows of each key value.
        num_buckets: How many buckets; at least 1 and at most ``len(sizes)``.

    Returns:
        The values of each bucket.

    Raises:
        ValueError: ``num_buckets`` is below 1 or above the number of values.
    """
    if not 1 <= num_buckets <= len(sizes):
        raise ConfigError(f"num_buckets must be in [1, {len(sizes)}] (the number of values), got {num_buckets}.")
    buckets: list[list[str]] = [[] for _ in range(num_buckets)]
    totals = [0] * num_buckets
    for value in sorted(sizes, key=lambda name: (-sizes[name], name)):
        target = totals.index(min(totals))
        buckets[target].append(value)
        totals[target] += sizes[value]
    return sorted((sorted(bucket) for bucket in buckets), key=lambda bucket: bucket[0])


def meta_partition(keys: Sequence[str], num_clients: int) -> list[list[int]]:
    """Give every client whole key values: one value each, or values merged by :func:`bucket_values`.

    The result depends on the data only (no seed): with as many clients as values, client ``i``
    holds the ``i``-th value in alphabetical order.

    Args:
        keys: The key value of every row.
        num_clients: Number of clients; at least 1 and at most the number of distinct values.

    Returns:
        One ascending list of row indices per client; together they hold every row once.

    Raises:
        ValueError: ``num_clients`` is below 1 or above the number of distinct key values.
    """
    groups = group_by_key(keys)
    if num_clients < 1:
        raise ConfigError(f"num_clients must be >= 1, got {num_clients}.")
    if num_clients > len(groups):
        raise ConfigError(
            f"the partition key has {len(groups)} values ({', '.join(groups)}) but num_clients={num_clients}, so "
            f"client {len(groups)} would get no value; use num_clients <= {len(groups)}, "
            "or partition: dirichlet or iid."
        )
    buckets = bucket_values({value: len(rows) for value, rows in groups.items()}, num_clients)
    return [sorted(index for value in bucket for index in groups[value]) for bucket in buckets]


def dirichlet_partition(
    keys: Sequence[str], num_clients: int, alpha: float, seed: int, min_client_size: int = 1, max_draws: int = 100
) -> list[list[int]]:
    """Split each key value's rows across clients in proportions drawn from Dirichlet(alpha).

    For each value (alphabetical), its rows are shuffled and cut at the cumulative proportions of
    one ``Dirichlet(alpha, ..., alpha)`` draw. Small ``alpha`` gives each client few values (very
    non-IID); large ``alpha`` approaches IID. Whole draws are repeated until every client holds at
    least ``min_client_size`` rows, at most ``max_draws`` times.

    Args:
        keys: The key value of every row.
        num_clients: Number of clients; at least 1.
        alpha: Concentration, > 0.
        seed: Seed of ``numpy.random.default_rng``; the same seed gives the same split.
        min_client_size: Fewest rows any client may hold.
        max_draws: How many draws to try before giving up.

    Returns:
        One ascending list of row indices per client; together they hold every row once.

    Raises:
        ValueError: A bad argument, or no draw met ``min_client_size`` (the message names the
            smallest client of the best draw and suggests a larger alpha or fewer clients).
    """
    if num_clients < 1 or alpha <= 0 or min_client_size < 0 or max_draws < 1:
        raise ConfigError(
            f"need num_clients >= 1, alpha > 0, min_client_size >= 0 and max_draws >= 1; got {num_clients}, "
            f"{alpha}, {min_client_size}, {max_draws}."
        )
    if num_clients * min_client_size > len(keys):
        raise ConfigError(
            f"{len(keys)} rows cannot give num_clients={num_clients} clients min_client_size={min_client_size} "
            f"each; use fewer clients or a smaller min_client_size."
        )
    rng = np.random.default_rng(seed)
    groups = group_by_key(keys)
    best: list[list[int]] = []
    for _ in range(max_draws):
        shards: list[list[int]] = [[] for _ in range(num_clients)]
        for rows in groups.values():
            shuffled = rng.permutation(np.asarray(rows))
            cuts = (np.cumsum(rng.dirichlet([alpha] * num_clients))[:-1] * len(rows)).astype(int)
            for client, part in enumerate(np.split(shuffled, cuts)):
                shards[client].extend(int(index) for index in part)
        if min(map(len, shards)) >= min_client_size:
            return [sorted(shard) for shard in shards]
        if not best or min(map(len, shards)) > min(map(len, best)):
            best = shards
    sizes = [len(shard) for shard in best]
    smallest = sizes.index(min(sizes))
    raise ConfigError(
        f"after {max_draws} Dirichlet(alpha={alpha}) draws, client {smallest} still holds only {sizes[smallest]} "
        f"rows (best draw's sizes: {sizes}) < min_client_size={min_client_size}; use a larger dirichlet_alpha, "
        "fewer clients or a smaller min_client_size."
    )


def train_val_split(
    indices: Sequence[int], val_fraction: float, seed: int, client_id: int
) -> tuple[list[int], list[int]]:
    """Hold out ``floor(len(indices) * val_fraction + 0.5)`` of a client's rows for validation.

    The held-out rows are chosen by a generator seeded with ``(seed, client_id)``, so each client's
    split is reproducible and independent of the other clients'.

    Args:
        indices: The client's rows.
        val_fraction: Fraction in ``[0, 1)`` to hold out.
        seed: Base seed.
        client_id: The client (part of the seed).

    Returns:
        ``(train, val)``, each ascending; ``val`` is empty when ``val_fraction`` is 0.

    Raises:
        ValueError: ``val_fraction`` is outside ``[0, 1)``, or the split would leave no training row.
    """
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    num_val = int(len(indices) * val_fraction + 0.5)
    if num_val >= len(indices):
        raise ConfigError(
            f"client {client_id} has {len(indices)} row(s); val_fraction={val_fraction} would hold out all of "
            "them; lower val_fraction or give the client more data."
        )
    order = np.random.default_rng([seed, client_id]).permutation(len(indices))
    chosen = {int(position) for position in order[:num_val]}
    val = sorted(indices[position] for position in chosen)
    train = sorted(index for position, index in enumerate(indices) if position not in chosen)
    return train, val
