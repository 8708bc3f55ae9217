"""The partition report: how many examples each client holds, and of which key values.

:func:`partition_table` builds it from the final client shards, :func:`format_partition_table`
renders it as text (logged at set-up), and :func:`plot_partition` draws a stacked bar chart
(one bar per client, one colour per key value) with matplotlib's Agg canvas, which needs no
display and leaves pyplot's global state alone.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClientRow:
    """One client's line of the report.

    Attributes:
        client: The client id.
        train: Training examples (after truncation drops).
        val: Validation examples (after truncation drops).
        dropped: The client's rows dropped because ``max_length`` cut their whole response.
        counts: Training examples per key value (every value of the report, zeros included).
    """

    client: int
    train: int
    val: int
    dropped: int
    counts: dict[str, int]


@dataclass(frozen=True)
class PartitionTable:
    """The whole report.

    Attributes:
        key: The key the counts are over (``None``: no key, sizes only).
        values: The key values, sorted (the count columns).
        rows: One row per client, client 0 first.
    """

    key: str | None
    values: list[str]
    rows: list[ClientRow]


def partition_table(
    train_keys: Sequence[Sequence[str]], val_sizes: Sequence[int], dropped: Sequence[int], key: str | None
) -> PartitionTable:
    """Build the report from each client's training keys.

    Args:
        train_keys: Per client, the key value of each training example (any strings when ``key`` is
            ``None``; only their number is used then).
        val_sizes: Per client, the number of validation examples.
        dropped: Per client, the number of rows dropped by truncation.
        key: The name of the key, or ``None``.

    Returns:
        The table.

    Raises:
        ValueError: The three per-client sequences differ in length.
    """
    if not len(train_keys) == len(val_sizes) == len(dropped):
        raise ValueError(
            f"Got {len(train_keys)} clients' keys, {len(val_sizes)} validation sizes and {len(dropped)} drop counts; "
            "pass one of each per client."
        )
    values = sorted({value for keys in train_keys for value in keys}) if key is not None else []
    rows = []
    for client, keys in enumerate(train_keys):
        counts = Counter(keys) if key is not None else Counter()
        rows.append(ClientRow(client, len(keys), val_sizes[client], dropped[client], {v: counts[v] for v in values}))
    return PartitionTable(key, values, rows)


def format_partition_table(table: PartitionTable) -> str:
    """Render the table as aligned text with a ``total`` line, e.g. ``client  train  val  dropped  a  b``."""
    header = ["client", "train", "val", "dropped", *table.values]
    lines = [[str(row.client), str(row.train), str(row.val), str(row.dropped), *map(str, row.counts.values())]
             for row in table.rows]
    totals = [sum(int(line[column]) for line in lines) for column in range(1, len(header))]
    lines.append(["total", *map(str, totals)])
    widths = [max(len(cell) for cell in column) for column in zip(header, *lines, strict=True)]
    title = f"Partition by {table.key!r}" if table.key else "Partition (no key)"
    rendered = [
        "  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)) for line in [header, *lines]
    ]
    return "\n".join([title, *rendered])


def plot_partition(table: PartitionTable, path: str | Path) -> Path:
    """Write a PNG bar chart of the table: training examples per client, stacked by key value.

    Args:
        table: The report.
        path: Where to write the PNG; parent folders are created.

    Returns:
        The path written.

    Raises:
        ImportError: matplotlib is not installed (``pip install matplotlib``).
    """
    try:
        from matplotlib import colormaps
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - matplotlib is installed in the test environment
        raise ImportError("The partition chart needs matplotlib: pip install matplotlib.") from error
    figure = Figure(figsize=(max(4.0, 0.6 * len(table.rows) + 3.0), 3.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    clients = list(range(len(table.rows)))
    if table.values:
        bottoms = [0] * len(table.rows)
        palette = colormaps["tab10" if len(table.values) <= 10 else "tab20"]
        for number, value in enumerate(table.values):
            heights = [row.counts[value] for row in table.rows]
            axes.bar(clients, heights, bottom=bottoms, label=value, color=palette(number % palette.N))
            bottoms = [bottom + height for bottom, height in zip(bottoms, heights, strict=True)]
        axes.legend(title=table.key, fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    else:
        axes.bar(clients, [row.train for row in table.rows])
    axes.set_xticks(clients, [str(row.client) for row in table.rows])
    axes.set_xlabel("client")
    axes.set_ylabel("training examples")
    axes.set_title(f"Client partition by {table.key}" if table.key else "Client partition")
    figure.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, format="png")
    return target


def write_report(table: PartitionTable, folder: str | Path) -> list[Path]:
    """Write ``partition.txt`` (:func:`format_partition_table`) and ``partition.png`` (:func:`plot_partition`).

    Without matplotlib the chart is skipped with a warning and only the text is written.

    Args:
        table: The report.
        folder: Where to write; created if missing.

    Returns:
        The paths written.
    """
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    text = target / "partition.txt"
    text.write_text(format_partition_table(table) + "\n", encoding="utf-8")
    try:
        return [text, plot_partition(table, target / "partition.png")]
    except ImportError as error:
        log.warning("Partition chart skipped: %s", error)
        return [text]


def format_group_table(table: PartitionTable, groups: Sequence[Sequence[int]], draws: int = 20, seed: int = 0) -> str:
    """The partition grouped (HierFedLoRA): per group its clients, examples, KL and TV to the global mix.

    The size-weighted KL is shown next to that of ``draws`` seeded random groupings of the same sizes.

    Raises:
        ConfigError: the table has no key (nothing to compare), or ``groups`` do not partition its clients.
    """
    from fedbiot_pl.hierarchy.grouping import counts_from_table, format_group_report

    return format_group_report(counts_from_table(table), groups, draws=draws, seed=seed, labels=table.values)
