"""A ragged top-k payload: per kept token the k largest logits and their vocabulary indices.

Layout (what a client uploads and the server broadcasts, as one safetensors message):

============  ==============  ==========================================================
tensor        shape           dtype
============  ==============  ==========================================================
``values``    ``(N_tok, k)``  float16: the logits (``q = softmax(values / tau)``)
``indices``   ``(N_tok, k)``  uint16 when the vocabulary has at most 65,536 entries, else int32
``offsets``   ``(P + 1,)``    int32: example ``i``'s tokens are ``offsets[i]:offsets[i+1]``
``metric``    ``(P,)``        float32: the sender's cross-entropy on example ``i``'s labels
``rows``      ``(P,)``        int32: the public rows, in the order of the examples
============  ==============  ==========================================================

A kept token is a position with a next token: an example of ``L`` tokens keeps its first ``L - 1``
positions (position ``t`` predicts token ``t + 1``). No padding is sent. Bytes: ``N_tok k (2 + b)``
with ``b`` = 2 or 4 index bytes, plus ``12 P + 4`` for offsets, metric and rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

UINT16_VOCAB = 65_536
IGNORE_INDEX = -100


def index_dtype(vocab_size: int) -> torch.dtype:
    """The smallest unsigned type that holds every index of ``vocab_size`` (uint16 up to 65,536, else int32)."""
    return torch.uint16 if vocab_size <= UINT16_VOCAB else torch.int32


def index_bytes(vocab_size: int) -> int:
    """Bytes of one kept index on the wire."""
    return 2 if vocab_size <= UINT16_VOCAB else 4


def topk_wire_bytes(tokens: int, examples: int, top_k: int, vocab_size: int) -> int:
    """Tensor bytes of a :class:`TopK` payload: ``tokens k (2 + index bytes) + 12 examples + 4``."""
    return tokens * top_k * (2 + index_bytes(vocab_size)) + 12 * examples + 4


@dataclass
class TopK:
    """A ragged top-k payload over public examples (see the module docstring for the layout)."""

    values: Tensor
    indices: Tensor
    offsets: Tensor
    metric: Tensor
    rows: Tensor

    KEYS = ("values", "indices", "offsets", "metric", "rows")

    @property
    def num_examples(self) -> int:
        """P, the public examples covered."""
        return int(self.rows.numel())

    @property
    def num_tokens(self) -> int:
        """N_tok, the kept tokens over all examples."""
        return int(self.values.shape[0])

    @property
    def k(self) -> int:
        """Entries kept per token."""
        return int(self.values.shape[1])

    def tensors(self) -> dict[str, Tensor]:
        """The payload's tensors by name (what goes on the wire)."""
        return {key: getattr(self, key) for key in self.KEYS}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> TopK:
        """The payload of a decoded message's tensors (checked by the message, not here)."""
        return cls(**{key: tensors[key] for key in cls.KEYS})

    def example(self, i: int) -> tuple[Tensor, Tensor]:
        """Example ``i``'s ``(values, indices)``, each ``(L_i - 1, k)``."""
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.values[start:end], self.indices[start:end]

    def lengths(self) -> Tensor:
        """Kept tokens per example, ``(P,)``."""
        return (self.offsets[1:] - self.offsets[:-1]).long()

    @classmethod
    def concat(cls, parts: Sequence[TopK]) -> TopK:
        """Several payloads as one, examples in the order given."""
        lengths = torch.cat([p.lengths() for p in parts])
        offsets = torch.zeros(len(lengths) + 1, dtype=torch.int32)
        offsets[1:] = torch.cumsum(lengths, 0).to(torch.int32)
        return cls(torch.cat([p.values for p in parts]), torch.cat([p.indices for p in parts]), offsets,
                   torch.cat([p.metric for p in parts]), torch.cat([p.rows for p in parts]))


def kept_lengths(attention_mask: Tensor) -> Tensor:
    """Kept positions per row of a right-padded batch: its tokens minus one (at least 0)."""
    return (attention_mask.sum(dim=1) - 1).clamp(min=0).long()


def sequence_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-row mean causal-LM cross-entropy over label tokens (``-100`` ignored; ``inf`` for a row with none).

    Computed row by row, so no second ``(B, T, V)`` tensor is built.
    """
    out = torch.empty(labels.shape[0], dtype=torch.float32, device=logits.device)
    for row in range(labels.shape[0]):
        target = labels[row, 1:]
        keep = target != IGNORE_INDEX
        if not bool(keep.any()):
            out[row] = float("inf")
            continue
        out[row] = F.cross_entropy(logits[row, :-1][keep].float(), target[keep])
    return out


@torch.no_grad()
def topk_of_batch(logits: Tensor, attention_mask: Tensor, labels: Tensor, rows: Tensor, top_k: int,
                  vocab_size: int | None = None) -> TopK:
    """The top-k payload of one right-padded micro-batch's logits ``(B, T, V)``.

    ``vocab_size`` (default ``V``) sets the index type; the model's padded output columns beyond it
    are never kept.
    """
    vocab = int(vocab_size or logits.shape[-1])
    lengths = kept_lengths(attention_mask)
    keep = torch.arange(logits.shape[1], device=logits.device)[None, :] < lengths[:, None]
    values, indices = logits[..., :vocab].topk(top_k, dim=-1)  # (B, T, k): no second (B, T, V) tensor
    values, indices = values[keep], indices[keep]  # (N_tok, k), rows in batch order
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    offsets[1:] = torch.cumsum(lengths.cpu(), 0).to(torch.int32)
    return TopK(values.to(torch.float16).cpu(), indices.to(index_dtype(vocab)).cpu(), offsets,
                sequence_ce(logits[..., :vocab], labels).cpu(), rows.to(torch.int32).cpu())
