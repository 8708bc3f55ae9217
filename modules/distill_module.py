"""KD client and server: fine-tune LoRA on labels, and on public batches towards top-k targets."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from typing_extensions import override

from fedbiot_pl.distillation.loss import distill_loss
from fedbiot_pl.errors import ConfigError
from fedbiot_pl.model.views import ModelViews
from fedbiot_pl.modules.lora_part_module import LoRAPartModule

Model = Literal["compressed", "full_with_adapter"]


class DistillFinetuneModule(LoRAPartModule):
    """Trains the adapter's LoRA on cross-entropy, plus distillation where a batch carries targets.

    A batch with ``target_probs``, ``target_indices`` and ``target_mask`` (a public batch, see
    :class:`~fedbiot_pl.distillation.public.TargetBatches`) is trained on
    ``alpha * CE + (1 - alpha) * KD`` (FedMKT's loss, :func:`~fedbiot_pl.distillation.loss.distill_loss`:
    gathered, no dense ``tokens x vocabulary`` target); any other batch (private data) on CE alone.

    Args:
        split: the model views.
        kd_alpha: weight of the label cross-entropy on public batches (FedMKT: 0.9).
        model: which view trains: ``compressed`` (a client's model) or ``full_with_adapter`` (the
            server's full model with the adapter layers, when clients hold the emulator).
        lr: AdamW learning rate.
        betas: AdamW betas.
        weight_decay: AdamW weight decay.
        log_steps: log ``train/ce`` and ``train/kd`` every step (off in the federated loop's fits).
    """

    trained_part = "adapter"

    def __init__(self, split: ModelViews, kd_alpha: float = 0.9, model: Model = "compressed", lr: float = 1e-4,
                 betas: tuple[float, float] = (0.9, 0.95), weight_decay: float = 0.01, log_steps: bool = True) -> None:
        super().__init__(split, lr, betas, weight_decay)
        if not 0.0 <= kd_alpha <= 1.0 or model not in ("compressed", "full_with_adapter"):
            raise ConfigError(f"kd_alpha must be in [0, 1] and model 'compressed' or 'full_with_adapter', got "
                              f"{kd_alpha} and {model!r}.")
        self.save_hyperparameters(ignore=["split"])
        self._sums = {"ce": torch.zeros(()), "kd": torch.zeros(())}
        self._counts = {"ce": 0, "kd": 0}

    @property
    def network(self) -> nn.Module:
        """The view that trains."""
        return getattr(self.split, self.hparams.model)

    @property
    def mean_loss(self) -> float:
        """Mean loss of the current (or last) fit's micro-batches (CE, or the KD mix on public batches)."""
        total = float(self._sums["ce"]) + float(self._sums["kd"])
        return total / max(self._counts["ce"] + self._counts["kd"], 1)

    @override
    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._sums = {key: torch.zeros((), device=self.device) for key in self._sums}
        self._counts = dict.fromkeys(self._counts, 0)

    @override
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits = self.network(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              use_cache=False).logits
        if "target_probs" in batch:
            loss, ce, kd = distill_loss(logits, batch["labels"], batch["target_probs"], batch["target_indices"],
                                        batch["target_mask"], self.hparams.kd_alpha)
            kind, logs = "kd", {"train/ce": ce, "train/kd": kd}
        else:
            loss, _, _ = distill_loss(logits, batch["labels"], alpha=1.0)  # private data: the CE alone
            kind, logs = "ce", {"train/ce": loss}
        self._sums[kind] += loss.detach()
        self._counts[kind] += 1
        if self.hparams.log_steps:
            self.log_dict(logs, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss
