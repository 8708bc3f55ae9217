"""DataSource: presets and field mapping, loading every file type, and one named error per bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import datasets
import pytest

from fedbiot_pl.data import sources as data_sources
from fedbiot_pl.data.sources import (
    DataSource,
    check_source,
    detect_format,
    file_builder,
    load_source,
    record_spec,
    source_client_keys,
)

ROWS = [
    {"question": "What is 1 + 1?", "answer": "1 + 1 = <<1+1=2>>2\n#### 2"},
    {"question": "What is 2 + 2?", "answer": "2 + 2 = <<2+2=4>>4\n#### 4"},
]


def _jsonl(path: Path, rows: list[Any]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def _load(path: str, tmp_path: Path, **options: Any) -> tuple[DataSource, datasets.Dataset]:
    source = DataSource(path, **options)
    return source, load_source(source, str(tmp_path / "cache"))


# ---------------------------------------------------------------- description and presets

def test_invalid_source_lists_every_problem() -> None:
    with pytest.raises(ValueError) as caught:
        DataSource(" ", format="csv", fields={"answer": "a"}, strip_calculator_annotations=True)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "path=' '" in message
    assert "format='csv': use one of auto, gsm8k, alpaca, dolly, code" in message
    assert "unknown role(s) ['answer']" in message
    assert "strip_calculator_annotations applies to format gsm8k only" in message


@pytest.mark.parametrize(
    ("name", "builder"),
    [("a.json", "json"), ("a.JSONL", "json"), ("a.jsonl.gz", "json"), ("a.json.gz", "json"), ("a.parquet", "parquet")],
)
def test_file_builder_by_ending(name: str, builder: str) -> None:
    assert file_builder(Path(name)) == builder


def test_unsupported_file_type_names_the_supported_ones() -> None:
    with pytest.raises(ValueError, match=r"a\.csv: unsupported file type; convert it to one of \.json, \.jsonl"):
        file_builder(Path("a.csv"))


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        (["question", "answer"], "gsm8k"),
        (["instruction", "context", "response", "category"], "dolly"),
        (["instruction", "input", "output"], "alpaca"),
        (["instruction", "output"], "alpaca"),
        (["instruction", "response"], "dolly"),
        (["prompt", "completion"], None),
    ],
)
def test_detect_format(columns: list[str], expected: str | None) -> None:
    assert detect_format(columns) == expected


def test_record_spec_presets_and_overrides() -> None:
    dolly = record_spec(DataSource("x.jsonl"), ["instruction", "context", "response", "category"])
    assert (dolly.format, dolly.fields) == (
        "dolly", {"input": "context", "instruction": "instruction", "output": "response"}
    )
    no_input = record_spec(DataSource("x.jsonl", format="alpaca"), ["instruction", "output"])
    assert no_input.fields["input"] is None  # a preset's input column may be absent
    mapped = record_spec(DataSource("x.jsonl", fields={"instruction": "prompt", "output": "completion"}),
                         ["prompt", "completion"])
    assert (mapped.format, mapped.fields) == (
        "alpaca", {"input": None, "instruction": "prompt", "output": "completion"}
    )


def test_record_spec_errors_name_the_columns_and_the_fix() -> None:
    with pytest.raises(ValueError,
                       match=r"x\.jsonl: cannot tell its format from its columns \['a', 'b'\]; set `format`"):
        record_spec(DataSource("x.jsonl"), ["a", "b"])
    with pytest.raises(ValueError,
                       match=r"no column 'answer' for the 'output' field .*set `fields: \{output: <column>\}`"):
        record_spec(DataSource("x.jsonl", format="gsm8k"), ["question", "solution"])
    with pytest.raises(ValueError, match=r"no column 'ctx' for the 'input' field"):
        record_spec(DataSource("x.jsonl", format="alpaca", fields={"input": "ctx"}), ["instruction", "output"])
    with pytest.raises(ValueError,
                       match="strip_calculator_annotations applies to GSM8K data only, but it reads as alpaca"):
        record_spec(DataSource("x.jsonl", strip_calculator_annotations=True), ["instruction", "output"])


# ---------------------------------------------------------------- loading every file type

def test_every_file_type_loads_the_same_rows(tmp_path: Path) -> None:
    paths = {
        "jsonl": _jsonl(tmp_path / "rows.jsonl", ROWS),
        "json": str(tmp_path / "rows.json"),
        "jsonl.gz": str(tmp_path / "rows.jsonl.gz"),
        "parquet": str(tmp_path / "rows.parquet"),
    }
    Path(paths["json"]).write_text(json.dumps(ROWS), encoding="utf-8")
    with gzip.open(paths["jsonl.gz"], "wt", encoding="utf-8") as stream:
        stream.write("".join(json.dumps(row) + "\n" for row in ROWS))
    datasets.Dataset.from_list(ROWS).to_parquet(paths["parquet"])
    for path in paths.values():
        source, rows = _load(path, tmp_path)
        assert rows.to_list() == ROWS, path
        assert check_source(source, rows).format == "gsm8k"


def test_hub_ids_go_to_load_dataset_with_config_and_split(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_load_dataset(*args: Any, **kwargs: Any) -> datasets.Dataset:
        calls.append((args, kwargs))
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(data_sources.datasets, "load_dataset", fake_load_dataset)
    rows = load_source(DataSource("openai/gsm8k", config="main", split="train[:2]"), "/tmp/c")
    assert len(rows) == 2
    assert calls == [(("openai/gsm8k", "main"), {"split": "train[:2]", "cache_dir": "/tmp/c"})]


def test_unreachable_hub_id_is_one_named_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("Couldn't reach 'someone/nothing' on the Hub")

    monkeypatch.setattr(data_sources.datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match=r"Cannot load hub dataset 'someone/nothing' split 'test': ConnectionError.*"
                                         r"point path at a local file"):
        load_source(DataSource("someone/nothing", split="test"))


# ---------------------------------------------------------------- unreadable and empty files

def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"'.*nope\.jsonl' does not exist"):
        load_source(DataSource(str(tmp_path / "nope.jsonl")))


@pytest.mark.parametrize(
    ("name", "content"), [("empty.jsonl", b""), ("blank.json", b"  \n\n"), ("empty.jsonl.gz", None)]
)
def test_empty_file_is_named(tmp_path: Path, name: str, content: bytes | None) -> None:
    path = tmp_path / name
    if content is None:
        with gzip.open(path, "wb") as stream:
            stream.write(b"\n")
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"{name.replace('.', '[.]')} is empty; it must hold at least one record"):
        load_source(DataSource(str(path)))


def test_empty_json_list_holds_no_records(tmp_path: Path) -> None:
    (tmp_path / "none.json").write_text("[]")
    with pytest.raises(ValueError, match=r"none\.json holds no records; it must hold at least one"):
        load_source(DataSource(str(tmp_path / "none.json")), str(tmp_path / "cache"))


def test_invalid_json_names_the_row(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n{not json\n")
    with pytest.raises(ValueError,
                       match=r"bad\.jsonl: row 3 is not valid JSON \(.*\); each line must hold one JSON object"):
        load_source(DataSource(str(path)), str(tmp_path / "cache"))


def test_row_that_is_not_an_object_is_named(tmp_path: Path) -> None:
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([ROWS[0], ["a", "b"]]))
    with pytest.raises(ValueError, match=r"rows\.json: row 2 is a JSON list, not an object"):
        load_source(DataSource(str(path)), str(tmp_path / "cache"))


@pytest.mark.parametrize("name", ["corrupt.jsonl.gz", "corrupt.parquet"])
def test_corrupt_file_is_named(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"this is not what the ending promises")
    with pytest.raises(ValueError, match=rf"{name.replace('.', '[.]')}: cannot be read"):
        load_source(DataSource(str(tmp_path / name)), str(tmp_path / "cache"))


# ---------------------------------------------------------------- row values and keys

@pytest.mark.parametrize(
    ("bad_row", "expected"),
    [
        ({"question": "Q?"}, r"row 2 has no 'answer' \(missing or null\), which holds the output"),
        ({"question": "Q?", "answer": None}, r"row 2 has no 'answer' \(missing or null\)"),
        ({"question": "  ", "answer": "#### 1"},
         r"row 2 field 'question' \(instruction\) is empty; give it text, remove the row, or set drop_empty: true"),
        ({"question": "Q?", "answer": 72}, r"row 2 field 'answer' is an int, not a string; store it as a JSON string"),
    ],
)
def test_bad_values_name_file_row_and_fix(tmp_path: Path, bad_row: dict[str, Any], expected: str) -> None:
    path = _jsonl(tmp_path / "task.jsonl", [ROWS[0], bad_row, ROWS[1]])
    source, rows = _load(path, tmp_path, format="gsm8k")
    with pytest.raises(ValueError, match=r"task\.jsonl: " + expected):
        check_source(source, rows)


def test_drop_empty_allows_blank_values_but_not_other_types(tmp_path: Path) -> None:
    rows_in = [ROWS[0], {"question": "Q?", "answer": ""}, {"question": None, "answer": "#### 1"}]
    source, rows = _load(_jsonl(tmp_path / "gaps.jsonl", rows_in), tmp_path, format="gsm8k", drop_empty=True)
    assert check_source(source, rows).format == "gsm8k"
    source, rows = _load(_jsonl(tmp_path / "typed.jsonl", [*rows_in, {"question": "Q", "answer": 3}]), tmp_path,
                         format="gsm8k", drop_empty=True)
    with pytest.raises(ValueError, match=r"typed\.jsonl: row 4 field 'answer' is an int"):
        check_source(source, rows)


def test_optional_input_may_be_null_or_empty_but_not_a_number(tmp_path: Path) -> None:
    good = [{"instruction": "A", "input": None, "output": "B"}, {"instruction": "C", "input": "", "output": "D"}]
    source, rows = _load(_jsonl(tmp_path / "ok.jsonl", good), tmp_path)
    assert check_source(source, rows).fields["input"] == "input"
    bad = [*good, {"instruction": "E", "input": 5, "output": "F"}]
    source, rows = _load(_jsonl(tmp_path / "bad.jsonl", bad), tmp_path)
    with pytest.raises(ValueError, match=r"bad\.jsonl: row 3 field 'input' is an int"):
        check_source(source, rows)


def test_client_keys_from_a_column_or_derived_from_the_instruction(tmp_path: Path) -> None:
    rows_in = [
        {"instruction": "Write a Python loop.", "output": "for x in y: pass", "category": "loops"},
        {"instruction": "Explain recursion.", "output": "It calls itself.", "category": "theory"},
    ]
    source, rows = _load(_jsonl(tmp_path / "code.jsonl", rows_in), tmp_path, format="code")
    spec = check_source(source, rows)
    assert source_client_keys(source, rows, spec, "category") == ["loops", "theory"]
    assert source_client_keys(source, rows, spec, "instruction_language") == ["Python", "other"]
    with pytest.raises(ValueError, match=r"partition_key 'language' is not a column \(columns: \['category', "
                                         r"'instruction', 'output'\]; derived keys: \['instruction_language'\]\)"):
        source_client_keys(source, rows, spec, "language")


@pytest.mark.parametrize("bad_key", [None, "", True])
def test_unusable_key_value_names_the_row(tmp_path: Path, bad_key: Any) -> None:
    rows_in = [{"instruction": "A", "output": "B", "category": "x"},
               {"instruction": "C", "output": "D", "category": bad_key}]
    source, rows = _load(_jsonl(tmp_path / "keys.jsonl", rows_in), tmp_path)
    spec = check_source(source, rows)
    with pytest.raises(ValueError, match=r"keys\.jsonl: row 2 has no usable partition key 'category'"):
        source_client_keys(source, rows, spec, "category")
