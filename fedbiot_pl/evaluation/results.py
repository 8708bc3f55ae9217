"""From cleaned completions to results, by task name: task metrics, scores, prediction records, :class:`EvalResult`.

Each function calls the :class:`~fedbiot_pl.evaluation.tasks.EvalTask` method of the named task.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torchmetrics import Metric

from fedbiot_pl.evaluation.tasks import Task, compute_metrics, eval_task


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


def postprocess(task: Task, completion: str) -> str:
    """The task's cleaning of a completion (:meth:`EvalTask.clean`).

    Args:
        task: The task name.
        completion: Generated text.

    Returns:
        The scored text.
    """
    return eval_task(task).clean(completion)


def task_metrics(task: Task, rows: Sequence[dict[str, Any]], ks: Sequence[int] = (1,), timeout: float = 10.0,
                 workers: int = 2) -> dict[str, Metric]:
    """The task's torchmetrics, empty (:meth:`EvalTask.metrics`); feed them with :func:`update_task_metrics`.

    Built in: ``accuracy`` (gsm8k, mc), ``pass@k`` (humaneval, one entry per ``k``) or ``rougeL``,
    ``token_f1``, ``exact_match`` (dolly).

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
