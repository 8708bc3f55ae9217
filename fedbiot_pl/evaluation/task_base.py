"""The :class:`EvalTask` base class: what differs between evaluation tasks, with the defaults of a QA task.

Tasks are registered and looked up by name in :mod:`fedbiot_pl.evaluation.tasks`, which also shows
how to write one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torchmetrics import Metric

from fedbiot_pl.errors import ConfigError
from fedbiot_pl.evaluation.prompts import qa_prompt, strip_chat_tail
from fedbiot_pl.evaluation.records import read_predictions, read_records

Task = str
"""The name of a registered evaluation task (``gsm8k``, ``humaneval``, ``dolly``, ``mc`` or one of
:func:`~fedbiot_pl.evaluation.tasks.register_task`); :func:`~fedbiot_pl.evaluation.tasks.eval_task` checks it."""

Row = dict[str, Any]


class EvalTask:
    """One evaluation task. Subclass it, set the class attributes, override what differs, register an instance.

    The defaults describe a generation task with the Alpaca QA prompt of ``row["instruction"]`` (and
    ``row["context"]``), scored on the first completion of each prompt against ``row[reference_field]``
    by every metric of :meth:`metrics`.

    Attributes:
        name: The name that settings, options and files use.
        fields: The string fields every row needs.
        reference_field: The row field of the reference, also the gold field of a predictions file;
            ``None``: the task cannot score a predictions file.
        match_field: The text field that matches a prediction line without ``id`` to a ``--references``
            record; ``None`` matches by ``id`` only.
        default_data: The evaluation file used when none is given (``embedded:...`` or a path), or ``None``.
        generates: ``False`` for a task that ranks :meth:`choices` by log-likelihood instead of generating.
        uses_pass_at_k: Scores all ``n`` completions of a prompt with pass@k (so ``k`` must be at most ``n``).
        scores_files: ``python -m fedbiot_pl.score`` offers the task (:meth:`score_file`).
    """

    name: str = ""
    fields: tuple[str, ...] = ()
    reference_field: str | None = None
    match_field: str | None = None
    default_data: str | None = None
    generates: bool = True
    uses_pass_at_k: bool = False
    scores_files: bool = True

    def __repr__(self) -> str:
        """The class and the task name."""
        return f"{type(self).__name__}(name={self.name!r})"

    def read_rows(self, path: str | Path) -> list[tuple[int, Row]]:
        """The ``(line number, row)`` pairs of an evaluation file, before :meth:`check_row` and the row limit.

        By default the records of a JSON lines (or JSON list) file
        (:func:`~fedbiot_pl.evaluation.records.read_records`); a task whose evaluation file has another
        shape overrides it (``helm`` expands a suite file into the instances of its scenarios).

        Args:
            path: The evaluation file.
        """
        return read_records(path)

    def check_row(self, row: Row) -> str | None:
        """What is wrong with an evaluation row, worded to follow ``"<file>: row <n> "``; ``None`` if usable.

        Args:
            row: One record of the evaluation file.
        """
        missing = [f for f in self.fields if not isinstance(row.get(f), str)]
        return f"lacks the string field(s) {missing} that {self.name} evaluation needs." if missing else None

    def prompt(self, row: Row, index: int = 0, shots: int = 8, seed: int = 0) -> str:
        """The prompt of row ``index``.

        Args:
            row: The evaluation row.
            index: Its position in the evaluation rows.
            shots: Few-shot demonstrations, for tasks that use them.
            seed: Seed of the demonstration order, for tasks that use them.
        """
        return qa_prompt(row["instruction"], row.get("context") or "")

    def clean(self, completion: str) -> str:
        """The scored text of a raw completion: here, cut before a new ``### Instruction`` turn.

        Args:
            completion: The generated text after the prompt.
        """
        return strip_chat_tail(completion)

    def reference(self, row: Row) -> Any:
        """What a completion of ``row`` is scored against, as the metrics take it: ``row[reference_field]``.

        Args:
            row: The evaluation row.
        """
        if self.reference_field is None:
            raise NotImplementedError(f"{type(self).__name__} sets no reference_field; override reference().")
        return row[self.reference_field]

    def check_reference(self, reference: str) -> None:
        """Check a gold answer read from a predictions or references file (nothing by default).

        Args:
            reference: The gold field's text.

        Raises:
            ValueError: The gold answer cannot be scored; the message says why.
        """

    def metrics(self, rows: Sequence[Row], ks: Sequence[int] = (1,), timeout: float = 10.0,
                workers: int | None = 2) -> dict[str, Metric]:
        """The task's empty torchmetrics by reported name; feed them with :meth:`update`.

        Args:
            rows: The evaluation rows (a pass@k metric needs every problem id).
            ks: The ``k`` of pass@k.
            timeout: Seconds per sandboxed program (pass@k).
            workers: Parallel sandboxed programs (pass@k).
        """
        raise NotImplementedError(f"{type(self).__name__} must define metrics().")

    def update(self, metrics: dict[str, Metric], rows: Sequence[Row], completions: Sequence[Sequence[str]]) -> None:
        """Add cleaned completions of ``rows`` to ``metrics``: the first one per row against its reference.

        Args:
            metrics: The dict of :meth:`metrics`.
            rows: Evaluation rows.
            completions: The cleaned completions of each row.
        """
        references = [self.reference(row) for row in rows]
        for metric in metrics.values():
            metric.update([c[0] for c in completions], references)

    def score_rows(self, rows: Sequence[Row], completions: Sequence[Sequence[str]], ks: Sequence[int] = (1,),
                   timeout: float = 10.0, workers: int | None = 2) -> dict[str, float]:
        """``{metric name: value}`` of cleaned completions (:meth:`metrics`, :meth:`update`, :func:`compute_metrics`).

        Args:
            rows: Evaluation rows.
            completions: The cleaned completions of each row.
            ks: The ``k`` of pass@k.
            timeout: Seconds per sandboxed program (pass@k).
            workers: Parallel sandboxed programs (pass@k).
        """
        metrics = self.metrics(rows, ks, timeout, workers)
        self.update(metrics, rows, completions)
        return compute_metrics(metrics)

    def record_fields(self, row: Row) -> dict[str, Any]:
        """Fields of ``row`` copied into its prediction record, after ``index`` (none by default).

        Args:
            row: The evaluation row.
        """
        return {}

    def prediction_record(self, index: int, row: Row, prompt: str, completions: list[str],
                          raw: list[str]) -> dict[str, Any]:
        """One line of a generation task's ``<task>-<variant>.predictions.jsonl`` file.

        Args:
            index: The row's position.
            row: The evaluation row.
            prompt: Its prompt.
            completions: The cleaned completions.
            raw: The completions as generated.

        Returns:
            ``{"index", **record_fields(row), "prompt", "completions", "raw"}``.
        """
        return {"index": index, **self.record_fields(row), "prompt": prompt, "completions": completions, "raw": raw}

    def choices(self, row: Row) -> list[str]:
        """The continuations of the prompt ranked by log-likelihood (``generates=False``), each after a space.

        Args:
            row: The evaluation row.
        """
        raise NotImplementedError(f"{type(self).__name__} generates; it has no choices.")

    def update_choices(self, metrics: dict[str, Metric], row: Row, scores: list[float]) -> None:
        """Add the choice scores of one row to ``metrics``, against its reference (the right choice's index).

        Args:
            metrics: The dict of :meth:`metrics`.
            row: The evaluation row.
            scores: The log-likelihood of each choice.
        """
        for metric in metrics.values():
            metric.update([scores], [self.reference(row)])

    def choice_record(self, index: int, scores: list[float]) -> dict[str, Any]:
        """The prediction record of a choice row: ``{"index", "scores", "choice"}`` (the best one).

        Args:
            index: The row's position.
            scores: The log-likelihood of each choice.
        """
        return {"index": index, "scores": scores, "choice": max(range(len(scores)), key=scores.__getitem__)}

    def score_file(self, predictions: str, references: str | None = None, ks: Sequence[int] = (1,),
                   timeout: float = 10.0, workers: int | None = None) -> dict[str, Any]:
        """Score a saved predictions file (``python -m fedbiot_pl.score``): ``{"task", "samples", **metrics}``.

        Each line holds ``prediction`` and the gold ``reference_field``, or, with ``references``, an
        ``id`` or the ``match_field`` text that finds the gold answer there
        (:func:`~fedbiot_pl.evaluation.records.read_predictions`); :meth:`update` scores the predictions.

        Args:
            predictions: The predictions file.
            references: A file of gold records, for lines without the gold field.
            ks: The ``k`` of pass@k.
            timeout: Seconds per sandboxed program.
            workers: Parallel sandboxed programs.

        Raises:
            InputError: A file, line or field the scorer cannot use.
            ConfigError: The task cannot score predictions files.
        """
        if self.reference_field is None or not self.scores_files:
            from fedbiot_pl.evaluation.tasks import score_tasks  # the registry imports this module

            raise ConfigError(f"task {self.name!r} cannot score a predictions file; tasks that can: "
                              f"{', '.join(score_tasks())}.")
        texts, rows = read_predictions(predictions, self.reference_field, self.match_field, references,
                                       self.check_reference)
        return {"task": self.name, "samples": len(texts),
                **self.score_rows(rows, [[text] for text in texts], ks, timeout, workers)}


def compute_metrics(metrics: Mapping[str, Metric]) -> dict[str, float]:
    """Plain ``{name: value}`` of updated metrics (a metric computing a dict, as pass@k, gives one per key).

    Args:
        metrics: The dict of :meth:`EvalTask.metrics`, updated.
    """
    out: dict[str, float] = {}
    for name, metric in metrics.items():
        value = metric.compute()
        out.update({k: float(v) for k, v in value.items()} if isinstance(value, dict) else {name: float(value)})
    return out
