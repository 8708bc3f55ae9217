"""Round checkpoints: Lightning's ModelCheckpoint counted and named by federated round, not by epoch."""

from __future__ import annotations

import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from typing_extensions import override

from fedbiot_pl.artifacts.round_selection import ROUND_KEY
from fedbiot_pl.callbacks.client_validation import ClientValidation
from fedbiot_pl.callbacks.federated_loop import FederatedLoop, round_due
from fedbiot_pl.errors import ConfigError

DEPRECATED_EVERY_N_EPOCHS = (
    "checkpoint.every_n_epochs is deprecated: use checkpoint.every_n_rounds, which counts federated rounds "
    "(pre-alignment epochs no longer shift the checkpoints). Taking every_n_rounds={n}."
)


def rounds_done(trainer: pl.Trainer) -> int:
    """Federated rounds whose epoch has ended (0 during pre-alignment); epochs if there is no FederatedLoop."""
    loop = next((cb for cb in trainer.callbacks if isinstance(cb, FederatedLoop)), None)
    return loop.completed_rounds if loop is not None else trainer.current_epoch + 1


def validation_losses(trainer: pl.Trainer, pl_module: pl.LightningModule, round_number: int) -> dict[str, float]:
    """``val/<variant>_loss`` measured at the end of round ``round_number`` (counted from 1), by name.

    From the module's validation loop if it ran in this epoch, and from a :class:`ClientValidation`
    that measured this round (it covers every held-out row, so it wins); never an earlier epoch's value.
    """
    losses = {}
    every_row = isinstance(trainer.limit_val_batches, float) and trainer.limit_val_batches == 1.0
    if getattr(pl_module, "validated_epoch", None) == trainer.current_epoch and every_row:
        losses = {name: float(value) for name, value in trainer.callback_metrics.items()
                  if name.startswith("val/") and name.endswith("_loss")}
    for callback in trainer.callbacks:
        history = getattr(callback, "history", None) if isinstance(callback, ClientValidation) else None
        if history and history[-1].get("round") == round_number - 1:  # ClientValidation counts from 0
            losses.update({f"val/{name}": float(value) for name, value in history[-1].items()
                           if name.endswith("_loss")})
    return losses


class RoundCheckpoint(ModelCheckpoint):
    """Writes a checkpoint after every ``every_n_rounds``-th federated round, named by the round.

    Rounds are counted from 1 after the :class:`FederatedLoop`'s pre-alignment epochs, so with
    ``every_n_rounds: 100`` and 500 rounds (the paper's "every 100 rounds") the round checkpoints are
    ``round-0100.ckpt``, ``round-0200.ckpt``, ..., ``round-0500.ckpt`` whatever
    ``pre_alignment_rounds`` is; the last round always gets one. ``last.ckpt`` is written after every
    epoch, pre-alignment included, so a resume repeats at most one round. Without a FederatedLoop,
    epochs count as rounds.

    Every checkpoint records its round and the validation losses measured at that round's end
    (``checkpoint["fedbiot_round"]``, :mod:`fedbiot_pl.artifacts.round_selection`);
    ``train.py evaluate --ckpt best`` picks a round by them. As in Lightning, ``monitor`` with
    ``save_top_k`` keeps only the best round checkpoints by a logged metric.

    Args:
        every_n_rounds: write a round checkpoint after rounds ``n, 2n, ...`` and the last; 0 writes
            only ``last.ckpt``.
        dirpath: the checkpoint folder (default: ``<run folder>/checkpoints``).
        filename: name template; ``{round}`` is the round, other fields are logged metrics.
        monitor: a logged metric ranking the round checkpoints (``null``: keep every one).
        verbose: log each save.
        save_last: also write ``last.ckpt`` after every epoch (``link`` is refused: it would go stale).
        save_top_k: round checkpoints to keep (-1: all).
        save_on_exception: refused (it would write a half-trained round under a finished round's name).
        save_weights_only: leave the optimizer and loop states out (a resume then cannot continue).
        mode: ``min`` or ``max`` of ``monitor``.
        auto_insert_metric_name: write ``round=`` before the field's value in the name.
        every_n_epochs: deprecated alias of ``every_n_rounds`` (it warns).
        every_n_train_steps: not supported (round checkpoints are written at round ends); ``null``.
        train_time_interval: not supported, as ``every_n_train_steps``; ``null``.
        save_on_train_epoch_end: ``null`` or true: a round checkpoint is written when its epoch ends.
        enable_version_counter: add ``-v1`` instead of overwriting a name (a resume rewrites its round).
    """

    def __init__(
        self,
        every_n_rounds: int = 1,
        dirpath: str | Path | None = None,
        filename: str | None = "round-{round:04d}",
        monitor: str | None = None,
        verbose: bool = False,
        save_last: bool | Literal["link"] | None = True,
        save_top_k: int = -1,
        save_on_exception: bool = False,
        save_weights_only: bool = False,
        mode: str = "min",
        auto_insert_metric_name: bool = False,
        every_n_epochs: int | None = None,
        every_n_train_steps: int | None = None,
        train_time_interval: timedelta | None = None,
        save_on_train_epoch_end: bool | None = None,
        enable_version_counter: bool = False,
    ) -> None:
        if every_n_epochs is not None:
            if every_n_rounds not in (1, every_n_epochs):  # 1, the default, counts as unset
                raise ConfigError(f"checkpoint.every_n_epochs={every_n_epochs} (deprecated) and checkpoint."
                                  f"every_n_rounds={every_n_rounds} differ: set only every_n_rounds.")
            warnings.warn(DEPRECATED_EVERY_N_EPOCHS.format(n=every_n_epochs), FutureWarning, stacklevel=2)
            every_n_rounds = every_n_epochs
        issues = []
        if isinstance(every_n_rounds, bool) or not isinstance(every_n_rounds, int) or every_n_rounds < 0:
            issues.append(f"every_n_rounds must be an integer >= 0, got {every_n_rounds!r}.")
        if every_n_train_steps or train_time_interval is not None:
            issues.append("every_n_train_steps and train_time_interval are not supported: round checkpoints are "
                          "written when a round ends (set checkpoint.every_n_rounds).")
        if save_on_exception:
            issues.append("save_on_exception=True would write a half-trained round under a finished round's name; "
                          "leave it unset (last.ckpt is written after every epoch).")
        if save_last == "link":
            issues.append("save_last='link' would leave last.ckpt pointing at an older round between round "
                          "checkpoints; use save_last: true.")
        if save_on_train_epoch_end is False:
            issues.append("save_on_train_epoch_end=False: round checkpoints are written when the round's epoch ends; "
                          "leave it unset.")
        if issues:
            raise ConfigError("Invalid checkpoint settings:\n  " + "\n  ".join(issues))
        super().__init__(dirpath=dirpath, filename=filename, monitor=monitor, verbose=verbose, save_last=save_last,
                         save_top_k=save_top_k, save_on_exception=save_on_exception,
                         save_weights_only=save_weights_only, mode=mode,
                         auto_insert_metric_name=auto_insert_metric_name, every_n_train_steps=0, every_n_epochs=0,
                         save_on_train_epoch_end=True, enable_version_counter=enable_version_counter)
        self.every_n_rounds = every_n_rounds

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode, every_n_rounds=self.every_n_rounds)

    @override
    def _monitor_candidates(self, trainer: pl.Trainer) -> dict[str, torch.Tensor]:
        return {**super()._monitor_candidates(trainer), "round": torch.tensor(rounds_done(trainer))}

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._should_skip_saving_checkpoint(trainer):
            return
        candidates = self._monitor_candidates(trainer)
        if self.every_n_rounds and round_due(trainer, self.every_n_rounds)[1] is not None:
            self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    @override
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        number = rounds_done(trainer)
        checkpoint[ROUND_KEY] = {"round": number, "validation": validation_losses(trainer, pl_module, number)}
