"""Where a data set comes from and how its columns map onto an instruction record.

A :class:`DataSource` names a Hugging Face dataset id or a local ``.json``/``.jsonl``/``.jsonl.gz``/
``.parquet`` file (or an ``embedded:`` sample) and a *format* whose preset maps the file's columns
onto the three roles of an Alpaca record, ``instruction``, ``input`` and ``output``; ``fields``
overrides single roles. :func:`load_source` reads it with :func:`datasets.load_dataset`, turning
every failure into one error that names the file and the fix.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import datasets

from fedbiot_pl.assets import resolve
from fedbiot_pl.data.checks import check_columns, check_values, client_keys, diagnose_unreadable
from fedbiot_pl.data.prompts import instruction_language
from fedbiot_pl.errors import ConfigError, MissingPathError
from fedbiot_pl.quiet import no_library_progress_bars

Format = Literal["auto", "gsm8k", "alpaca", "dolly", "code"]
"""A named preset, or ``auto`` to pick one from the columns."""

ROLES = ("instruction", "input", "output")
"""The roles of an instruction record; ``input`` is optional."""

PRESET_FIELDS: dict[str, dict[str, str]] = {
    "gsm8k": {"instruction": "question", "output": "answer"},
    "alpaca": {"instruction": "instruction", "input": "input", "output": "output"},
    "dolly": {"instruction": "instruction", "input": "context", "output": "response"},
    "code": {"instruction": "instruction", "input": "input", "output": "output"},
}
"""Role -> column of each format (GSM8K has no input; Dolly's context is the input)."""

PRESET_CLIENT_KEY: dict[str, str | None] = {"gsm8k": None, "alpaca": None, "dolly": "category", "code": "input"}
"""The column each format partitions by (Dolly: category; Rosetta-style code: the language in ``input``)."""

DERIVED_KEYS = {"instruction_language": instruction_language}
"""Partition keys computed from the instruction when no column has that name (Code Alpaca has no language field)."""

FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".json.gz": "json", ".jsonl.gz": "json", ".parquet": "parquet"}
"""File endings read from disk, and the ``datasets`` builder that reads each."""


@dataclass(frozen=True)
class DataSource:
    """One data set: where it is, which preset reads it, and per-source options.

    Attributes:
        path: A local file (``.json`` list, ``.jsonl``, ``.jsonl.gz``, ``.parquet``), an
            ``embedded:`` sample, or a Hugging Face dataset id (any string that is not an existing
            path and has no file ending), e.g. ``openai/gsm8k``.
        format: The preset: ``gsm8k`` (question/answer; ``####`` becomes ``The answer is``),
            ``alpaca`` (instruction/input/output), ``dolly`` (instruction/context/response, key
            ``category``), ``code`` (instruction/input/output, key = the language in ``input``,
            no-break spaces deleted), or ``auto``: chosen from the column names.
        split: The split of a hub dataset (``train``, ``test``, ``train[:1000]``); ignored for files.
        config: The configuration of a hub dataset (GSM8K's ``main``); ``None`` for the default.
        fields: Role -> column overrides, e.g. ``{instruction: prompt, output: completion}``;
            roles are ``instruction``, ``input`` and ``output``.
        strip_calculator_annotations: For ``gsm8k``: delete the ``<<48/2=24>>`` annotations
            (the paper keeps them).
        drop_empty: Skip (and count) rows whose instruction or output is null or blank instead of
            raising; real files have a few (Code Alpaca's 2k file has 2 empty outputs).
    """

    path: str
    format: Format = "auto"
    split: str = "train"
    config: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    strip_calculator_annotations: bool = False
    drop_empty: bool = False

    def __post_init__(self) -> None:
        """Reject values that can be judged without reading the data."""
        problems = []
        if not isinstance(self.path, str) or not self.path.strip():
            problems.append(f"path={self.path!r}: give a file path, an 'embedded:' sample or a hub id.")
        if self.format not in PRESET_FIELDS and self.format != "auto":
            problems.append(f"format={self.format!r}: use one of auto, {', '.join(PRESET_FIELDS)}.")
        unknown = sorted(set(self.fields) - set(ROLES))
        if unknown:
            problems.append(f"fields has unknown role(s) {unknown}: the roles are {', '.join(ROLES)}.")
        if self.strip_calculator_annotations and self.format not in ("gsm8k", "auto"):
            problems.append(f"strip_calculator_annotations applies to format gsm8k only, not {self.format!r}.")
        if problems:
            raise ConfigError(f"Invalid DataSource({self.path!r}):\n- " + "\n- ".join(problems))

    @property
    def location(self) -> str:
        """The resolved path (an ``embedded:`` reference becomes a file path)."""
        return resolve(self.path)

    def describe(self) -> str:
        """How errors name this source: the file path, or the hub id with its split."""
        if _is_local(self.location):
            return self.location
        config = f" config {self.config!r}" if self.config else ""
        return f"hub dataset {self.path!r}{config} split {self.split!r}"


def file_builder(path: Path) -> str:
    """The ``datasets`` builder for a local file, from its ending.

    Raises:
        ValueError: The ending is not one of :data:`FILE_BUILDERS`.
    """
    name = path.name.lower()
    for ending in sorted(FILE_BUILDERS, key=len, reverse=True):
        if name.endswith(ending):
            return FILE_BUILDERS[ending]
    raise ConfigError(
        f"{path}: unsupported file type; convert it to one of {', '.join(FILE_BUILDERS)} "
        "(JSON list or one JSON object per line, optionally gzipped, or Parquet)."
    )


def _is_local(location: str) -> bool:
    """True for what must be a local path: an existing path, or a string with a file ending or a path prefix."""
    if Path(location).exists():
        return True
    looks_like_file = any(location.lower().endswith(ending) for ending in FILE_BUILDERS)
    return looks_like_file or location.startswith(("/", "./", "../", "~"))


def _is_blank_file(path: Path) -> bool:
    """True when the (possibly gzipped) file holds nothing but whitespace."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as stream:
        while chunk := stream.read(1 << 16):
            if chunk.strip():
                return False
    return True


def load_source(source: DataSource, cache_dir: str | None = None) -> datasets.Dataset:
    """Read a source into a :class:`datasets.Dataset` (cached as Arrow under ``cache_dir``).

    Args:
        source: What to read.
        cache_dir: The ``datasets`` cache folder; ``None`` uses the library's default.

    Returns:
        The rows, in file order, with the file's own columns.

    Raises:
        FileNotFoundError: A local path (or ``embedded:`` sample) does not exist.
        ValueError: The file is empty, unreadable, of an unsupported type or holds no rows, or
            the hub dataset cannot be loaded; the message names the file or id and the fix.
    """
    location = source.location
    if not _is_local(location):
        return _load_hub(source, cache_dir)
    path = Path(location).expanduser()
    if not path.exists():
        raise MissingPathError(
            f"Data file {source.path!r} does not exist (looked for {path}); pass the path of a "
            f"{', '.join(FILE_BUILDERS)} file, an 'embedded:' sample or a hub dataset id."
        )
    if path.is_dir():
        return _load_hub(source, cache_dir)
    builder = file_builder(path)
    try:
        blank = _is_blank_file(path)
    except (OSError, EOFError) as error:
        raise ConfigError(f"{path}: cannot be read ({error}); check the file and its permissions.") from error
    if blank:
        raise ConfigError(f"{path} is empty; it must hold at least one record (one JSON object per row).")
    try:
        with no_library_progress_bars():
            dataset = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache_dir)
    except Exception as error:
        raise ConfigError(diagnose_unreadable(path, builder, error)) from error
    if len(dataset) == 0:
        raise ConfigError(f"{path} holds no records; it must hold at least one.")
    return dataset


def _load_hub(source: DataSource, cache_dir: str | None) -> datasets.Dataset:
    """Load a hub id (or a local dataset folder) with ``datasets.load_dataset``."""
    try:
        with no_library_progress_bars():
            dataset = datasets.load_dataset(source.location, source.config, split=source.split, cache_dir=cache_dir)
    except Exception as error:
        raise ConfigError(
            f"Cannot load {source.describe()}: {type(error).__name__}: {error}. Check the id, config and "
            "split (and the network), or download the data and point path at a local file."
        ) from error
    if not isinstance(dataset, datasets.Dataset):
        raise ConfigError(
            f"{source.describe()} is not a single split; set split, e.g. split: train."
        )
    if len(dataset) == 0:
        raise ConfigError(f"{source.describe()} holds no records; choose another split.")
    return dataset


@dataclass(frozen=True)
class RecordSpec:
    """How the rows of one checked source become instruction records.

    Attributes:
        format: The concrete preset (``auto`` resolved).
        fields: Role -> column; ``input`` may be ``None`` (no input column).
        strip_calculator_annotations: Copied from the source (GSM8K only).
    """

    format: str
    fields: dict[str, str | None]
    strip_calculator_annotations: bool = False


def detect_format(columns: list[str]) -> str | None:
    """The preset that fits the columns, else ``None``.

    GSM8K, Dolly and Alpaca are tried in this order, first for all of their columns, then for
    their instruction and output columns only (the input column is optional).
    """
    for roles in (("instruction", "input", "output"), ("instruction", "output")):
        for name in ("gsm8k", "dolly", "alpaca"):
            fields = PRESET_FIELDS[name]
            if {fields[role] for role in roles if role in fields} <= set(columns):
                return name
    return None


def record_spec(source: DataSource, columns: list[str]) -> RecordSpec:
    """Resolve ``auto`` and the field overrides against the columns a source really has.

    A preset's ``input`` column may be absent (then every record has no input); a column named
    in ``fields`` must exist.

    Raises:
        ValueError: The format cannot be told from the columns, or a needed column is absent.
    """
    where = source.describe()
    name = source.format if source.format != "auto" else detect_format(columns)
    if name is None and not {"instruction", "output"} <= set(source.fields):
        raise ConfigError(
            f"{where}: cannot tell its format from its columns {sorted(columns)}; set `format` to one of "
            f"{', '.join(PRESET_FIELDS)}, or map the columns with `fields: {{instruction: ..., output: ...}}`."
        )
    name = name or "alpaca"
    if source.strip_calculator_annotations and name != "gsm8k":
        raise ConfigError(f"{where}: strip_calculator_annotations applies to GSM8K data only, but it reads as {name}.")
    fields: dict[str, str | None] = {"input": None, **PRESET_FIELDS[name], **source.fields}
    if "input" not in source.fields and fields["input"] not in columns:
        fields["input"] = None
    check_columns(where, columns, fields)
    return RecordSpec(name, fields, source.strip_calculator_annotations)


def check_source(source: DataSource, dataset: datasets.Dataset) -> RecordSpec:
    """Check every row of a loaded source and return how to read it.

    With ``drop_empty`` a null or blank instruction or output is allowed (the row is skipped at
    tokenisation and counted); a value that is not a string is always an error.

    Raises:
        ValueError: A column is absent, or a row's value is missing, blank or not a string; the
            message names the source, the row and the fix.
    """
    spec = record_spec(source, list(dataset.column_names))
    for role, column in spec.fields.items():
        if column is not None:
            required = role != "input" and not source.drop_empty
            check_values(source.describe(), role, column, column_values(dataset, column), required=required)
    return spec


def column_values(dataset: datasets.Dataset, column: str) -> list[object]:
    """A column as a Python list: straight from Arrow for plain columns, decoded for mixed-type ones."""
    feature = dataset.features[column]
    if isinstance(feature, datasets.Value):
        return dataset.with_format("arrow")[column].to_pylist()
    return list(dataset[column])


def source_client_keys(source: DataSource, dataset: datasets.Dataset, spec: RecordSpec, key: str) -> list[str]:
    """The partition key of every row: a column's values, or a :data:`DERIVED_KEYS` function of the instruction."""
    return client_keys(
        source.describe(), key, list(dataset.column_names), lambda column: column_values(dataset, column), DERIVED_KEYS,
        str(spec.fields["instruction"]),
    )
