"""A CSV logger whose files are always whole, and that continues a killed run in its own folder."""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from typing_extensions import override

from fedbiot_pl.artifacts.export import atomic_write

_VERSION = re.compile(r"^version_(\d+)$")
log = logging.getLogger(__name__)


def run_versions(root_dir: str | Path) -> list[int]:
    """The ``N`` of every ``version_N`` run folder under ``root_dir``, in increasing order."""
    folders = Path(root_dir).glob("version_*")
    return sorted(int(m.group(1)) for p in folders if p.is_dir() and (m := _VERSION.match(p.name)))


def newest_run(root_dir: str | Path) -> Path:
    """The newest ``version_N`` run folder under ``root_dir`` (``<save_dir>/<name>``).

    Raises:
        FileNotFoundError: there is none.
    """
    versions = run_versions(root_dir)
    if not versions:
        raise FileNotFoundError(f"{root_dir} holds no version_N run folder.")
    return Path(root_dir) / f"version_{versions[-1]}"


def resume_version(root_dir: str | Path, ckpt_path: str | Path | None) -> int | str | None:
    """The run folder (version) that fitting with ``ckpt_path`` continues, or ``None`` for a new one.

    ``"last"`` continues the newest ``version_N`` folder under ``root_dir`` (``<save_dir>/<name>``)
    that holds a checkpoint, skipping newer folders without one (a command that failed at start-up,
    a ``validate`` of the untrained model) with a warning; when none holds a checkpoint, the newest
    folder (a run stopped before its first round starts afresh there). A checkpoint file at
    ``<root_dir>/<version>/checkpoints/<file>`` continues ``<version>``. Any other path starts a new folder.
    """
    root = Path(root_dir)
    if ckpt_path is None:
        return None
    if str(ckpt_path) == "last":
        versions = run_versions(root)
        saved = [v for v in versions if any((root / f"version_{v}" / "checkpoints").glob("*.ckpt"))]
        if saved and saved[-1] != versions[-1]:
            skipped = ", ".join(f"version_{v}" for v in versions if v > saved[-1])
            log.warning("--ckpt_path last: %s under %s hold no checkpoint; continuing version_%d, the newest run "
                        "with one.", skipped, root, saved[-1])
        return saved[-1] if saved else (versions[-1] if versions else None)
    path = Path(ckpt_path).resolve()
    if path.parent.name == "checkpoints" and path.parent.parent.parent == root.resolve():
        folder = path.parent.parent.name
        match = _VERSION.match(folder)
        return int(match.group(1)) if match else folder
    return None


def _epoch(row: dict[str, Any]) -> float | None:
    value = row.get("epoch")
    return None if value in (None, "") else float(value)


class RunMetricsWriter(ExperimentWriter):
    """Keeps every metric row of the run and rewrites ``metrics.csv`` whole at each save.

    The file is written through a temporary file and a rename. The rows a previous (killed) process
    left are kept aside until :meth:`resume` says which of them the resumed run inherits.
    """

    def __init__(self, log_dir: str) -> None:
        self.previous_rows: list[dict[str, Any]] = []
        self.rows: list[dict[str, Any]] = []
        super().__init__(log_dir=log_dir)

    @override
    def _check_log_dir_exists(self) -> None:
        # Lightning deletes an existing metrics.csv here; keep its rows until resume() decides.
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as file:
                self.previous_rows = [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(file)]

    @override
    def log_hparams(self, params: dict[str, Any]) -> None:
        self.hparams.update(params)
        atomic_write(os.path.join(self.log_dir, self.NAME_HPARAMS_FILE),
                     lambda tmp: save_hparams_to_yaml(tmp, self.hparams))

    @override
    def save(self) -> None:
        if self.metrics:
            self.rows.extend(self.metrics)
            self.metrics = []
            self._write()

    def resume(self, epoch: int) -> None:
        """Take over the previous rows of epochs ``<= epoch``, drop the later ones, and write the file.

        The rows taken over are those a checkpoint of ``epoch`` has seen.
        """
        kept = [row for row in self.previous_rows if (_epoch(row) is None or _epoch(row) <= epoch)]
        self.rows = kept + self.rows
        self.previous_rows = []
        self._write()

    def _write(self) -> None:
        keys = sorted(set().union(*self.rows)) if self.rows else []
        self.metrics_keys = keys
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write(self.metrics_file_path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue().encode()))


class AtomicCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger`` with every file written atomically, and resumable.

    Same arguments, same ``metrics.csv`` and ``hparams.yaml`` as Lightning's. Resumable:

    * :func:`~fedbiot_pl.artifacts.logger_resume.continue_run` (called by the CLI before ``fit``, for CSV and
      TensorBoard loggers alike) picks the run folder that ``ckpt_path`` belongs to (see
      :func:`resume_version`), unless ``version`` was given;
    * :meth:`resume_rows` (called by :class:`~fedbiot_pl.callbacks.FederatedLoop` when it resumes)
      keeps the rows of the epochs up to the checkpoint's and drops those of the interrupted epoch,
      so the resumed run's file ends as an uninterrupted run's would.

    ``metrics.csv`` is rewritten whole (temporary file, ``fsync``, rename) at every ``save()``, which
    Lightning calls after each logging call; ``flush_logs_every_n_steps`` has no effect.
    """

    @rank_zero_only
    def resume_rows(self, epoch: int) -> None:
        """See :meth:`RunMetricsWriter.resume`."""
        self.experiment.resume(epoch)

    @property
    @override
    @rank_zero_experiment
    def experiment(self) -> RunMetricsWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = RunMetricsWriter(log_dir=self.log_dir)
        return self._experiment
