"""How far the emulator is from the full model: before training, after pre-alignment and at the end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch import Callback
from torch import nn
from typing_extensions import override

from fedbiot_pl.artifacts.export import atomic_write
from fedbiot_pl.callbacks.federated_loop import FederatedLoop
from fedbiot_pl.errors import ConfigError
from fedbiot_pl.model.losses import kl_teacher_student


@torch.no_grad()
def emulator_gap(full: nn.Module, compressed: nn.Module, loaders: list[Any], device: torch.device) -> dict[str, float]:
    """KL(full || compressed) and both cross-entropies on the batches of ``loaders``.

    ``kl`` is the forward KL of the alignment loss (teacher = ``full``) averaged over every real
    token (``attention_mask`` 1, prompt included); ``adapfu_loss`` and ``adapemu_loss`` are the
    cross-entropies of ``full`` and ``compressed`` averaged over every label token.
    """
    sums = {"kl": 0.0, "adapfu_loss": 0.0, "adapemu_loss": 0.0}
    real, labelled = 0, 0
    for loader in loaders:
        for batch in loader:
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            labels = batch["labels"].to(device)
            teacher = full(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False)
            student = compressed(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False)
            tokens, count = int(mask.sum()), int((labels[:, 1:] != -100).sum())
            sums["kl"] += float(kl_teacher_student(student.logits, teacher.logits, mask)) * tokens
            sums["adapfu_loss"] += float(teacher.loss) * count
            sums["adapemu_loss"] += float(student.loss) * count
            real, labelled = real + tokens, labelled + count
    if labelled == 0:
        raise ValueError("the client validation data has no label tokens; set data.val_fraction > 0.")
    return {"kl": sums["kl"] / real, "adapfu_loss": sums["adapfu_loss"] / labelled,
            "adapemu_loss": sums["adapemu_loss"] / labelled}


class EmulatorGap(Callback):
    """Measure the emulator against the full model on the clients' held-out rows, three times.

    At ``start`` (before any server step: the layer-drop emulator as built), ``after_pre_alignment``
    (after the last pre-alignment epoch; the same as ``start`` without pre-alignment) and ``end``
    (after the last round). Each point holds :func:`emulator_gap`'s ``kl``, ``adapfu_loss`` and
    ``adapemu_loss``; ``adapemu_loss - adapfu_loss`` is the emulator's cost in validation loss. At
    ``start`` the adapter is untrained, so ``adapfu_loss`` is the untrained full model's loss. The
    points are logged as ``gap/<point>/<name>`` and written to ``<log_dir>/emulator_gap.json``.
    Needs ``data.val_fraction > 0`` and a :class:`FederatedLoop` on the same Trainer.
    """

    POINTS = ("start", "after_pre_alignment", "end")

    def __init__(self) -> None:
        self.points: dict[str, dict[str, float]] = {}

    def _measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule, point: str) -> None:
        data, split = trainer.datamodule, pl_module.split
        loaders = [data.client_val_dataloader(c) for c in range(data.num_clients)]
        modes = {m: m.training for m in split.modules()}
        split.eval()
        try:
            self.points[point] = emulator_gap(split.full_with_adapter, split.compressed, loaders, pl_module.device)
        finally:
            for module, mode in modes.items():
                module.train(mode)
        for logger in trainer.loggers:
            logger.log_metrics({f"gap/{point}/{k}": v for k, v in self.points[point].items()}, step=trainer.global_step)
        if trainer.is_global_zero and trainer.log_dir:
            text = json.dumps(self.points, indent=2)
            atomic_write(Path(trainer.log_dir) / "emulator_gap.json", lambda tmp: Path(tmp).write_text(text))

    @staticmethod
    def _loop(trainer: pl.Trainer) -> FederatedLoop:
        loop = next((cb for cb in trainer.callbacks if isinstance(cb, FederatedLoop)), None)
        if loop is None:
            raise ConfigError("EmulatorGap needs a FederatedLoop among the Trainer's callbacks.")
        return loop

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._loop(trainer)
        data = trainer.datamodule
        if not getattr(data, "val_fraction", 0) or not callable(getattr(data, "client_val_dataloader", None)):
            raise ConfigError(f"EmulatorGap measures on the clients' held-out rows: set data.val_fraction > 0 (got "
                              f"{getattr(data, 'val_fraction', None)!r}) on a FederatedInstructionDataModule.")

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if "start" not in self.points:  # a resumed run keeps its first measurement
            self._measure(trainer, pl_module, "start")
            if self._loop(trainer).pre_alignment_rounds == 0:
                self.points["after_pre_alignment"] = dict(self.points["start"])

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loop = self._loop(trainer)
        if trainer.current_epoch + 1 == loop.pre_alignment_rounds:
            self._measure(trainer, pl_module, "after_pre_alignment")
        if trainer.current_epoch + 1 == loop.pre_alignment_rounds + loop.rounds:
            self._measure(trainer, pl_module, "end")

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"points": self.points}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.points = {k: dict(v) for k, v in state_dict["points"].items()}
