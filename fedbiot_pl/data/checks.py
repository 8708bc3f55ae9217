"""Checks of loaded rows, each failure one error that names the source, the row and the fix.

Row numbers are 1-based record numbers (the n-th object of a JSON list or the n-th non-blank line
of a JSON-lines file). All checks run before any tokenizer is loaded.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from fedbiot_pl.errors import ConfigError


def diagnose_unreadable(path: Path, builder: str, error: BaseException) -> str:
    """Explain why ``datasets`` could not read a file, naming the first bad row when it can.

    JSON files are re-read with :mod:`json` to find the first row that is not valid JSON or not an
    object; other failures are reported with the reader's own message.

    Args:
        path: The file.
        builder: The ``datasets`` builder that failed (``json`` or ``parquet``).
        error: What the builder raised.

    Returns:
        The message of the error to raise.
    """
    cause = error.__cause__ or error.__context__ or error
    fallback = (
        f"{path}: cannot be read as {builder} ({type(cause).__name__}: {cause}); check that it is a valid "
        f"{'JSON list or JSON-lines' if builder == 'json' else builder} file."
    )
    if builder != "json":
        return fallback
    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as stream:
            text = stream.read()
    except (OSError, EOFError, UnicodeDecodeError) as read_error:
        return f"{path}: cannot be read as UTF-8 JSON ({read_error}); check the file (and its gzip compression)."
    return _first_bad_json_row(path, text) or fallback


def _first_bad_json_row(path: Path, text: str) -> str | None:
    """The message for the first unparsable or non-object row of a JSON list or JSON-lines text."""
    if text.lstrip().startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            return (
                f"{path} is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}); fix "
                "the file or convert it to one JSON object per line."
            )
        rows: list[tuple[int, Any]] = list(enumerate(values, start=1)) if isinstance(values, list) else [(1, values)]
    else:
        rows = []
        for number, line in enumerate((line for line in text.splitlines() if line.strip()), start=1):
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as error:
                return f"{path}: row {number} is not valid JSON ({error.msg}); each line must hold one JSON object."
    if not rows:
        return f"{path} holds no records; it must hold at least one (a JSON object per row)."
    for number, value in rows:
        if not isinstance(value, dict):
            return f"{path}: row {number} is a JSON {type(value).__name__}, not an object; every row must be an object."
    return None


def check_columns(where: str, columns: Sequence[str], fields: dict[str, str | None]) -> None:
    """Raise if a mapped column is absent.

    Args:
        where: How to name the source in the message.
        columns: The source's columns.
        fields: Role -> column; ``None`` means the role is not used.

    Raises:
        ValueError: A role's column is not among ``columns``.
    """
    for role, column in fields.items():
        if column is not None and column not in columns:
            raise ConfigError(
                f"{where}: no column {column!r} for the {role!r} field (its columns are {sorted(columns)}); "
                f"set `fields: {{{role}: <column>}}` or the right `format`."
            )


def check_values(where: str, role: str, column: str, values: Iterable[Any], required: bool) -> None:
    """Raise at the first row whose value for ``role`` is not usable.

    Args:
        where: How to name the source in the message.
        role: The role being checked (``instruction``, ``input`` or ``output``).
        column: The column that holds it.
        values: The column's values, in row order.
        required: Required roles need a non-blank string; optional ones may be null or empty.

    Raises:
        ValueError: A required value is missing, null or blank, or any value is not a string.
    """
    for number, value in enumerate(values, start=1):
        if value is None:
            if required:
                raise ConfigError(
                    f"{where}: row {number} has no {column!r} (missing or null), which holds the {role}; "
                    "give every row a non-empty string there, remove the row, or set drop_empty: true."
                )
        elif not isinstance(value, str):
            kind = type(value).__name__
            raise ConfigError(
                f"{where}: row {number} field {column!r} is {'an' if kind[0] in 'aeiou' else 'a'} {kind}, "
                "not a string; store it as a JSON string."
            )
        elif required and not value.strip():
            raise ConfigError(
                f"{where}: row {number} field {column!r} ({role}) is empty; give it text, remove the row, or set "
                "drop_empty: true."
            )


def client_keys(
    where: str, key: str, columns: Sequence[str], column_values: Callable[[str], Iterable[Any]],
    derived: dict[str, Callable[[str], str]], instruction_column: str,
) -> list[str]:
    """The partition key of every row, as strings.

    Args:
        where: How to name the source in the message.
        key: A column name, or a name in ``derived`` (computed from the instruction) when no
            column has that name.
        columns: The source's columns.
        column_values: Returns a column's values in row order.
        derived: Derived key name -> function of the instruction text.
        instruction_column: The column that holds the instruction.

    Returns:
        One key per row.

    Raises:
        ValueError: ``key`` is neither a column nor a derived key, or a row's key is null, blank
            or not a string/integer.
    """
    if key not in columns:
        if key in derived:
            return [derived[key](text) for text in column_values(instruction_column)]
        raise ConfigError(
            f"{where}: partition_key {key!r} is not a column (columns: {sorted(columns)}; derived keys: "
            f"{sorted(derived)}); set partition_key to one of them, or use partition: iid."
        )
    keys = []
    for number, value in enumerate(column_values(key), start=1):
        if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
            raise ConfigError(
                f"{where}: row {number} has no usable partition key {key!r} (got {value!r}); give every row a "
                "non-empty string there, remove the row, or partition by another key."
            )
        keys.append(str(value))
    return keys
