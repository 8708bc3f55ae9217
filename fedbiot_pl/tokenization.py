"""Turn (prompt, response) pairs into causal-LM training examples and pad them into batches.

An example is ``{"input_ids": [...], "labels": [...]}`` where ``input_ids`` is the tokenised
``prompt + response`` followed by the EOS id, and ``labels`` is the same sequence with the prompt
positions replaced by :data:`IGNORE_INDEX`, so the loss only covers the response and the EOS.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
"""Label value that ``torch.nn.functional.cross_entropy`` skips (its default ``ignore_index``)."""


def _encode(tokenizer: PreTrainedTokenizerBase, text: str, eos_id: int) -> list[int]:
    """Tokenise ``text`` with the tokenizer's own special tokens, minus a trailing EOS.

    Tokenizers configured to append EOS (e.g. LLaMA with ``add_eos_token=True``) would otherwise
    put an EOS after the prompt, shifting the prompt/response boundary by one. A lone token is
    never dropped, so a tokenizer whose BOS equals its EOS keeps the BOS of an empty text.
    """
    # verbose=False: the "longer than model_max_length" warning is moot, tokenize_example truncates.
    ids = list(tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"])
    if len(ids) > 1 and ids[-1] == eos_id:
        ids.pop()
    return ids


def tokenize_example(
    tokenizer: PreTrainedTokenizerBase, prompt: str, response: str, max_length: int
) -> dict[str, list[int]] | None:
    """Tokenise one instruction example and mask its prompt out of the labels.

    ``input_ids`` is ``tokens(prompt + response) + [eos]``, where ``tokens`` adds whatever
    special tokens the tokenizer adds by itself (the BOS for LLaMA, nothing for GPT-2). The
    prompt is tokenised the same way on its own; its length is the number of leading label
    positions set to :data:`IGNORE_INDEX`. The whole sequence is then cut to ``max_length``.

    Args:
        tokenizer: A Hugging Face tokenizer with an EOS token.
        prompt: The formatted prompt (see :func:`fedbiot_pl.prompts.format_prompt`).
        response: The target text, appended to the prompt without a separator.
        max_length: Longest sequence kept, in tokens (EOS and BOS included).

    Returns:
        ``{"input_ids": [...], "labels": [...]}`` (equal lengths), or ``None`` when truncation
        leaves no response token to learn from; the caller decides whether to count the drop.

    Raises:
        ValueError: ``max_length`` is below 1, or the tokenizer has no EOS token.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}.")
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError(
            f"Tokenizer {type(tokenizer).__name__} has no EOS token; set tokenizer.eos_token "
            "before tokenising so every response can be terminated."
        )
    num_prompt_tokens = len(_encode(tokenizer, prompt, eos_id))
    input_ids = [*_encode(tokenizer, prompt + response, eos_id), eos_id][:max_length]
    if num_prompt_tokens >= len(input_ids):
        return None
    labels = [IGNORE_INDEX] * num_prompt_tokens + input_ids[num_prompt_tokens:]
    return {"input_ids": input_ids, "labels": labels}


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
