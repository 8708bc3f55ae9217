"""Turn (prompt, response) pairs into causal-LM training examples and pad them into batches.

An example is ``{"input_ids": [...], "labels": [...]}`` where ``input_ids`` is the tokenised
``prompt + response`` followed by the EOS id, and ``labels`` is the same sequence with the prompt
positions replaced by :data:`IGNORE_INDEX`, so the loss only covers the response and the EOS.
:class:`InstructionCollator` right-pads examples for training; :class:`GenerationCollator`
left-pads prompts (:func:`encode_prompt`) for generation. :func:`tokenizer_fingerprint` identifies
a tokenizer by content, for the tokenisation cache.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
"""Label value that ``torch.nn.functional.cross_entropy`` skips (its default ``ignore_index``)."""


def _encode_many(tokenizer: PreTrainedTokenizerBase, texts: list[str], eos_id: int) -> list[list[int]]:
    """Tokenise ``texts`` in one batched call with the tokenizer's own special tokens, minus a trailing EOS.

    Tokenizers configured to append EOS (e.g. LLaMA with ``add_eos_token=True``) would otherwise
    put an EOS after the prompt, shifting the prompt/response boundary by one. A lone token is
    never dropped, so a tokenizer whose BOS equals its EOS keeps the BOS of an empty text.
    """
    # verbose=False: the "longer than model_max_length" warning is moot, the caller truncates.
    encoded = tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]
    return [ids[:-1] if len(ids) > 1 and ids[-1] == eos_id else list(ids) for ids in encoded]


def _eos_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's EOS id, or a clear error when it has none."""
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError(
            f"Tokenizer {type(tokenizer).__name__} has no EOS token; set tokenizer.eos_token "
            "before tokenising so every response can be terminated."
        )
    return int(eos_id)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """The ids of a prompt exactly as they start its training example (BOS included, no EOS).

    Use these for generation so that the model sees the same prefix it was trained on.
    """
    return _encode_many(tokenizer, [prompt], _eos_id(tokenizer))[0]


def tokenize_batch(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], responses: list[str], max_length: int
) -> dict[str, list[list[int]]]:
    """Tokenise many instruction examples at once and mask their prompts out of the labels.

    Each example's ``input_ids`` is ``tokens(prompt + response) + [eos]``, where ``tokens`` adds
    whatever special tokens the tokenizer adds by itself (the BOS for LLaMA, nothing for GPT-2).
    Each prompt is tokenised the same way on its own; its length is the number of leading label
    positions set to :data:`IGNORE_INDEX`. The sequence is then cut to ``max_length``. An example
    whose response is cut away entirely gets empty ``input_ids`` and ``labels`` (the caller drops
    and counts it; it would otherwise give a NaN loss).

    Args:
        tokenizer: A Hugging Face tokenizer with an EOS token.
        prompts: Formatted prompts (see :func:`fedbiot_pl.data.prompts.format_prompt`).
        responses: Target texts, each appended to its prompt without a separator.
        max_length: Longest sequence kept, in tokens (EOS and BOS included).

    Returns:
        ``{"input_ids": [...], "labels": [...]}``, one list per example, equal lengths per example.

    Raises:
        ValueError: ``max_length`` is below 1, the lists differ in length, or the tokenizer has no EOS.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}.")
    if len(prompts) != len(responses):
        raise ValueError(f"Got {len(prompts)} prompts but {len(responses)} responses; pass one response per prompt.")
    eos_id = _eos_id(tokenizer)
    prompt_ids = _encode_many(tokenizer, prompts, eos_id)
    full_texts = [prompt + response for prompt, response in zip(prompts, responses, strict=True)]
    full_ids = _encode_many(tokenizer, full_texts, eos_id)
    input_ids: list[list[int]] = []
    labels: list[list[int]] = []
    for prompt, full in zip(prompt_ids, full_ids, strict=True):
        ids = [*full, eos_id][:max_length]
        num_prompt = len(prompt)
        if num_prompt >= len(ids):
            input_ids.append([])
            labels.append([])
        else:
            input_ids.append(ids)
            labels.append([IGNORE_INDEX] * num_prompt + ids[num_prompt:])
    return {"input_ids": input_ids, "labels": labels}


def tokenize_example(
    tokenizer: PreTrainedTokenizerBase, prompt: str, response: str, max_length: int
) -> dict[str, list[int]] | None:
    """Tokenise one instruction example (see :func:`tokenize_batch`).

    Returns:
        ``{"input_ids": [...], "labels": [...]}`` (equal lengths), or ``None`` when truncation
        leaves no response token to learn from.

    Raises:
        ValueError: ``max_length`` is below 1, or the tokenizer has no EOS token.
    """
    batch = tokenize_batch(tokenizer, [prompt], [response], max_length)
    if not batch["input_ids"][0]:
        return None
    return {"input_ids": batch["input_ids"][0], "labels": batch["labels"][0]}


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash that changes whenever the tokenizer would produce other ids or special tokens.

    It covers the tokenizer class, its full vocabulary and pipeline (the serialised fast tokenizer,
    without its truncation/padding state, or the slow tokenizer's vocabulary), its special tokens
    and its BOS/EOS switches; not its name or location, so a copy in another folder hits the cache.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        truncation, padding = backend.truncation, backend.padding  # state left over from an earlier call
        backend.no_truncation()
        backend.no_padding()
        body = backend.to_str()
        if truncation is not None:
            backend.enable_truncation(**truncation)
        if padding is not None:
            backend.enable_padding(**padding)
    else:
        body = json.dumps(sorted(tokenizer.get_vocab().items()))
    switches = {
        "class": type(tokenizer).__name__,
        "special": {name: str(value) for name, value in sorted(tokenizer.special_tokens_map.items())},
        "add_bos_token": getattr(tokenizer, "add_bos_token", None),
        "add_eos_token": getattr(tokenizer, "add_eos_token", None),
        "eos_token_id": tokenizer.eos_token_id,
    }
    digest = hashlib.sha256(body.encode("utf-8"))
    digest.update(json.dumps(switches, sort_keys=True, default=str).encode("utf-8"))
    return digest.hexdigest()


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give the tokenizer a pad token, reusing EOS when it has none (LLaMA ships without one).

    Reusing EOS is safe with this package's batching: :class:`InstructionCollator` builds the
    attention mask from each example's true length, not from ``input_ids != pad_token_id``, so
    real EOS tokens stay visible; and padded label positions are :data:`IGNORE_INDEX`, so the
    padding never enters the loss. No embedding row has to be added to the model.

    Args:
        tokenizer: The tokenizer to patch in place.

    Returns:
        The same tokenizer object, for chaining.

    Raises:
        ValueError: The tokenizer has neither a pad token nor an EOS token.
    """
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                f"Tokenizer {type(tokenizer).__name__} has neither a pad token nor an EOS token; "
                "set tokenizer.pad_token explicitly."
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@dataclass(frozen=True)
class InstructionCollator:
    """Right-pad examples from :func:`tokenize_example` into a batch of ``torch.long`` tensors.

    Attributes:
        pad_token_id: Id written into the padded ``input_ids`` positions. It may equal EOS.
        pad_to_multiple_of: If set, the padded length is rounded up to a multiple of this value
            (helps tensor-core kernels); ``None`` pads to the longest example in the batch.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __post_init__(self) -> None:
        """Reject a non-positive ``pad_to_multiple_of``."""
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ValueError(
                f"pad_to_multiple_of must be None or >= 1, got {self.pad_to_multiple_of}."
            )

    def __call__(self, examples: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        """Pad a list of examples.

        Args:
            examples: Mappings with ``input_ids`` and ``labels`` of equal length.

        Returns:
            ``input_ids`` (padded with ``pad_token_id``), ``attention_mask`` (1 on the first
            ``len(input_ids)`` positions of each row, 0 after) and ``labels`` (padded with
            :data:`IGNORE_INDEX`), each of shape ``(batch, padded_length)``.

        Raises:
            ValueError: The batch is empty, or an example's ``input_ids`` and ``labels`` differ
                in length.
        """
        if not examples:
            raise ValueError("InstructionCollator got an empty batch; pass at least one example.")
        lengths = [len(example["input_ids"]) for example in examples]
        for index, example in enumerate(examples):
            if len(example["labels"]) != lengths[index]:
                raise ValueError(
                    f"Example {index} of the batch has {lengths[index]} input_ids but "
                    f"{len(example['labels'])} labels; build examples with tokenize_example."
                )
        width = max(lengths)
        if self.pad_to_multiple_of is not None:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, (example, length) in enumerate(zip(examples, lengths, strict=True)):
            input_ids[row, :length] = torch.tensor(example["input_ids"], dtype=torch.long)
            labels[row, :length] = torch.tensor(example["labels"], dtype=torch.long)
            attention_mask[row, :length] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@dataclass(frozen=True)
class GenerationCollator:
    """Left-pad prompts into a generation batch, so every prompt ends where generation starts.

    Attributes:
        pad_token_id: Id written into the padded (leading) positions.
    """

    pad_token_id: int

    def __call__(self, examples: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        """Pad a list of prompts.

        Args:
            examples: Mappings with the prompt's ``input_ids`` (e.g. from :func:`encode_prompt`);
                other keys are ignored.

        Returns:
            ``input_ids`` (left-padded with ``pad_token_id``) and ``attention_mask`` (0 on the
            padding, 1 on the prompt), each of shape ``(batch, longest prompt)``.

        Raises:
            ValueError: The batch is empty or holds an empty prompt.
        """
        if not examples:
            raise ValueError("GenerationCollator got an empty batch; pass at least one prompt.")
        lengths = [len(example["input_ids"]) for example in examples]
        if min(lengths) == 0:
            raise ValueError(f"Prompt {lengths.index(0)} of the batch is empty; every prompt needs a token.")
        width = max(lengths)
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, (example, length) in enumerate(zip(examples, lengths, strict=True)):
            input_ids[row, width - length :] = torch.tensor(example["input_ids"], dtype=torch.long)
            attention_mask[row, width - length :] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}
