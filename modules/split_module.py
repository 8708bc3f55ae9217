"""Split-learning client: trains the LoRA of its own layers; the server's layers run across a link."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from typing_extensions import override

from fedbiot_pl.errors import ConfigError
from fedbiot_pl.model.assembly import decoder_of
from fedbiot_pl.model.views import ModelViews
from fedbiot_pl.modules.lora_part_module import LoRAPartModule
from fedbiot_pl.split.link import SplitLink
from fedbiot_pl.split.segments import SplitSegments
from fedbiot_pl.split.server import cpu_copy


class SplitClientModule(LoRAPartModule):
    """The client of split learning: its bottom layers (and, U-shaped, its top layers and head).

    A training step runs the bottom segment once, sends the cut activations through :attr:`link`,
    and (U-shaped) runs the top segment on the server's answer and computes the loss with the labels
    that never left the client; vanilla gets the loss from the server. Lightning's backward reaches
    the server through the link and comes back into the bottom layers; at the end of each
    accumulation window the client's AdamW steps and the link tells the server to step too. One
    forward pass per step: LoRA dropout masks are those of the unsplit model under the same seed.

    Usable alone under a plain ``lightning.Trainer`` with any :class:`~fedbiot_pl.split.link.SplitLink`.

    Args:
        split: the model views (the full model with LoRA on every layer).
        cut_layer: ``k``, decoder layers below the cut.
        client_top_layers: ``m``, the client's top layers (0 = vanilla).
        link: the line to the server (set later by the algorithm when ``None``).
        lr: AdamW learning rate.
        betas: AdamW betas.
        weight_decay: AdamW weight decay.
        log_steps: log ``train/ce`` every step (off in the federated loop's fits).
    """

    trained_part = "all"

    def __init__(self, split: ModelViews, cut_layer: int, client_top_layers: int = 0, link: SplitLink | None = None,
                 lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.95), weight_decay: float = 0.01,
                 log_steps: bool = True) -> None:
        super().__init__(split, lr, betas, weight_decay)
        if cut_layer < 0 or client_top_layers < 0:
            raise ConfigError(f"cut_layer and client_top_layers must be >= 0, got {cut_layer}, {client_top_layers}.")
        self.save_hyperparameters(ignore=["split", "link"])
        self.link = link
        self.segments: SplitSegments | None = None
        self._loss_sum, self._loss_count = torch.zeros(()), 0

    @property
    def mean_loss(self) -> float:
        """Mean cross-entropy of the micro-batches of the current (or last) fit."""
        return float(self._loss_sum) / max(self._loss_count, 1)

    def client_lora(self) -> dict[str, torch.nn.Parameter]:
        """The live LoRA of the client's layers."""
        return self.split.lora_of_layers(self.segments.client_positions())

    @override
    def configure_model(self) -> None:
        self.split.build()
        if self.segments is None:
            layers = decoder_of(self.split.compressed.get_base_model()).layers
            self.segments = SplitSegments(self.split.full, layers, self.hparams.cut_layer,
                                          self.hparams.client_top_layers, side="client")

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer | None:
        params = list(self.client_lora().values())
        if not params:
            return None
        return torch.optim.AdamW(params, lr=self.hparams.lr, betas=tuple(self.hparams.betas),
                                 weight_decay=self.hparams.weight_decay)

    @override
    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.link is None:
            raise ConfigError("SplitClientModule has no link to a split server; give `link` (a SplitLink).")
        self._loss_sum, self._loss_count = torch.zeros((), device=self.device), 0

    @override
    def on_train_start(self) -> None:
        super().on_train_start()
        if self.link.optimizer_state is not None and self.trainer.optimizers:
            self.trainer.optimizers[0].load_state_dict(self.link.optimizer_state)

    @override
    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        for segment in (self.segments.bottom, self.segments.top):
            if segment is not None:
                segment.layers.train()

    @override
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        mask = batch["attention_mask"]
        hidden = self.segments.bottom(mask, input_ids=batch["input_ids"])
        if self.segments.top is None:
            loss = self.link.exchange(hidden, mask, batch["labels"])
        else:
            loss = self.segments.top(mask, hidden=self.link.exchange(hidden, mask), labels=batch["labels"])
        self._loss_sum += loss.detach()
        self._loss_count += 1
        if self.hparams.log_steps:
            self.log("train/ce", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    @override
    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.link.step()

    @override
    def on_train_end(self) -> None:
        if self.trainer.optimizers:
            self.link.optimizer_state = cpu_copy(self.trainer.optimizers[0].state_dict())
