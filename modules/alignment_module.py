"""Server side (lower level): align the emulator to the full model on public data."""

from __future__ import annotations

import torch
from torch import Tensor
from typing_extensions import override

from fedbiot_pl.errors import ConfigError
from fedbiot_pl.model.capture import capture_output, run_until_stopped
from fedbiot_pl.model.losses import causal_lm_ce, kl_teacher_student, normalized_l2
from fedbiot_pl.model.views import ModelViews
from fedbiot_pl.modules.evaluation_steps import SplitEvaluationModule


class EmulatorAlignmentModule(SplitEvaluationModule):
    """Trains the emulator's LoRA so that the compressed model imitates the full model.

    Loss per batch of public data (all in float32):
    ``l2_weight * normalized_l2(emulator output, original layers' output) + kl_weight * KL(full model
    with the current adapter || compressed model) + ce_weight * CE(compressed model, public labels)``.
    FedBiOT uses ``l2_weight=1, ce_weight=0``; offsite-tuning's one-shot distillation
    ``l2_weight=0.9, ce_weight=0.1, kl_weight=0``. Only the emulator's LoRA trains; the adapter (base and
    LoRA), embeddings, norm and head are frozen. Both hidden states come from the same input: the
    compressed model and the full model share the layers below the emulator (the embeddings, plus
    any bottom adapter layers, run in eval mode), so the teacher's input to the original layers is
    exactly the emulator's input.

    Runs under a plain ``lightning.Trainer`` on any dataloader of ``input_ids``/``attention_mask``;
    in a federated run the :class:`~fedbiot_pl.callbacks.FederatedLoop` makes each epoch a round.

    ``trainer.validate`` reports the validation loss of AdapFu and AdapEmu, and ``trainer.test``
    runs the datamodule's evaluation task on both (see :class:`SplitEvaluationModule`); give either
    a round checkpoint as ``ckpt_path``.

    Set :attr:`alignment_enabled` to ``False`` to make ``training_step`` a no-op (the federated loop
    does so in the rounds of algorithms that do not align, and for splits without an emulator).

    Args:
        split: the model split (built in ``configure_model``).
        kl_weight: lambda, the weight of the KL term (0 skips the teacher's logits entirely).
        l2_weight: the weight of the normalised L2 term.
        ce_weight: the weight of the compressed model's cross-entropy on the public labels.
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
        split: ModelViews,
        kl_weight: float = 0.0,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.01,
        include_padding: bool = False,
        fresh_optimizer_each_epoch: bool = True,
        l2_weight: float = 1.0,
        ce_weight: float = 0.0,
    ) -> None:
        super().__init__(split, lr, betas, weight_decay)
        weights = {"kl_weight": kl_weight, "l2_weight": l2_weight, "ce_weight": ce_weight}
        bad = [f"{name} must be >= 0, got {value}." for name, value in weights.items() if value < 0]
        if bad or not any(weights.values()):
            raise ConfigError(" ".join(bad) or "kl_weight, l2_weight and ce_weight are all 0: nothing to align.")
        self.save_hyperparameters(ignore=["split"])
        self.alignment_enabled = True

    @override
    def on_train_epoch_start(self) -> None:
        # Runs after the federated loop's client fits, which set other parts trainable.
        super().on_train_epoch_start()
        if self.hparams.fresh_optimizer_each_epoch:
            for optimizer in self.trainer.optimizers:
                optimizer.state.clear()

    def alignment_losses(
        self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor | None = None
    ) -> dict[str, Tensor]:
        """``{"l2": ..., "kl": ..., "ce": ...}`` for one batch (each only when its weight is > 0)."""
        split, layout = self.split, self.split.layout
        hp = self.hparams
        student_logits, teacher_logits = hp.kl_weight > 0 or hp.ce_weight > 0, hp.kl_weight > 0
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
        student_layer = split.compressed_layer(layout.emulator_positions[-1])
        teacher_layer = split.full_with_adapter_layer(layout.teacher_span[-1])
        with capture_output(student_layer, stop=not student_logits) as h_student:
            student = run_until_stopped(split.compressed, **inputs)
        teacher = h_teacher = None
        if hp.l2_weight > 0 or hp.kl_weight > 0:
            with torch.no_grad(), capture_output(teacher_layer, stop=not teacher_logits) as h_teacher:
                teacher = run_until_stopped(split.full_with_adapter, **inputs)
        mask = None if hp.include_padding else attention_mask
        losses = {}
        if hp.l2_weight > 0:
            losses["l2"] = normalized_l2(h_student.value, h_teacher.value, mask)
        if hp.kl_weight > 0:
            losses["kl"] = kl_teacher_student(student.logits, teacher.logits, mask)
        if hp.ce_weight > 0:
            if labels is None:
                raise ConfigError("ce_weight > 0 needs `labels` in the public batches.")
            losses["ce"] = causal_lm_ce(student.logits, labels)
        return losses

    @override
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor | None:
        if not self.alignment_enabled or not self.split.layout.emulator:
            return None  # nothing to align this epoch: Lightning skips backward and the step
        losses = self.alignment_losses(batch["input_ids"], batch["attention_mask"], batch.get("labels"))
        loss = sum(getattr(self.hparams, f"{name}_weight") * value for name, value in losses.items())
        batch_size = batch["input_ids"].shape[0]
        self.log("align/loss", loss, prog_bar=True, batch_size=batch_size)
        for name, value in losses.items():
            self.log(f"align/{name}", value, batch_size=batch_size)
        return loss
