"""Prompt templates, record conversions, example tokenisation, batch padding and tokenizer fingerprints."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from fedbiot_pl.assets import resolve
from fedbiot_pl.data.prompts import (
    format_prompt,
    gsm8k_to_instruction,
    instruction_language,
    strip_calculator_annotations,
    strip_no_break_spaces,
)
from fedbiot_pl.data.tokenization import (
    IGNORE_INDEX,
    GenerationCollator,
    InstructionCollator,
    encode_prompt,
    ensure_pad_token,
    tokenize_batch,
    tokenize_example,
    tokenizer_fingerprint,
)

TOKENIZER_DIR = resolve("embedded:models/stories260K")

# stories260K ids (vocab 512, bos=1, eos=2), read off the tokenizer once and pinned here.
PROMPT = "### Response:"
PROMPT_IDS = [410, 38, 38, 38, 410, 461, 406, 427, 289, 372, 467]  # without BOS
RESPONSE = " Hi there"
RESPONSE_IDS = [320, 417, 383]
BOS, EOS = 1, 2


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    """The embedded stories260K tokenizer, as shipped (adds BOS, no EOS, no pad)."""
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR, local_files_only=True)


def test_format_prompt_with_input() -> None:
    expected = (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nTranslate to French.\n\n### Input:\nGood morning\n\n### Response:"
    )
    assert format_prompt("Translate to French.", "Good morning") == expected


@pytest.mark.parametrize("empty_input", ["", "   ", "\n\t"])
def test_format_prompt_without_input(empty_input: str) -> None:
    expected = (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nName a color.\n\n### Response:"
    )
    assert format_prompt("Name a color.", empty_input) == expected
    assert format_prompt("Name a color.") == expected


def test_gsm8k_answer_marker_becomes_phrase_and_annotations_stay() -> None:
    question = "Natalia sold 48 clips in April and half as many in May. How many altogether?"
    answer = "In May she sold 48/2 = <<48/2=24>>24 clips.\nIn total 48+24 = <<48+24=72>>72 clips.\n#### 72"
    instruction, response = gsm8k_to_instruction(question, answer)
    assert instruction == question
    assert response == (
        "In May she sold 48/2 = <<48/2=24>>24 clips.\nIn total 48+24 = <<48+24=72>>72 clips.\nThe answer is 72"
    )


def test_tokenizer_ids_pinned_in_this_file_are_current(tokenizer: PreTrainedTokenizerBase) -> None:
    assert tokenizer(PROMPT)["input_ids"] == [BOS, *PROMPT_IDS]
    assert tokenizer(PROMPT + RESPONSE)["input_ids"] == [BOS, *PROMPT_IDS, *RESPONSE_IDS]


def test_tokenize_example_masks_prompt_and_appends_eos(tokenizer: PreTrainedTokenizerBase) -> None:
    example = tokenize_example(tokenizer, PROMPT, RESPONSE, max_length=64)
    assert example == {
        "input_ids": [BOS, *PROMPT_IDS, *RESPONSE_IDS, EOS],
        "labels": [IGNORE_INDEX] * 12 + [*RESPONSE_IDS, EOS],
    }


def test_tokenize_example_mask_boundary_is_prompt_length_on_real_prompt(tokenizer: PreTrainedTokenizerBase) -> None:
    instruction, response = gsm8k_to_instruction("What is 3 + 4?", "3 + 4 = <<3+4=7>>7\n#### 7")
    prompt = format_prompt(instruction)
    example = tokenize_example(tokenizer, prompt, response, max_length=512)
    assert example is not None
    num_prompt = len(tokenizer(prompt)["input_ids"])
    labels, input_ids = example["labels"], example["input_ids"]
    assert labels[:num_prompt] == [IGNORE_INDEX] * num_prompt
    assert labels[num_prompt:] == input_ids[num_prompt:]
    assert IGNORE_INDEX not in labels[num_prompt:]
    assert input_ids == [*tokenizer(prompt + response)["input_ids"], EOS]


def test_tokenize_example_truncates_whole_sequence(tokenizer: PreTrainedTokenizerBase) -> None:
    example = tokenize_example(tokenizer, PROMPT, RESPONSE, max_length=14)
    assert example == {
        "input_ids": [BOS, *PROMPT_IDS, 320, 417],
        "labels": [IGNORE_INDEX] * 12 + [320, 417],
    }
    one_left = tokenize_example(tokenizer, PROMPT, RESPONSE, max_length=13)
    assert one_left is not None and one_left["labels"] == [IGNORE_INDEX] * 12 + [320]


@pytest.mark.parametrize("max_length", [5, 12])
def test_tokenize_example_returns_none_when_response_is_cut_away(
    tokenizer: PreTrainedTokenizerBase, max_length: int
) -> None:
    assert tokenize_example(tokenizer, PROMPT, RESPONSE, max_length=max_length) is None


def test_tokenize_example_without_bos_and_with_tokenizer_added_eos() -> None:
    plain = AutoTokenizer.from_pretrained(
        TOKENIZER_DIR, local_files_only=True, add_bos_token=False, add_eos_token=True
    )
    assert plain(PROMPT)["input_ids"] == [*PROMPT_IDS, EOS]  # the case being tested
    example = tokenize_example(plain, PROMPT, RESPONSE, max_length=64)
    assert example == {
        "input_ids": [*PROMPT_IDS, *RESPONSE_IDS, EOS],
        "labels": [IGNORE_INDEX] * 11 + [*RESPONSE_IDS, EOS],
    }


def test_tokenize_example_rejects_bad_max_length_and_missing_eos(tokenizer: PreTrainedTokenizerBase) -> None:
    with pytest.raises(ValueError, match="max_length must be >= 1, got 0"):
        tokenize_example(tokenizer, PROMPT, RESPONSE, max_length=0)
    no_eos = SimpleNamespace(eos_token_id=None)
    with pytest.raises(ValueError, match="no EOS token"):
        tokenize_example(no_eos, PROMPT, RESPONSE, max_length=8)  # type: ignore[arg-type]


def test_ensure_pad_token_reuses_eos_only_when_pad_missing() -> None:
    fresh = AutoTokenizer.from_pretrained(TOKENIZER_DIR, local_files_only=True)
    assert fresh.pad_token is None
    assert ensure_pad_token(fresh) is fresh
    assert fresh.pad_token == "</s>" and fresh.pad_token_id == EOS

    has_pad = AutoTokenizer.from_pretrained(TOKENIZER_DIR, local_files_only=True)
    has_pad.pad_token = "<unk>"
    assert ensure_pad_token(has_pad).pad_token_id == 0

    neither = SimpleNamespace(pad_token=None, eos_token=None)
    with pytest.raises(ValueError, match="neither a pad token nor an EOS token"):
        ensure_pad_token(neither)  # type: ignore[arg-type]


EXAMPLES = [
    {"input_ids": [1, 5, 6, 2], "labels": [-100, -100, 6, 2]},
    {"input_ids": [1, 7], "labels": [-100, 7]},
]


def test_collator_pads_right_and_masks_from_lengths_even_when_pad_is_eos() -> None:
    batch = InstructionCollator(pad_token_id=2)(EXAMPLES)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert all(tensor.dtype == torch.long for tensor in batch.values())
    assert torch.equal(batch["input_ids"], torch.tensor([[1, 5, 6, 2], [1, 7, 2, 2]]))
    # Row 0 ends in a real EOS (= pad id 2) that must stay visible.
    assert torch.equal(batch["attention_mask"], torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]))
    assert torch.equal(batch["labels"], torch.tensor([[-100, -100, 6, 2], [-100, 7, -100, -100]]))


def test_collator_pad_to_multiple_of() -> None:
    batch = InstructionCollator(pad_token_id=0, pad_to_multiple_of=3)(EXAMPLES)
    assert torch.equal(batch["input_ids"], torch.tensor([[1, 5, 6, 2, 0, 0], [1, 7, 0, 0, 0, 0]]))
    assert torch.equal(batch["attention_mask"], torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]]))
    expected_labels = [[-100, -100, 6, 2, -100, -100], [-100, 7, -100, -100, -100, -100]]
    assert torch.equal(batch["labels"], torch.tensor(expected_labels))
    exact = InstructionCollator(pad_token_id=0, pad_to_multiple_of=4)(EXAMPLES)
    assert exact["input_ids"].shape == (2, 4)


def test_collator_errors() -> None:
    with pytest.raises(ValueError, match="pad_to_multiple_of must be None or >= 1, got 0"):
        InstructionCollator(pad_token_id=0, pad_to_multiple_of=0)
    with pytest.raises(ValueError, match="empty batch"):
        InstructionCollator(pad_token_id=0)([])
    with pytest.raises(ValueError, match="Example 1 of the batch has 2 input_ids but 3 labels"):
        InstructionCollator(pad_token_id=0)([EXAMPLES[0], {"input_ids": [1, 7], "labels": [-100, 7, 2]}])


def test_strip_calculator_annotations() -> None:
    assert strip_calculator_annotations("48/2 = <<48/2=24>>24 clips, <<1+1=2>>2") == "48/2 = 24 clips, 2"


def test_gsm8k_can_drop_annotations() -> None:
    answer = "In May she sold 48/2 = <<48/2=24>>24 clips.\n#### 72"
    assert gsm8k_to_instruction("Q?", answer, strip_annotations=True) == (
        "Q?", "In May she sold 48/2 = 24 clips.\nThe answer is 72"
    )


def test_strip_no_break_spaces() -> None:
    assert strip_no_break_spaces("int\u00a0x\u00a0= 1;") == "intx= 1;"


@pytest.mark.parametrize(
    ("instruction", "language"),
    [
        ("Write a Python function that adds two numbers.", "Python"),
        ("Port this Java code to C++.", "C++"),  # C++ is tried before Java
        ("Write a JavaScript function to reverse a string.", "JavaScript"),  # not Java
        ("Create a SQL query to count the rows.", "SQL"),
        ("Create an HTML page with a form.", "HTML/CSS"),
        ("Summarize the following text.", "other"),
    ],
)
def test_instruction_language(instruction: str, language: str) -> None:
    assert instruction_language(instruction) == language


def test_tokenize_batch_matches_hand_ids_and_marks_dropped_examples(tokenizer: PreTrainedTokenizerBase) -> None:
    batch = tokenize_batch(tokenizer, [PROMPT, PROMPT + RESPONSE, PROMPT], [RESPONSE, "", RESPONSE], max_length=64)
    assert batch["input_ids"][0] == [BOS, *PROMPT_IDS, *RESPONSE_IDS, EOS]
    assert batch["labels"][0] == [IGNORE_INDEX] * 12 + [*RESPONSE_IDS, EOS]
    # An empty response still teaches the EOS.
    assert batch["input_ids"][1] == [BOS, *PROMPT_IDS, *RESPONSE_IDS, EOS]
    assert batch["labels"][1] == [IGNORE_INDEX] * 15 + [EOS]
    cut = tokenize_batch(tokenizer, [PROMPT, PROMPT], [RESPONSE, RESPONSE], max_length=12)
    assert cut == {"input_ids": [[], []], "labels": [[], []]}  # nothing of the response fits


def test_tokenize_batch_rejects_mismatched_lists(tokenizer: PreTrainedTokenizerBase) -> None:
    with pytest.raises(ValueError, match="Got 2 prompts but 1 responses"):
        tokenize_batch(tokenizer, [PROMPT, PROMPT], [RESPONSE], max_length=8)


def test_encode_prompt_is_the_training_prefix(tokenizer: PreTrainedTokenizerBase) -> None:
    assert encode_prompt(tokenizer, PROMPT) == [BOS, *PROMPT_IDS]


def test_generation_collator_pads_left() -> None:
    batch = GenerationCollator(pad_token_id=2)([{"input_ids": [1, 5, 6], "labels": [0]}, {"input_ids": [1, 7]}])
    assert set(batch) == {"input_ids", "attention_mask"}
    assert torch.equal(batch["input_ids"], torch.tensor([[1, 5, 6], [2, 1, 7]]))
    assert torch.equal(batch["attention_mask"], torch.tensor([[1, 1, 1], [0, 1, 1]]))
    with pytest.raises(ValueError, match="empty batch"):
        GenerationCollator(pad_token_id=0)([])
    with pytest.raises(ValueError, match="Prompt 1 of the batch is empty"):
        GenerationCollator(pad_token_id=0)([{"input_ids": [1]}, {"input_ids": []}])


def test_tokenizer_fingerprint_tracks_content_not_state() -> None:
    first = ensure_pad_token(AutoTokenizer.from_pretrained(TOKENIZER_DIR, local_files_only=True))
    second = ensure_pad_token(AutoTokenizer.from_pretrained(TOKENIZER_DIR, local_files_only=True))
    assert tokenizer_fingerprint(first) == tokenizer_fingerprint(second)
    second(["a b c d e f", "a"], truncation=True, max_length=3, padding=True)  # leaves truncation/padding state
    assert tokenizer_fingerprint(first) == tokenizer_fingerprint(second)
    with_eos = ensure_pad_token(
        AutoTokenizer.from_pretrained(TOKENIZER_DIR, local_files_only=True, add_eos_token=True)
    )
    assert tokenizer_fingerprint(with_eos) != tokenizer_fingerprint(first)
