"""HELM's reference metrics, and a torchmetrics ``Metric`` that averages them per scenario.

The scores follow HELM's ``evaluate_reference_metrics``: each metric compares one gold reference
with the prediction (stripped), and an instance scores the best over its correct references.

* ``exact_match``: equal after stripping whitespace.
* ``quasi_exact_match``: equal after :func:`normalize_text`.
* ``prefix_exact_match`` / ``quasi_prefix_exact_match``: the prediction starts with the gold text
  (stripped / normalised).
* ``f1_score``: F1 of the **sets** of normalised words (not SQuAD's multiset counts); 0 when
  either side is empty after normalising.

An empty prediction scores 0 on every metric. For the multiple-choice joint adapter, the
prediction is a letter, mapped to the text of the choice with that letter (an unknown letter maps
to nothing and scores 0) before it is compared with the correct choice's text.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)
_FIRST_PIECE = re.compile(r"[^\W_]+|\S")


def normalize_text(text: str) -> str:
    """HELM's (and QuAC's) normalisation: lower-case, drop punctuation, then the articles a/an/the, collapse spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(gold: str, pred: str) -> float:
    """1.0 if the stripped texts are equal (0.0 for an empty prediction)."""
    return float(bool(pred) and gold.strip() == pred.strip())


def quasi_exact_match(gold: str, pred: str) -> float:
    """1.0 if the texts are equal after :func:`normalize_text` (0.0 for an empty prediction)."""
    return float(bool(pred) and normalize_text(gold) == normalize_text(pred))


def prefix_exact_match(gold: str, pred: str) -> float:
    """1.0 if the stripped prediction starts with the stripped gold text (0.0 for an empty prediction)."""
    return float(bool(pred) and pred.strip().startswith(gold.strip()))


def quasi_prefix_exact_match(gold: str, pred: str) -> float:
    """1.0 if the normalised prediction starts with the normalised gold text (0.0 for an empty prediction)."""
    return float(bool(pred) and normalize_text(pred).startswith(normalize_text(gold)))


def f1_score(gold: str, pred: str) -> float:
    """F1 of the sets of normalised words, ``2PR / (P + R)``; 0.0 if either set is empty or they share none."""
    expected, predicted = set(normalize_text(gold).split()), set(normalize_text(pred).split())
    same = len(expected & predicted)
    if not same:
        return 0.0
    precision, recall = same / len(predicted), same / len(expected)
    return 2 * precision * recall / (precision + recall)


METRICS: Mapping[str, Callable[[str, str], float]] = {
    "exact_match": exact_match, "quasi_exact_match": quasi_exact_match, "prefix_exact_match": prefix_exact_match,
    "quasi_prefix_exact_match": quasi_prefix_exact_match, "f1_score": f1_score,
}
"""Every metric by HELM's name, in the order the results list them."""


def first_piece(completion: str) -> str:
    """The start of a completion, standing for HELM's one generated token: its first run of letters and digits.

    ``" C. Homeostasis"`` gives ``"C"``; a completion starting with another character gives that
    character; an empty one gives ``""``.
    """
    found = _FIRST_PIECE.search(completion)
    return found.group(0) if found else ""


def joint_prediction(completion: str, choices: Sequence[str]) -> str:
    """The choice text a multiple-choice joint completion names by its letter (``""`` for no choice's letter)."""
    letter = first_piece(completion)
    letters = {chr(ord("A") + i): choice for i, choice in enumerate(choices)}
    return letters.get(letter, "")


def reference_scores(prediction: str, golds: Sequence[str], names: Sequence[str]) -> dict[str, float]:
    """Each metric of ``names``: its best value over the correct references ``golds`` (the prediction stripped)."""
    if not golds:
        raise ValueError("an instance needs at least one correct reference to be scored")
    prediction = prediction.strip()
    return {name: max(METRICS[name](gold, prediction) for gold in golds) for name in names}


class HelmScores(Metric):
    """Mean HELM metrics per run, averaged per scenario group, and the mean over groups.

    A *run* is one suite entry (one HELM run spec, e.g. ``mmlu:subject=anatomy``); its *group* is
    the scenario it reports under (HELM's run group, e.g. ``mmlu`` for every subject). A group's
    value is the mean of its runs' means, as HELM's summary averages runs. :meth:`compute` gives
    ``<group>/<metric>`` for the metrics of the group's scenario, ``mean/main`` (the mean over
    groups of each group's main metric, e.g. BoolQ's ``quasi_exact_match``, NarrativeQA's
    ``f1_score``) and ``mean/<metric>`` for the metrics that every group has. Runs and groups
    without instances are left out.

    Args:
        runs: ``(run, group, metric names, main metric)`` of every run that may be updated.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, runs: Sequence[tuple[str, str, Sequence[str], str]], **kwargs) -> None:
        """Zero sums for every run; ``kwargs`` go to :class:`torchmetrics.Metric`."""
        super().__init__(**kwargs)
        self.runs = [(run, group, tuple(names), main) for run, group, names, main in runs]
        self.index = {run: position for position, (run, *_) in enumerate(self.runs)}
        if not self.runs or len(self.index) != len(self.runs):
            raise ValueError(f"runs must be non-empty and unique, got {[run for run, *_ in self.runs]}")
        self.add_state("sums", torch.zeros(len(self.runs), len(METRICS), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("counts", torch.zeros(len(self.runs), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, runs: Sequence[str], scores: Sequence[Mapping[str, float]]) -> None:
        """Add instances: the run of each and its :func:`reference_scores`."""
        if len(runs) != len(scores):
            raise ValueError(f"Got {len(runs)} runs but {len(scores)} score dicts; they must pair up.")
        for run, values in zip(runs, scores, strict=True):
            if run not in self.index:
                raise ValueError(f"Unknown run {run!r}; pass it in HelmScores(runs=...).")
            row = torch.tensor([values.get(name, 0.0) for name in METRICS], dtype=torch.float64)
            self.sums[self.index[run]] += row.to(self.sums.device)
            self.counts[self.index[run]] += 1

    def compute(self) -> dict[str, Tensor]:
        """``<group>/<metric>``, ``mean/main`` and ``mean/<metric>`` (see the class)."""
        names = list(METRICS)
        groups: dict[str, list[tuple[Tensor, tuple[str, ...], str]]] = {}
        for position, (_, group, metrics, main) in enumerate(self.runs):
            if int(self.counts[position]):
                groups.setdefault(group, []).append((self.sums[position] / self.counts[position], metrics, main))
        out: dict[str, Tensor] = {}
        mains, shared = [], set(names)
        for group, members in groups.items():
            mean = torch.stack([m for m, _, _ in members]).mean(dim=0)
            metrics, main = members[0][1], members[0][2]
            out.update({f"{group}/{name}": mean[names.index(name)] for name in names if name in metrics})
            mains.append(mean[names.index(main)])
            shared &= set(metrics)
        out["mean/main"] = torch.stack(mains).mean() if mains else torch.tensor(math.nan, dtype=torch.float64)
        for name in names:
            if name in shared and groups:
                out[f"mean/{name}"] = torch.stack([out[f"{group}/{name}"] for group in groups]).mean()
        return out
