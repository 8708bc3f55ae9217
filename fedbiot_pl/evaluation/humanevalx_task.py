"""The ``humanevalx`` evaluation task: HumanEval-X in C++, Go, Java and Python, as the FedBiOT authors ran it.

Rows are HumanEval-X problems (:mod:`~fedbiot_pl.evaluation.humanevalx`), of one language or mixed.
The prompt is the language tag line then the problem's prompt; each sampled completion is cleaned
as the authors did (:func:`~fedbiot_pl.evaluation.humanevalx.clean_completion`, which needs the
row's language, so :meth:`HumanEvalXTask.update` and the prediction records apply it, while
:meth:`HumanEvalXTask.clean` only deletes no-break spaces) and run with the problem's tests in the
sandbox, with the language's toolchain (:mod:`~fedbiot_pl.evaluation.sandbox_languages`).

Reported: ``pass@k`` over all problems and, when the rows mix languages, ``<language>/pass@k`` for
each (``cpp/pass@1``, ...). The default rows are eight hand-made problems, two per language
(``embedded:data/humanevalx/humanevalx_sample.jsonl``); point ``data`` at CodeGeeX's
``humaneval_<lang>.jsonl.gz`` files for the benchmark.

The paper's decoding for code and its pass@k are the presets of :mod:`~fedbiot_pl.evaluation.presets`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from fedbiot_pl.assets import resolve
from fedbiot_pl.evaluation.builtin_tasks import HumanEvalTask
from fedbiot_pl.evaluation.humanevalx import clean_completion, humanevalx_prompt, language_of
from fedbiot_pl.evaluation.metrics import PassAtK
from fedbiot_pl.evaluation.pass_at_k import mean_pass_at_k
from fedbiot_pl.evaluation.records import InputError, read_records
from fedbiot_pl.evaluation.sandbox import ExecutionResult, Limits
from fedbiot_pl.evaluation.sandbox_languages import check_humanevalx, missing_toolchain
from fedbiot_pl.evaluation.task_base import Row


class HumanEvalXPassAtK(PassAtK):
    """pass@k of HumanEval-X problems, each run with its own language's toolchain.

    Args:
        problems: Every problem that may get samples (HumanEval-X rows).
        k: The ``k`` to report.
        limits: Sandbox limits of each program (compiled languages get extra build time).
        workers: Parallel programs (default: CPU count).
    """

    def __init__(self, problems: Sequence[Mapping[str, Any]], k: Sequence[int] = (1,), limits: Limits | None = None,
                 workers: int | None = None, **kwargs) -> None:
        """Empty counts for every problem; ``kwargs`` go to :class:`torchmetrics.Metric`."""
        super().__init__([problem["task_id"] for problem in problems], k, limits, workers, **kwargs)
        self.languages = [language_of(problem) for problem in problems]

    def execute(self, problems: Sequence[Mapping[str, str]], completions: Sequence[str]) -> list[ExecutionResult]:
        """Run each completion with its problem's language (:func:`~.sandbox_languages.check_humanevalx`)."""
        return check_humanevalx(problems, completions, self.limits, self.workers)

    def compute(self) -> dict[str, Tensor]:
        """``pass@k`` over all attempted problems; with several languages, also ``<language>/pass@k`` each."""
        scores = super().compute()
        groups: dict[str, tuple[list[int], list[int]]] = {}
        for language, n, c in zip(self.languages, self.num_samples.tolist(), self.num_correct.tolist(), strict=True):
            if n:
                ns, cs = groups.setdefault(language, ([], []))
                ns.append(n)
                cs.append(c)
        if len(groups) > 1:
            for language, (ns, cs) in groups.items():
                scores.update({f"{language}/pass@{k}": torch.tensor(mean_pass_at_k(ns, cs, k), dtype=torch.float64)
                               for k in self.ks if k <= min(ns)})
        return scores


class HumanEvalXTask(HumanEvalTask):
    """HumanEval-X: language-tagged code prompts, the authors' cleaning, pass@k with each language's toolchain.

    The reference of a row is the problem itself. A row needs ``task_id``, ``prompt`` and ``test``
    (Go rows also ``test_setup``); its language is its ``language`` field or its ``task_id`` prefix.
    """

    name = "humanevalx"
    fields = ("task_id", "prompt", "test")
    default_data = "embedded:data/humanevalx/humanevalx_sample.jsonl"

    def check_row(self, row: Row) -> str | None:
        """The missing fields, an unknown language, a Go row without ``test_setup``, or a missing compiler.

        A missing toolchain is named when the rows are read, before any generation: without it every
        completion of that language would score as a failure.
        """
        problem = super().check_row(row)
        if problem is None:
            try:
                language = language_of(row)
            except ValueError as error:
                return str(error)
            if language == "go" and not isinstance(row.get("test_setup"), str):
                return "lacks the string field 'test_setup' (package clause and test imports) that Go rows need."
            missing = missing_toolchain(language)
            if missing is not None:
                return "cannot be run: " + missing.removeprefix("fedbiot-sandbox: ") + "."
        return problem

    def prompt(self, row: Row, index: int = 0, shots: int = 8, seed: int = 0) -> str:
        """The language tag line, then the problem's prompt."""
        return humanevalx_prompt(row)

    def clean(self, completion: str) -> str:
        """No-break spaces deleted; the per-language cut needs the row (:meth:`update`, :meth:`prediction_record`)."""
        return completion.replace("\u00a0", "")

    def update(self, metrics: dict[str, Metric], rows: Sequence[Row], completions: Sequence[Sequence[str]]) -> None:
        """Clean every completion for its row's language, then run it against the row's tests."""
        super().update(metrics, rows, [[clean_completion(c, language_of(row)) for c in cs]
                                       for row, cs in zip(rows, completions, strict=True)])

    def record_fields(self, row: Row) -> dict[str, Any]:
        """``task_id`` and ``language``."""
        return {"task_id": row["task_id"], "language": language_of(row)}

    def prediction_record(self, index: int, row: Row, prompt: str, completions: list[str],
                          raw: list[str]) -> dict[str, Any]:
        """The record with the completions cleaned for the row's language, as they were run."""
        language = language_of(row)
        return super().prediction_record(index, row, prompt, [clean_completion(c, language) for c in completions], raw)

    def pass_at_k_metric(self, problems: Sequence[Row], ks: Sequence[int], limits: Limits,
                         workers: int | None) -> PassAtK:
        """A :class:`HumanEvalXPassAtK` of ``problems``."""
        return HumanEvalXPassAtK(problems, tuple(ks), limits, workers)

    def problems_of(self, references: str | None) -> dict[str, Row]:
        """The problems by ``task_id`` of ``references`` (comma-separated files), else of the embedded sample.

        Raises:
            InputError: A problem the task cannot use (named with its file and line).
        """
        paths = [path for path in references.split(",") if path.strip()] if references else [self.default_data]
        problems = {}
        for path in paths:
            for number, row in read_records(resolve(path.strip())):
                problem = self.check_row(row)
                if problem:
                    raise InputError(f"{path} line {number}: {problem}")
                problems[row["task_id"]] = row
        return problems

    def score_file(self, predictions: str, references: str | None = None, ks: Sequence[int] = (1,),
                   timeout: float = 10.0, workers: int | None = None) -> dict[str, Any]:
        """pass@k of a CodeGeeX samples file: ``{"task_id", "generation"}`` per line (or ``completion``).

        The generations are run as they are (the authors' script saved them cleaned). The problems
        come from ``references``: one or more comma-separated HumanEval-X files, e.g.
        ``humaneval_cpp.jsonl.gz,humaneval_go.jsonl.gz``; without it, the embedded sample. Only
        problems with samples are scored; every ``k`` must be at most the samples of each of them.
        The result also counts the sandbox outcomes and gives the ``first_error``, if any (a
        missing compiler is one).
        """
        return super().score_file(predictions, references, ks, timeout, workers)
