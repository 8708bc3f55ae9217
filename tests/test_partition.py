"""Client partitions: IID, meta key (with buckets), Dirichlet, and the per-client validation split."""

from __future__ import annotations

import numpy as np
import pytest

from fedbiot_pl.data.partition import (
    bucket_values,
    dirichlet_partition,
    group_by_key,
    iid_partition,
    meta_partition,
    train_val_split,
)


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
    with pytest.raises(ValueError,
                       match=r"num_clients=4 clients .* num_items=3 items \(client 3 would get none\); "
                             r"use num_clients <= 3"):
        iid_partition(3, 4, seed=0)


# ---------------------------------------------------------------- meta partition and buckets

def test_group_by_key_sorts_values_and_keeps_row_order() -> None:
    assert group_by_key(["b", "a", "b", "c", "a"]) == {"a": [1, 4], "b": [0, 2], "c": [3]}


def test_bucket_values_largest_first_into_lightest_bucket() -> None:
    # a5 -> 0, b4 -> 1, c3 -> 1 (4 < 5), d2 -> 0 (5 < 7), e1 -> 0 (tie 7/7: lower bucket).
    assert bucket_values({"a": 5, "b": 4, "c": 3, "d": 2, "e": 1}, 2) == [["a", "d", "e"], ["b", "c"]]


def test_bucket_values_one_value_per_bucket_is_alphabetical() -> None:
    assert bucket_values({"z": 1, "m": 9, "a": 3}, 3) == [["a"], ["m"], ["z"]]


@pytest.mark.parametrize("num_buckets", [0, 4])
def test_bucket_values_rejects_bad_bucket_count(num_buckets: int) -> None:
    with pytest.raises(ValueError, match=rf"num_buckets must be in \[1, 3\].*got {num_buckets}"):
        bucket_values({"a": 1, "b": 1, "c": 1}, num_buckets)


DOLLY_COUNTS = {
    "open_qa": 3742, "general_qa": 2191, "classification": 2136, "closed_qa": 1773, "brainstorming": 1766,
    "information_extraction": 1506, "summarization": 1188, "creative_writing": 709,
}


def _dolly_like_keys() -> list[str]:
    """Dolly's 8 categories with their published counts, interleaved like a shuffled file."""
    keys = [category for category, count in DOLLY_COUNTS.items() for _ in range(count)]
    return [keys[i] for i in np.random.default_rng(3).permutation(len(keys))]


def test_meta_partition_one_category_per_client() -> None:
    keys = _dolly_like_keys()
    shards = meta_partition(keys, 8)
    assert [{keys[i] for i in shard} for shard in shards] == [{c} for c in sorted(DOLLY_COUNTS)]
    assert [len(shard) for shard in shards] == [DOLLY_COUNTS[c] for c in sorted(DOLLY_COUNTS)]


def test_meta_partition_fewer_clients_drops_no_category_b9_regression() -> None:
    keys = _dolly_like_keys()
    shards = meta_partition(keys, 3)
    # Hand-run of bucket_values (largest first into the lightest bucket), see the docstring.
    assert [sorted({keys[i] for i in shard}) for shard in shards] == [
        ["brainstorming", "creative_writing", "general_qa"],
        ["classification", "closed_qa", "summarization"],
        ["information_extraction", "open_qa"],
    ]
    assert [len(shard) for shard in shards] == [4666, 5097, 5248]
    flat = sorted(index for shard in shards for index in shard)
    assert flat == list(range(15011))  # every row once: nothing dropped, nothing duplicated


def test_meta_partition_more_clients_than_values_names_the_fix() -> None:
    with pytest.raises(ValueError,
                       match=r"has 2 values \(a, b\) but num_clients=3, so client 2 would get no value; "
                             r"use num_clients <= 2"):
        meta_partition(["a", "b", "a"], 3)


# ---------------------------------------------------------------- Dirichlet

def test_dirichlet_is_reproducible_complete_and_seed_dependent() -> None:
    keys = [f"k{i % 4}" for i in range(400)]
    first = dirichlet_partition(keys, 5, alpha=0.5, seed=1)
    assert first == dirichlet_partition(keys, 5, alpha=0.5, seed=1)
    assert first != dirichlet_partition(keys, 5, alpha=0.5, seed=2)
    assert sorted(i for shard in first for i in shard) == list(range(400))
    assert all(shard == sorted(shard) for shard in first)


def test_dirichlet_alpha_controls_skew() -> None:
    keys = ["a"] * 500 + ["b"] * 500
    even = dirichlet_partition(keys, 2, alpha=1000.0, seed=0)
    for shard in even:  # near-IID: about 250 of each value per client
        assert all(200 <= sum(keys[i] == value for i in shard) <= 300 for value in "ab")
    skewed = dirichlet_partition(keys, 2, alpha=0.01, seed=1, min_client_size=0)
    for value in "ab":  # each value lands (almost) entirely on one client
        assert max(sum(keys[i] == value for i in shard) for shard in skewed) >= 475


def test_dirichlet_enforces_min_client_size() -> None:
    keys = [f"k{i % 3}" for i in range(300)]
    shards = dirichlet_partition(keys, 4, alpha=0.3, seed=0, min_client_size=40)
    assert min(len(shard) for shard in shards) >= 40


def test_dirichlet_gives_up_with_the_smallest_client_and_the_fix() -> None:
    with pytest.raises(ValueError, match=r"after 5 Dirichlet\(alpha=0.001\) draws, client \d still holds only \d+ rows"
                       r".*< min_client_size=4; use a larger dirichlet_alpha, fewer clients"):
        dirichlet_partition(["a"] * 20, 4, alpha=0.001, seed=0, min_client_size=4, max_draws=5)


def test_dirichlet_rejects_impossible_sizes_and_bad_alpha() -> None:
    with pytest.raises(ValueError, match="10 rows cannot give num_clients=4 clients min_client_size=3"):
        dirichlet_partition(["a"] * 10, 4, alpha=1.0, seed=0, min_client_size=3)
    with pytest.raises(ValueError, match="alpha > 0"):
        dirichlet_partition(["a"] * 10, 2, alpha=0.0, seed=0)


# ---------------------------------------------------------------- per-client validation split

def test_train_val_split_sizes_disjoint_and_reproducible() -> None:
    indices = list(range(10, 20))
    train, val = train_val_split(indices, 0.2, seed=0, client_id=1)
    assert (len(train), len(val)) == (8, 2)
    assert sorted(train + val) == indices and train == sorted(train) and val == sorted(val)
    assert (train, val) == train_val_split(indices, 0.2, seed=0, client_id=1)
    assert len(train_val_split(indices, 0.25, seed=0, client_id=1)[1]) == 3  # 2.5 rounds half up
    assert train_val_split(indices, 0.0, seed=0, client_id=1) == (indices, [])


def test_train_val_split_depends_on_client_id() -> None:
    indices = list(range(100))
    assert train_val_split(indices, 0.1, 0, 0)[1] != train_val_split(indices, 0.1, 0, 1)[1]


def test_train_val_split_errors() -> None:
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\), got 1.0"):
        train_val_split([1, 2], 1.0, 0, 0)
    with pytest.raises(ValueError, match="client 3 has 1 row.*would hold out all of them"):
        train_val_split([7], 0.5, 0, 3)
