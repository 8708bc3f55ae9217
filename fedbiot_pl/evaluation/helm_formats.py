"""Readers of HELM's raw scenario files: each turns one local file into :class:`Instance` objects.

A reader builds the instances as HELM's scenario class of the same name does from the file it
downloads (its input text, its references and which of them are correct), without downloading
anything. Multiple-choice and yes/no scenarios are here; the open QA scenarios with a random step
(NarrativeQA, QuAC, NaturalQuestions) are in :mod:`~fedbiot_pl.evaluation.helm_qa_formats`.

Every problem raises :class:`~fedbiot_pl.errors.ConfigError` naming the file, the line, the value
and the fix.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedbiot_pl.errors import ConfigError

TRAIN, VALID, TEST = "train", "valid", "test"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class Instance:
    """One HELM instance: the input text, the reference outputs, the correct ones, the split.

    Attributes:
        input: The instance's input text (before the adapter's prefixes).
        references: Every reference output (the choices of a multiple-choice question).
        correct: The indices of the correct references (at least one).
        split: ``train`` (in-context examples), ``valid`` or ``test`` (evaluated).
    """

    input: str
    references: tuple[str, ...]
    correct: tuple[int, ...]
    split: str


def fail(path: str | Path, where: int | str, problem: str, fix: str) -> ConfigError:
    """The error of a raw-file problem: ``<file> line <n>: <problem>; <fix>``."""
    place = f"line {where}" if isinstance(where, int) else where
    return ConfigError(f"{path} {place}: {problem}; {fix}")


def json_lines(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` of a JSON lines file (``.gz`` read compressed), one line at a time.

    Raises:
        ConfigError: The file cannot be read, or a line is not a JSON object.
    """
    path = Path(path)
    try:
        with gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise fail(path, number, f"not valid JSON ({error})", "write one JSON object per line") from error
                if not isinstance(record, dict):
                    raise fail(path, number, f"expected a JSON object, got {type(record).__name__}",
                               "write one JSON object per line")
                yield number, record
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read HELM data file {path}: {error}; check the path in the suite file") from error


def csv_rows(path: str | Path) -> Iterator[tuple[int, list[str]]]:
    """``(line number, cells)`` of a CSV file (blank lines skipped).

    Raises:
        ConfigError: The file cannot be read.
    """
    try:
        with Path(path).open(encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            for cells in reader:
                if cells:
                    yield reader.line_num, cells
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ConfigError(f"cannot read HELM data file {path}: {error}; check the path in the suite file") from error


def text(record: dict[str, Any], name: str, path: str | Path, number: int, fmt: str) -> str:
    """The string ``record[name]``, or an error naming the field and the expected format."""
    value = record.get(name)
    if not isinstance(value, str):
        found = "missing" if value is None else f"{value!r} (a {type(value).__name__})"
        raise fail(path, number, f"field {name!r} is {found}", f"{fmt} needs a string there")
    return value


def letter_index(letter: Any, count: int, path: str | Path, number: int, what: str) -> int:
    """The 0-based index of answer letter ``letter`` among ``count`` choices."""
    if not isinstance(letter, str) or letter.strip() not in LETTERS[:count]:
        raise fail(path, number, f"{what} {letter!r} is not a choice letter",
                   f"use one of {', '.join(LETTERS[:count])} (this question has {count} choices)")
    return LETTERS.index(letter.strip())


def same_text(answers: list[str], right: int) -> tuple[int, ...]:
    """HELM marks every reference whose text equals the right answer's as correct."""
    return tuple(i for i, answer in enumerate(answers) if answer == answers[right])


def boolq(path: str | Path, split: str) -> list[Instance]:
    r"""BoolQ (``train.jsonl``/``dev.jsonl``): ``{"question", "passage", "answer": true|false}`` per line.

    The input is ``<passage>\nQuestion: <Question>?`` (the question capitalised, a ``?`` added if
    missing); the reference is ``Yes`` or ``No``.
    """
    instances = []
    for number, record in json_lines(path):
        passage = text(record, "passage", path, number, "BoolQ")
        question = text(record, "question", path, number, "BoolQ").strip().capitalize()
        answer = record.get("answer")
        if not isinstance(answer, bool):
            raise fail(path, number, f"field 'answer' is {answer!r}", "BoolQ needs true or false there")
        question += "" if question.endswith("?") else "?"
        instances.append(Instance(f"{passage}\nQuestion: {question}", ("Yes" if answer else "No",), (0,), split))
    return instances


def mmlu(path: str | Path, split: str) -> list[Instance]:
    """MMLU (``<subject>_dev.csv``, ``_val.csv``, ``_test.csv``): rows ``question,A,B,C,D,answer letter``."""
    instances = []
    for number, cells in csv_rows(path):
        if len(cells) < 4:
            raise fail(path, number, f"{len(cells)} columns", "MMLU rows are question,A,B,C,D,answer (no header)")
        question, answers = cells[0], cells[1:-1]
        right = letter_index(cells[-1], min(len(answers), 5), path, number, "answer")
        instances.append(Instance(question, tuple(answers), same_text(answers, right), split))
    return instances


def openbookqa(path: str | Path, split: str) -> list[Instance]:
    """OpenBookQA (``Data/Main/train.jsonl``, ``test.jsonl``): ``question.stem``/``.choices``, ``answerKey``."""
    instances = []
    for number, record in json_lines(path):
        question = record.get("question")
        choices = question.get("choices") if isinstance(question, dict) else None
        if not isinstance(choices, list) or not all(isinstance(c, dict) and isinstance(c.get("text"), str)
                                                    for c in choices) or len(choices) < 2:
            raise fail(path, number, f"field 'question' is {question!r}",
                       'OpenBookQA needs {"stem": ..., "choices": [{"text": ..., "label": "A"}, ...]} there')
        stem = text(question, "stem", path, number, "OpenBookQA's question")
        right = letter_index(record.get("answerKey"), min(len(choices), 4), path, number, "answerKey")
        if choices[right].get("label", record["answerKey"]) != record["answerKey"]:
            raise fail(path, number, f"answerKey {record['answerKey']!r} is not the label of choice {right + 1} "
                       f"({choices[right].get('label')!r})", "list the choices in label order A, B, C, D")
        answers = [c["text"] for c in choices]
        instances.append(Instance(stem, tuple(answers), same_text(answers, right), split))
    return instances


def hellaswag(path: str | Path, split: str) -> list[Instance]:
    """HellaSwag (``hellaswag_train.jsonl``, ``hellaswag_val.jsonl``): one ending of four is right.

    Fields: ``activity_label``, ``ctx_a``, ``ctx_b``, ``endings`` and ``label`` (the right ending's index).

    The question is ``<activity_label>: <ctx_a> <Ctx_b>`` (``ctx_b``'s first letter capitalised).
    """
    instances = []
    for number, record in json_lines(path):
        label, ctx_a = text(record, "activity_label", path, number, "HellaSwag"), text(record, "ctx_a", path, number,
                                                                                       "HellaSwag")
        ctx_b = text(record, "ctx_b", path, number, "HellaSwag")
        endings, right = record.get("endings"), record.get("label")
        if not isinstance(endings, list) or len(endings) < 2 or not all(isinstance(e, str) for e in endings):
            raise fail(path, number, f"field 'endings' is {endings!r}", "HellaSwag needs a list of ending strings")
        if isinstance(right, str) and right.isdigit():
            right = int(right)
        if not isinstance(right, int) or isinstance(right, bool) or not 0 <= right < len(endings):
            raise fail(path, number, f"field 'label' is {right!r}",
                       f"HellaSwag needs the 0-based index of the right ending (0 to {len(endings) - 1}); the "
                       "unlabelled test file cannot be scored")
        question = f"{label}: {ctx_a} {ctx_b[:1].upper() + ctx_b[1:]}"
        instances.append(Instance(question, tuple(endings), same_text(endings, right), split))
    return instances


def truthful_qa(path: str | Path) -> list[Instance]:
    """TruthfulQA ``TruthfulQA.csv``, task ``mc_single``: the first 20 % of the questions ``train``, the rest ``valid``.

    The file has a header and the columns Type, Category, Question, Best Answer, Correct Answers,
    Incorrect Answers and Source.

    The choices are the incorrect answers (split at ``;``) then the best one, each ending with a
    period, rotated left by ``ord(best[0]) % count`` as HELM does to move the right letter around.
    """
    rows = list(csv_rows(path))[1:]
    if not rows:
        raise fail(path, "line 2", "no questions after the header", "use TruthfulQA.csv of the TruthfulQA repository")
    train = int(len(rows) * 0.2)
    instances = []
    for position, (number, cells) in enumerate(rows):
        if len(cells) != 7:
            raise fail(path, number, f"{len(cells)} columns", "TruthfulQA.csv rows have 7: Type, Category, Question, "
                       "Best Answer, Correct Answers, Incorrect Answers, Source")
        question, best, incorrect = cells[2].strip(), _sentence(cells[3]), cells[5]
        if not question or not best:
            raise fail(path, number, "an empty Question or Best Answer", "fill both columns")
        answers = [_sentence(a) for a in incorrect.split(";") if a.strip()] + [best]
        shift = ord(best[0]) % len(answers)
        answers = answers[shift:] + answers[:shift]
        right = (len(answers) - 1 - shift) % len(answers)
        instances.append(Instance(question, tuple(answers), (right,), TRAIN if position < train else VALID))
    return instances


def _sentence(answer: str) -> str:
    answer = answer.strip()
    return answer if not answer or answer.endswith(".") else answer + "."
