"""IID client partition."""

from __future__ import annotations

import pytest

from fedbiot_pl.partition import iid_partition


def test_known_split_for_seed_0() -> None:
    # numpy default_rng(0).permutation(10) = [4 6 2 7 3 5 9 0 8 1]; array_split into 4/3/3, each sorted.
    assert iid_partition(10, 3, seed=0) == [[2, 4, 6, 7], [3, 5, 9], [0, 1, 8]]


@pytest.mark.parametrize(
    ("num_items", "num_clients", "sizes"),
    [(10, 3, [4, 3, 3]), (300, 3, [100, 100, 100]), (11, 4, [3, 3, 3, 2]), (5, 5, [1] * 5), (7, 1, [7])],
)
def test_shards_are_near_equal_disjoint_sorted_and_cover_everything(
    num_items: int, num_clients: int, sizes: list[int]
) -> None:
    shards = iid_partition(num_items, num_clients, seed=42)
    assert [len(shard) for shard in shards] == sizes
    flat = [index for shard in shards for index in shard]
    assert sorted(flat) == list(range(num_items))  # disjoint and complete
    assert all(shard == sorted(shard) for shard in shards)
    assert all(type(index) is int for index in flat)


def test_same_seed_same_split_other_seed_other_split() -> None:
    assert iid_partition(100, 4, seed=7) == iid_partition(100, 4, seed=7)
    assert iid_partition(100, 4, seed=7) != iid_partition(100, 4, seed=8)


@pytest.mark.parametrize("num_clients", [0, -2])
def test_rejects_fewer_than_one_client(num_clients: int) -> None:
    with pytest.raises(ValueError, match=f"num_clients must be >= 1, got {num_clients}"):
        iid_partition(10, num_clients, seed=0)


def test_rejects_more_clients_than_items() -> None:
    with pytest.raises(ValueError, match=r"num_clients=4 clients .* num_items=3 items; use num_clients <= 3"):
        iid_partition(3, 4, seed=0)
