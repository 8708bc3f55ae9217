"""Evaluation rows by task name: each task's default file, reading and checking rows, their prompts."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedbiot_pl.assets import resolve
from fedbiot_pl.evaluation.tasks import EVAL_TASKS, Task, eval_task


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

    The task reads the file (:meth:`~fedbiot_pl.evaluation.task_base.EvalTask.read_rows`): ``helm``
    reads a suite file of HELM raw files instead.

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
    numbered = spec.read_rows(file)
    numbered = numbered[:limit] if limit else numbered
    for number, row in numbered:
        problem = spec.check_row(row)
        if problem:
            raise ValueError(f"{file}: row {number} {problem}")
    return [row for _, row in numbered]


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
