"""Continuing a killed run's loggers.

The run folder the checkpoint belongs to, and the metrics that the interrupted epoch logged after
its checkpoint.

* :func:`continue_run` points a CSV or TensorBoard logger (Lightning's, or
  :class:`~fedbiot_pl.artifacts.csv_logger.AtomicCSVLogger`) at the run folder of ``ckpt_path`` (see
  :func:`~fedbiot_pl.artifacts.csv_logger.resume_version`), so ``--ckpt_path last`` continues the run in place.
* :func:`purge_events_from` hides what the interrupted epoch logged to TensorBoard: a
  ``SessionLog.START`` event at the first step after the checkpoint, which TensorBoard reads as
  "drop the earlier events from this step on" (what torch's ``SummaryWriter(purge_step=...)``
  writes when it opens a file). The CSV logger does the same with
  :meth:`~fedbiot_pl.artifacts.csv_logger.AtomicCSVLogger.resume_rows`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fedbiot_pl.artifacts.checkpoint_integrity import local_checkpoint
from fedbiot_pl.artifacts.csv_logger import resume_version

log = logging.getLogger(__name__)


def _tensorboard_logger(logger: Any) -> bool:
    from lightning.fabric.loggers import TensorBoardLogger  # the base of Lightning's TensorBoardLogger

    return isinstance(logger, TensorBoardLogger)


def _run_folder_logger(logger: Any) -> bool:
    """A logger that writes into ``<save_dir>/<name>/version_N`` and has not opened it yet."""
    from lightning.fabric.loggers import CSVLogger

    opened = getattr(logger, "_experiment", None) is not None
    return (isinstance(logger, CSVLogger) or _tensorboard_logger(logger)) and logger._version is None and not opened


def continue_run(logger: Any, ckpt_path: str | Path | None) -> None:
    """Log into the folder of the run that ``ckpt_path`` continues.

    Only for loggers that keep what the folder holds: :class:`~fedbiot_pl.artifacts.csv_logger.AtomicCSVLogger`
    (Lightning's own ``CSVLogger`` deletes an existing ``metrics.csv``, so it gets a new folder)
    and TensorBoard (new event files beside the old). A no-op for a logger whose version was given
    or whose folder is already open.
    """
    if not _run_folder_logger(logger) or not (hasattr(logger, "resume_rows") or _tensorboard_logger(logger)):
        return
    version = resume_version(logger.root_dir, ckpt_path)
    if version is not None:
        logger._version = version


def evaluate_into_run(logger: Any, ckpt_path: str | Path | None, stage: str) -> None:
    """``validate``/``test`` of a round checkpoint: log into ``<run>/eval/<stage>-<checkpoint>/``.

    ``<run>`` is the folder holding the checkpoint's ``checkpoints/`` folder, wherever it lies (a
    copied or renamed run included). The results stay with the run without touching its
    ``metrics.csv``, ``config.yaml`` or ``hparams.yaml`` (a training process may still be writing
    them), and no ``version_N`` folder appears for ``--ckpt_path last`` to mistake for a run. A
    checkpoint outside a run's ``checkpoints/`` folder leaves the logger as it is.
    """
    local = local_checkpoint(ckpt_path) if ckpt_path is not None else None  # no file: best, hpc, remote
    if local is None or not _run_folder_logger(logger):
        return
    path = local.resolve()
    if path.parent.name == "checkpoints":
        # An absolute version: the loggers' log_dir is os.path.join(root_dir, version) = this folder.
        logger._version = str(path.parent.parent / "eval" / f"{stage}-{path.stem}")


def purge_events_from(logger: Any, step: int) -> None:
    """Hide the events a resumed run's TensorBoard logger holds from ``step`` on.

    ``step`` is the first logging step after the checkpoint; a no-op for other loggers. Call it on
    global rank zero only.
    """
    if not _tensorboard_logger(logger):
        return
    try:
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
    except ImportError:  # Lightning falls back to tensorboardX without tensorboard
        from tensorboardX.proto.event_pb2 import Event, SessionLog
    writer = logger.experiment
    # The writer's file writer: where Lightning's TensorBoardLogger writes its hparams summary too.
    writer._get_file_writer().add_event(Event(step=step, session_log=SessionLog(status=SessionLog.START)))
    writer.flush()
    log.info("resumed: TensorBoard drops the events of step %d on that %s held from before the resume",
             step, logger.log_dir)
