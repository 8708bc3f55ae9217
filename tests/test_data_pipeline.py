"""Rows -> prompt/response texts, and the cached batched tokenisation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from fedbiot_pl.assets import resolve
from fedbiot_pl.data import pipeline as data_pipeline
from fedbiot_pl.data.pipeline import record_texts, tokenization_fingerprint, tokenize_dataset
from fedbiot_pl.data.prompts import format_prompt
from fedbiot_pl.data.sources import DataSource, RecordSpec, check_source, load_source
from fedbiot_pl.data.tokenization import ensure_pad_token, tokenize_example

TOKENIZER_DIR = resolve("embedded:models/stories260K")
GSM8K = RecordSpec("gsm8k", {"instruction": "question", "input": None, "output": "answer"})


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    return ensure_pad_token(AutoTokenizer.from_pretrained(TOKENIZER_DIR, local_files_only=True))


def test_gsm8k_texts_replace_the_marker_and_keep_or_strip_annotations() -> None:
    prompts, responses = record_texts(GSM8K, ["What is 1 + 1?"], [None], ["1 + 1 = <<1+1=2>>2\n#### 2"])
    assert prompts == [(
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nWhat is 1 + 1?\n\n### Response:"
    )]
    assert responses == ["1 + 1 = <<1+1=2>>2\nThe answer is 2"]
    stripped = RecordSpec("gsm8k", GSM8K.fields, strip_calculator_annotations=True)
    assert record_texts(stripped, ["Q"], [None], ["1 + 1 = <<1+1=2>>2\n#### 2"])[1] == ["1 + 1 = 2\nThe answer is 2"]


def test_code_texts_lose_no_break_spaces_and_use_the_input_template() -> None:
    spec = RecordSpec("code", {"instruction": "instruction", "input": "input", "output": "output"})
    prompts, responses = record_texts(spec, ["Print\u00a0hello."], ["Python"], ["print('hello')\u00a0"])
    assert prompts == [(
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nPrinthello.\n\n"
        "### Input:\nPython\n\n### Response:"
    )]
    assert responses == ["print('hello')"]


def test_dolly_context_is_the_input_and_an_empty_one_is_no_input() -> None:
    spec = RecordSpec("dolly", {"instruction": "instruction", "input": "context", "output": "response"})
    prompts, responses = record_texts(spec, ["Capital?", "Name a fruit."], ["France is a country.", ""],
                                      ["Paris", "Apple"])
    assert prompts == [format_prompt("Capital?", "France is a country."), format_prompt("Name a fruit.")]
    assert responses == ["Paris", "Apple"]


def test_fingerprint_covers_data_spec_tokenizer_and_max_length() -> None:
    base = tokenization_fingerprint("data1", GSM8K, "tok1", 256)
    assert base == tokenization_fingerprint("data1", GSM8K, "tok1", 256)
    stripped = RecordSpec("gsm8k", GSM8K.fields, strip_calculator_annotations=True)
    others = {
        tokenization_fingerprint("data2", GSM8K, "tok1", 256), tokenization_fingerprint("data1", stripped, "tok1", 256),
        tokenization_fingerprint("data1", GSM8K, "tok2", 256), tokenization_fingerprint("data1", GSM8K, "tok1", 257),
    }
    assert base not in others and len(others) == 4


def _count_tokenize_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = data_pipeline.tokenize_batch

    def counting(tokenizer: Any, prompts: list[str], responses: list[str], max_length: int) -> Any:
        calls.append(len(prompts))
        return real(tokenizer, prompts, responses, max_length)

    monkeypatch.setattr(data_pipeline, "tokenize_batch", counting)
    return calls


def test_second_run_loads_from_cache_and_a_change_retokenises(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [{"question": f"What is {n} + 1?", "answer": f"{n} + 1 = {n + 1}\n#### {n + 1}"} for n in range(5)]
    path = tmp_path / "task.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    calls = _count_tokenize_calls(monkeypatch)

    def run(max_length: int, tok: PreTrainedTokenizerBase) -> list[list[int]]:
        source = DataSource(str(path))  # a fresh load each time, as a new process would do
        loaded = load_source(source, str(tmp_path / "cache"))
        return tokenize_dataset(loaded, check_source(source, loaded), tok, max_length)["input_ids"][:]

    first = run(256, tokenizer)
    assert calls == [5]
    expected = [tokenize_example(tokenizer, *_pair(row), 256)["input_ids"] for row in rows]  # type: ignore[index]
    assert first == expected
    assert run(256, tokenizer) == first and calls == [5]  # cache hit: not tokenised again
    run(64, tokenizer)
    assert calls == [5, 5]  # max_length changed
    other = ensure_pad_token(AutoTokenizer.from_pretrained(TOKENIZER_DIR, local_files_only=True, add_eos_token=True))
    run(256, other)
    assert calls == [5, 5, 5]  # tokenizer changed


def _pair(row: dict[str, str]) -> tuple[str, str]:
    prompts, responses = record_texts(GSM8K, [row["question"]], [None], [row["answer"]])
    return prompts[0], responses[0]


def test_truncated_rows_become_empty_and_keep_row_order(tmp_path: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    rows = [{"question": "Hi?", "answer": "#### 1"}, {"question": "Why? " * 100, "answer": "#### 2"}]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    source = DataSource(str(path))
    loaded = load_source(source, str(tmp_path / "cache"))
    examples = tokenize_dataset(loaded, check_source(source, loaded), tokenizer, 100)
    assert len(examples) == 2
    assert examples[0]["input_ids"] == tokenize_example(tokenizer, *_pair(rows[0]), 100)["input_ids"]  # type: ignore[index]
    assert examples[1] == {"input_ids": [], "labels": []}
