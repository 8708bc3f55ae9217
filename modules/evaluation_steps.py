"""Lightning's ``validate`` and ``test`` for the server module: AdapFu and AdapEmu of its split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric
from typing_extensions import override

from fedbiot_pl.artifacts.export import write_text_atomic
from fedbiot_pl.errors import ConfigError
from fedbiot_pl.evaluation import generation as evaluation  # as a module: it imports this package
from fedbiot_pl.evaluation.tasks import eval_task
from fedbiot_pl.federation.rng_state import capture_rng, restore_rng
from fedbiot_pl.model.losses import causal_lm_ce
from fedbiot_pl.model.views import ModelViews
from fedbiot_pl.modules.generation_module import GenerationModule, Variant
from fedbiot_pl.modules.lora_part_module import LoRAPartModule, lora_only

VARIANTS: tuple[Variant, ...] = ("adapfu", "adapemu")


class SplitEvaluationModule(LoRAPartModule):
    """A :class:`LoRAPartModule` that ``trainer.validate`` and ``trainer.test`` evaluate, both variants.

    **Validate** (also after every ``fit`` epoch when the datamodule has validation rows; Lightning's
    ``check_val_every_n_epoch`` and ``limit_val_batches`` control it): the response-only
    cross-entropy of AdapFu (``split.full_with_adapter``) and AdapEmu (``split.compressed``) on the
    ``val_dataloader`` batches (``input_ids``, ``attention_mask``, ``labels`` with -100 on prompt
    and padding), averaged over every label token of the epoch: ``val/adapfu_loss``,
    ``val/adapemu_loss``.

    **Test**: the datamodule's ``evaluation`` task (an
    :class:`~fedbiot_pl.evaluation.settings.EvaluationSettings`, e.g. GSM8K accuracy, pass@k, QA
    overlap) with the code and torchmetrics of ``train.py evaluate``, so both give the same numbers
    on the same checkpoint: ``test/<task>/<variant>/<metric>``, and the predictions in
    ``<log_dir>/test-<task>-<variant>.predictions.jsonl``. Sampling restarts from the
    settings' seed for each variant; the global random states are restored after the test.

    A checkpoint given to ``validate``/``test`` (``ckpt_path``) must hold this split's LoRA.
    """

    def __init__(self, split: ModelViews, lr: float, betas: tuple[float, float], weight_decay: float) -> None:
        super().__init__(split, lr, betas, weight_decay)
        self.val_loss = nn.ModuleDict({variant: MeanMetric().set_dtype(torch.float64) for variant in VARIANTS})
        self._test_state: dict[str, Any] = {}
        self.validated_epoch: int | None = None
        """The fit epoch whose end last ran the validation loop (its losses are in ``callback_metrics``)."""

    def variant_model(self, variant: Variant) -> nn.Module:
        """AdapFu (the adapter in the full model) or AdapEmu (the compressed model)."""
        return self.split.full_with_adapter if variant == "adapfu" else self.split.compressed

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        trainer = self._trainer
        if trainer is None or trainer.state.fn == "fit" or "state_dict" not in checkpoint:
            return
        expected, found = set(lora_only(self.state_dict())), set(lora_only(checkpoint["state_dict"]))
        missing, extra = sorted(expected - found), sorted(found - expected)
        if missing or extra:
            raise ConfigError(
                f"the checkpoint's LoRA does not fit this split ({len(expected)} tensors): {len(missing)} missing "
                f"{missing[:1]}, {len(extra)} not in the split {extra[:1]}; it was written for another split. Use the "
                "config of the run that wrote it (its config.yaml)."
            )

    @override
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        labels = batch["labels"]
        tokens = int((labels[:, 1:] != -100).sum())
        for variant in VARIANTS:
            logits = self.variant_model(variant)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                                 use_cache=False).logits
            if tokens:
                self.val_loss[variant].update(causal_lm_ce(logits, labels), weight=tokens)
            self.log(f"val/{variant}_loss", self.val_loss[variant], on_step=False, on_epoch=True,
                     batch_size=labels.shape[0])

    @override
    def on_validation_epoch_end(self) -> None:
        # What ClientValidation reads instead of computing (and logging) the same losses again.
        fitting = self.trainer.state.fn == "fit" and not self.trainer.sanity_checking
        self.validated_epoch = self.current_epoch if fitting else None

    def _evaluation_data(self) -> Any:
        if self.trainer.world_size > 1:
            raise ConfigError(
                f"trainer.test runs the evaluation task on one device (it seeds the sampling of each variant and "
                f"writes every prediction); got {self.trainer.world_size} processes. Set trainer.devices: 1 and "
                "trainer.num_nodes: 1 for `test`."
            )
        data = self.trainer.datamodule
        if getattr(data, "evaluation", None) is None or getattr(data, "eval_rows", None) is None:
            raise ConfigError(
                f"trainer.test of {type(self).__name__} needs a datamodule with `evaluation` settings and rows "
                f"(FederatedInstructionDataModule); got {type(data).__name__}."
            )
        return data

    @override
    def on_test_epoch_start(self) -> None:
        data = self._evaluation_data()
        settings = data.evaluation
        self._test_state = {
            "rng": capture_rng(), "seeded": set(),
            "metrics": {v: evaluation.task_metrics(settings.task, data.eval_rows, settings.k)
                        for v in settings.variants},
            "predictions": {v: [] for v in settings.variants},
        }

    @override
    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        data, state = self.trainer.datamodule, self._test_state
        settings, variant = data.evaluation, batch["variant"]
        rows = [data.eval_rows[i] for i in batch["ids"]]
        metrics, predictions = state["metrics"][variant], state["predictions"][variant]
        if variant not in state["seeded"]:  # as train.py evaluate: sampling restarts for each variant
            torch.manual_seed(settings.seed)
            state["seeded"].add(variant)
        self.split.eval()
        task = eval_task(settings.task)
        if not task.generates:  # ranks the row's choices by log-likelihood
            for index, row in zip(batch["ids"], rows, strict=True):
                scores = evaluation.choice_scores(self.variant_model(variant), data.tokenizer, row, settings.task)
                task.update_choices(metrics, row, scores)
                predictions.append(task.choice_record(index, scores))
            return
        generator = GenerationModule(self.split, data.tokenizer, variant, settings.generation)
        raw = generator.generate(batch["input_ids"], batch["attention_mask"])
        cleaned = [[evaluation.postprocess(settings.task, c) for c in cs] for cs in raw]
        evaluation.update_task_metrics(settings.task, metrics, rows, cleaned)
        predictions.extend(
            evaluation.prediction_record(settings.task, i, row, prompt, cs, r)
            for i, row, prompt, cs, r in zip(batch["ids"], rows, batch["prompts"], cleaned, raw, strict=True)
        )

    @override
    def on_test_epoch_end(self) -> None:
        settings, state = self.trainer.datamodule.evaluation, self._test_state
        for variant, metrics in state["metrics"].items():
            for name, value in evaluation.compute_task_metrics(metrics).items():
                self.log(f"test/{settings.task}/{variant}/{name}", torch.tensor(value, dtype=torch.float64,
                                                                                device=self.device))
            if self.trainer.is_global_zero and self.trainer.log_dir:
                lines = "".join(json.dumps(p) + "\n" for p in state["predictions"][variant])
                path = Path(self.trainer.log_dir) / f"test-{settings.task}-{variant}.predictions.jsonl"
                write_text_atomic(path, lines)
        restore_rng(state["rng"])
        self._test_state = {}
