"""The datamodule's argument checks and client partitioning, each error naming the source and the fix."""

from __future__ import annotations

import logging
from typing import Any

import datasets
import numpy as np

from fedbiot_pl.data.partition import dirichlet_partition, iid_partition, meta_partition, train_val_split
from fedbiot_pl.data.sources import PRESET_CLIENT_KEY, DataSource, RecordSpec, source_client_keys
from fedbiot_pl.errors import ConfigError

log = logging.getLogger(__name__)
PARTITIONS = ("iid", "meta", "dirichlet")
"""The partition schemes."""


def keys_for_partition(
    source: DataSource, rows: datasets.Dataset, spec: RecordSpec, partition: str, partition_key: str | None
) -> tuple[str | None, list[str] | None]:
    """The partition key's name and its value for every row; ``(None, None)`` when no key is used.

    The key is ``partition_key``, else (for ``meta``/``dirichlet``) the format's own key.

    Raises:
        ValueError: ``meta``/``dirichlet`` without any key, or a key that is not a column (nor a
            derived key), or a row without a usable key value.
    """
    key = partition_key
    if key is None and partition != "iid":
        key = PRESET_CLIENT_KEY[spec.format]
        if key is None:
            raise ConfigError(
                f"{source.describe()}: partition={partition!r} needs a key, and format {spec.format!r} has none; set "
                f"partition_key to one of its columns {sorted(rows.column_names)} (or instruction_language), or use "
                "partition: iid."
            )
    if key is None:
        return None, None
    return key, source_client_keys(source, rows, spec, key)


def exclude_rows(
    rows: datasets.Dataset, key: str | None, keys: list[str] | None, exclude_keys: list[str], where: str,
    truncated: bool = False,
) -> tuple[datasets.Dataset, list[str] | None]:
    """Drop the rows whose key value is in ``exclude_keys`` (the reference drops Rosetta's X86-64 Assembly).

    With ``truncated`` (only the first ``max_task_examples`` rows were read) a value no row has is
    only logged: the cut may have left its rows out.

    Raises:
        ConfigError: ``exclude_keys`` without a partition key, or naming a value no row has.
    """
    if not exclude_keys:
        return rows, keys
    if keys is None:
        raise ConfigError(f"{where}: exclude_keys={exclude_keys} needs a partition key; set partition_key (or use "
                          "partition: meta with a format that has a key).")
    present = set(keys)
    unknown = [value for value in exclude_keys if value not in present]
    if unknown and truncated:
        log.warning("%s: exclude_keys %s match none of the rows read (max_task_examples cut the data).", where,
                    unknown)
    elif unknown:
        raise ConfigError(f"{where}: exclude_keys {unknown} match no row's {key!r}; its values are "
                          f"{sorted(present)}.")
    kept = [index for index, value in enumerate(keys) if value not in set(exclude_keys)]
    log.info("%s: excluded %d rows whose %s is in %s.", where, len(keys) - len(kept), key, exclude_keys)
    return rows.select(kept), [keys[index] for index in kept]


def client_shards(
    num_rows: int, keys: list[str] | None, partition: str, num_clients: int, alpha: float, min_client_size: int,
    val_fraction: float, seed: int, where: str,
) -> list[tuple[list[int], list[int]]]:
    """Partition the rows and split each client's rows into ``(train, val)``.

    Args:
        num_rows: Number of task rows.
        keys: The key of every row (required by ``meta`` and ``dirichlet``).
        partition: ``iid``, ``meta`` or ``dirichlet``.
        num_clients: Number of clients.
        alpha: Dirichlet concentration.
        min_client_size: Fewest training rows per client.
        val_fraction: Fraction of each client's rows held out.
        seed: Seed of the partition and of the validation split.
        where: How errors name the data (source and partition).

    Returns:
        Per client, its training and validation row indices.

    Raises:
        ValueError: Some client would get no (or fewer than ``min_client_size``) training rows.
    """
    try:
        if partition == "iid":
            shards = iid_partition(num_rows, num_clients, seed)
        elif partition == "meta":
            shards = meta_partition(keys or [], num_clients)
        else:
            shards = dirichlet_partition(keys or [], num_clients, alpha, seed, min_client_size)
        splits = [train_val_split(rows, val_fraction, seed, client) for client, rows in enumerate(shards)]
    except ValueError as error:
        raise ConfigError(f"{where}: {error}") from error
    for client, (train, _) in enumerate(splits):
        if len(train) < min_client_size:
            raise ConfigError(
                f"{where}: client {client} gets {len(train)} training row(s), fewer than min_client_size="
                f"{min_client_size}; use fewer clients, another partition, or a smaller min_client_size."
            )
    return splits


def check_client_sizes(
    train: list[list[int]], assigned: list[list[int]], min_client_size: int, max_length: int, where: str
) -> None:
    """Raise for the first client that dropped rows left below ``min_client_size`` training examples.

    Args:
        train: Per client, its training rows that survived tokenisation.
        assigned: Per client, the training rows the partition gave it.
        min_client_size: Fewest training examples a client may keep.
        max_length: The truncation length (named in the fix).
        where: How to name the task data.
    """
    for client, rows in enumerate(train):
        if len(rows) < min_client_size:
            total = len(assigned[client])
            raise ConfigError(
                f"Client {client} is left with {len(rows)} training example(s) (min_client_size={min_client_size}): "
                f"{total - len(rows)} of its {total} rows of {where} have responses cut away by max_length="
                f"{max_length} (or empty, with drop_empty). Raise max_length, use fewer clients, or lower "
                "min_client_size."
            )


def as_source(value: DataSource | dict[str, Any] | None) -> DataSource | None:
    """Accept a :class:`DataSource` or the dict of its fields (as saved in hyper-parameters)."""
    return DataSource(**value) if isinstance(value, dict) else value


def loader_seed(*keys: int) -> int:
    """Derive a 63-bit torch seed from non-negative integer keys (distinct keys, unrelated seeds)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def argument_problems(arguments: dict[str, Any]) -> list[str]:
    """List every invalid constructor argument, each with the value it had and what is allowed."""
    problems: list[str] = []
    if not isinstance(arguments["tokenizer"], str) or not arguments["tokenizer"].strip():
        problems.append(f"tokenizer={arguments['tokenizer']!r}: must be a non-empty string "
                        "(a path, a hub id or 'embedded:...').")
    for name in ("task", "public"):
        source, path = arguments[name], arguments[f"{name}_path"]
        if source is not None and path is not None:
            problems.append(f"{name} and {name}_path are both set: give one "
                            f"({name}_path is shorthand for {name}.path).")
        if source is not None and not isinstance(source, DataSource):
            problems.append(f"{name}={source!r}: must be a DataSource (path, format, ...).")
        if path is not None and (not isinstance(path, str) or not path.strip()):
            problems.append(f"{name}_path={path!r}: must be a non-empty string (a path, a hub id or 'embedded:...').")
    if arguments["partition"] not in PARTITIONS:
        problems.append(f"partition={arguments['partition']!r}: must be one of {', '.join(PARTITIONS)}.")
    minimums = {
        "num_clients": 1, "min_client_size": 1, "max_length": 2, "batch_size": 1, "public_batch_size": 1,
        "max_task_examples": 1, "max_public_examples": 1, "num_workers": 0, "seed": 0,
    }
    optional = {"public_batch_size", "max_task_examples", "max_public_examples"}
    for name, minimum in minimums.items():
        value = arguments[name]
        if value is None and name in optional:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            allowed = f"an int >= {minimum}" + (" or None" if name in optional else "")
            problems.append(f"{name}={value!r}: must be {allowed}.")
    alpha, fraction = arguments["dirichlet_alpha"], arguments["val_fraction"]
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha > 0:
        problems.append(f"dirichlet_alpha={alpha!r}: must be a number > 0.")
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 <= fraction < 1:
        problems.append(f"val_fraction={fraction!r}: must be a number in [0, 1).")
    return problems
