"""Lean, short-lived Trainers for the many client fits of a federated round.

A round fits every sampled client with its own fresh ``Trainer`` (a reused Trainer with
``max_steps`` silently trains 0 steps after its first fit). These helpers keep that cheap:

* :class:`KeepOnDeviceStrategy` leaves the shared model where it is after each fit;
* :func:`build_client_trainer` turns off everything a client fit does not need;
* :func:`client_fit_context` silences the per-Trainer banners and memoises Lightning's look-up of
  callback entry points (a scan of every installed distribution, about 7 ms per Trainer);
* :class:`ClientDeadline` stops a client fit that runs past its time limit.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import entry_points
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch import Callback
from typing_extensions import override

from fedbiot_pl.scaling.keep_on_device import KeepOnDeviceStrategy

_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero")
_EXPECTED_WARNINGS = (
    r".*(does not have many workers|smaller than the logging interval|module\(s\) in eval mode|LeafSpec).*"
)
_ENTRY_POINTS: dict[str, list[Any]] = {}


class ClientTimeout(RuntimeError):
    """A client fit ran past its time limit."""


class ClientDeadline(Callback):
    """Raises :class:`ClientTimeout` at the end of the first batch that finishes too late.

    Too late: more than ``seconds`` after this callback was made (make it when the client's fit starts).

    The check runs between batches: a single batch that hangs is not interrupted.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.monotonic()

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        elapsed = time.monotonic() - self.started
        if elapsed > self.seconds:
            raise ClientTimeout(
                f"timed out: {elapsed:.2f} s after {batch_idx + 1} batches, past client_time_limit={self.seconds:g} s"
            )


def build_client_trainer(
    root_device: torch.device, precision: Any, max_steps: int, accumulate_grad_batches: int,
    callbacks: list[Callback] | None = None,
) -> pl.Trainer:
    """A Trainer for one client fit on ``root_device``.

    No logger, checkpoints, summary, progress bar or validation; only ``callbacks``. Build it inside
    :func:`client_fit_context`.
    """
    accelerator = "cuda" if root_device.type == "cuda" else root_device.type
    return pl.Trainer(
        max_steps=max_steps,
        accumulate_grad_batches=accumulate_grad_batches,
        precision=precision,
        accelerator=accelerator,
        strategy=KeepOnDeviceStrategy(device=root_device),
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=max(1, max_steps),
        callbacks=callbacks or None,
    )


def _memoised_external_callbacks(group: str) -> list[Any]:
    # Same contract as Lightning's loader: every factory is still called for every Trainer.
    if group not in _ENTRY_POINTS:
        _ENTRY_POINTS[group] = list(entry_points(group=group))
    callbacks: list[Any] = []
    for factory in _ENTRY_POINTS[group]:
        made = factory.load()()
        callbacks.extend(made if isinstance(made, list) else [made])
    return callbacks


@contextmanager
def client_fit_context() -> Iterator[None]:
    """Quiet, cheap client Trainers.

    Banners at WARNING, the expected warnings of tiny frozen-model fits ignored, and the callback entry
    points looked up once per process.
    """
    try:  # a private Lightning name: without it, client Trainers just pay the full look-up
        from lightning.pytorch.trainer.connectors import callback_connector
    except ImportError:  # pragma: no cover
        callback_connector = None
    original = getattr(callback_connector, "_load_external_callbacks", None)
    levels = {name: logging.getLogger(name).level for name in _LOGGERS}
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        if original is not None:
            callback_connector._load_external_callbacks = _memoised_external_callbacks
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_EXPECTED_WARNINGS)
            yield
    finally:
        if original is not None:
            callback_connector._load_external_callbacks = original
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
