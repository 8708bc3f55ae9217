"""torchmetrics ``Metric``s of the FedBiOT evaluations: GSM8K, HumanEval pass@k, QA text overlap, multiple choice.

Every state is a tensor reduced by ``"sum"``, so ``Metric.sync`` (DDP) and ``Metric.merge_state``
give the same result as one metric that saw all the data.

Text normalisation:

* :class:`ExactMatch` and :class:`TokenF1` use the SQuAD normalisation (:func:`normalize_answer`):
  lower-case, drop ASCII punctuation and the articles a/an/the, collapse whitespace.
* :class:`RougeL` tokenises as Google's ``rouge_score`` does without stemming (lower-case, every run
  of characters other than ``a-z0-9`` is a separator), so its numbers equal the usual ROUGE-L F1,
  e.g. ``torchmetrics.text.ROUGEScore(rouge_keys="rougeL")``. That class is not used here because it
  keeps one list entry per sample as state; this one keeps two sums.
"""

from __future__ import annotations

import re
import string
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from fedbiot_pl.evaluation.math_answers import is_correct
from fedbiot_pl.evaluation.pass_at_k import pass_at_k
from fedbiot_pl.evaluation.prompts import strip_chat_tail
from fedbiot_pl.evaluation.sandbox import ExecutionResult, Language, Limits, check_completions

References = Sequence[str | Sequence[str]]
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_NOT_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")


def normalize_answer(text: str) -> str:
    """SQuAD answer normalisation: lower-case, drop punctuation and articles, collapse whitespace."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 of the normalised texts (1.0 if both are empty, 0.0 if only one is)."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    same = sum((Counter(predicted) & Counter(expected)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(expected)
    return 2 * precision * recall / (precision + recall)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1: longest common subsequence of the tokens, ``2PR / (P + R)``; 0.0 if either is empty."""
    predicted = _NOT_ALPHANUMERIC.sub(" ", prediction.lower()).split()
    expected = _NOT_ALPHANUMERIC.sub(" ", reference.lower()).split()
    if not predicted or not expected:
        return 0.0
    previous = [0] * (len(expected) + 1)  # LCS lengths of predicted[:i] against every prefix of expected
    for token in predicted:
        current = [0]
        for j, other in enumerate(expected):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    common = previous[-1]
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


class _Average(Metric):
    """Mean of per-sample scores, kept as a float64 sum and a count."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("score_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _add(self, scores: list[float]) -> None:
        self.score_sum += sum(scores)
        self.count += len(scores)

    def compute(self) -> Tensor:
        """The mean score (NaN before any sample)."""
        return self.score_sum / self.count


class _BestOverReferences(_Average):
    """Score each prediction against one reference, or the best of several references."""

    def _score(self, prediction: str, reference: str) -> float:
        raise NotImplementedError(f"{type(self).__name__} must define _score(prediction, reference).")

    def update(self, predictions: Sequence[str], references: References) -> None:
        """Add predictions and their references (a string, or a list of acceptable strings, each)."""
        _same_length(predictions, references)
        scores = []
        for index, (prediction, reference) in enumerate(zip(predictions, references, strict=True)):
            options = [reference] if isinstance(reference, str) else list(reference)
            if not options:
                raise ValueError(f"Sample {index} has an empty list of references; give at least one string.")
            scores.append(max(self._score(prediction, option) for option in options))
        self._add(scores)


class ExactMatch(_BestOverReferences):
    """Share of predictions equal to a reference after :func:`normalize_answer`."""

    def _score(self, prediction: str, reference: str) -> float:
        return float(normalize_answer(prediction) == normalize_answer(reference))


class TokenF1(_BestOverReferences):
    """Mean SQuAD token F1 (:func:`token_f1`)."""

    def _score(self, prediction: str, reference: str) -> float:
        return token_f1(prediction, reference)


class RougeL(_BestOverReferences):
    """Mean ROUGE-L F1 (:func:`rouge_l`)."""

    def _score(self, prediction: str, reference: str) -> float:
        return rouge_l(prediction, reference)


class GSM8KAccuracy(_Average):
    """GSM8K accuracy under the FedBiOT protocol (:mod:`fedbiot_pl.evaluation.math_answers`).

    Args:
        numeric: Compare answer values instead of strings (``"18.0"`` counts for ``"18"``); the
            paper's protocol, the default, compares strings.
        cut_next_turn: Read the answer only from the text before a new Alpaca turn (a line starting
            ``### Instruction:``, ``### Input:`` or ``### Response:``; the default). ``False`` reads
            the whole completion, as the authors' code does: there, a completion whose real answer
            lacks "The answer is" is scored by the last number of whatever the model invents after it.
    """

    def __init__(self, numeric: bool = False, cut_next_turn: bool = True, **kwargs) -> None:
        """Empty state; ``kwargs`` go to :class:`torchmetrics.Metric`."""
        super().__init__(**kwargs)
        self.numeric, self.cut_next_turn = numeric, cut_next_turn

    def update(self, predictions: Sequence[str], references: Sequence[str]) -> None:
        """Add model outputs and their gold solutions (containing ``"#### <number>"``) or bare numbers."""
        _same_length(predictions, references)
        scores = []
        for index, (prediction, reference) in enumerate(zip(predictions, references, strict=True)):
            text = strip_chat_tail(prediction) if self.cut_next_turn else prediction
            try:
                scores.append(float(is_correct(text, reference, numeric=self.numeric)))
            except ValueError as error:
                raise ValueError(f"Reference {index}: {error}") from error
        self._add(scores)


class MultipleChoiceAccuracy(_Average):
    """Share of questions whose highest-scoring choice is the answer (ties: the first choice wins).

    The scores are whatever the caller ranks by: summed log-likelihoods, or length-normalised ones.
    """

    def update(self, choice_scores: Tensor | Sequence[Sequence[float]], answers: Tensor | Sequence[int]) -> None:
        """Add questions.

        Args:
            choice_scores: ``(B, C)`` scores, or one list per question (lengths may differ).
            answers: ``(B,)`` index of the right choice of each question.
        """
        if isinstance(choice_scores, Tensor):
            scores = choice_scores
            counts = torch.full(scores.shape[:1], scores.shape[-1] if scores.ndim else 0, device=scores.device)
        else:
            scores = _pad(choice_scores)
            counts = torch.tensor([len(row) for row in choice_scores])
        answers = torch.as_tensor(answers, device=scores.device).long()
        if scores.ndim != 2 or answers.shape != scores.shape[:1]:
            raise ValueError(f"Need (B, C) choice scores and (B,) answers, got {tuple(scores.shape)} and "
                             f"{tuple(answers.shape)}.")
        bad = ((answers < 0) | (answers >= counts)).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"Answer index out of range for question(s) {bad}: answers {answers[bad].tolist()}, "
                             f"number of choices {counts[bad].tolist()}.")
        self._add((scores.argmax(dim=1) == answers).double().tolist())


class PassAtK(Metric):
    """HumanEval-style pass@k: completions are executed in the :mod:`~fedbiot_pl.evaluation.sandbox`.

    The state is, for every problem of ``task_ids``, the number of samples ``n`` and of passing
    ones ``c``. :meth:`compute` averages :func:`~fedbiot_pl.evaluation.pass_at_k.pass_at_k` over the problems
    that have samples, for each ``k`` no larger than the smallest ``n`` among them (larger ``k`` are
    left out with a warning).

    Args:
        task_ids: Every problem that may be updated, e.g. the 164 HumanEval ids.
        k: The ``k`` to report.
        limits: Sandbox limits of each execution (default :class:`~fedbiot_pl.evaluation.sandbox.Limits`).
        workers: Parallel executions (default: CPU count).
        language: Sandbox language name or :class:`~fedbiot_pl.evaluation.sandbox.Language`.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, task_ids: Sequence[str], k: Sequence[int] = (1,), limits: Limits | None = None,
                 workers: int | None = None, language: str | Language = "python", **kwargs) -> None:
        """Empty counts for every problem; ``kwargs`` go to :class:`torchmetrics.Metric`."""
        super().__init__(**kwargs)
        if not task_ids or len(set(task_ids)) != len(task_ids):
            raise ValueError(f"task_ids must be non-empty and unique, got {len(task_ids)} ids "
                             f"({len(set(task_ids))} distinct).")
        if not k or min(k) < 1:
            raise ValueError(f"k must be a non-empty list of integers >= 1, got {list(k)}.")
        self.index = {task_id: position for position, task_id in enumerate(task_ids)}
        self.ks, self.limits, self.workers, self.language = sorted(set(k)), limits or Limits(), workers, language
        self.last_results: list[ExecutionResult] = []
        """Sandbox results of the latest :meth:`update` on this process (diagnostics; not a synced state)."""
        self.add_state("num_samples", torch.zeros(len(task_ids), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("num_correct", torch.zeros(len(task_ids), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, task_ids: Sequence[str], completions: Sequence[str],
               problems: Mapping[str, Mapping[str, str]] | Sequence[Mapping[str, str]]) -> None:
        """Execute completions and count passes.

        Args:
            task_ids: The problem of each completion.
            completions: Generated code (the function body, appended to the problem's prompt).
            problems: Problem dicts (``prompt``, ``test``, ``entry_point``), either keyed by task id or
                one per completion.
        """
        _same_length(task_ids, completions, "task_ids", "completions")
        unknown = sorted({task_id for task_id in task_ids if task_id not in self.index})
        if unknown:
            raise ValueError(f"Unknown task ids {unknown[:5]}; pass them in PassAtK(task_ids=...).")
        if isinstance(problems, Mapping):
            missing = sorted({task_id for task_id in task_ids if task_id not in problems})
            if missing:
                raise ValueError(f"No problem given for task ids {missing[:5]}.")
            problems = [problems[task_id] for task_id in task_ids]
        _same_length(problems, completions, "problems", "completions")
        results = self.last_results = self.execute(problems, completions)
        positions = torch.tensor([self.index[task_id] for task_id in task_ids], dtype=torch.long,
                                 device=self.num_samples.device)
        passed = torch.tensor([result.passed for result in results], dtype=torch.long, device=positions.device)
        self.num_samples.index_add_(0, positions, torch.ones_like(passed))
        self.num_correct.index_add_(0, positions, passed)

    def execute(self, problems: Sequence[Mapping[str, str]], completions: Sequence[str]) -> list[ExecutionResult]:
        """Run each completion against its problem in the sandbox, in ``language`` (a subclass may choose per problem).

        Args:
            problems: One problem dict per completion.
            completions: The completions.
        """
        return check_completions(problems, completions, self.language, self.limits, self.workers)

    def compute(self) -> dict[str, Tensor]:
        """``{"pass@k": mean over attempted problems}`` for every computable ``k``."""
        seen = self.num_samples > 0
        if not seen.any():
            raise ValueError("PassAtK.compute() before any update: no problem has samples.")
        ns, cs = self.num_samples[seen].tolist(), self.num_correct[seen].tolist()
        scores = {}
        for k in self.ks:
            if k > min(ns):
                warnings.warn(f"pass@{k} left out: some problems have only {min(ns)} samples (< k={k}).",
                              stacklevel=2)
                continue
            mean = sum(pass_at_k(n, c, k) for n, c in zip(ns, cs, strict=True)) / len(ns)
            scores[f"pass@{k}"] = torch.tensor(mean, dtype=torch.float64)
        return scores


def _same_length(first: Sequence, second: Sequence, first_name: str = "predictions",
                 second_name: str = "references") -> None:
    if len(first) != len(second):
        raise ValueError(f"Got {len(first)} {first_name} but {len(second)} {second_name}; they must pair up.")


def _pad(rows: Sequence[Sequence[float]]) -> Tensor:
    """Ragged per-question scores -> ``(B, max C)`` tensor padded with -inf."""
    if not rows or any(len(row) == 0 for row in rows):
        raise ValueError("Every question needs at least one choice score.")
    padded = torch.full((len(rows), max(len(row) for row in rows)), float("-inf"), dtype=torch.float64)
    for index, row in enumerate(rows):
        padded[index, : len(row)] = torch.as_tensor(row, dtype=torch.float64)
    return padded
