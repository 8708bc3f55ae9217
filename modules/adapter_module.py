"""Client side (upper level): fine-tune the adapter's LoRA on private data."""

from __future__ import annotations

from torch import Tensor
from torchmetrics.aggregation import MeanMetric
from typing_extensions import override

from fedbiot_pl.losses import lora_proximal
from fedbiot_pl.modules.lora_part_module import LoRAPartModule
from fedbiot_pl.split import SplitModel


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
        proximal_weight: epsilon, the weight of the proximal term.
        lr: AdamW learning rate.
        betas: AdamW betas.
        weight_decay: AdamW weight decay.
    """

    trained_part = "adapter"

    def __init__(
        self,
        split: SplitModel,
        proximal_weight: float = 0.0,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.01,
    ) -> None:
        super().__init__(split, lr, betas, weight_decay)
        if proximal_weight < 0:
            raise ValueError(f"proximal_weight must be >= 0, got {proximal_weight}.")
        self.save_hyperparameters(ignore=["split"])
        self.fit_loss = MeanMetric()  # mean cross-entropy over the current fit
        self._anchor: list[tuple[Tensor, Tensor, Tensor, Tensor, float]] = []

    @override
    def on_fit_start(self) -> None:
        self.fit_loss.reset()
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
        batch_size = batch["input_ids"].shape[0]
        self.fit_loss.update(out.loss.detach())
        self.log("train/ce", out.loss, prog_bar=True, batch_size=batch_size)
        if self.hparams.proximal_weight > 0:
            proximal = lora_proximal(self._anchor)
            loss = loss + self.hparams.proximal_weight * proximal
            self.log("train/proximal", proximal, batch_size=batch_size)
        return loss
