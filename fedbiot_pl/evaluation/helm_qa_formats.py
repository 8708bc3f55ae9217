"""Readers of HELM's raw open-QA files: NarrativeQA, QuAC and NaturalQuestions.

Each builds the :class:`~fedbiot_pl.evaluation.helm_formats.Instance` objects that HELM's scenario
of the same name builds. These scenarios draw at random (which question of a story, where a
dialogue stops, which short answer is shown): ``rng`` plays the part of HELM's ``random.seed(0)``,
so a ``random.Random(0)`` passed in the order HELM reads the files draws what HELM draws.
"""

from __future__ import annotations

import csv
import html
import json
import random
import re
from pathlib import Path
from typing import Any

from fedbiot_pl.errors import ConfigError
from fedbiot_pl.evaluation.helm_formats import TEST, TRAIN, VALID, Instance, fail, json_lines, text

_TAG = re.compile(r"<([^>]*)>")


def narrative_qa(qaps: str | Path, summaries: str | Path, rng: random.Random) -> list[Instance]:
    r"""NarrativeQA, summaries setting: ``qaps.csv`` and ``third_party/wikipedia/summaries.csv`` of its repository.

    For each split (``set`` column: train, valid, test) and each story, one of its questions is
    drawn; the input is ``<summary>\nQuestion: <question>?`` and both ``answer1`` and ``answer2``
    are correct.
    """
    stories = _dict_rows(summaries, ("document_id", "set", "summary"))
    questions = _dict_rows(qaps, ("document_id", "set", "question", "answer1", "answer2"))
    instances = []
    for split in (TRAIN, VALID, TEST):
        summary = {row["document_id"]: row["summary"] for _, row in stories if row["set"] == split}
        by_story: dict[str, list[tuple[int, dict[str, str]]]] = {}
        for number, row in questions:
            if row["set"] == split:
                by_story.setdefault(row["document_id"], []).append((number, row))
        for story, rows in by_story.items():
            number, row = rng.choice(rows)
            if story not in summary:
                raise fail(qaps, number, f"document_id {story!r} ({split}) has no summary in {summaries}",
                           "pass the summaries.csv of the same NarrativeQA release")
            question = row["question"].strip()
            question += "" if question.endswith("?") else "?"
            instances.append(Instance(f"{summary[story].strip()}\nQuestion: {question}",
                                      (row["answer1"], row["answer2"]), (0, 1), split))
    return instances


def _dict_rows(path: str | Path, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    try:
        with Path(path).open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise fail(path, 1, f"the header lacks the column(s) {missing}",
                           f"NarrativeQA's file needs the columns {', '.join(columns)}")
            return [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ConfigError(f"cannot read HELM data file {path}: {error}; check the path in the suite file") from error


def quac(path: str | Path, split: str, rng: random.Random) -> list[Instance]:
    """QuAC (``train_v0.2.json``, ``val_v0.2.json``): ``{"data": [dialogue, ...]}``.

    Each dialogue (``title``, ``background``, ``section_title``, ``paragraphs[0]`` with ``context``
    and ``qas``) stops at a drawn question ``k`` (at least the 3rd); the input shows the section and
    the earlier question-answer pairs, and every distinct answer of question ``k`` is correct. As
    in HELM's code, the pair just before question ``k`` is not shown, and ``CANNOTANSWER`` also
    accepts three paraphrases.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8")).get("data")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
        raise ConfigError(f"cannot read QuAC file {path}: {error}; pass train_v0.2.json or val_v0.2.json "
                          '({"data": [...]})') from error
    if not isinstance(data, list):
        raise fail(path, "field 'data'", f"is {type(data).__name__}", "QuAC files hold a list of dialogues there")
    return [_quac_instance(dialogue, path, f"dialogue {i + 1}", split, rng) for i, dialogue in enumerate(data)]


def _quac_instance(sample: Any, path: str | Path, where: str, split: str, rng: random.Random) -> Instance:
    fix = "QuAC dialogues need title, background, section_title and paragraphs[0] with context and qas"
    try:
        part = sample["paragraphs"][0]
        context, qas = part["context"], part["qas"]
        header = (f"Title: {sample['title']}\n\nBackground: {sample['background']}\n\n"
                  f"Section: {sample['section_title']}\n")
    except (KeyError, IndexError, TypeError) as error:
        raise fail(path, where, f"lacks {error}", fix) from error
    if not isinstance(context, str) or not isinstance(qas, list) or len(qas) < 3:
        raise fail(path, where, f"has {len(qas) if isinstance(qas, list) else 'no'} questions", fix +
                   " (at least 3 questions)")
    context = context.removesuffix(" CANNOTANSWER")
    k = rng.randint(3, len(qas)) - 1
    try:
        shown = "".join(f"Question: {qas[i]['question']}\nAnswer: {qas[i]['orig_answer']['text']}\n\n"
                        for i in range(k - 1))
        answers = list(dict.fromkeys(answer["text"] for answer in qas[k]["answers"]))
        asked = qas[k]["question"]
    except (KeyError, TypeError) as error:
        raise fail(path, where, f"a question lacks {error}", "each qas entry needs question, orig_answer.text and "
                   "answers[].text") from error
    if not answers:
        raise fail(path, where, f"question {k + 1} has no answers", "give it at least one answers[].text")
    if answers == ["CANNOTANSWER"]:
        answers += ["Not enough information", "Cannot answer", "Do not know"]
    prompt = f"{header}Passage: {context}\n\n{shown}Question: {asked}"
    return Instance(prompt, tuple(answers), tuple(range(len(answers))), split)


NQ_MODES = ("closedbook", "openbook_longans", "openbook_wiki")


def natural_qa(path: str | Path, mode: str, rng: random.Random) -> list[Instance]:
    """NaturalQuestions dev (``nq-dev-0X.jsonl.gz``), or HELM's cache of it (``nq-dev-0X.jsonl.gz-instances.jsonl``).

    A line of the original format holds ``question_text``, ``document_title``, ``document_html``,
    ``document_tokens`` and ``annotations`` (long and short answers as byte spans of the HTML); a
    cached line holds ``title``, ``document``, ``question``, ``long_answers`` and ``short_answers``.
    Lines without a short answer are skipped; of the rest, even positions are ``train`` and odd
    ones ``valid``. The question is capitalised with a ``?``; ``closedbook`` shows only it,
    ``openbook_longans`` a drawn short answer's long answer as the passage, ``openbook_wiki`` the
    whole page. Evaluated instances accept every distinct short answer, examples show the drawn one.
    """
    if mode not in NQ_MODES:
        raise ConfigError(f"NaturalQuestions mode {mode!r} is unknown; use one of {', '.join(NQ_MODES)}")
    instances = []
    for number, record in json_lines(path):
        raw = _nq_raw(record, path, number, mode == "openbook_wiki")
        if raw is None:
            continue
        title, document, question, long_answers, short_answers = raw
        split = TRAIN if len(instances) % 2 == 0 else VALID
        pick = rng.randint(0, len(short_answers) - 1)
        question = question.capitalize()
        question += "" if question.endswith("?") else "?"
        if mode == "closedbook":
            prompt = question
        elif mode == "openbook_longans":
            prompt = f"Passage: {long_answers[pick]}\n\nQuestion: {question}"
        else:
            prompt = f"Title: {title}\n\nPassage: {document}\n\nQuestion: {question}"
        answers = short_answers[pick : pick + 1] if split == TRAIN else list(dict.fromkeys(short_answers))
        instances.append(Instance(prompt, tuple(answers), tuple(range(len(answers))), split))
    return instances


def _nq_raw(record: dict[str, Any], path: str | Path, number: int,
            document: bool) -> tuple[str, str, str, list[str], list[str]] | None:
    """``(title, document, question, long answers, short answers)`` of a line; ``None`` without a short answer."""
    if "document_html" not in record:  # HELM's cached raw instances
        shorts, longs = record.get("short_answers"), record.get("long_answers")
        if not isinstance(shorts, list) or not isinstance(longs, list) or len(longs) != len(shorts):
            raise fail(path, number, "neither document_html nor short_answers/long_answers lists of one length",
                       "pass NaturalQuestions' nq-dev-XX.jsonl.gz or HELM's -instances.jsonl cache of it")
        if not shorts:
            return None
        return (record.get("title", ""), record.get("document", ""),
                text(record, "question", path, number, "HELM's NaturalQuestions cache"), longs, shorts)
    page = text(record, "document_html", path, number, "NaturalQuestions").encode("utf-8")
    annotations = record.get("annotations")
    if not isinstance(annotations, list):
        raise fail(path, number, "field 'annotations' is not a list", "NaturalQuestions lines need annotations")
    longs, shorts = [], []
    try:
        for annotation in annotations:
            span = annotation["long_answer"]
            long_answer = _clean(page[span["start_byte"] : span["end_byte"]])
            for short in annotation["short_answers"]:
                shorts.append(_clean(page[short["start_byte"] : short["end_byte"]]))
                longs.append(long_answer)
        words = " ".join(_TAG.sub("", html.unescape(t["token"].replace(" ", "_")))
                         for t in record["document_tokens"]) if document and shorts else ""
    except (KeyError, TypeError) as error:
        raise fail(path, number, f"an annotation or token lacks {error}", "NaturalQuestions annotations need "
                   "long_answer and short_answers with start_byte/end_byte, tokens need 'token'") from error
    if not shorts:
        return None
    return (text(record, "document_title", path, number, "NaturalQuestions"), words,
            text(record, "question_text", path, number, "NaturalQuestions"), longs, shorts)


def _clean(span: bytes) -> str:
    return _TAG.sub("", html.unescape(span.replace(b"\xc2\xa0", b" ").decode("utf-8", errors="replace")))
