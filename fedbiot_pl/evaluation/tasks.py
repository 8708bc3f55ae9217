"""Evaluation tasks: one :class:`EvalTask` object per task, looked up by name in a registry.

A task says everything that differs between evaluations (:mod:`~fedbiot_pl.evaluation.task_base`):
the row fields it needs, its prompt, how a completion is cleaned, its torchmetrics, the reference of
a row, its prediction records, whether it samples ``n`` completions for pass@k or ranks choices by
log-likelihood instead of generating, and how ``python -m fedbiot_pl.score`` scores a saved
predictions file. Generation, ``trainer.test``, the evaluation settings and the score command only
call these methods.

Built in, registered when this module is imported (:mod:`~fedbiot_pl.evaluation.builtin_tasks`):
``gsm8k`` (accuracy of the final number), ``humaneval`` (pass@k in the sandbox), ``dolly`` (ROUGE-L,
token F1, exact match) and ``mc`` (multiple choice).

A new task is a subclass registered once, then named like the built-in ones (``data.evaluation.task``,
``--task``)::

    from fedbiot_pl.evaluation.metrics import ExactMatch
    from fedbiot_pl.evaluation.tasks import EvalTask, register_task

    class Capitals(EvalTask):
        name = "capitals"
        fields = ("country", "capital")
        reference_field = "capital"

        def prompt(self, row, index=0, shots=0, seed=0):
            return f"The capital of {row['country']} is"

        def metrics(self, rows, ks=(1,), timeout=10.0, workers=2):
            return {"exact_match": ExactMatch()}

    register_task(Capitals())
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from fedbiot_pl.errors import ConfigError
from fedbiot_pl.evaluation.builtin_tasks import DollyTask, GSM8KTask, HumanEvalTask, MultipleChoiceTask
from fedbiot_pl.evaluation.helm import HelmTask
from fedbiot_pl.evaluation.humanevalx_task import HumanEvalXTask
from fedbiot_pl.evaluation.task_base import EvalTask, Row, Task, compute_metrics

__all__ = [
    "EVAL_TASKS", "DollyTask", "EvalTask", "GSM8KTask", "HumanEvalTask", "MultipleChoiceTask", "Row", "Task",
    "compute_metrics", "eval_task", "register_task", "score_tasks", "unregister_task",
]

_REGISTRY: dict[str, EvalTask] = {}
EVAL_TASKS: Mapping[str, EvalTask] = MappingProxyType(_REGISTRY)
"""Every registered task by name, in registration order (read-only; add with :func:`register_task`)."""


def register_task(task: EvalTask, *, replace: bool = False) -> EvalTask:
    """Make ``task`` usable by its name wherever a task is named.

    Args:
        task: The task object.
        replace: Replace a registered task of the same name instead of refusing it.

    Returns:
        ``task``.

    Raises:
        ConfigError: ``task`` is not an :class:`EvalTask`, has no name, or its name is taken.
    """
    if not isinstance(task, EvalTask):
        raise ConfigError(f"register_task takes an EvalTask instance, got {task!r}.")
    if not isinstance(task.name, str) or not task.name:
        raise ConfigError(f"{type(task).__name__}.name must be a non-empty string, got {task.name!r}.")
    if task.name in _REGISTRY and not replace:
        raise ConfigError(f"evaluation task {task.name!r} is already registered ({_REGISTRY[task.name]!r}); "
                          "pass replace=True to replace it.")
    _REGISTRY[task.name] = task
    return task


def unregister_task(name: str) -> EvalTask:
    """Remove a registered task.

    Args:
        name: Its name.

    Returns:
        The removed task.

    Raises:
        ConfigError: No task has that name.
    """
    task = eval_task(name)
    del _REGISTRY[name]
    return task


def eval_task(name: str) -> EvalTask:
    """The registered task called ``name``.

    Args:
        name: A task name, e.g. ``gsm8k``.

    Returns:
        The task object.

    Raises:
        ConfigError: No task has that name; the message names it and lists the registered ones.
    """
    task = _REGISTRY.get(name) if isinstance(name, str) else None
    if task is None:
        raise ConfigError(f"unknown evaluation task {name!r}: choose one of {', '.join(_REGISTRY)} (or register "
                          "one with fedbiot_pl.evaluation.tasks.register_task).")
    return task


def score_tasks() -> list[str]:
    """The names of the tasks whose predictions files ``python -m fedbiot_pl.score`` scores."""
    return [name for name, task in _REGISTRY.items() if task.scores_files]


for _builtin in (GSM8KTask(), HumanEvalTask(), DollyTask(), MultipleChoiceTask()):
    register_task(_builtin)
register_task(HelmTask())  # HELM QA scenarios from a suite of local raw files (fedbiot_pl.evaluation.helm)
register_task(HumanEvalXTask())  # HumanEval-X: C++, Go, Java, Python (fedbiot_pl.evaluation.humanevalx_task)
