"""The full data sets in ../shared/data: GSM8K, Dolly 15k, Code Alpaca and the Alpaca subsets.

Skipped, with the reason, where shared/ is not beside the repository.
"""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from fedbiot_pl.data.partition import meta_partition
from fedbiot_pl.data.sources import DataSource, check_source, load_source, source_client_keys
from fedbiot_pl.datamodules import FederatedInstructionDataModule

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"the shared data sets are not at {SHARED}")

DOLLY_COUNTS = {  # the published category counts of databricks-dolly-15k
    "open_qa": 3742, "general_qa": 2191, "classification": 2136, "closed_qa": 1773, "brainstorming": 1766,
    "information_extraction": 1506, "summarization": 1188, "creative_writing": 709,
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("real_data_cache"))


@pytest.mark.parametrize(
    ("relative", "format_", "rows"),
    [
        ("gsm8k/train.jsonl", "gsm8k", 7473),
        ("gsm8k/test.jsonl", "gsm8k", 1319),
        ("dolly/databricks-dolly-15k.jsonl.gz", "dolly", 15011),
        ("code_alpaca/code_alpaca_2k.json", "alpaca", 2017),
        ("code_alpaca/new_codealpaca.json", "alpaca", 4535),
        ("alpaca_subset/alpaca_subset_1k.json", "alpaca", 1000),
        ("alpaca_subset/alpaca_subset_2k.json", "alpaca", 2000),
    ],
)
def test_every_file_loads_checks_and_auto_detects(relative: str, format_: str, rows: int, cache: str) -> None:
    source = DataSource(str(SHARED / relative), drop_empty=relative.endswith("code_alpaca_2k.json"))
    loaded = load_source(source, cache)
    assert len(loaded) == rows
    assert check_source(source, loaded).format == format_


def test_dolly_meta_partition_matches_the_published_category_counts(cache: str) -> None:
    source = DataSource(str(SHARED / "dolly" / "databricks-dolly-15k.jsonl.gz"), format="dolly")
    rows = load_source(source, cache)
    keys = source_client_keys(source, rows, check_source(source, rows), "category")
    eight = meta_partition(keys, 8)
    assert [len(shard) for shard in eight] == [DOLLY_COUNTS[c] for c in sorted(DOLLY_COUNTS)]
    three = meta_partition(keys, 3)  # B9: the reference drops 5 of the 8 categories here
    assert sorted(i for shard in three for i in shard) == list(range(15011))
    assert [collections.Counter(keys[i] for i in shard) for shard in three] == [
        {"general_qa": 2191, "brainstorming": 1766, "creative_writing": 709},
        {"classification": 2136, "closed_qa": 1773, "summarization": 1188},
        {"open_qa": 3742, "information_extraction": 1506},
    ]


def test_code_alpaca_2k_has_two_empty_outputs_named_or_dropped(cache: str) -> None:
    path = str(SHARED / "code_alpaca" / "code_alpaca_2k.json")
    rows = load_source(DataSource(path), cache)
    with pytest.raises(ValueError, match=r"code_alpaca_2k\.json: row 238 field 'output' \(output\) is empty"):
        check_source(DataSource(path), rows)
    module = FederatedInstructionDataModule(
        task=DataSource(path, format="code", drop_empty=True), num_clients=1, max_length=100_000,
        max_public_examples=5, cache_dir=cache,
    )
    module.setup()
    assert module.dropped["task"] == 2 and module.client_num_examples(0) == 2015


def test_code_alpaca_by_instruction_language_covers_every_row(cache: str) -> None:
    source = DataSource(str(SHARED / "code_alpaca" / "new_codealpaca.json"), format="code")
    rows = load_source(source, cache)
    keys = source_client_keys(source, rows, check_source(source, rows), "instruction_language")
    shards = meta_partition(keys, 9)
    assert sorted(i for shard in shards for i in shard) == list(range(4535))
    assert [language for language, _ in collections.Counter(keys).most_common(3)] == ["Python", "JavaScript", "C++"]


def test_full_gsm8k_with_the_llama2_tokenizer_three_iid_clients(cache: str) -> None:
    module = FederatedInstructionDataModule(
        tokenizer=str(SHARED / "tokenizers" / "llama2"),
        task=DataSource(str(SHARED / "gsm8k" / "train.jsonl"), format="gsm8k"),
        public=DataSource(str(SHARED / "alpaca_subset" / "alpaca_subset_1k.json"), format="alpaca"),
        num_clients=3, max_length=800, cache_dir=cache,
    )
    module.setup()
    assert [module.client_num_examples(c) for c in range(3)] == [2491, 2491, 2491]
    assert module.dropped == {"task": 0, "public": 0}
    example = module.client_dataloader(0).dataset[0]
    assert example["input_ids"][0] == module.tokenizer.bos_token_id
    assert example["input_ids"][-1] == module.tokenizer.eos_token_id
    response = module.tokenizer.decode([t for t in example["labels"] if t != -100], skip_special_tokens=True)
    assert "The answer is" in response and "####" not in response and "<<" in response
