"""Multiple choice by log-likelihood: each choice scored as a continuation of the task's prompt, the best one picked.

For tasks with ``generates=False`` (built in: ``mc``), instead of generating.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from fedbiot_pl.evaluation.results import EvalResult
from fedbiot_pl.evaluation.tasks import Task, compute_metrics, eval_task
from fedbiot_pl.model.views import ModelViews

if TYPE_CHECKING:  # fedbiot_pl.modules imports fedbiot_pl.evaluation.generation, which imports this module
    from fedbiot_pl.modules.generation_module import Variant


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
