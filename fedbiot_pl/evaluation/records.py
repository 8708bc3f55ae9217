"""Reading evaluation and prediction files: JSON lines (``.jsonl``, ``.jsonl.gz``) or a ``.json`` list.

Shared by the evaluation (:func:`fedbiot_pl.evaluation.eval_data.read_eval_records`) and by the
scoring of saved predictions (:meth:`fedbiot_pl.evaluation.task_base.EvalTask.score_file`, behind
``python -m fedbiot_pl.score``). Every error is an :class:`InputError` whose message names the file,
the line and the field.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


class InputError(ValueError):
    """A prediction or reference file the scorer cannot use; the message names file, line and field."""


def read_records(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """Read JSON objects from ``.jsonl``, ``.jsonl.gz`` or ``.json`` (a list of objects).

    Args:
        path: The file.

    Returns:
        ``(line number, record)`` pairs (for ``.json``, the 1-based position in the list).

    Raises:
        InputError: The file is missing or unreadable, a line is not JSON, or a record is not an object.
    """
    path = Path(path)
    try:
        with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")) as f:
            text = f.read()
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read {path}: {error}") from error
    if path.suffix == ".json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError(f"{path}: not valid JSON ({error})") from error
        if not isinstance(records, list):
            raise InputError(f"{path}: expected a JSON list of objects, got {type(records).__name__}")
        numbered = list(enumerate(records, start=1))
    else:
        numbered = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    numbered.append((number, json.loads(line)))
                except json.JSONDecodeError as error:
                    raise InputError(f"{path} line {number}: not valid JSON ({error})") from error
    for number, record in numbered:
        if not isinstance(record, dict):
            raise InputError(f"{path} line {number}: expected a JSON object, got {type(record).__name__}")
    if not numbered:
        raise InputError(f"{path}: no records")
    return numbered


def string_field(row: dict[str, Any], name: str, source: str | Path | None, number: int) -> str:
    """The string value of ``row[name]``.

    Args:
        row: A record.
        name: The field.
        source: The record's file (named in the error).
        number: The record's line number (named in the error).

    Returns:
        The value.

    Raises:
        InputError: The field is missing or not a string.
    """
    value = row.get(name)
    if not isinstance(value, str):
        found = "missing" if value is None else f"a {type(value).__name__}, not a string"
        raise InputError(f"{source} line {number}: field '{name}' is {found}")
    return value


class ReferenceLookup:
    """Find the gold answer of a prediction row in a references file, by ``id`` or by its text.

    A row's ``id`` is matched against the records' ``id`` or, if no record has one, taken as a
    0-based record index; without an ``id``, the row's ``text_field`` (stripped) is matched against
    the records' text.

    Args:
        path: The references file.
        gold_field: The records' field that holds the gold answer.
        text_field: The field that matches a row to a record without ``id``; ``None`` matches by ``id`` only.
    """

    def __init__(self, path: str, gold_field: str, text_field: str | None) -> None:
        """Read the references and index them by ``id`` and by text."""
        self.path, self.gold_field, self.text_field = path, gold_field, text_field
        self.lines, self.records = zip(*read_records(path), strict=True)
        self.by_id = {record["id"]: index for index, record in enumerate(self.records) if "id" in record}
        self.by_text: dict[str, list[int]] = {}
        for index, record in enumerate(self.records):
            if text_field is not None and isinstance(record.get(text_field), str):
                self.by_text.setdefault(record[text_field].strip(), []).append(index)

    def find(self, row: dict[str, Any], source: str, number: int) -> str:
        """The gold answer of ``row`` (line ``number`` of ``source``).

        Raises:
            InputError: The row has neither ``id`` nor text, matches no record, or matches records with
                different answers.
        """
        where = f"{source} line {number}"
        if "id" in row:
            if self.by_id:
                found = [self.by_id[row["id"]]] if row["id"] in self.by_id else []
            else:  # no ids in the references: the id is a 0-based line number
                found = [row["id"]] if _is_index(row["id"], len(self.records)) else []
            what = f"id {row['id']!r}"
        elif self.text_field is not None and isinstance(row.get(self.text_field), str):
            found = self.by_text.get(row[self.text_field].strip(), [])
            what = f"{self.text_field} {row[self.text_field][:40]!r}"
        else:
            needs = "'id'" if self.text_field is None else f"'id' or '{self.text_field}'"
            raise InputError(f"{where}: needs {needs} to find its reference in {self.path}")
        if not found:
            raise InputError(f"{where}: {what} matches no record of {self.path}")
        if len({str(self.records[index].get(self.gold_field)) for index in found}) > 1:
            raise InputError(f"{where}: {what} matches {len(found)} records of {self.path} with different "
                             f"'{self.gold_field}'; match by 'id' instead")
        return string_field(self.records[found[0]], self.gold_field, self.path, self.lines[found[0]])


def read_predictions(path: str, gold_field: str, match_field: str | None = None, references: str | None = None,
                     check: Callable[[str], None] | None = None) -> tuple[list[str], list[dict[str, str]]]:
    """The predictions of a predictions file, each with its gold answer.

    Each line holds ``prediction`` and ``gold_field``, or, with ``references``, an ``id`` or the
    ``match_field`` text that finds the gold answer there (:class:`ReferenceLookup`).

    Args:
        path: The predictions file.
        gold_field: The field of the gold answer.
        match_field: The text field that matches a line without ``id`` to a reference record.
        references: A file of gold records, for lines without ``gold_field``.
        check: Raises ``ValueError`` for a gold answer that cannot be scored.

    Returns:
        The predictions, and for each the row ``{gold_field: gold answer}``.

    Raises:
        InputError: A file, line or field that cannot be used.
    """
    numbered = read_records(path)
    lookup = ReferenceLookup(references, gold_field, match_field) if references else None
    texts, rows = [], []
    for number, row in numbered:
        texts.append(string_field(row, "prediction", path, number))
        if gold_field in row:
            gold = string_field(row, gold_field, path, number)
        elif lookup is None:
            raise InputError(f"{path} line {number}: no '{gold_field}' field; add it or pass --references")
        else:
            gold = lookup.find(row, path, number)
        if check is not None:
            try:
                check(gold)
            except ValueError as error:
                raise InputError(f"{path} line {number}: field '{gold_field}': {error}") from error
        rows.append({gold_field: gold})
    return texts, rows


def _is_index(value: Any, size: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < size
