"""Evaluate a split (AdapFu and/or AdapEmu) on GSM8K, HumanEval, Dolly, or any local multiple-choice
set (rows with ``question``, optional ``context``, ``choices`` and the ``answer`` index; HELM-style
tasks exported to that shape): prompts, generation or choice log-likelihoods, scores.

Used by ``python -m fedbiot_pl.evaluate`` (or ``python train.py evaluate``) on a finished run, by
:class:`~fedbiot_pl.callbacks.PeriodicEvaluation` during one, and by ``trainer.test`` (``python
train.py test``) of the server module, step by step (:mod:`fedbiot_pl.modules.evaluation_steps`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader
from torchmetrics import Metric

from fedbiot_pl.assets import resolve
from fedbiot_pl.evaluation.prompts import clean_code, code_prompt, gsm8k_prompt, qa_prompt, strip_chat_tail
from fedbiot_pl.modules.generation_module import GenerationModule, GenerationSettings, Variant, left_padded_batches
from fedbiot_pl.score import read_records
from fedbiot_pl.model.views import SplitModel

Task = Literal["gsm8k", "humaneval", "dolly", "mc"]
REQUIRED = {"gsm8k": ("question", "answer"), "humaneval": ("task_id", "prompt", "test", "entry_point"),
            "dolly": ("instruction", "response"), "mc": ("question",)}
DEFAULT_DATA = {"gsm8k": "embedded:data/gsm8k/test_sample.jsonl"}


def read_eval_records(task: Task, path: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of a ``.jsonl``/``.jsonl.gz`` (or JSON list) file, checked for the task's fields.

    Raises:
        FileNotFoundError / ValueError: naming the file, the row and the field.
    """
    file = Path(resolve(path))
    if not file.is_file():
        raise FileNotFoundError(f"evaluation data {path!r} does not exist (looked for {file}).")
    numbered = read_records(file)
    numbered = numbered[:limit] if limit else numbered
    for number, row in numbered:
        missing = [f for f in REQUIRED[task] if not isinstance(row.get(f), str)]
        if missing:
            raise ValueError(f"{file}: row {number} lacks the string field(s) {missing} that {task} evaluation needs.")
        if task == "mc" and not _valid_choices(row):
            raise ValueError(f"{file}: row {number} needs `choices` (a list of >= 2 strings) and `answer` (the "
                             "0-based index of the correct choice).")
    return [row for _, row in numbered]


def _valid_choices(row: dict[str, Any]) -> bool:
    choices, answer = row.get("choices"), row.get("answer")
    return (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) for c in choices)
            and isinstance(answer, int) and 0 <= answer < len(choices))


@torch.no_grad()
def choice_logliks(model: torch.nn.Module, tokenizer: Any, prompt: str, choices: Sequence[str],
                   normalize: bool = False) -> list[float]:
    """Log-likelihood of each choice's tokens after ``prompt`` (mean per token with ``normalize``).

    The choice is tokenised together with the prompt, so its score counts exactly the tokens that
    follow the prompt's own tokens.
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


def choice_scores(model: torch.nn.Module, tokenizer: Any, row: dict[str, Any]) -> list[float]:
    """Log-likelihood of each of an ``mc`` row's choices after its Alpaca prompt."""
    prompt = qa_prompt(row["question"], row.get("context") or "")
    return choice_logliks(model, tokenizer, prompt, [f" {c}" for c in row["choices"]])


def choice_record(index: int, scores: list[float]) -> dict[str, Any]:
    """The prediction of one ``mc`` row: its choice scores and the picked choice."""
    return {"index": index, "scores": scores, "choice": max(range(len(scores)), key=scores.__getitem__)}


def multiple_choice(split: SplitModel, tokenizer: Any, rows: Sequence[dict[str, Any]],
                    variants: Sequence[Variant]) -> EvalResult:
    """Accuracy of picking the choice with the highest log-likelihood after the Alpaca prompt."""
    split.eval()
    result = EvalResult("mc", {}, {})
    for variant in variants:
        model = split.full_with_adapter if variant == "adapfu" else split.compressed
        metrics, predictions = task_metrics("mc", rows), []
        for i, row in enumerate(rows):
            scores = choice_scores(model, tokenizer, row)
            metrics["accuracy"].update([scores], [row["answer"]])
            predictions.append(choice_record(i, scores))
        result.metrics[variant] = compute_task_metrics(metrics)
        result.predictions[variant] = predictions
    return result


def build_prompts(task: Task, rows: Sequence[dict[str, Any]], shots: int = 8, seed: int = 0) -> list[str]:
    if task == "gsm8k":
        return [gsm8k_prompt(row["question"], shots=shots, seed=seed, index=i) for i, row in enumerate(rows)]
    if task == "humaneval":
        return [code_prompt(row["prompt"]) for row in rows]
    return [qa_prompt(row["instruction"], row.get("context") or "") for row in rows]


def postprocess(task: Task, completion: str) -> str:
    return clean_code(completion) if task == "humaneval" else strip_chat_tail(completion)


def generation_dataloader(tokenizer: Any, prompts: Sequence[str], batch_size: int) -> DataLoader:
    """Left-padded prompt batches (with BOS); each batch also carries the prompts' indices."""
    return DataLoader(left_padded_batches(tokenizer, list(prompts), list(range(len(prompts))), batch_size),
                      batch_size=None)


def generate(split: SplitModel, tokenizer: Any, prompts: Sequence[str], variant: Variant,
             settings: GenerationSettings, batch_size: int, device: torch.device | None = None,
             seed: int | None = None) -> list[list[str]]:
    """Completions per prompt, through ``Trainer.predict`` of a :class:`GenerationModule` on
    ``device`` (default: the split's device), leaving the shared model there afterwards.

    With ``seed``, sampling starts from ``torch.manual_seed(seed)`` just before the first batch and
    the global random states are restored afterwards (a run being trained draws on as before).
    """
    from fedbiot_pl.federation.client_trainer import KeepOnDeviceStrategy, client_fit_context

    device = device or next(split.parameters()).device
    module = GenerationModule(split, tokenizer, variant, settings, seed=seed)
    forked = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with client_fit_context(), torch.random.fork_rng(devices=forked, enabled=seed is not None):
        trainer = pl.Trainer(accelerator="cuda" if device.type == "cuda" else device.type,
                             strategy=KeepOnDeviceStrategy(device=device), devices=1, logger=False,
                             enable_model_summary=False, enable_progress_bar=False, enable_checkpointing=False)
        batches = trainer.predict(module, generation_dataloader(tokenizer, prompts, batch_size))
    return [item["completions"] for batch in batches for item in batch]


def task_metrics(task: Task, rows: Sequence[dict[str, Any]], ks: Sequence[int] = (1,), timeout: float = 10.0,
                 workers: int = 2) -> dict[str, Metric]:
    """The task's torchmetrics, empty: ``accuracy`` (gsm8k, mc), ``pass@k`` (humaneval; one
    :class:`~fedbiot_pl.evaluation.metrics.PassAtK` over every row's ``task_id`` that computes each ``k``) or
    ``rougeL``, ``token_f1``, ``exact_match`` (dolly). Feed them with :func:`update_task_metrics`."""
    from fedbiot_pl.evaluation import metrics

    if task in ("gsm8k", "mc"):
        return {"accuracy": metrics.GSM8KAccuracy() if task == "gsm8k" else metrics.MultipleChoiceAccuracy()}
    if task == "humaneval":
        from fedbiot_pl.evaluation.sandbox import Limits

        return {"pass@k": metrics.PassAtK([row["task_id"] for row in rows], k=tuple(ks),
                                          limits=Limits(timeout_s=timeout), workers=workers)}
    return {"rougeL": metrics.RougeL(), "token_f1": metrics.TokenF1(), "exact_match": metrics.ExactMatch()}


def update_task_metrics(task: Task, metrics: dict[str, Metric], rows: Sequence[dict[str, Any]],
                        completions: Sequence[Sequence[str]]) -> None:
    """Add the post-processed completions of ``rows`` (gsm8k/dolly score the first one per prompt)."""
    if task == "humaneval":
        task_ids = [row["task_id"] for row, c in zip(rows, completions) for _ in c]
        metrics["pass@k"].update(task_ids, [c for cs in completions for c in cs], {r["task_id"]: r for r in rows})
        return
    references = [row["answer"] if task == "gsm8k" else row["response"] for row in rows]
    for metric in metrics.values():
        metric.update([c[0] for c in completions], references)


def compute_task_metrics(metrics: dict[str, Metric]) -> dict[str, float]:
    """``{name: value}`` of :func:`task_metrics` (pass@k gives one entry per ``k``)."""
    out: dict[str, float] = {}
    for name, metric in metrics.items():
        value = metric.compute()
        out.update({k: float(v) for k, v in value.items()} if isinstance(value, dict) else {name: float(value)})
    return out


def score(task: Task, rows: Sequence[dict[str, Any]], completions: Sequence[Sequence[str]],
          ks: Sequence[int] = (1,), timeout: float = 10.0, workers: int = 2) -> dict[str, float]:
    """Task metrics of post-processed completions (first completion per prompt for gsm8k/dolly)."""
    metrics = task_metrics(task, rows, ks, timeout, workers)
    update_task_metrics(task, metrics, rows, completions)
    return compute_task_metrics(metrics)


def prediction_record(task: Task, index: int, row: dict[str, Any], prompt: str, completions: list[str],
                      raw: list[str]) -> dict[str, Any]:
    """One line of a ``<task>-<variant>.predictions.jsonl`` file of a generation task."""
    return {"index": index, **({"task_id": row["task_id"]} if task == "humaneval" else {}), "prompt": prompt,
            "completions": completions, "raw": raw}


@dataclass
class EvalResult:
    """Metrics and predictions of one task for each variant."""

    task: str
    metrics: dict[str, dict[str, float]]
    predictions: dict[str, list[dict[str, Any]]]


def evaluate_split(split: SplitModel, tokenizer: Any, task: Task, rows: Sequence[dict[str, Any]],
                   variants: Sequence[Variant] = ("adapfu", "adapemu"), settings: GenerationSettings | None = None,
                   batch_size: int = 8, shots: int = 8, seed: int = 0, ks: Sequence[int] = (1,),
                   device: torch.device | None = None) -> EvalResult:
    """Generate with each variant, post-process and score (``mc``: rank the choices instead).

    ``seed`` fixes the GSM8K demonstration order and, restarted for each variant, the sampling.
    """
    if task == "mc":
        return multiple_choice(split, tokenizer, rows, variants)
    settings = settings or GenerationSettings()
    prompts = build_prompts(task, rows, shots=shots, seed=seed)
    result = EvalResult(task, {}, {})
    for variant in variants:
        raw = generate(split, tokenizer, prompts, variant, settings, batch_size, device, seed=seed)
        cleaned = [[postprocess(task, c) for c in cs] for cs in raw]
        result.metrics[variant] = score(task, rows, cleaned, ks)
        result.predictions[variant] = [prediction_record(task, i, rows[i], prompts[i], cs, r)
                                       for i, (cs, r) in enumerate(zip(cleaned, raw))]
    return result
