"""Continuing a killed run's loggers: the run folder the checkpoint belongs to, and the metrics that
the interrupted epoch logged after its checkpoint.

* :func:`continue_run` points a CSV or TensorBoard logger (Lightning's, or
  :class:`~fedbiot_pl.csv_logger.AtomicCSVLogger`) at the run folder of ``ckpt_path`` (see
  :func:`~fedbiot_pl.csv_logger.resume_version`), so ``--ckpt_path last`` continues the run in place.
* :func:`purge_events_from` hides what the interrupted epoch logged to TensorBoard: a
  ``SessionLog.START`` event at the first step after the checkpoint, which TensorBoard reads as
  "drop the earlier events from this step on" (what torch's ``SummaryWriter(purge_step=...)``
  writes when it opens a file). The CSV logger does the same with
  :meth:`~fedbiot_pl.csv_logger.AtomicCSVLogger.resume_rows`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fedbiot_pl.csv_logger import resume_version

log = logging.getLogger(__name__)


def _tensorboard_logger(logger: Any) -> bool:
    from lightning.fabric.loggers import TensorBoardLogger  # the base of Lightning's TensorBoardLogger

    return isinstance(logger, TensorBoardLogger)


def continue_run(logger: Any, ckpt_path: str | Path | None) -> None:
    """Log into the folder of the run that ``ckpt_path`` continues.

    A no-op for a logger whose version was given or whose folder is already open, and for loggers
    without ``version_N`` folders (anything but CSV and TensorBoard loggers).
    """
    from lightning.fabric.loggers import CSVLogger

    if not (isinstance(logger, CSVLogger) or _tensorboard_logger(logger)):
        return
    if logger._version is None and logger._experiment is None:
        version = resume_version(logger.root_dir, ckpt_path)
        if version is not None:
            logger._version = version


def purge_events_from(logger: Any, step: int) -> None:
    """Hide the events a resumed run's TensorBoard logger holds from ``step`` on (the first logging
    step after the checkpoint); a no-op for other loggers. Call it on global rank zero only."""
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
