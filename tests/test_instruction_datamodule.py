"""FederatedInstructionDataModule on the embedded samples and on small hand-written files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from fedbiot_pl.assets import resolve
from fedbiot_pl.datamodules import FederatedInstructionDataModule
from fedbiot_pl.prompts import format_prompt, gsm8k_to_instruction
from fedbiot_pl.tokenization import IGNORE_INDEX

EOS = 2


@pytest.fixture(scope="module")
def datamodule() -> FederatedInstructionDataModule:
    """The embedded samples (300 GSM8K + 300 Alpaca rows); max_length=512 keeps every example."""
    module = FederatedInstructionDataModule(max_length=512, batch_size=5, public_batch_size=7)
    module.setup("fit")
    return module


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


def test_truncated_examples_are_dropped_counted_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    long_row = {"question": "Why? " * 200, "answer": "Because.\n#### 1"}
    task = _write_jsonl(tmp_path / "task.jsonl", [_task_row(1), long_row, _task_row(2)])
    public = _write_jsonl(
        tmp_path / "public.jsonl",
        [{"instruction": "Say hi.", "output": "Hi."}, {"instruction": "Echo.", "input": "abc", "output": "abc"}],
    )
    module = FederatedInstructionDataModule(task_path=task, public_path=public, num_clients=2, max_length=300)
    with caplog.at_level(logging.INFO, logger="fedbiot_pl.datamodules.instruction_datamodule"):
        module.setup()
    assert module.dropped == {"task": 1, "public": 0}
    assert [module.client_num_examples(0), module.client_num_examples(1)] == [1, 1]
    assert len(module.train_dataloader().dataset) == 2
    assert "task set: kept 2 of 3 examples; dropped 1" in caplog.text


def test_client_left_empty_after_drops_is_named(tmp_path: Path) -> None:
    task = _write_jsonl(tmp_path / "task.jsonl", [_task_row(1), {"question": "Why? " * 200, "answer": "#### 1"}])
    module = FederatedInstructionDataModule(task_path=task, num_clients=2, max_length=300, max_public_examples=5)
    expected = r"Client 1 would receive no task examples: .* after dropping 1 .* num_clients <= 1"
    with pytest.raises(ValueError, match=expected):
        module.setup()


def test_too_many_clients_names_the_empty_client() -> None:
    module = FederatedInstructionDataModule(num_clients=3, max_task_examples=2)
    expected = r"Client 2 would receive no task examples.*num_clients=3\. Use num_clients <= 2"
    with pytest.raises(ValueError, match=expected):
        module.setup()


def test_missing_file_is_named(tmp_path: Path) -> None:
    module = FederatedInstructionDataModule(task_path=str(tmp_path / "nope.jsonl"))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        module.setup()


@pytest.mark.parametrize("content", ["", "  \n\n"])
def test_empty_file_is_named(tmp_path: Path, content: str) -> None:
    (tmp_path / "empty.json").write_text(content)
    module = FederatedInstructionDataModule(public_path=str(tmp_path / "empty.json"))
    with pytest.raises(ValueError, match=r"empty\.json is empty"):
        module.setup()


def test_empty_json_list_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "none.json").write_text("[]")
    with pytest.raises(ValueError, match=r"none\.json holds no records"):
        FederatedInstructionDataModule(public_path=str(tmp_path / "none.json")).setup()


def test_missing_task_field_names_file_row_and_field(tmp_path: Path) -> None:
    task = _write_jsonl(tmp_path / "bad.jsonl", [_task_row(1), {"question": "Q?"}, _task_row(3)])
    with pytest.raises(ValueError, match=r"bad\.jsonl: row 2 has no field 'answer'"):
        FederatedInstructionDataModule(task_path=task).setup()


def test_non_string_task_value_names_file_row_and_field(tmp_path: Path) -> None:
    task = _write_jsonl(tmp_path / "bad.jsonl", [_task_row(1), _task_row(2), {"question": "Q?", "answer": 72}])
    with pytest.raises(ValueError, match=r"bad\.jsonl: row 3 field 'answer' is a int, not a string"):
        FederatedInstructionDataModule(task_path=task).setup()


def test_row_number_counts_blank_lines_and_invalid_json_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_task_row(1)) + "\n\n{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl: row 3 is not valid JSON"):
        FederatedInstructionDataModule(task_path=str(path)).setup()


def test_missing_public_field_in_json_list_names_row(tmp_path: Path) -> None:
    path = tmp_path / "public.json"
    path.write_text(json.dumps([{"instruction": "A", "input": "", "output": "B"}, {"instruction": "C", "input": ""}]))
    with pytest.raises(ValueError, match=r"public\.json: row 2 has no field 'output'"):
        FederatedInstructionDataModule(public_path=str(path)).setup()


def test_non_string_public_input_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "public.json"
    path.write_text(json.dumps([{"instruction": "A", "input": 5, "output": "B"}]))
    with pytest.raises(ValueError, match=r"public\.json: row 1 field 'input' is a int"):
        FederatedInstructionDataModule(public_path=str(path)).setup()


def test_row_that_is_not_an_object_is_named(tmp_path: Path) -> None:
    path = tmp_path / "public.json"
    path.write_text(json.dumps([{"instruction": "A", "output": "B"}, ["A", "B"]]))
    with pytest.raises(ValueError, match=r"public\.json: row 2 is a JSON list, not an object"):
        FederatedInstructionDataModule(public_path=str(path)).setup()
