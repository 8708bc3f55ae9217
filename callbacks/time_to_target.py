"""Simulated time to a target validation metric: when did the run first reach it, on the fleet's clock."""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch import Callback
from typing_extensions import override

from fedbiot_pl.callbacks.federated_loop import FederatedLoop, round_due
from fedbiot_pl.errors import ConfigError

log = logging.getLogger(__name__)


class TimeToTarget(Callback):
    """Logs ``sim/time_to_target`` (simulated seconds) the first round ``monitor`` reaches ``target``.

    The time is the :class:`~fedbiot_pl.callbacks.FederatedLoop`'s simulated clock (``federated.devices``)
    at the end of that round; the metric is read at the round's validation (every round unless
    ``trainer.check_val_every_n_epoch`` says otherwise: that sets the resolution, there is no
    interpolation). Until then ``sim/target_reached`` is 0. Kept in checkpoints, so a resumed run
    reports the same time.

    Args:
        monitor: the validation metric (``val/adapfu_loss``: the full model's loss on the clients'
            held-out rows; an ``eval/...`` accuracy with ``mode: max``).
        target: the value to reach.
        mode: ``min`` (reached when ``<= target``, losses) or ``max`` (``>= target``, accuracies).
    """

    def __init__(self, monitor: str = "val/adapfu_loss", target: float = 0.0,
                 mode: Literal["min", "max"] = "min") -> None:
        if mode not in ("min", "max"):
            raise ConfigError(f"TimeToTarget mode must be 'min' or 'max', got {mode!r}.")
        if not isinstance(target, int | float) or not math.isfinite(target):
            raise ConfigError(f"TimeToTarget target must be a finite number, got {target!r}.")
        self.monitor, self.target, self.mode = monitor, float(target), mode
        self.seconds: float | None = None  # simulated seconds when first reached
        self.round: int | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, target=self.target, mode=self.mode)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        loop, _ = round_due(trainer, 1)
        if stage == "fit" and (loop is None or loop.fleet is None):
            raise ConfigError("TimeToTarget reads the simulated clock: add a FederatedLoop with federated.devices "
                              "set (a fleet), or remove the TimeToTarget callback.")
        # The round's metrics are logged in the loop's and PeriodicEvaluation's on_train_epoch_end: read them
        # after those callbacks, whatever order the user listed them in.
        from fedbiot_pl.callbacks.periodic_evaluation import PeriodicEvaluation

        callbacks = list(trainer.callbacks)
        writers = [i for i, cb in enumerate(callbacks) if isinstance(cb, FederatedLoop | PeriodicEvaluation)]
        if writers and callbacks.index(self) < writers[-1]:
            callbacks.remove(self)
            callbacks.insert(writers[-1], self)  # the last writer moved up by one: this lands right after it
            # A new list: the set-up hooks still run over the old one, every later hook over this order.
            trainer.callbacks = callbacks

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loop, round_idx = round_due(trainer, 1)
        if round_idx is None or loop.runner is None or loop.runner.fleet is None:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if self.seconds is None and value is not None:
            value = float(value)
            if value <= self.target if self.mode == "min" else value >= self.target:
                self.seconds, self.round = loop.runner.fleet.clock.seconds, round_idx
                log.info("%s reached %s (%.4g) after round %d: %.6g simulated seconds.", self.monitor, self.target,
                         value, round_idx, self.seconds)
        reached = {"sim/target_reached": float(self.seconds is not None)}
        if self.seconds is not None:
            reached["sim/time_to_target"] = self.seconds
        pl_module.log_dict(reached, on_step=False, on_epoch=True)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "round": self.round}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seconds, self.round = state_dict.get("seconds"), state_dict.get("round")
