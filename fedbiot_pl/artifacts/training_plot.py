"""The picture of a run, ``training.png``, drawn from its ``metrics.csv``.

:func:`read_metrics` reads the rows, :func:`training_series` turns them into one value per server
epoch (NaN where an epoch has none), :func:`draw_training` draws the series with matplotlib's Agg
canvas (no display, pyplot's global state left alone), and :func:`write_training_plot` does all
three for a run folder. Drawn from the file, the picture of a resumed run holds the rows from before
the resume too, and it can be redrawn while a run goes on::

    python -m fedbiot_pl.artifacts.training_plot runs/fedbiot/version_0      # writes <run>/training.png

The x axis counts rounds; the pre-alignment epochs come before round 0, as rounds -P..-1 (shaded).
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedbiot_pl.artifacts.export import atomic_write

log = logging.getLogger(__name__)
NAN = float("nan")
METRICS_FILE, PLOT_FILE = "metrics.csv", "training.png"
_CLIENT = re.compile(r"^client/(\d+)/loss$")


@dataclass(frozen=True)
class TrainingSeries:
    """A run's metrics, one value per server epoch (all lists run parallel to :attr:`rounds`).

    Attributes:
        pre_alignment: Alignment-only epochs before round 0 (P).
        rounds: Each epoch's round: ``epoch - P`` (pre-alignment epochs are negative).
        client_loss: ``round/client_loss`` (NaN in epochs without a round row).
        clients: Client id -> its ``client/<id>/loss`` (NaN where it was not sampled or was dropped).
        align: ``l2`` / ``kl`` (those logged) -> the mean of the epoch's ``align/<name>`` steps.
        val: Each ``val/...`` column -> its value (NaN in epochs without one).
        bytes_down: Bytes sent to clients up to and including the epoch's round (NaN without a round row).
        bytes_up: Bytes received from clients, likewise.
    """

    pre_alignment: int
    rounds: list[int]
    client_loss: list[float]
    clients: dict[int, list[float]]
    align: dict[str, list[float]]
    val: dict[str, list[float]]
    bytes_down: list[float]
    bytes_up: list[float]


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """The rows of a ``metrics.csv``, each with its non-empty numeric cells only."""
    rows = []
    with open(path, newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            cells = {}
            for key, value in row.items():
                try:
                    cells[key] = float(value)
                except (TypeError, ValueError):  # empty cell, or not a number
                    continue
            rows.append(cells)
    return rows


def _last(rows: list[dict[str, float]], key: str) -> float:
    values = [row[key] for row in rows if key in row]
    return values[-1] if values else NAN


def _mean(rows: list[dict[str, float]], key: str) -> float:
    values = [row[key] for row in rows if key in row]
    return sum(values) / len(values) if values else NAN


def _cumulative(values: list[float]) -> list[float]:
    total, out = 0.0, []
    for value in values:
        total += 0.0 if math.isnan(value) else value
        out.append(NAN if math.isnan(value) else total)
    return out


def training_series(rows: Sequence[dict[str, float]], pre_alignment: int | None = None) -> TrainingSeries:
    """Per-epoch series of metric rows (as :func:`read_metrics` gives them).

    Step rows (``align/*``) are averaged over their epoch; epoch rows (round, client, ``val/``,
    ``comm/``) take the epoch's last value. Rows without an ``epoch`` are ignored.

    Args:
        rows: The rows.
        pre_alignment: Pre-alignment epochs; ``None`` = from the rows (``epoch - round/index`` of a
            round row; without round rows every epoch so far counts as pre-alignment).

    Raises:
        ValueError: No row has an ``epoch``.
    """
    by_epoch: dict[int, list[dict[str, float]]] = {}
    for row in rows:
        if "epoch" in row:
            by_epoch.setdefault(int(row["epoch"]), []).append(row)
    if not by_epoch:
        raise ValueError("the metrics hold no row with an 'epoch' yet")
    epochs = sorted(by_epoch)
    if pre_alignment is None:
        round_rows = [row for row in rows if "epoch" in row and "round/index" in row]
        pre_alignment = (int(round_rows[0]["epoch"] - round_rows[0]["round/index"]) if round_rows
                         else epochs[-1] + 1)
    columns = {key for row in rows for key in row}
    clients = sorted(int(m.group(1)) for key in columns if (m := _CLIENT.match(key)))
    groups = [by_epoch[epoch] for epoch in epochs]
    return TrainingSeries(
        pre_alignment=pre_alignment,
        rounds=[epoch - pre_alignment for epoch in epochs],
        client_loss=[_last(group, "round/client_loss") for group in groups],
        clients={c: [_last(group, f"client/{c}/loss") for group in groups] for c in clients},
        align={name: [_mean(group, f"align/{name}") for group in groups]
               for name in ("l2", "kl") if f"align/{name}" in columns},
        val={key: [_last(group, key) for group in groups] for key in sorted(columns) if key.startswith("val/")},
        bytes_down=_cumulative([_last(group, "comm/bytes_down") for group in groups]),
        bytes_up=_cumulative([_last(group, "comm/bytes_up") for group in groups]),
    )


def draw_training(series: TrainingSeries, title: str | None = None) -> Any:
    """A matplotlib ``Figure`` of four panels against the round.

    Client loss (mean and per client), alignment L2/KL, validation losses and cumulative bytes.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter, MaxNLocator

    figure = Figure(figsize=(11.0, 7.0), dpi=100)
    FigureCanvasAgg(figure)
    (loss, align), (val, comm) = figure.subplots(2, 2, sharex=True)
    x = series.rounds
    many = len(series.clients) > 10
    for number, (client, values) in enumerate(series.clients.items()):
        label = ("clients" if number == 0 else None) if many else f"client {client}"
        loss.plot(x, values, marker=".", linewidth=0.8, alpha=0.6, label=label)
    loss.plot(x, series.client_loss, marker="o", color="black", linewidth=2.0, label="mean")
    loss.set(title="Client loss", ylabel="cross-entropy")
    for name, values in series.align.items():
        align.plot(x, values, marker="o", label=name.upper())
    align.set(title="Alignment (server)", ylabel="loss")
    for key, values in series.val.items():
        val.plot(x, values, marker="o", label=key)
    val.set(title="Validation loss", xlabel="round", ylabel="cross-entropy")
    comm.plot(x, series.bytes_down, marker="o", label="down (to clients)")
    comm.plot(x, series.bytes_up, marker="o", label="up (from clients)")
    comm.set(title="Communication (cumulative)", xlabel="round")
    comm.yaxis.set_major_formatter(EngFormatter(unit="B"))
    empty = {loss: "no client rounds yet", align: "no alignment logged",
             val: "no val/ metrics logged", comm: "no client rounds yet"}
    for axes, note in empty.items():
        if series.pre_alignment > 0:
            axes.axvspan(-series.pre_alignment - 0.5, -0.5, color="0.92", zorder=0)
        if not any(math.isfinite(v) for line in axes.get_lines() for v in line.get_ydata()):
            axes.text(0.5, 0.5, note, transform=axes.transAxes, ha="center", va="center", color="0.5")
        else:
            axes.legend(fontsize="small")
        axes.grid(alpha=0.3)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    if series.pre_alignment > 0:
        epochs = f"{series.pre_alignment} epoch{'s' if series.pre_alignment != 1 else ''}"
        title = f"{title or 'Training'} (shaded: pre-alignment, {epochs})"
    figure.suptitle(title or "Training")
    figure.tight_layout()
    return figure


def _configured_pre_alignment(run: Path) -> int | None:
    """``federated.pre_alignment_rounds`` of the run's ``config.yaml`` (written by the CLI), if any."""
    try:
        config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
        value = config["federated"]["pre_alignment_rounds"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return value if isinstance(value, int) else None


def write_training_plot(source: str | Path, out: str | Path | None = None,
                        pre_alignment: int | None = None) -> Path:
    """Draw ``training.png`` of a run (written atomically: a viewer never sees half a file).

    Args:
        source: A run folder that holds ``metrics.csv``, or the file itself.
        out: Where to write; default ``training.png`` next to ``metrics.csv``.
        pre_alignment: Pre-alignment epochs; ``None`` = the run's ``config.yaml``, else from the rows.

    Returns:
        The path written.

    Raises:
        FileNotFoundError: There is no ``metrics.csv``.
        ValueError: It holds no row with an ``epoch``.
    """
    source = Path(source)
    metrics = source / METRICS_FILE if source.is_dir() else source
    if not metrics.is_file():
        raise FileNotFoundError(f"{metrics} does not exist; pass a run folder written with the CSV logger "
                                f"(which holds {METRICS_FILE}) or the file itself.")
    if pre_alignment is None:
        pre_alignment = _configured_pre_alignment(metrics.parent)
    series = training_series(read_metrics(metrics), pre_alignment)
    target = Path(out) if out is not None else metrics.parent / PLOT_FILE
    figure = draw_training(series, title=metrics.parent.name)
    atomic_write(target, lambda tmp: figure.savefig(tmp, format="png"))
    return target


def plot_fit(loggers: Sequence[Any], pre_alignment: int) -> Path | None:
    """``training.png`` next to the ``metrics.csv`` of the first CSV logger among ``loggers``.

    ``None``, and one info line, when there is none; a warning when it cannot be drawn.
    """
    from lightning.fabric.loggers import CSVLogger  # the base of Lightning's and fedbiot's CSV loggers

    csv_logger = next((logger for logger in loggers if isinstance(logger, CSVLogger)), None)
    metrics = Path(csv_logger.log_dir) / METRICS_FILE if csv_logger is not None else None
    if metrics is None or not metrics.is_file():
        log.info("%s not written: the run has no CSV logger with a %s (python -m fedbiot_pl.artifacts.training_plot "
                 "draws it from a run folder that has one).", PLOT_FILE, METRICS_FILE)
        return None
    try:
        path = write_training_plot(metrics, pre_alignment=pre_alignment)
    except (ValueError, OSError, ImportError) as error:  # a picture never fails the fit
        log.warning("%s not written: %s", PLOT_FILE, error)
        return None
    log.info("training plot written to %s", path)
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m fedbiot_pl.artifacts.training_plot <run> [--out PATH] [--pre-alignment N]``; 0, or 2 on bad input."""
    parser = argparse.ArgumentParser(prog="python -m fedbiot_pl.artifacts.training_plot", description=(
        "Draw training.png (client loss, alignment, validation loss, bytes) from a run's metrics.csv; "
        "works on a run that is still going."))
    parser.add_argument("run", help="run folder (holding metrics.csv) or a metrics.csv file")
    parser.add_argument("--out", help="output PNG (default: training.png next to metrics.csv)")
    parser.add_argument("--pre-alignment", type=int, default=None,
                        help="pre-alignment epochs (default: the run's config.yaml, else from the rows)")
    args = parser.parse_args(argv)
    try:
        path = write_training_plot(args.run, args.out, args.pre_alignment)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
