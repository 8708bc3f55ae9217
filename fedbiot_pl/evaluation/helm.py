r"""The ``helm`` evaluation task: HELM's QA scenarios from local raw files, prompted and scored as HELM does.

The FedBiOT authors evaluated their Dolly-trained adapters with HELM (``run_specs_icml.conf``:
BoolQ, NarrativeQA, QuAC, NaturalQuestions closed- and open-book, HellaSwag, OpenBookQA,
TruthfulQA, MMLU; ``helm-run -m 100``). This task runs those scenarios inside the toolkit:

* **Data**: the evaluation file is a *suite file* (:mod:`~fedbiot_pl.evaluation.helm_suite`), one
  line per scenario naming its raw files in HELM's formats (:mod:`~fedbiot_pl.evaluation.helm_formats`,
  :mod:`~fedbiot_pl.evaluation.helm_qa_formats`). The scenario is read from the suite, so the
  YAML only names the suite: ``data.evaluation: {task: helm, data: /data/helm/suite.jsonl}``. The
  default is a packaged hand-made sample of every scenario (``embedded:data/helm/suite.jsonl``).
* **Instances**: HELM's evaluated instances (valid and test splits), at most
  ``max_eval_instances`` per scenario (default 100), drawn as HELM draws them.
* **Prompts**: HELM's in-context prompt: the instructions, then ``min(shots, max_train_instances)``
  (HELM: 5) examples from the train split sampled with ``seed`` (HELM's label-balanced sampling;
  seed 0 is HELM's first trial), then the instance. Generation scenarios read
  ``Passage: ...\nQuestion: ...\nAnswer:``; multiple-choice ones use HELM's joint adapter,
  ``Question: ...\nA. ...\nB. ...\nAnswer:``, and the model answers with a letter.
* **Scores**: HELM's metrics (:mod:`~fedbiot_pl.evaluation.helm_metrics`) on the completion cut
  at its first line break (HELM's stop sequence); for multiple choice, its first letter run stands
  for HELM's one-token answer. Reported per scenario group (``boolq/quasi_exact_match``, ...) with
  the mean over groups (``mean/main`` of each group's main metric).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torchmetrics import Metric

from fedbiot_pl.evaluation.helm_formats import LETTERS, TRAIN, Instance
from fedbiot_pl.evaluation.helm_metrics import HelmScores, joint_prediction, reference_scores
from fedbiot_pl.evaluation.helm_suite import JOINT, Run, read_suite
from fedbiot_pl.evaluation.task_base import EvalTask, Row

__all__ = ["HelmTask", "downsample", "example_block", "helm_prompt", "run_rows", "sample_examples", "suite_rows"]


def downsample(instances: Sequence[Instance], limit: int) -> list[Instance]:
    """At most ``limit`` instances, drawn as HELM's runner draws them (``np.random.seed(0)``, no replacement)."""
    if len(instances) <= limit:
        return list(instances)
    picked = np.random.RandomState(0).choice(len(instances), limit, replace=False)
    return [instances[i] for i in picked]


def sample_examples(train: Sequence[Instance], count: int, seed: int = 0) -> list[Instance]:
    """HELM's in-context examples: ``count`` train instances, spread over the answers.

    The answers (first correct reference) are ordered by how many instances have them (most first,
    ties in a seeded shuffle of their sorted order); one instance of each answer is drawn in turn
    until ``count`` are drawn. With the same seed and train order, HELM draws the same ones.

    Args:
        train: The train instances.
        count: How many to draw (at most all).
        seed: The seed of the draws (HELM's train trial, 0).
    """
    rng, wanted = random.Random(seed), min(count, len(train))
    by_answer: dict[str, list[Instance]] = {}
    for instance in train:
        by_answer.setdefault(instance.references[instance.correct[0]], []).append(instance)
    by_count: dict[int, list[str]] = {}
    for answer in sorted(by_answer):
        by_count.setdefault(len(by_answer[answer]), []).append(answer)
    order = []
    for size in sorted(by_count, reverse=True):
        rng.shuffle(by_count[size])
        order.extend(by_count[size])
    picked: list[Instance] = []
    turn = 0
    while len(picked) < wanted and order[turn % len(order)]:  # HELM stops at an empty answer text
        pool = by_answer[order[turn % len(order)]]
        turn += 1
        if pool:
            picked.append(pool.pop(rng.randrange(len(pool))))
    return picked


def example_block(instance: Instance, method: str, input_prefix: str, answered: bool) -> str:
    r"""One instance in HELM's prompt: the input (and lettered choices), then ``Answer: <output>\n`` or ``Answer:``."""
    block = f"{input_prefix}{instance.input}\n"
    if method == JOINT:
        block += "".join(f"{LETTERS[i]}. {choice}\n" for i, choice in enumerate(instance.references))
        output = LETTERS[instance.correct[0]]
    else:
        output = instance.references[instance.correct[0]]
    return block + (f"Answer: {output}\n" if answered else "Answer:")


def helm_prompt(row: Row, examples: Sequence[Instance]) -> str:
    """HELM's prompt of an evaluation row: instructions, answered examples and the row, one blank line apart."""
    blocks = [f"{row['instructions']}\n"] if row["instructions"] else []
    blocks += [example_block(example, row["method"], row["input_prefix"], True) for example in examples]
    instance = Instance(row["input"], tuple(row["references"]), tuple(row["correct"]), row["split"])
    return "\n".join([*blocks, example_block(instance, row["method"], row["input_prefix"], False)])


def run_rows(run: Run) -> list[Row]:
    """The evaluation rows of one suite run: its evaluated instances (at most ``max_eval_instances``).

    Each row holds the instance (``input``, ``references``, ``correct`` indices, ``split``, HELM's
    ``id``), the run (``scenario``, ``run``, ``group``), its adaptation (``method``,
    ``instructions``, ``input_prefix``), its scoring (``metrics``, ``main``) and the run's
    in-context pool (``train``, ``max_train_instances``).
    """
    instances = run.instances(random.Random(0))
    ids = {id(instance): f"id{i}" for i, instance in enumerate(instances)}
    train = tuple(instance for instance in instances if instance.split == TRAIN)
    evaluated = downsample([instance for instance in instances if instance.split != TRAIN], run.max_eval_instances)
    spec = run.spec
    instructions = spec.instructions
    if run.scenario == "mmlu":
        instructions = f"The following are multiple choice questions (with answers) about " \
                       f"{run.options['subject'].replace('_', ' ')}."
    return [{"scenario": run.scenario, "run": run.name, "group": run.group, "id": ids[id(instance)],
             "input": instance.input, "references": list(instance.references), "correct": list(instance.correct),
             "split": instance.split, "method": spec.method, "instructions": instructions,
             "input_prefix": spec.input_prefix, "metrics": list(spec.metrics), "main": spec.main, "train": train,
             "max_train_instances": run.max_train_instances} for instance in evaluated]


def suite_rows(path: str | Path) -> list[Row]:
    """Every evaluation row of a suite file, run after run (:func:`run_rows`)."""
    return [row for run in read_suite(path) for row in run_rows(run)]


class HelmTask(EvalTask):
    """HELM's QA scenarios from a suite file of local raw files (see :mod:`fedbiot_pl.evaluation.helm`).

    ``shots`` caps each scenario's in-context examples (``max_train_instances``, HELM's 5; the
    GSM8K default of 8 leaves 5); ``seed`` draws them. ``limit`` keeps the first rows of the whole
    suite: cap each scenario with ``max_eval_instances`` in the suite file instead.
    """

    name = "helm"
    fields = ("scenario", "run", "group", "input")
    default_data = "embedded:data/helm/suite.jsonl"
    scores_files = False

    def __init__(self) -> None:
        self._examples: dict[tuple[int, int, int], tuple[tuple[Instance, ...], list[Instance]]] = {}

    def read_rows(self, path: str | Path) -> list[tuple[int, Row]]:
        """The rows of every scenario of the suite file, numbered from 1."""
        return list(enumerate(suite_rows(path), start=1))

    def check_row(self, row: Row) -> str | None:
        """The missing fields, or references without a correct one."""
        problem = super().check_row(row)
        if problem is None and not (row.get("references") and row.get("correct")):
            problem = "needs `references` and the indices of the `correct` ones (rows come from a HELM suite file)."
        return problem

    def prompt(self, row: Row, index: int = 0, shots: int = 8, seed: int = 0) -> str:
        """HELM's prompt with ``min(shots, max_train_instances)`` examples drawn with ``seed``."""
        return helm_prompt(row, self.examples(row["train"], min(shots, row["max_train_instances"]), seed))

    def examples(self, train: tuple[Instance, ...], count: int, seed: int) -> list[Instance]:
        """:func:`sample_examples` of a run's train pool, drawn once per pool, count and seed."""
        key = (id(train), count, seed)
        if key not in self._examples or self._examples[key][0] is not train:
            if len(self._examples) > 256:
                self._examples.clear()
            self._examples[key] = (train, sample_examples(train, count, seed))
        return self._examples[key][1]

    def clean(self, completion: str) -> str:
        """The completion up to its first line break (HELM's stop sequence), stripped."""
        return completion.split("\n", 1)[0].strip()

    def reference(self, row: Row) -> list[str]:
        """The correct references' texts."""
        return [row["references"][i] for i in row["correct"]]

    def score(self, row: Row, completion: str) -> dict[str, float]:
        """HELM's metrics of one cleaned completion (a multiple-choice letter mapped to its choice first)."""
        prediction = completion
        if row["method"] == JOINT:
            prediction = joint_prediction(completion, row["references"])
        return reference_scores(prediction, self.reference(row), row["metrics"])

    def metrics(self, rows: Sequence[Row], ks: Sequence[int] = (1,), timeout: float = 10.0,
                workers: int | None = 2) -> dict[str, Metric]:
        """``helm``: a :class:`~fedbiot_pl.evaluation.helm_metrics.HelmScores` over the rows' runs."""
        runs = {row["run"]: (row["run"], row["group"], row["metrics"], row["main"]) for row in rows}
        return {"helm": HelmScores(list(runs.values()))}

    def update(self, metrics: dict[str, Metric], rows: Sequence[Row], completions: Sequence[Sequence[str]]) -> None:
        """Score the first completion of each row and add it to its run."""
        metrics["helm"].update([row["run"] for row in rows],
                               [self.score(row, cs[0]) for row, cs in zip(rows, completions, strict=True)])

    def record_fields(self, row: Row) -> dict[str, Any]:
        """``run``, HELM's instance ``id`` and the ``gold`` (correct references' texts)."""
        return {"run": row["run"], "id": row["id"], "gold": self.reference(row)}
