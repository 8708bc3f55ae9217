"""Evaluate a split (AdapFu and/or AdapEmu) on a registered task: prompts, batched generation, scores.

What differs between tasks (GSM8K, HumanEval, Dolly, local multiple choice, or one a user registered)
is a method of its :class:`~fedbiot_pl.evaluation.tasks.EvalTask`; the functions here take the
task's name and call them. This module generates in batches (:func:`generate`) and evaluates a split
(:func:`evaluate_split`); it also re-exports the rows (:mod:`~fedbiot_pl.evaluation.eval_data`), the
choice ranking (:mod:`~fedbiot_pl.evaluation.choice_ranking`) and the results
(:mod:`~fedbiot_pl.evaluation.results`) by their names here.

Used by ``python -m fedbiot_pl.evaluate`` (or ``python train.py evaluate``) on a finished run, by
:class:`~fedbiot_pl.callbacks.PeriodicEvaluation` during one, and by ``trainer.test`` (``python
train.py test``) of the server module, step by step (:mod:`fedbiot_pl.modules.evaluation_steps`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from fedbiot_pl.evaluation.choice_ranking import choice_logliks, choice_record, choice_scores, multiple_choice
from fedbiot_pl.evaluation.eval_data import DEFAULT_DATA, build_prompts, read_eval_records
from fedbiot_pl.evaluation.results import (
    EvalResult,
    compute_task_metrics,
    postprocess,
    prediction_record,
    score,
    task_metrics,
    update_task_metrics,
)
from fedbiot_pl.evaluation.tasks import Task, eval_task
from fedbiot_pl.model.views import ModelViews
from fedbiot_pl.modules.generation_module import GenerationModule, GenerationSettings, Variant, left_padded_batches
from fedbiot_pl.quiet import expected_warnings
from fedbiot_pl.scaling.keep_on_device import KeepOnDeviceStrategy

__all__ = [
    "DEFAULT_DATA", "EvalResult", "Task", "build_prompts", "choice_logliks", "choice_record", "choice_scores",
    "compute_task_metrics", "evaluate_split", "generate", "generation_dataloader", "multiple_choice", "postprocess",
    "prediction_record", "read_eval_records", "score", "task_metrics", "update_task_metrics",
]


def generation_dataloader(tokenizer: Any, prompts: Sequence[str], batch_size: int) -> DataLoader:
    """Left-padded prompt batches (with BOS); each batch also carries the prompts' indices.

    Args:
        tokenizer: The tokenizer.
        prompts: The prompts.
        batch_size: Prompts per batch.

    Returns:
        A loader of ready batches.
    """
    return DataLoader(left_padded_batches(tokenizer, list(prompts), list(range(len(prompts))), batch_size),
                      batch_size=None)


_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero")
_EXPECTED_WARNINGS = r".*(does not have many workers|LeafSpec).*"


@contextmanager
def _quiet_predict() -> Iterator[None]:
    """Lightning's per-Trainer banners at WARNING and its expected warnings ignored, inside the block."""
    levels = {name: logging.getLogger(name).level for name in _LIGHTNING_LOGGERS}
    for name in _LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        with expected_warnings(_EXPECTED_WARNINGS):
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def generate(split: ModelViews, tokenizer: Any, prompts: Sequence[str], variant: Variant,
             settings: GenerationSettings, batch_size: int, device: torch.device | None = None,
             seed: int | None = None) -> list[list[str]]:
    """Completions per prompt, through ``Trainer.predict`` of a :class:`GenerationModule`.

    It runs on ``device`` (default: the split's device) and leaves the shared model there afterwards.
    With ``seed``, sampling starts from ``torch.manual_seed(seed)`` just before the first batch and
    the global random states are restored afterwards (a run being trained draws on as before).

    Args:
        split: The model views with the run's LoRA.
        tokenizer: The tokenizer.
        prompts: The prompts.
        variant: ``adapfu`` or ``adapemu``.
        settings: Decoding settings.
        batch_size: Prompts per batch.
        device: Where to generate.
        seed: Seed of the sampling.

    Returns:
        ``settings.num_return_sequences`` completions per prompt, in the prompts' order.
    """
    device = device or next(split.parameters()).device
    module = GenerationModule(split, tokenizer, variant, settings, seed=seed)
    forked = []
    if device.type == "cuda":
        forked = [device.index if device.index is not None else torch.cuda.current_device()]
    with _quiet_predict(), torch.random.fork_rng(devices=forked, enabled=seed is not None):
        trainer = pl.Trainer(accelerator="cuda" if device.type == "cuda" else device.type,
                             strategy=KeepOnDeviceStrategy(device=device), devices=1, logger=False,
                             enable_model_summary=False, enable_progress_bar=False, enable_checkpointing=False)
        batches = trainer.predict(module, generation_dataloader(tokenizer, prompts, batch_size))
    return [item["completions"] for batch in batches for item in batch]


def evaluate_split(split: ModelViews, tokenizer: Any, task: Task, rows: Sequence[dict[str, Any]],
                   variants: Sequence[Variant] = ("adapfu", "adapemu"), settings: GenerationSettings | None = None,
                   batch_size: int = 8, shots: int = 8, seed: int = 0, ks: Sequence[int] = (1,),
                   device: torch.device | None = None) -> EvalResult:
    """Generate with each variant, post-process and score (a task that does not generate ranks its choices).

    ``seed`` fixes the GSM8K demonstration order and, restarted for each variant, the sampling.

    Args:
        split: The model views with the run's LoRA.
        tokenizer: The tokenizer.
        task: The task name.
        rows: Evaluation rows (:func:`read_eval_records`).
        variants: ``adapfu`` and/or ``adapemu``.
        settings: Decoding settings (default greedy, 256 new tokens).
        batch_size: Prompts per generation batch.
        shots: GSM8K demonstrations.
        seed: Seed of the demonstration order and the sampling.
        ks: The ``k`` of pass@k.
        device: Where to generate (default: the split's device).

    Returns:
        Metrics and predictions per variant.
    """
    spec = eval_task(task)
    if not spec.generates:
        return multiple_choice(split, tokenizer, rows, variants, spec.name)
    settings = settings or GenerationSettings()
    prompts = build_prompts(spec.name, rows, shots=shots, seed=seed)
    result = EvalResult(spec.name, {}, {})
    for variant in variants:
        raw = generate(split, tokenizer, prompts, variant, settings, batch_size, device, seed=seed)
        cleaned = [[spec.clean(c) for c in cs] for cs in raw]
        result.metrics[variant] = spec.score_rows(rows, cleaned, ks)
        result.predictions[variant] = [spec.prediction_record(i, rows[i], prompts[i], cs, r)
                                       for i, (cs, r) in enumerate(zip(cleaned, raw, strict=True))]
    return result
