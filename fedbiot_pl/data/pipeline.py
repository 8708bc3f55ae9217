"""From checked rows to tokenised training examples, with a ``datasets`` cache keyed on what matters.

:func:`record_texts` is the pure per-row conversion (field mapping, GSM8K answer phrase, code
clean-up, Alpaca template). :func:`tokenize_dataset` runs it and the tokenizer over a whole data
set with a batched :meth:`datasets.Dataset.map`. The map's fingerprint is computed here from the
input data's fingerprint, the tokenizer's content (:func:`tokenizer_fingerprint`), the record
spec, the templates, ``max_length`` and :data:`PIPELINE_VERSION`: the same settings on the same
file load the cached Arrow file instead of re-tokenising; any change re-tokenises.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np
import pyarrow.compute as pc
from transformers import PreTrainedTokenizerBase

from fedbiot_pl.data.prompts import (
    PROMPT_NO_INPUT,
    PROMPT_WITH_INPUT,
    format_prompt,
    gsm8k_to_instruction,
    strip_no_break_spaces,
)
from fedbiot_pl.data.sources import RecordSpec
from fedbiot_pl.data.tokenization import tokenize_batch, tokenizer_fingerprint
from fedbiot_pl.quiet import no_library_progress_bars

PIPELINE_VERSION = "1"
"""Bump when :func:`record_texts` or the tokenisation changes, so old caches are not reused."""

EXAMPLE_FEATURES = datasets.Features(
    {"input_ids": datasets.List(datasets.Value("int32")), "labels": datasets.List(datasets.Value("int32"))}
)
"""Columns of a tokenised data set; an example dropped by truncation has empty lists."""


def record_texts(
    spec: RecordSpec, instructions: Sequence[str], inputs: Sequence[str | None], outputs: Sequence[str]
) -> tuple[list[str], list[str]]:
    """Turn rows into (prompt, response) texts.

    GSM8K answers get ``The answer is`` in place of ``####`` (and lose their calculator
    annotations if the spec says so); code rows lose their no-break spaces; then each row fills
    the Alpaca template with or without input.

    Args:
        spec: The source's checked record spec.
        instructions: The instruction of each row.
        inputs: The input of each row (``None`` or blank: the no-input template).
        outputs: The output (response) of each row.

    Returns:
        ``(prompts, responses)``, one of each per row.
    """
    prompts, responses = [], []
    for instruction, input_text, output in zip(instructions, inputs, outputs, strict=True):
        input_text = input_text or ""
        if spec.format == "gsm8k":
            instruction, output = gsm8k_to_instruction(instruction, output, spec.strip_calculator_annotations)
        elif spec.format == "code":
            instruction, input_text, output = (strip_no_break_spaces(t) for t in (instruction, input_text, output))
        prompts.append(format_prompt(instruction, input_text))
        responses.append(output)
    return prompts, responses


def _tokenize_rows(
    batch: dict[str, list[Any]], spec: RecordSpec, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> dict[str, list[list[int]]]:
    """The batched ``map`` function: rows -> ``input_ids``/``labels``."""
    fields = spec.fields
    instructions = [text or "" for text in batch[str(fields["instruction"])]]
    outputs = [text or "" for text in batch[str(fields["output"])]]
    inputs = batch[fields["input"]] if fields["input"] is not None else [None] * len(instructions)
    prompts, responses = record_texts(spec, instructions, inputs, outputs)
    examples = tokenize_batch(tokenizer, prompts, responses, max_length)
    for row, (instruction, output) in enumerate(zip(instructions, outputs, strict=True)):
        if not instruction.strip() or not output.strip():  # allowed only with drop_empty: skipped like truncation
            examples["input_ids"][row], examples["labels"][row] = [], []
    return examples


def tokenization_fingerprint(dataset_fingerprint: str, spec: RecordSpec, tokenizer_hash: str, max_length: int) -> str:
    """The cache key of a tokenised data set: a hash of everything its content depends on."""
    parts = {
        "data": dataset_fingerprint,
        "spec": [spec.format, sorted(spec.fields.items(), key=lambda item: item[0]), spec.strip_calculator_annotations],
        "tokenizer": tokenizer_hash,
        "templates": [PROMPT_WITH_INPUT, PROMPT_NO_INPUT],
        "max_length": max_length,
        "version": PIPELINE_VERSION,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()[:32]


def tokenize_dataset(
    dataset: datasets.Dataset,
    spec: RecordSpec,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    tokenizer_hash: str | None = None,
    desc: str | None = None,
) -> datasets.Dataset:
    """Tokenise every row (one output row per input row), cached by :func:`tokenization_fingerprint`.

    Args:
        dataset: Checked rows (see :func:`fedbiot_pl.data.sources.check_source`).
        spec: How to read them.
        tokenizer: The tokenizer (with an EOS token).
        max_length: Longest example in tokens; examples whose response does not fit get empty lists.
        tokenizer_hash: :func:`tokenizer_fingerprint` of ``tokenizer`` if already computed.
        desc: Label of the map step (its progress bar is off: the run shows one bar per round).

    Returns:
        A data set with the columns of :data:`EXAMPLE_FEATURES`, in the input's row order; rows
        whose response does not fit, or (with ``drop_empty``) whose instruction or output is
        blank, have empty lists.
    """
    fingerprint = tokenization_fingerprint(
        dataset._fingerprint, spec, tokenizer_hash or tokenizer_fingerprint(tokenizer), max_length
    )
    with no_library_progress_bars():  # one progress bar per round is the run's; tokenising is quick
        return dataset.map(
            _tokenize_rows,
            batched=True,
            remove_columns=dataset.column_names,
            fn_kwargs={"spec": spec, "tokenizer": tokenizer, "max_length": max_length},
            features=EXAMPLE_FEATURES,
            new_fingerprint=fingerprint,
            desc=desc,
        )


def kept_mask(examples: datasets.Dataset) -> np.ndarray:
    """Boolean mask of the tokenised rows that were kept (non-empty ``input_ids``)."""
    lengths = pc.list_value_length(examples.data.column("input_ids"))
    return np.asarray(lengths.to_numpy(zero_copy_only=False)) > 0
