"""The partition report: table, text and PNG chart."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedbiot_pl.data import partition_report
from fedbiot_pl.data.partition_report import (
    ClientRow,
    format_partition_table,
    partition_table,
    plot_partition,
    write_report,
)


def test_table_counts_train_keys_per_client() -> None:
    table = partition_table([["a", "b", "a"], ["b"]], val_sizes=[1, 0], dropped=[0, 2], key="k")
    assert table.key == "k" and table.values == ["a", "b"]
    assert table.rows == [ClientRow(0, 3, 1, 0, {"a": 2, "b": 1}), ClientRow(1, 1, 0, 2, {"a": 0, "b": 1})]


def test_text_is_aligned_with_a_total_line() -> None:
    table = partition_table([["a", "b", "a"], ["b"]], val_sizes=[1, 0], dropped=[0, 2], key="k")
    assert format_partition_table(table).splitlines() == [
        "Partition by 'k'",
        "client  train  val  dropped  a  b",
        "     0      3    1        0  2  1",
        "     1      1    0        2  0  1",
        " total      4    1        2  2  2",
    ]


def test_without_a_key_only_sizes() -> None:
    table = partition_table([["", ""], [""]], val_sizes=[0, 0], dropped=[0, 0], key=None)
    assert table.values == [] and [row.counts for row in table.rows] == [{}, {}]
    assert format_partition_table(table).splitlines()[:2] == ["Partition (no key)", "client  train  val  dropped"]


def test_mismatched_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="Got 2 clients' keys, 1 validation sizes and 2 drop counts"):
        partition_table([["a"], ["b"]], val_sizes=[0], dropped=[0, 0], key="k")


@pytest.mark.parametrize("num_values", [0, 3, 12])
def test_png_chart_is_written(tmp_path: Path, num_values: int) -> None:
    values = [f"v{i}" for i in range(num_values)]
    keys = [values, values[: num_values // 2]] if values else [["", ""], [""]]
    table = partition_table(keys, val_sizes=[0, 0], dropped=[0, 0], key="k" if values else None)
    path = plot_partition(table, tmp_path / "sub" / "partition.png")
    assert path == tmp_path / "sub" / "partition.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_report_skips_the_chart_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = partition_table([["a"], ["b"]], val_sizes=[0, 0], dropped=[0, 0], key="k")
    assert [p.name for p in write_report(table, tmp_path / "with")] == ["partition.txt", "partition.png"]

    def no_matplotlib(*args: object) -> Path:
        raise ImportError("The partition chart needs matplotlib: pip install matplotlib.")

    monkeypatch.setattr(partition_report, "plot_partition", no_matplotlib)
    written = write_report(table, tmp_path / "without")
    assert written == [tmp_path / "without" / "partition.txt"]
    assert written[0].read_text() == format_partition_table(table) + "\n"
