"""Near-IID grouping (HierFedLoRA spec 1.4, test 5): KL pieces, greedy vs random, and the fedbiot-group CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedbiot_pl.data.partition_report import partition_table
from fedbiot_pl.errors import ConfigError
from fedbiot_pl.grouping import main
from fedbiot_pl.hierarchy.grouping import (
    by_speed_groups,
    counts_from_table,
    format_group_report,
    greedy_kl_groups,
    group_divergence,
    group_sizes,
    grouping_issues,
    kl,
    random_baseline,
    random_groups,
    smoothed,
)

AABB = [[10, 0], [10, 0], [0, 10], [0, 10]]


def dirichlet_counts(seed: int, devices: int, labels: int = 10, alpha: float = 0.1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.rint(rng.dirichlet(alpha * np.ones(labels), size=devices) * 100).astype(int)


def divergence(counts, groups, eps: float = 1e-3) -> float:
    return group_divergence(counts, groups, eps=eps)["divergence"]


# --- the KL pieces, by hand -------------------------------------------------------------------------------------


def test_smoothed_by_hand() -> None:
    # (1 + .5, 0 + .5) / (1 + 2 * .5) = (.75, .25)
    assert smoothed([1, 0], eps=0.5) == pytest.approx([0.75, 0.25], abs=1e-15)
    # row-wise, eps = 1: (2, 1) / 3 and (1, 4) / 5
    assert smoothed([[1, 0], [0, 3]], eps=1.0) == pytest.approx(np.array([[2 / 3, 1 / 3], [1 / 5, 4 / 5]]), abs=1e-15)
    # the default eps is 1e-3: (10.001, 0.001) / 10.002
    assert smoothed([10, 0])[1] == pytest.approx(0.001 / 10.002, rel=1e-12)
    # no examples and no smoothing: uniform (the eps -> 0 limit)
    assert smoothed([0, 0, 0, 0], eps=0.0) == pytest.approx([0.25] * 4)


def test_kl_by_hand() -> None:
    assert kl([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), abs=1e-15)
    assert kl([1.0, 0.0], [0.5, 0.5]) == pytest.approx(math.log(2), abs=1e-15)  # the p = 0 term is 0, not nan
    assert kl([0.3, 0.7], [0.3, 0.7]) == 0.0
    assert kl([0.5, 0.5], [1.0, 0.0]) == math.inf
    with pytest.raises(ConfigError, match=r"\(2,\) and \(3,\)"):
        kl([0.5, 0.5], [0.2, 0.3, 0.5])


def test_group_divergence_by_hand() -> None:
    # eps = 0. All: (3, 5) / 8. Group {0, 1}: (1, 3) / 4; group {2}: (2, 2) / 4; each holds 4 of 8 examples.
    # KL_0 = 1/4 ln((1/4)/(3/8)) + 3/4 ln((3/4)/(5/8)) = 1/4 ln(2/3) + 3/4 ln(6/5)
    # KL_1 = 1/2 ln((1/2)/(3/8)) + 1/2 ln((1/2)/(5/8)) = 1/2 ln(4/3) + 1/2 ln(4/5)
    # J = 4/8 KL_0 + 4/8 KL_1; TV_0 = (|1/4 - 3/8| + |3/4 - 5/8|) / 2 = 1/8, TV_1 = (1/8 + 1/8) / 2 = 1/8
    kl0 = 0.25 * math.log(2 / 3) + 0.75 * math.log(6 / 5)
    kl1 = 0.5 * math.log(4 / 3) + 0.5 * math.log(4 / 5)
    result = group_divergence([[1, 0], [0, 3], [2, 2]], [[0, 1], [2]], eps=0.0)
    assert result["divergence"] == pytest.approx(0.5 * kl0 + 0.5 * kl1, abs=1e-15)
    assert result["kl"] == pytest.approx([kl0, kl1], abs=1e-15)
    assert result["tv"] == pytest.approx([0.125, 0.125], abs=1e-15)
    assert result["max_kl"] == pytest.approx(kl0)
    assert result["sizes"] == [2, 1] and result["examples"] == [4, 4]
    assert json.loads(json.dumps(result)) == result  # plain Python numbers
    assert all(type(value) is float for value in result["kl"] + result["tv"])
    # TV stays unsmoothed with the default eps, KL barely moves
    smooth = group_divergence([[1, 0], [0, 3], [2, 2]], [[0, 1], [2]])
    assert smooth["tv"] == result["tv"] and smooth["kl"] == pytest.approx([kl0, kl1], abs=1e-3)


def test_group_divergence_rejects_a_non_partition() -> None:
    with pytest.raises(ConfigError) as error:
        group_divergence(AABB, [[0, 1], [1, 7]])
    message = str(error.value)
    assert "ids 7 are not in 0..3" in message
    assert "devices 1 are in more than one group" in message and "devices 2, 3 are in no group" in message


# --- group sizes and their checks ---------------------------------------------------------------------------------


def test_group_sizes_balanced_or_given() -> None:
    assert group_sizes(10, 3) == [4, 3, 3]
    assert group_sizes(12, 4) == [3, 3, 3, 3]
    assert group_sizes(10, 3, [2, 3, 5]) == [2, 3, 5]
    groups = greedy_kl_groups(dirichlet_counts(0, 10), 3, sizes=[2, 3, 5])
    assert sorted(len(group) for group in groups) == [2, 3, 5]
    assert sorted(len(group) for group in random_groups(10, 3, seed=1, sizes=[2, 3, 5])) == [2, 3, 5]


def test_grouping_issues_name_the_value_and_the_fix() -> None:
    (issue,) = grouping_issues(4, 5)
    assert "num_groups=5" in issue and "4 devices" in issue and "at most 4" in issue
    assert grouping_issues(4, 2) == [] and grouping_issues(4, 2, [1, 3]) == []
    issues = grouping_issues(4, 0, [0, 1, 1])
    assert len(issues) == 2 and "num_groups=0" in issues[0] and "sizes[0]=0" in issues[1]
    issues = grouping_issues(10, 3, [2, 3])
    assert len(issues) == 2 and "2 entries but num_groups=3" in issues[0] and "sum to 5" in issues[1]
    with pytest.raises(ConfigError, match="num_groups=5 exceeds the 4 devices") as error:
        greedy_kl_groups(AABB, 5, sizes=[1, 1, 1, 1, 0])
    assert "sizes[4]=0" in str(error.value)  # every problem at once


def test_greedy_rejects_bad_counts_all_at_once() -> None:
    with pytest.raises(ConfigError) as error:
        greedy_kl_groups([[1, -1], [np.nan, 2]], 2)
    assert "counts[0, 1]=-1.0" in str(error.value) and "counts[1, 0]=nan" in str(error.value)
    with pytest.raises(ConfigError, match="all zero"):
        greedy_kl_groups([[0, 0], [0, 0]], 1)
    with pytest.raises(ConfigError, match=r"shape \(4,\)"):
        greedy_kl_groups([1, 2, 3, 4], 2)


# --- greedy ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("swaps", [True, False])
def test_greedy_pairs_a_with_b(swaps: bool) -> None:
    assert greedy_kl_groups(AABB, 2, swaps=swaps) == [[0, 2], [1, 3]]
    assert divergence(AABB, [[0, 2], [1, 3]]) < 1e-6
    assert divergence(AABB, [[0, 2], [1, 3]], eps=0.0) == 0.0
    # the label-sorted split is the worst one: each group is all A or all B, KL = ln 2 unsmoothed
    assert divergence(AABB, [[0, 1], [2, 3]], eps=0.0) == pytest.approx(math.log(2), abs=1e-15)
    for seed in range(8):  # the seed only breaks ties: which A meets which B
        for group in greedy_kl_groups(AABB, 2, seed=seed, swaps=swaps):
            assert sorted(AABB[device][0] for device in group) == [0, 10]


def test_devices_without_examples_are_allowed() -> None:
    groups = greedy_kl_groups([*AABB, [0, 0], [0, 0]], 2)
    assert sorted(len(group) for group in groups) == [3, 3] and divergence([*AABB, [0, 0], [0, 0]], groups) < 1e-6


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_beats_every_random_draw_on_dirichlet_skew(seed: int) -> None:
    counts = dirichlet_counts(seed, 20)
    groups = greedy_kl_groups(counts, 4, seed=seed)
    assert groups == greedy_kl_groups(counts, 4, seed=seed)  # deterministic
    assert sorted(device for group in groups for device in group) == list(range(20))
    assert max(map(len, groups)) - min(map(len, groups)) <= 1
    assert groups == sorted(groups) and all(group == sorted(group) for group in groups)
    plain = divergence(counts, greedy_kl_groups(counts, 4, seed=seed, swaps=False))
    swapped = divergence(counts, groups)
    assert swapped <= plain
    assert plain < random_baseline(counts, 4, draws=20, seed=seed)["min"]


def test_greedy_beats_every_random_draw_with_80_devices() -> None:
    counts = dirichlet_counts(7, 80)
    assert divergence(counts, greedy_kl_groups(counts, 8)) < random_baseline(counts, 8, draws=20)["min"]


def test_swaps_stop_after_max_passes() -> None:
    counts = dirichlet_counts(0, 20)
    none = greedy_kl_groups(counts, 4, max_passes=0)
    assert none == greedy_kl_groups(counts, 4, swaps=False)
    one = divergence(counts, greedy_kl_groups(counts, 4, max_passes=1))
    assert divergence(counts, greedy_kl_groups(counts, 4)) <= one < divergence(counts, none)


def test_speed_weight_groups_equal_speeds() -> None:
    counts = [[5, 5]] * 8  # uniform labels: every grouping has J = 0, so only speeds decide
    speeds = [1.0, 10.0] * 4
    for seed in range(4):
        assert greedy_kl_groups(counts, 2, seed=seed, speeds=speeds, speed_weight=1.0) == [[0, 2, 4, 6], [1, 3, 5, 7]]
    mixed = [greedy_kl_groups(counts, 2, seed=seed, speeds=speeds) for seed in range(4)]
    assert any(groups != [[0, 2, 4, 6], [1, 3, 5, 7]] for groups in mixed)  # without the weight speeds are ignored
    with pytest.raises(ConfigError, match=r"speeds\[1\]=0.0"):
        greedy_kl_groups(counts, 2, speeds=[1, 0, 1, 1, 1, 1, 1, 1], speed_weight=1.0)


# --- baselines, report, partition table -------------------------------------------------------------------------


def test_random_groups_seeded_and_balanced() -> None:
    groups = random_groups(10, 3, seed=4)
    assert groups == random_groups(10, 3, seed=4) and groups != random_groups(10, 3, seed=5)
    assert sorted(map(len, groups)) == [3, 3, 4] and sorted(sum(groups, [])) == list(range(10))
    assert groups == sorted(groups) and all(group == sorted(group) for group in groups)


def test_by_speed_groups_consecutive_speeds() -> None:
    # by speed: 1, 3, 4 | 2, 0 (the slowest 3, then the fastest 2); the slowest group first
    assert by_speed_groups([5.0, 1.0, 4.0, 2.0, 3.0], 2) == [[1, 3, 4], [0, 2]]
    assert by_speed_groups([5.0, 1.0, 4.0, 2.0, 3.0], 2, sizes=[2, 3]) == [[1, 3], [0, 2, 4]]
    assert by_speed_groups([2.0, 1.0, 2.0, 1.0], 2) == [[1, 3], [0, 2]]  # ties keep the lower id first


def test_given_sizes_keep_their_order_so_per_group_settings_apply_to_the_right_group() -> None:
    assert [len(g) for g in random_groups(6, 2, 0, sizes=[1, 5])] == [1, 5]
    counts = np.array([[10, 0], [10, 0], [0, 10], [0, 10], [5, 5], [5, 5]])
    assert [len(g) for g in greedy_kl_groups(counts, 2, sizes=[4, 2])] == [4, 2]
    assert [len(g) for g in greedy_kl_groups(counts, 2, sizes=[2, 4])] == [2, 4]


def test_random_baseline_is_the_mean_min_max_of_the_draws() -> None:
    counts = dirichlet_counts(3, 12)
    values = [divergence(counts, random_groups(12, 3, seed=9 + k)) for k in range(5)]
    assert random_baseline(counts, 3, draws=5, seed=9) == pytest.approx(
        {"draws": 5, "mean": float(np.mean(values)), "min": min(values), "max": max(values)})


def test_report_lines() -> None:
    text = format_group_report(AABB, [[0, 2], [1, 3]], draws=3, ids=["a", "b", "c", "d"], labels=["x", "y"])
    lines = text.splitlines()
    assert lines[0].split() == ["group", "devices", "examples", "KL", "TV", "top", "labels"]
    assert lines[1].split() == ["0", "a,c", "20", "0.0000", "0.0000", "x", "50%,", "y", "50%"]
    assert lines[-1].startswith("size-weighted KL J = 0.0000 ; random grouping (3 seeded draws): mean ")
    text = format_group_report(AABB, [[0, 1], [2, 3]], draws=0)
    kl0 = group_divergence(AABB, [[0, 1], [2, 3]])["kl"][0]
    assert text.splitlines()[1].split() == ["0", "0,1", "20", f"{kl0:.4f}", "0.5000"]
    assert text.splitlines()[-1] == f"size-weighted KL J = {kl0:.4f}"


def test_counts_from_partition_table() -> None:
    table = partition_table([["b", "a", "b"], [], ["c"]], val_sizes=[0, 0, 0], dropped=[0, 0, 0], key="category")
    counts = counts_from_table(table)
    assert counts.dtype.kind == "i" and counts.tolist() == [[1, 2, 0], [0, 0, 0], [0, 0, 1]]
    with pytest.raises(ConfigError, match="data.partition_key"):
        counts_from_table(partition_table([["x"]], [0], [0], key=None))


# --- the CLI ----------------------------------------------------------------------------------------------------


def write_counts(tmp_path: Path, data: object, name: str = "counts.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    assert main([*argv, "--json"]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    return json.loads(out.out)


def test_cli_json_int_ids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    counts = dirichlet_counts(1, 12)
    path = write_counts(tmp_path, {str(device): row for device, row in enumerate(counts.tolist())})
    result = run_json(capsys, ["--counts", path, "--groups", "3", "--random-draws", "5"])
    groups = result["groups"]
    assert sorted(device for group in groups for device in group) == list(range(12))  # ints, each once
    assert groups == greedy_kl_groups(counts, 3)
    expected = group_divergence(counts, groups)
    assert result["divergence"] == pytest.approx(expected["divergence"], abs=1e-12)
    assert result["kl"] == pytest.approx(expected["kl"]) and result["max_kl"] == pytest.approx(expected["max_kl"])
    assert result["random"] == pytest.approx(random_baseline(counts, 3, draws=5))


def test_cli_json_string_ids_and_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_counts(tmp_path, {"dev-a": [10, 0], "dev-b": [10, 0], "dev-c": [0, 10], "dev-d": [0, 10],
                                   "dev-e": [5, 5]})
    result = run_json(capsys, ["--counts", path, "--groups", "2", "--sizes", "2,3"])
    assert sorted(map(len, result["groups"])) == [2, 3]
    assert sorted(sum(result["groups"], [])) == ["dev-a", "dev-b", "dev-c", "dev-d", "dev-e"]
    assert result["divergence"] < 1e-6


def test_cli_text_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_counts(tmp_path, {"0": [10, 0], "1": [10, 0], "2": [0, 10], "3": [0, 10]})
    assert main(["--counts", path, "--groups", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:2] == ["0", "0,2"] and "random grouping (20 seeded draws)" in lines[-1]


@pytest.mark.parametrize(
    ("data", "groups", "named"),
    [
        (None, "2", "missing.json"),
        ("not json {", "2", "is not JSON"),
        ({"0": [1, 0], "1": [0, 1]}, "3", "num_groups=3 exceeds the 2 devices"),
        ({"0": [1, 0], "1": [0, 1, 4]}, "2", "'1' has 3"),
        ({"0": [1, -2], "1": [0, 1]}, "2", "'0'[1]=-2"),
        ([[1, 0], [0, 1]], "2", "not a non-empty object"),
        ({"0": [1, 0], "1": [0, 1]}, "x", "invalid int value: 'x'"),
    ],
)
def test_cli_bad_input_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: object, groups: str, named: str
) -> None:
    if data is None:
        path = str(tmp_path / "missing.json")
    elif isinstance(data, str):
        path = str(tmp_path / "bad.json")
        Path(path).write_text(data, encoding="utf-8")
    else:
        path = write_counts(tmp_path, data)
    assert main(["--counts", path, "--groups", groups]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    (line,) = out.err.splitlines()
    assert line.startswith("fedbiot-group: error:") and named in line


def test_cli_bad_sizes_list_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_counts(tmp_path, {"0": [1, 0], "1": [0, 1], "2": [1, 1]})
    assert main(["--counts", path, "--groups", "2", "--sizes", "0,1,2"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "3 entries but num_groups=2" in line and "sizes[0]=0" in line


def test_module_help_runs() -> None:
    done = subprocess.run([sys.executable, "-m", "fedbiot_pl.grouping", "--help"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0 and "--counts" in done.stdout and done.stderr == ""


def test_swaps_keep_a_speed_grouping() -> None:
    # slow devices 0-3 hold A,A,A,B; fast devices 4-7 hold A,B,B,B: by speed, J > 0, and a label-only swap
    # (a slow A for a fast B) would lower it by mixing speeds
    counts = np.array([[10, 0]] * 3 + [[0, 10]] + [[10, 0]] + [[0, 10]] * 3)
    speeds = [1.0] * 4 + [4.0] * 4
    by_speed = greedy_kl_groups(counts, 2, speeds=speeds, speed_weight=10.0)
    assert by_speed == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert divergence(counts, by_speed) > 0.1
    mixed = greedy_kl_groups(counts, 2, speeds=speeds, speed_weight=0.0)
    assert divergence(counts, mixed) < 1e-6 and mixed != by_speed
