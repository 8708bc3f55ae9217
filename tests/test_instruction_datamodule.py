"""FederatedInstructionDataModule: embedded samples, partitions, the report, and one named error per bad input."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fedbiot_pl.assets import resolve
from fedbiot_pl.data.prompts import format_prompt, gsm8k_to_instruction
from fedbiot_pl.data.sources import DataSource
from fedbiot_pl.data.tokenization import IGNORE_INDEX
from fedbiot_pl.datamodules import FederatedInstructionDataModule

EOS = 2


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One ``datasets`` cache folder for this module's tests."""
    return str(tmp_path_factory.mktemp("datasets_cache"))


@pytest.fixture(scope="module")
def datamodule(cache: str) -> FederatedInstructionDataModule:
    """The embedded samples (300 GSM8K + 300 Alpaca rows); max_length=512 keeps every example."""
    module = FederatedInstructionDataModule(max_length=512, batch_size=5, public_batch_size=7, cache_dir=cache)
    module.setup("fit")
    return module


@pytest.fixture
def no_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if set-up loads the tokenizer: bad input must be reported before any tokenising."""

    def refuse(self: FederatedInstructionDataModule) -> None:
        raise AssertionError("the tokenizer was loaded before the bad input was reported")

    monkeypatch.setattr(FederatedInstructionDataModule, "_load_tokenizer", refuse)


def _write_jsonl(path: Path, rows: list[object]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def _task_row(number: int) -> dict[str, str]:
    return {
        "question": f"What is {number} + 1?",
        "answer": f"{number} + 1 = <<{number}+1={number + 1}>>{number + 1}\n#### {number + 1}",
    }


def test_embedded_sample_splits_100_per_client_without_drops(datamodule: FederatedInstructionDataModule) -> None:
    assert datamodule.num_clients == 3
    assert [datamodule.client_num_examples(client) for client in range(3)] == [100, 100, 100]
    assert datamodule.dropped == {"task": 0, "public": 0}
    assert len(datamodule.train_dataloader().dataset) == 300
    assert datamodule.tokenizer.pad_token_id == EOS
    shards = [{tuple(example["input_ids"]) for example in datamodule.client_dataloader(c).dataset} for c in range(3)]
    assert len(shards[0] | shards[1] | shards[2]) == 300  # disjoint: the 300 questions are distinct


def test_client_batch_shapes_and_prompt_labels(datamodule: FederatedInstructionDataModule) -> None:
    tokenizer = datamodule.tokenizer
    lines = Path(resolve("embedded:data/gsm8k/train_sample.jsonl")).read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    prompt_length = {}
    for row in rows:
        instruction, response = gsm8k_to_instruction(row["question"], row["answer"])
        prompt = format_prompt(instruction)
        full = [*tokenizer(prompt + response)["input_ids"], EOS][:512]
        prompt_length[tuple(full)] = len(tokenizer(prompt)["input_ids"])

    batch = next(iter(datamodule.client_dataloader(1, round_idx=0)))
    lengths = batch["attention_mask"].sum(dim=1)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["input_ids"].shape == (5, int(lengths.max()))
    for row in range(5):
        length = int(lengths[row])
        ids = batch["input_ids"][row, :length].tolist()
        labels = batch["labels"][row].tolist()
        num_prompt = prompt_length[tuple(ids)]
        assert labels[:num_prompt] == [IGNORE_INDEX] * num_prompt
        assert labels[num_prompt:length] == ids[num_prompt:]
        assert labels[length:] == [IGNORE_INDEX] * (batch["labels"].shape[1] - length)
        assert batch["attention_mask"][row, :length].tolist() == [1] * length


def test_public_loader_uses_public_batch_size_and_is_reproducible(datamodule: FederatedInstructionDataModule) -> None:
    first = next(iter(datamodule.train_dataloader()))
    again = next(iter(datamodule.train_dataloader()))
    assert first["input_ids"].shape[0] == 7
    assert torch.equal(first["input_ids"], again["input_ids"])


def _order(datamodule: FederatedInstructionDataModule, client: int, round_idx: int) -> list[tuple[int, ...]]:
    return [
        tuple(row[mask.bool()].tolist())
        for batch in datamodule.client_dataloader(client, round_idx)
        for row, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)
    ]


def test_client_shuffle_differs_per_round_and_repeats_per_client_round(
    datamodule: FederatedInstructionDataModule,
) -> None:
    round0, round0_again, round1 = _order(datamodule, 0, 0), _order(datamodule, 0, 0), _order(datamodule, 0, 1)
    assert round0 == round0_again
    assert round0 != round1
    assert sorted(round0) == sorted(round1)  # same shard, new order
    assert len(round0) == 100


def test_setup_is_idempotent(datamodule: FederatedInstructionDataModule) -> None:
    shard = datamodule.client_dataloader(2).dataset
    datamodule.setup("fit")
    assert datamodule.client_dataloader(2).dataset is shard


@pytest.mark.parametrize("client_id", [-1, 3])
def test_bad_client_id_names_valid_range(datamodule: FederatedInstructionDataModule, client_id: int) -> None:
    with pytest.raises(ValueError, match=rf"client_id must be an int in \[0, 2\] \(num_clients=3\), got {client_id}"):
        datamodule.client_dataloader(client_id)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        datamodule.client_num_examples(client_id)


def test_negative_round_rejected(datamodule: FederatedInstructionDataModule) -> None:
    with pytest.raises(ValueError, match="round_idx must be >= 0, got -1"):
        datamodule.client_dataloader(0, round_idx=-1)


def test_use_before_setup_says_call_setup() -> None:
    module = FederatedInstructionDataModule()
    with pytest.raises(RuntimeError, match=r"call setup\(\) first"):
        _ = module.tokenizer
    with pytest.raises(RuntimeError, match=r"setup\(\)"):
        module.client_dataloader(0)


def test_constructor_reports_every_bad_argument_at_once() -> None:
    with pytest.raises(ValueError) as caught:
        FederatedInstructionDataModule(
            num_clients=0, max_length=1, batch_size=0, public_batch_size=-3, seed=-1, task_path=""
        )
    message = str(caught.value)
    for expected in (
        "num_clients=0: must be an int >= 1.",
        "max_length=1: must be an int >= 2.",
        "batch_size=0: must be an int >= 1.",
        "public_batch_size=-3: must be an int >= 1 or None.",
        "seed=-1: must be an int >= 0.",
        "task_path='': must be a non-empty string",
    ):
        assert expected in message


def test_constructor_rejects_a_source_given_twice() -> None:
    with pytest.raises(ValueError, match=r"task and task_path are both set: give one"):
        FederatedInstructionDataModule(task=DataSource("a.jsonl"), task_path="b.jsonl")


def test_task_path_shorthand_detects_the_format() -> None:
    module = FederatedInstructionDataModule(task_path="x.jsonl")
    assert module.task == DataSource("x.jsonl") and module.task_path == "x.jsonl"
    assert FederatedInstructionDataModule().task.format == "gsm8k"


# ---------------------------------------------------------------- truncation

def test_truncated_examples_are_dropped_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, cache: str
) -> None:
    long_row = {"question": "Why? " * 200, "answer": "Because.\n#### 1"}
    task = _write_jsonl(tmp_path / "task.jsonl", [_task_row(1), long_row, _task_row(2), _task_row(3)])
    public = _write_jsonl(
        tmp_path / "public.jsonl",
        [{"instruction": "Say hi.", "output": "Hi."}, {"instruction": "Echo.", "input": "abc", "output": "abc"}],
    )
    module = FederatedInstructionDataModule(task_path=task, public_path=public, num_clients=2, max_length=300,
                                            cache_dir=cache)
    with caplog.at_level(logging.INFO, logger="fedbiot_pl.datamodules.instruction_datamodule"):
        module.setup()
    assert module.dropped == {"task": 1, "public": 0}
    assert module.client_num_examples(0) + module.client_num_examples(1) == 3
    assert len(module.train_dataloader().dataset) == 2
    assert "task set: kept 3 of 4 examples; dropped 1" in caplog.text
    assert sum(row.dropped for row in module.partition_report.rows) == 1


def test_drop_empty_skips_and_counts_empty_rows(tmp_path: Path, cache: str) -> None:
    rows = [_task_row(1), {"question": "Q?", "answer": " "}, _task_row(2), {"question": None, "answer": "#### 3"}]
    task = DataSource(_write_jsonl(tmp_path / "gaps.jsonl", rows), format="gsm8k", drop_empty=True)
    module = FederatedInstructionDataModule(task=task, num_clients=1, max_public_examples=5, cache_dir=cache)
    module.setup()
    assert module.dropped["task"] == 2 and module.client_num_examples(0) == 2


def test_client_emptied_by_truncation_is_named_with_the_fix(tmp_path: Path, cache: str) -> None:
    long_row = {"question": "Why? " * 200, "answer": "#### 1"}
    task = _write_jsonl(tmp_path / "task.jsonl", [_task_row(1), long_row])
    module = FederatedInstructionDataModule(task_path=task, num_clients=2, max_length=300, max_public_examples=5,
                                            cache_dir=cache)
    expected = r"Client \d is left with 0 training example\(s\) \(min_client_size=1\): " \
               r"1 of its 1 rows of .*task\.jsonl " \
               r"have responses cut away by max_length=300 \(or empty, with drop_empty\)\. Raise max_length"
    with pytest.raises(ValueError, match=expected):
        module.setup()


# ---------------------------------------------------------------- bad input: one named error, before tokenising

def _setup_error(no_tokenizer: None, **kwargs: object) -> str:
    with pytest.raises((ValueError, FileNotFoundError)) as caught:
        FederatedInstructionDataModule(**kwargs).setup()  # type: ignore[arg-type]
    return str(caught.value)


def test_missing_field_names_file_row_and_fix(tmp_path: Path, no_tokenizer: None) -> None:
    task = _write_jsonl(tmp_path / "bad.jsonl", [_task_row(1), {"question": "Q?"}, _task_row(3)])
    message = _setup_error(no_tokenizer, task_path=task)
    assert re.search(r"bad\.jsonl: row 2 has no 'answer' \(missing or null\), which holds the output; "
                     r"give every row", message)


def test_empty_value_names_file_row_and_fix(tmp_path: Path, no_tokenizer: None) -> None:
    public = _write_jsonl(tmp_path / "public.jsonl",
                          [{"instruction": "A", "output": "B"}, {"instruction": "C", "output": " "}])
    message = _setup_error(no_tokenizer, public_path=public)
    assert re.search(r"public\.jsonl: row 2 field 'output' \(output\) is empty; "
                     r"give it text, remove the row, or set drop_empty", message)


def test_non_string_value_names_file_row_and_fix(tmp_path: Path, no_tokenizer: None) -> None:
    task = _write_jsonl(tmp_path / "bad.jsonl", [_task_row(1), _task_row(2), {"question": "Q?", "answer": 72}])
    message = _setup_error(no_tokenizer, task=DataSource(task, format="gsm8k"))
    assert re.search(r"bad\.jsonl: row 3 field 'answer' is an int, not a string; store it as a JSON string", message)


def test_unreadable_file_names_the_row(tmp_path: Path, no_tokenizer: None) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_task_row(1)) + "\n{not json\n")
    assert re.search(r"bad\.jsonl: row 2 is not valid JSON", _setup_error(no_tokenizer, task_path=str(path)))


def test_missing_and_empty_files_are_named(tmp_path: Path, no_tokenizer: None) -> None:
    assert "nope.jsonl' does not exist" in _setup_error(no_tokenizer, task_path=str(tmp_path / "nope.jsonl"))
    (tmp_path / "empty.json").write_text("")
    assert "empty.json is empty" in _setup_error(no_tokenizer, public_path=str(tmp_path / "empty.json"))


def test_client_with_no_examples_is_named(no_tokenizer: None) -> None:
    message = _setup_error(no_tokenizer, num_clients=3, max_task_examples=2)
    assert re.search(r"train_sample\.jsonl \(partition='iid'\): Cannot give each of num_clients=3 clients .* "
                     r"\(client 2 would get none\); use num_clients <= 2", message)


def test_more_clients_than_categories_is_named(no_tokenizer: None) -> None:
    message = _setup_error(no_tokenizer, task=DOLLY, num_clients=9, partition="meta")
    assert "has 8 values (brainstorming, classification," in message
    assert "client 8 would get no value; use num_clients <= 8" in message


def test_key_that_does_not_exist_is_named(no_tokenizer: None) -> None:
    message = _setup_error(no_tokenizer, task=DOLLY, partition="meta", partition_key="topic")
    assert re.search(r"dolly_sample\.jsonl: partition_key 'topic' is not a column \(columns: \['category', 'context', "
                     r"'instruction', 'response'\]; derived keys: \['instruction_language'\]\)", message)


def test_meta_partition_without_a_key_says_how_to_set_one(no_tokenizer: None) -> None:
    message = _setup_error(no_tokenizer, partition="meta")
    assert ("partition='meta' needs a key, and format 'gsm8k' has none; set partition_key to one of its columns"
            in message)


def test_dirichlet_min_client_size_failure_names_the_client(no_tokenizer: None) -> None:
    message = _setup_error(
        no_tokenizer, task=DOLLY, num_clients=8, partition="dirichlet", dirichlet_alpha=0.01, min_client_size=20
    )
    assert re.search(r"client \d still holds only \d+ rows .*use a larger dirichlet_alpha", message)


# ---------------------------------------------------------------- partitions of the embedded task samples

DOLLY = DataSource("embedded:data/dolly/dolly_sample.jsonl", format="dolly")
CODE = DataSource("embedded:data/code_alpaca/code_alpaca_sample.json", format="code")
DOLLY_CATEGORIES = [
    "brainstorming", "classification", "closed_qa", "creative_writing", "general_qa", "information_extraction",
    "open_qa", "summarization",
]


def _module(cache: str, **kwargs: object) -> FederatedInstructionDataModule:
    module = FederatedInstructionDataModule(max_length=512, max_public_examples=20, cache_dir=cache, **kwargs)  # type: ignore[arg-type]
    module.setup()
    return module


def test_dolly_one_category_per_client(cache: str) -> None:
    module = _module(cache, task=DOLLY, num_clients=8, partition="meta")  # key: the format's `category`
    table = module.partition_report
    assert table is not None and table.key == "category" and table.values == DOLLY_CATEGORIES
    assert [row.counts for row in table.rows] == [
        {c: 25 if c == own else 0 for c in DOLLY_CATEGORIES} for own in DOLLY_CATEGORIES
    ]
    assert [module.client_num_examples(c) for c in range(8)] == [25] * 8


def test_excluded_key_values_leave_one_client_per_remaining_value(cache: str) -> None:
    # as the reference drops Rosetta's X86-64 Assembly: 8 categories minus 1 = 7 clients of 25 rows each
    module = _module(cache, task=DOLLY, num_clients=7, partition="meta", exclude_keys=["open_qa"])
    table = module.partition_report
    assert table.values == [c for c in DOLLY_CATEGORIES if c != "open_qa"]
    assert [module.client_num_examples(c) for c in range(7)] == [25] * 7


def test_excluding_a_value_no_row_has_names_the_values(no_tokenizer: None) -> None:
    message = _setup_error(no_tokenizer, task=DOLLY, num_clients=7, partition="meta", exclude_keys=["X86-64 Assembly"])
    assert "exclude_keys ['X86-64 Assembly'] match no row's 'category'; its values are ['brainstorming'," in message
    message = _setup_error(no_tokenizer, exclude_keys=["x"])
    assert "exclude_keys=['x'] needs a partition key; set partition_key" in message


def test_dolly_categories_into_three_clients_drop_nothing(cache: str) -> None:
    module = _module(cache, task=DOLLY, num_clients=3, partition="meta")
    table = module.partition_report
    # 8 values of 25 rows: bucket_values puts 3, 3 and 2 categories on the clients; every category survives.
    holders = {c: [row.client for row in table.rows if row.counts[c]] for c in DOLLY_CATEGORIES}
    assert all(len(clients) == 1 for clients in holders.values())
    assert sorted(row.train for row in table.rows) == [50, 75, 75]
    texts = [tuple(e["input_ids"]) for c in range(3) for e in module.client_dataloader(c).dataset]
    assert len(texts) == 200


def test_code_by_instruction_language_into_nine_clients(cache: str) -> None:
    module = _module(cache, task=CODE, num_clients=9, partition="meta", partition_key="instruction_language")
    table = module.partition_report
    assert sum(row.train for row in table.rows) == 263 and len(table.values) == 15
    assert all(sum(row.counts[v] > 0 for row in table.rows) == 1 for v in table.values)  # each language on one client


def test_dirichlet_is_reproducible_and_complete(cache: str) -> None:
    first = _module(cache, task=DOLLY, num_clients=4, partition="dirichlet", dirichlet_alpha=0.3, min_client_size=10)
    again = _module(cache, task=DOLLY, num_clients=4, partition="dirichlet", dirichlet_alpha=0.3, min_client_size=10)
    assert first.partition_report == again.partition_report
    assert sum(row.train for row in first.partition_report.rows) == 200
    assert min(row.train for row in first.partition_report.rows) >= 10


def test_per_client_validation_split(cache: str) -> None:
    module = _module(cache, task=DOLLY, num_clients=8, partition="meta", val_fraction=0.2)
    assert [(row.train, row.val) for row in module.partition_report.rows] == [(20, 5)] * 8
    val = [tuple(e["input_ids"]) for e in module.client_val_dataloader(3).dataset]
    train = {tuple(e["input_ids"]) for e in module.client_dataloader(3).dataset}
    assert len(val) == 5 and not train & set(val)
    batch = next(iter(module.client_val_dataloader(3)))
    assert batch["input_ids"].shape[0] == 5


def test_partition_report_text_png_and_run_folder(cache: str, tmp_path: Path) -> None:
    module = FederatedInstructionDataModule(
        task=DOLLY, num_clients=8, partition="meta", max_length=512, max_public_examples=20, cache_dir=cache
    )
    module.trainer = SimpleNamespace(is_global_zero=True, log_dir=str(tmp_path / "run"))  # type: ignore[assignment]
    module.setup()
    text = (tmp_path / "run" / "partition.txt").read_text()
    assert text.splitlines()[0] == "Partition by 'category'"
    assert text.splitlines()[-1].split() == ["total", "200", "0", "0", *["25"] * 8]
    assert (tmp_path / "run" / "partition.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = module.write_partition_report(tmp_path / "elsewhere")
    assert [path.name for path in written] == ["partition.txt", "partition.png"]


def test_sources_are_saved_as_plain_dicts_and_accepted_back() -> None:
    module = FederatedInstructionDataModule(task=DOLLY)
    assert module.hparams["task"] == {
        "path": "embedded:data/dolly/dolly_sample.jsonl", "format": "dolly", "split": "train", "config": None,
        "fields": {}, "strip_calculator_annotations": False, "drop_empty": False,
    }
    assert FederatedInstructionDataModule(**module.hparams).task == DOLLY
