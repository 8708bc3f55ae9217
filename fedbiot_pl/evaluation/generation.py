"""Evaluate a split (AdapFu and/or AdapEmu) on a registered task: prompts, generation or choice log-likelihoods, scores.

What differs between tasks (GSM8K, HumanEval, Dolly, local multiple choice, or one a user registered)
is a method of its :class:`~fedbiot_pl.evaluation.tasks.EvalTask`; the functions here take the
task's name and call them.

Used by ``python -m fedbiot_pl.evaluate`` (or ``python train.py evaluate``) on a finished run, by
:class:`~fedbiot_pl.callbacks.PeriodicEvaluation` during one, and by ``trainer.test`` (``python
train.py test``) of the server module, step by step (:mod:`fedbiot_pl.modules.evaluation_steps`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch.utils.data import DataLoader
from torchmetrics import Metric
from typing_extensions import override

from fedbiot_pl.assets import resolve
from fedbiot_pl.evaluation.records import read_records
from fedbiot_pl.evaluation.tasks import EVAL_TASKS, Task, compute_metrics, eval_task
from fedbiot_pl.model.views import ModelViews
from fedbiot_pl.modules.generation_module import GenerationModule, GenerationSettings, Variant, left_padded_batches
from fedbiot_pl.quiet import expected_warnings

__all__ = [
    "DEFAULT_DATA", "EvalResult", "Task", "build_prompts", "choice_logliks", "choice_record", "choice_scores",
    "compute_task_metrics", "evaluate_split", "generate", "generation_dataloader", "multiple_choice", "postprocess",
    "prediction_record", "read_eval_records", "score", "task_metrics", "update_task_metrics",
]


class _DefaultData(Mapping[str, str]):
    """Task name -> its default evaluation file, for the registered tasks that have one (a live view)."""

    def _names(self) -> list[str]:
        return [name for name, task in EVAL_TASKS.items() if task.default_data is not None]

    def __getitem__(self, name: str) -> str:
        default = EVAL_TASKS[name].default_data if name in EVAL_TASKS else None
        if default is None:
            raise KeyError(name)
        return default

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


DEFAULT_DATA: Mapping[str, str] = _DefaultData()
"""Task name -> the evaluation file used when none is given (:attr:`EvalTask.default_data`): gsm8k only, built in."""


def read_eval_records(task: Task, path: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of a ``.jsonl``/``.jsonl.gz`` (or JSON list) file, checked for the task's fields.

    Args:
        task: The task name.
        path: The file (or ``embedded:...``).
        limit: Read the first ``limit`` rows only.

    Returns:
        The rows.

    Raises:
        ConfigError: ``task`` is not a registered task.
        FileNotFoundError: The file does not exist.
        ValueError: A row the task cannot use, naming the file, the row and the field.
    """
    spec = eval_task(task)
    file = Path(resolve(path))
    if not file.is_file():
        raise FileNotFoundError(f"evaluation data {path!r} does not exist (looked for {file}).")
    numbered = read_records(file)
    numbered = numbered[:limit] if limit else numbered
    for number, row in numbered:
        problem = spec.check_row(row)
        if problem:
            raise ValueError(f"{file}: row {number} {problem}")
    return [row for _, row in numbered]


@torch.no_grad()
def choice_logliks(model: torch.nn.Module, tokenizer: Any, prompt: str, choices: Sequence[str],
                   normalize: bool = False) -> list[float]:
    """Log-likelihood of each choice's tokens after ``prompt`` (mean per token with ``normalize``).

    The choice is tokenised together with the prompt, so its score counts exactly the tokens that
    follow the prompt's own tokens.

    Args:
        model: The causal LM.
        tokenizer: Its tokenizer.
        prompt: The text before each choice.
        choices: The continuations, each starting with a space.
        normalize: Average over the choice's tokens instead of summing.

    Returns:
        One score per choice.

    Raises:
        ValueError: A choice does not extend the prompt's tokens.
    """
    from fedbiot_pl.data.tokenization import encode_prompt

    device = next(model.parameters()).device
    prefix = encode_prompt(tokenizer, prompt)
    scores = []
    for choice in choices:
        ids = encode_prompt(tokenizer, prompt + choice)
        if ids[: len(prefix)] != prefix or len(ids) == len(prefix):
            raise ValueError(f"choice {choice!r} does not extend the prompt's tokens; start it with a space.")
        logits = model(input_ids=torch.tensor([ids], device=device)).logits[0, :-1].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        targets = torch.tensor(ids[1:], device=device)
        picked = logprobs.gather(1, targets[:, None])[len(prefix) - 1 :, 0]
        scores.append(float(picked.mean() if normalize else picked.sum()))
    return scores


def choice_scores(model: torch.nn.Module, tokenizer: Any, row: dict[str, Any], task: Task = "mc") -> list[float]:
    """Log-likelihood of each of a choice row's :meth:`~EvalTask.choices` after its :meth:`~EvalTask.prompt`.

    Args:
        model: The causal LM (a variant of the split).
        tokenizer: Its tokenizer.
        row: The evaluation row.
        task: A task with ``generates=False``.

    Returns:
        One score per choice.
    """
    spec = eval_task(task)
    return choice_logliks(model, tokenizer, spec.prompt(row), spec.choices(row))


def choice_record(index: int, scores: list[float], task: Task = "mc") -> dict[str, Any]:
    """The prediction of one choice row: its choice scores and the picked choice.

    Args:
        index: The row's position.
        scores: The score of each choice.
        task: A task with ``generates=False``.

    Returns:
        The prediction record.
    """
    return eval_task(task).choice_record(index, scores)


def multiple_choice(split: ModelViews, tokenizer: Any, rows: Sequence[dict[str, Any]],
                    variants: Sequence[Variant], task: Task = "mc") -> EvalResult:
    """Accuracy of picking the choice with the highest log-likelihood after the task's prompt.

    Args:
        split: The model views with the run's LoRA.
        tokenizer: The tokenizer.
        rows: The evaluation rows.
        variants: ``adapfu`` and/or ``adapemu``.
        task: A task with ``generates=False``.

    Returns:
        Metrics and predictions per variant.
    """
    spec = eval_task(task)
    split.eval()
    result = EvalResult(spec.name, {}, {})
    for variant in variants:
        model = split.full_with_adapter if variant == "adapfu" else split.compressed
        metrics, predictions = spec.metrics(rows), []
        for i, row in enumerate(rows):
            scores = choice_scores(model, tokenizer, row, spec.name)
            spec.update_choices(metrics, row, scores)
            predictions.append(spec.choice_record(i, scores))
        result.metrics[variant] = compute_metrics(metrics)
        result.predictions[variant] = predictions
    return result


def build_prompts(task: Task, rows: Sequence[dict[str, Any]], shots: int = 8, seed: int = 0) -> list[str]:
    """The task's prompt of every row.

    Args:
        task: The task name.
        rows: The evaluation rows.
        shots: Few-shot demonstrations (GSM8K).
        seed: Seed of the demonstration order (GSM8K).

    Returns:
        One prompt per row.
    """
    spec = eval_task(task)
    return [spec.prompt(row, index=i, shots=shots, seed=seed) for i, row in enumerate(rows)]


def postprocess(task: Task, completion: str) -> str:
    """The task's cleaning of a completion (:meth:`EvalTask.clean`).

    Args:
        task: The task name.
        completion: Generated text.

    Returns:
        The scored text.
    """
    return eval_task(task).clean(completion)


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


class _StayOnDevice(SingleDeviceStrategy):
    """A single-device strategy that leaves the (shared) model where it is, at set-up and at teardown.

    Lightning's ``Strategy.teardown`` moves the module to the CPU; the split evaluated here is the
    one being trained (or served), so it must stay on its device.
    """

    @override
    def model_to_device(self) -> None:
        module = self.model
        if any(t.device != self.root_device for t in [*module.parameters(), *module.buffers()]):
            module.to(self.root_device)

    @override
    def teardown(self) -> None:
        self.precision_plugin.teardown()
        if self.accelerator is not None:
            self.accelerator.teardown()
        self.checkpoint_io.teardown()


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
                             strategy=_StayOnDevice(device=device), devices=1, logger=False,
                             enable_model_summary=False, enable_progress_bar=False, enable_checkpointing=False)
        batches = trainer.predict(module, generation_dataloader(tokenizer, prompts, batch_size))
    return [item["completions"] for batch in batches for item in batch]


def task_metrics(task: Task, rows: Sequence[dict[str, Any]], ks: Sequence[int] = (1,), timeout: float = 10.0,
                 workers: int = 2) -> dict[str, Metric]:
    """The task's torchmetrics, empty (:meth:`EvalTask.metrics`); feed them with :func:`update_task_metrics`.

    Built in: ``accuracy`` (gsm8k, mc), ``pass@k`` (humaneval; one
    :class:`~fedbiot_pl.evaluation.metrics.PassAtK` over every row's ``task_id`` that computes each ``k``) or
    ``rougeL``, ``token_f1``, ``exact_match`` (dolly).

    Args:
        task: The task name.
        rows: The evaluation rows.
        ks: The ``k`` of pass@k.
        timeout: Seconds per sandboxed program.
        workers: Parallel sandboxed programs.

    Returns:
        ``{name: metric}``.
    """
    return eval_task(task).metrics(rows, ks, timeout, workers)


def update_task_metrics(task: Task, metrics: dict[str, Metric], rows: Sequence[dict[str, Any]],
                        completions: Sequence[Sequence[str]]) -> None:
    """Add the post-processed completions of ``rows`` (gsm8k/dolly score the first one per prompt).

    Args:
        task: The task name.
        metrics: The dict of :func:`task_metrics`.
        rows: Evaluation rows.
        completions: Their cleaned completions.
    """
    eval_task(task).update(metrics, rows, completions)


def compute_task_metrics(metrics: dict[str, Metric]) -> dict[str, float]:
    """``{name: value}`` of :func:`task_metrics` (pass@k gives one entry per ``k``).

    Args:
        metrics: The updated metrics.

    Returns:
        Plain floats.
    """
    return compute_metrics(metrics)


def score(task: Task, rows: Sequence[dict[str, Any]], completions: Sequence[Sequence[str]],
          ks: Sequence[int] = (1,), timeout: float = 10.0, workers: int = 2) -> dict[str, float]:
    """Task metrics of post-processed completions (first completion per prompt for gsm8k/dolly).

    Args:
        task: The task name.
        rows: Evaluation rows.
        completions: Their cleaned completions.
        ks: The ``k`` of pass@k.
        timeout: Seconds per sandboxed program.
        workers: Parallel sandboxed programs.

    Returns:
        ``{metric name: value}``.
    """
    return eval_task(task).score_rows(rows, completions, ks, timeout, workers)


def prediction_record(task: Task, index: int, row: dict[str, Any], prompt: str, completions: list[str],
                      raw: list[str]) -> dict[str, Any]:
    """One line of a ``<task>-<variant>.predictions.jsonl`` file of a generation task.

    Args:
        task: The task name.
        index: The row's position.
        row: The evaluation row.
        prompt: Its prompt.
        completions: Cleaned completions.
        raw: Completions as generated.

    Returns:
        The record (:meth:`EvalTask.prediction_record`).
    """
    return eval_task(task).prediction_record(index, row, prompt, completions, raw)


@dataclass
class EvalResult:
    """Metrics and predictions of one task for each variant.

    Attributes:
        task: The task name.
        metrics: ``{variant: {metric: value}}``.
        predictions: ``{variant: [prediction record, ...]}``.
    """

    task: str
    metrics: dict[str, dict[str, float]]
    predictions: dict[str, list[dict[str, Any]]]


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
                                       for i, (cs, r) in enumerate(zip(cleaned, raw))]
    return result
