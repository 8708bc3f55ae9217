"""Server side (lower level): align the emulator to the full model on public data."""

from __future__ import annotations

import torch
from torch import Tensor
from typing_extensions import override

from fedbiot_pl.capture import capture_output, run_until_stopped
from fedbiot_pl.losses import kl_teacher_student, normalized_l2
from fedbiot_pl.modules.lora_part_module import LoRAPartModule
from fedbiot_pl.split import SplitModel


class EmulatorAlignmentModule(LoRAPartModule):
    """Trains the emulator's LoRA so that the compressed model imitates the full model.

    Loss per batch of public data (all in float32):
    ``normalized_l2(emulator output, original layers' output) + kl_weight * KL(full model with the
    current adapter || compressed model)``. Only the emulator's LoRA trains; the adapter (base and
    LoRA), embeddings, norm and head are frozen. Both hidden states come from the same input: the
    compressed model and the full model share the layers below the emulator (the embeddings, plus
    any bottom adapter layers, run in eval mode), so the teacher's input to the original layers is
    exactly the emulator's input.

    Runs under a plain ``lightning.Trainer`` on any dataloader of ``input_ids``/``attention_mask``;
    in a federated run the :class:`~fedbiot_pl.callbacks.FederatedLoop` makes each epoch a round.

    Args:
        split: the model split (built in ``configure_model``).
        kl_weight: lambda, the weight of the KL term (0 skips the teacher's logits entirely).
        lr: AdamW learning rate.
        betas: AdamW betas.
        weight_decay: AdamW weight decay.
        include_padding: include padded positions in both terms, as the reference code did.
        fresh_optimizer_each_epoch: reset the AdamW state at every epoch (= round), as the paper's
            code re-creates the optimizer for every alignment phase.
    """

    trained_part = "emulator"

    def __init__(
        self,
        split: SplitModel,
        kl_weight: float = 0.0,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.01,
        include_padding: bool = False,
        fresh_optimizer_each_epoch: bool = True,
    ) -> None:
        super().__init__(split, lr, betas, weight_decay)
        if kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {kl_weight}.")
        self.save_hyperparameters(ignore=["split"])

    @override
    def on_train_epoch_start(self) -> None:
        # Runs after the federated loop's client fits, which set other parts trainable.
        super().on_train_epoch_start()
        if self.hparams.fresh_optimizer_each_epoch:
            for optimizer in self.trainer.optimizers:
                optimizer.state.clear()

    def alignment_losses(self, input_ids: Tensor, attention_mask: Tensor) -> dict[str, Tensor]:
        """``{"l2": ..., "kl": ...}`` for one batch (``kl`` only when ``kl_weight > 0``)."""
        split, layout = self.split, self.split.layout
        need_logits = self.hparams.kl_weight > 0
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
        student_layer = split.compressed_layer(layout.emulator_positions[-1])
        teacher_layer = split.full_with_adapter_layer(layout.teacher_span[-1])
        with capture_output(student_layer, stop=not need_logits) as h_student:
            student = run_until_stopped(split.compressed, **inputs)
        with torch.no_grad(), capture_output(teacher_layer, stop=not need_logits) as h_teacher:
            teacher = run_until_stopped(split.full_with_adapter, **inputs)
        mask = None if self.hparams.include_padding else attention_mask
        losses = {"l2": normalized_l2(h_student.value, h_teacher.value, mask)}
        if need_logits:
            losses["kl"] = kl_teacher_student(student.logits, teacher.logits, mask)
        return losses

    @override
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        losses = self.alignment_losses(batch["input_ids"], batch["attention_mask"])
        loss = losses["l2"] + self.hparams.kl_weight * losses.get("kl", 0.0)
        batch_size = batch["input_ids"].shape[0]
        self.log("align/loss", loss, prog_bar=True, batch_size=batch_size)
        for name, value in losses.items():
            self.log(f"align/{name}", value, batch_size=batch_size)
        return loss
