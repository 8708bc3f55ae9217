"""What both FedBiOT modules share: a ModelViews, one trained LoRA part, AdamW, LoRA-only checkpoints."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor
from typing_extensions import override

from fedbiot_pl.errors import ConfigError
from fedbiot_pl.model.views import ModelViews, Part
from fedbiot_pl.quiet import EVAL_MODE_WARNING, expected_warnings

CHECKPOINT_PREFIX = "split.compressed."


def lora_only(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Keep the compressed model's LoRA entries of a module state dict.

    The frozen base never goes into a checkpoint, and neither do the AdapFu shell's names for the
    same adapter tensors (they are shared, so loading the compressed entries restores both).
    """
    return {k: v for k, v in state_dict.items() if k.startswith(CHECKPOINT_PREFIX) and "lora_" in k}


class LoRAPartModule(LightningModule):
    """A LightningModule that trains the LoRA of one part (``trained_part``) of a :class:`ModelViews`.

    Subclasses set ``trained_part`` and implement ``training_step``. The model is built in
    ``configure_model`` (idempotent, so a shared split is built once), the optimizer is AdamW over
    that part's LoRA only, and checkpoints hold LoRA weights only (``strict_loading`` is off).
    """

    trained_part: Part

    def __init__(self, split: ModelViews, lr: float, betas: tuple[float, float], weight_decay: float) -> None:
        super().__init__()
        if lr <= 0 or weight_decay < 0:
            raise ConfigError(f"lr must be > 0 and weight_decay >= 0, got lr={lr}, weight_decay={weight_decay}.")
        self.split = split
        self.strict_loading = False

    @override
    def configure_model(self) -> None:
        self.split.build()

    @override
    def on_fit_start(self) -> None:
        # The frozen layers run in eval mode on purpose (no dropout noise on weights that do not
        # train): silence Lightning's warning about them until training starts, and only that one.
        self._eval_mode_quiet = expected_warnings(EVAL_MODE_WARNING)
        self._eval_mode_quiet.__enter__()

    @override
    def on_train_start(self) -> None:
        self._end_eval_mode_quiet()

    @override
    def on_fit_end(self) -> None:
        self._end_eval_mode_quiet()  # a fit with no training (resumed from its last round) never starts it
        for param in self.split.lora_parameters(self.trained_part).values():
            param.grad = None  # nothing stale is left on a model other fits share

    def _end_eval_mode_quiet(self) -> None:
        quiet, self._eval_mode_quiet = getattr(self, "_eval_mode_quiet", None), None
        if quiet is not None:
            quiet.__exit__(None, None, None)

    @override
    def on_train_epoch_start(self) -> None:
        self.split.set_trainable(self.trained_part)

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer | None:
        params = list(self.split.lora_parameters(self.trained_part).values())
        if not params:  # e.g. the emulator of FedAvg-LoRA's full-model split: nothing to train
            return None
        return torch.optim.AdamW(
            params, lr=self.hparams.lr, betas=tuple(self.hparams.betas), weight_decay=self.hparams.weight_decay
        )

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = lora_only(checkpoint["state_dict"])
