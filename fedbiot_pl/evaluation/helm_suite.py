"""A HELM suite file: which scenarios to evaluate, from which local raw files, with how many instances.

A suite file is JSON lines, one HELM run per line (a ``.json`` list of the same objects works too)::

    {"scenario": "boolq", "path": "boolq/dev.jsonl", "train": "boolq/train.jsonl"}
    {"scenario": "mmlu", "subject": "anatomy", "path": "test/anatomy_test.csv", "train": "dev/anatomy_dev.csv"}
    {"scenario": "natural_qa", "mode": "closedbook", "path": ["nq-dev-00.jsonl.gz", "nq-dev-01.jsonl.gz"]}

Keys: ``scenario`` (one of :data:`SCENARIOS`), ``path`` (the evaluated file or files), ``train``
(the in-context example files, for scenarios whose examples come from another file),
``summaries`` (``narrative_qa``), ``subject`` (``mmlu``; else taken from ``<subject>_test.csv``),
``mode`` (``natural_qa``: ``closedbook``, ``openbook_longans`` or ``openbook_wiki``),
``max_eval_instances`` (default 100, the authors' ``helm-run -m 100``) and
``max_train_instances`` (default 5, HELM's). Relative paths are relative to the suite file;
``embedded:`` paths name packaged files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedbiot_pl.assets import resolve
from fedbiot_pl.errors import ConfigError
from fedbiot_pl.evaluation import helm_formats as formats
from fedbiot_pl.evaluation import helm_qa_formats as qa_formats
from fedbiot_pl.evaluation.records import InputError, read_records

GENERATION, JOINT = "generation", "multiple_choice_joint"
EXACT = ("exact_match", "quasi_exact_match", "prefix_exact_match", "quasi_prefix_exact_match")
F1 = ("exact_match", "quasi_exact_match", "f1_score")
COMMON_SENSE = "The following are multiple choice questions (with answers) about common sense."


@dataclass(frozen=True)
class Scenario:
    """How HELM adapts and scores one scenario (its run spec), and which suite keys it takes.

    Attributes:
        method: ``generation`` or ``multiple_choice_joint`` (lettered choices, the letter generated).
        input_prefix: Before each instance's input (``"Passage: "``, ``"Question: "`` or nothing).
        metrics: The reported metrics, by HELM's names.
        main: The metric HELM's leaderboard shows for the scenario.
        instructions: The line before the examples.
        keys: The suite keys besides ``scenario``, ``path`` and the instance counts.
    """

    method: str
    input_prefix: str
    metrics: tuple[str, ...]
    main: str
    instructions: str = ""
    keys: tuple[str, ...] = ("train",)


SCENARIOS: dict[str, Scenario] = {
    "boolq": Scenario(GENERATION, "Passage: ", EXACT, "quasi_exact_match"),
    "narrative_qa": Scenario(GENERATION, "Passage: ", F1, "f1_score", keys=("summaries",)),
    "quac": Scenario(GENERATION, "", F1, "f1_score"),
    "natural_qa": Scenario(GENERATION, "", F1, "f1_score", keys=("mode",)),
    "hellaswag": Scenario(JOINT, "Question: ", EXACT, "exact_match", COMMON_SENSE),
    "openbookqa": Scenario(JOINT, "Question: ", EXACT, "exact_match", COMMON_SENSE),
    "truthful_qa": Scenario(JOINT, "Question: ", EXACT, "exact_match", keys=()),
    "mmlu": Scenario(JOINT, "Question: ", EXACT, "exact_match", keys=("train", "subject")),
}
"""The supported scenarios by suite name (HELM's run-spec names; ``hellaswag``/``openbookqa`` are HELM's
``commonsense`` datasets)."""

COUNTS = {"max_eval_instances": (100, 1), "max_train_instances": (5, 0)}
"""Instance-count keys: default and smallest value."""


@dataclass(frozen=True)
class Run:
    """One line of a suite file, checked: a scenario, its files and settings, its HELM run and group names."""

    scenario: str
    name: str
    group: str
    paths: tuple[Path, ...]
    train: tuple[Path, ...]
    options: dict[str, Any]
    max_eval_instances: int
    max_train_instances: int
    where: str

    @property
    def spec(self) -> Scenario:
        """The scenario's adaptation and metrics."""
        return SCENARIOS[self.scenario]

    def instances(self, rng: Any) -> list[formats.Instance]:
        """Every instance of the run's files in HELM's order: the train files, then the evaluated ones.

        Args:
            rng: The ``random.Random(0)`` of the scenarios that draw (HELM's ``random.seed(0)``).
        """
        readers: dict[str, Callable[[Path, str], list[formats.Instance]]] = {
            "boolq": formats.boolq, "mmlu": formats.mmlu, "openbookqa": formats.openbookqa,
            "hellaswag": formats.hellaswag, "quac": lambda p, split: qa_formats.quac(p, split, rng),
        }
        if self.scenario in readers:
            read = readers[self.scenario]
            return ([i for p in self.train for i in read(p, formats.TRAIN)]
                    + [i for p in self.paths for i in read(p, formats.VALID)])
        if self.scenario == "truthful_qa":
            return [i for p in self.paths for i in formats.truthful_qa(p)]
        if self.scenario == "natural_qa":
            return [i for p in self.paths for i in qa_formats.natural_qa(p, self.options["mode"], rng)]
        return [i for p in self.paths for i in qa_formats.narrative_qa(p, self.options["summaries"], rng)]


def read_suite(path: str | Path) -> list[Run]:
    """The runs of a suite file, every key checked and every file found.

    Raises:
        ConfigError: The file, a line, a key or a named file is wrong; the message names it and the fix.
    """
    try:
        numbered = read_records(path)
    except InputError as error:
        raise ConfigError(f"{error}; a HELM suite file holds one JSON object per line, e.g. "
                          '{"scenario": "boolq", "path": "boolq/dev.jsonl", "train": "boolq/train.jsonl"}') from error
    runs = [_run(entry, Path(path), number) for number, entry in numbered]
    seen: dict[str, str] = {}
    for run in runs:
        if run.name in seen:
            raise ConfigError(f"{run.where}: run {run.name!r} is already listed at {seen[run.name]}; list each "
                              "scenario (subject, mode) once")
        seen[run.name] = run.where
    return runs


def _run(entry: dict[str, Any], suite: Path, number: int) -> Run:
    where = f"{suite} line {number}"
    scenario = entry.get("scenario")
    if scenario not in SCENARIOS:
        raise ConfigError(f"{where}: scenario {scenario!r} is unknown; use one of {', '.join(SCENARIOS)}")
    spec = SCENARIOS[scenario]
    allowed = ("scenario", "path", *spec.keys, *COUNTS)
    unknown = [key for key in entry if key not in allowed]
    if unknown:
        raise ConfigError(f"{where}: key(s) {unknown} are not read for {scenario}; its keys are {', '.join(allowed)}")
    paths = _paths(entry, "path", suite, where, required=True)
    options: dict[str, Any] = {}
    if scenario == "narrative_qa":
        (options["summaries"],) = _paths(entry, "summaries", suite, where, required=True, single=True)
    if scenario == "natural_qa":
        options["mode"] = entry.get("mode")
        if options["mode"] not in qa_formats.NQ_MODES:
            raise ConfigError(f"{where}: mode {options['mode']!r} is not a NaturalQuestions mode; use one of "
                              f"{', '.join(qa_formats.NQ_MODES)}")
    if scenario == "mmlu":
        options["subject"] = entry.get("subject") or _subject(paths[0])
        if not isinstance(options["subject"], str) or not options["subject"]:
            raise ConfigError(f"{where}: no MMLU subject; set \"subject\" (e.g. \"anatomy\") or name the file "
                              "<subject>_test.csv")
    counts = {}
    for key, (default, least) in COUNTS.items():
        value = entry.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ConfigError(f"{where}: {key}={value!r}; it must be an int >= {least} (default {default})")
        counts[key] = value
    name, group = _names(scenario, options)
    return Run(scenario, name, group, paths, _paths(entry, "train", suite, where), options, **counts, where=where)


def _names(scenario: str, options: dict[str, Any]) -> tuple[str, str]:
    """HELM's run name and run group of a scenario."""
    if scenario == "natural_qa":
        return f"natural_qa:mode={options['mode']}", f"natural_qa_{options['mode']}"
    if scenario == "mmlu":
        return f"mmlu:subject={options['subject']},method={JOINT}", "mmlu"
    if scenario in ("hellaswag", "openbookqa"):
        return f"commonsense:dataset={scenario},method={JOINT}", scenario
    if scenario == "truthful_qa":
        return f"truthful_qa:task=mc_single,method={JOINT}", scenario
    return scenario, scenario


def _subject(path: Path) -> str | None:
    for suffix in ("_test.csv", "_val.csv", "_dev.csv"):
        if path.name.endswith(suffix):
            return path.name.removesuffix(suffix)
    return None


def _paths(entry: dict[str, Any], key: str, suite: Path, where: str, required: bool = False,
           single: bool = False) -> tuple[Path, ...]:
    value = entry.get(key)
    if value is None and not required:
        return ()
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names) \
            or (single and len(names) != 1):
        kind = "a file name" if single else "a file name or a list of them"
        raise ConfigError(f"{where}: {key}={value!r}; it must be {kind}")
    paths = []
    for name in names:
        file = Path(resolve(name)) if name.startswith("embedded:") else suite.parent / name
        if not file.is_file():
            raise ConfigError(f"{where}: {key} file {name!r} does not exist (looked for {file}); fix the path "
                              "(relative paths start at the suite file's folder)")
        paths.append(file)
    return tuple(paths)
