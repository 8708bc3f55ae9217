"""Client side (upper level): fine-tune the adapter's LoRA on private data."""

from __future__ import annotations

import torch
from torch import Tensor
from typing_extensions import override

from fedbiot_pl.algorithms.base import ProximalKind
from fedbiot_pl.errors import ConfigError
from fedbiot_pl.model.losses import lora_param_proximal, lora_proximal
from fedbiot_pl.model.views import ModelViews
from fedbiot_pl.modules.lora_part_module import LoRAPartModule


class AdapterFinetuneModule(LoRAPartModule):
    """Trains the adapter's LoRA of the compressed model with a proximal term.

    Loss per batch: the causal-LM cross-entropy on response tokens (labels of prompt and padding
    are -100; Hugging Face computes it in float32) plus
    ``proximal_weight * sum_m ||s B A - s B_t A_t||_F^2`` over the adapter's LoRA modules, where
    ``A_t, B_t`` are the adapter weights at the start of the fit (the global adapter a client
    received). Unlike the reference code (bug B1) the term has a real gradient, and it is computed
    on the LoRA factors, never by merging into the frozen weights (bug B2).

    Only the adapter's LoRA trains. Usable alone under a plain ``lightning.Trainer``; the federated
    loop fits it once per client with a fresh lean Trainer (and so a fresh optimizer, as the paper).

    Args:
        split: the model split (built in ``configure_model`` if not yet).
        proximal_weight: epsilon (FedBiOT) or mu (FedProx), the weight of the proximal term.
        proximal: ``delta_w`` = FedBiOT's ``||dW - dW_t||^2`` on ``dW = s B A``; ``params`` =
            FedProx's ``1/2 ||theta - theta_t||^2`` on the LoRA factors.
        lr: AdamW learning rate.
        betas: AdamW betas.
        weight_decay: AdamW weight decay.
        log_steps: log ``train/ce`` and ``train/proximal`` every step (the federated loop turns this
            off: its lean client Trainers have no logger, and it reports :attr:`mean_loss` per fit).
    """

    trained_part = "adapter"

    def __init__(
        self,
        split: ModelViews,
        proximal_weight: float = 0.0,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.01,
        log_steps: bool = True,
        proximal: ProximalKind = "delta_w",
    ) -> None:
        super().__init__(split, lr, betas, weight_decay)
        if proximal_weight < 0:
            raise ConfigError(f"proximal_weight must be >= 0, got {proximal_weight}.")
        if proximal not in ("delta_w", "params"):
            raise ConfigError(f"proximal must be 'delta_w' or 'params', got {proximal!r}.")
        self.save_hyperparameters(ignore=["split"])
        self._loss_sum, self._loss_count = torch.zeros(()), 0  # cross-entropy over the current fit
        self._anchor: list[tuple[Tensor, Tensor, Tensor, Tensor, float]] = []

    @property
    def mean_loss(self) -> float:
        """Mean cross-entropy of the micro-batches of the current (or last) fit."""
        return float(self._loss_sum) / max(self._loss_count, 1)

    @override
    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._loss_sum, self._loss_count = torch.zeros((), device=self.device), 0
        self._anchor = [
            (a, b, a.detach().clone(), b.detach().clone(), scaling)
            for a, b, scaling, _ in self.split.lora_pairs("adapter")
        ]

    @override
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self.split.compressed(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
            use_cache=False,
        )
        loss = out.loss
        self._loss_sum += out.loss.detach()
        self._loss_count += 1
        logs = {"train/ce": out.loss}
        if self.hparams.proximal_weight > 0:
            term = lora_proximal if self.hparams.proximal == "delta_w" else lora_param_proximal
            proximal = term(self._anchor)
            loss = loss + self.hparams.proximal_weight * proximal
            logs["train/proximal"] = proximal
        if self.hparams.log_steps:
            self.log_dict(logs, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss
