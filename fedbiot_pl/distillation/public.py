"""The public set as KD uses it: each round's seeded slice, top-k collection over it, and batches with targets."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedbiot_pl.distillation.targets import batch_targets
from fedbiot_pl.distillation.topk import TopK, index_dtype, topk_of_batch

PUBLIC_STREAM = 11  # the slice's random stream, apart from the data's others


def public_rows(num_public: int, examples: int | None, seed: int, round_idx: int) -> list[int]:
    """The public rows of round ``round_idx``: ``examples`` distinct rows (all if ``None``), sorted.

    A function of ``(seed, round)`` only, so that every party computes the same slice.
    """
    if examples is None or examples >= num_public:
        return list(range(num_public))
    rng = np.random.default_rng([seed, PUBLIC_STREAM, round_idx])
    return sorted(int(row) for row in rng.choice(num_public, size=examples, replace=False))


@dataclass(frozen=True)
class PublicSlice:
    """What a top-k upload must cover: the round's public rows, each one's kept tokens, the vocabulary and k."""

    rows: tuple[int, ...]
    lengths: tuple[int, ...]
    vocab_size: int
    top_k: int

    @property
    def tokens(self) -> int:
        """N_tok, the kept tokens of the slice."""
        return sum(self.lengths)


def empty_topk(top_k: int, vocab_size: int) -> TopK:
    """A payload with no examples (the broadcast before any client has sent logits)."""
    return TopK(torch.zeros(0, top_k, dtype=torch.float16), torch.zeros(0, top_k, dtype=index_dtype(vocab_size)),
                torch.zeros(1, dtype=torch.int32), torch.zeros(0, dtype=torch.float32),
                torch.zeros(0, dtype=torch.int32))


@torch.no_grad()
def collect_topk(model: nn.Module, loader: Any, top_k: int, vocab_size: int, device: torch.device) -> TopK:
    """``model``'s top-k payload over ``loader``'s batches (in order; one micro-batch's logits at a time)."""
    was_training = model.training
    model.eval()
    parts = []
    try:
        for batch in loader:
            logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                           use_cache=False).logits
            parts.append(topk_of_batch(logits, batch["attention_mask"].to(device), batch["labels"].to(device),
                                       batch["public_row"], top_k, vocab_size))
            del logits
    finally:
        model.train(was_training)
    return TopK.concat(parts)


class TargetBatches:
    """The batches of ``loader`` (over ``targets``' rows) with each example's targets attached.

    Each batch gains ``target_probs``/``target_indices`` ``(B, T, k)`` and ``target_mask`` ``(B, T)``
    (see :func:`~fedbiot_pl.distillation.targets.batch_targets`).
    """

    def __init__(self, loader: Any, targets: TopK, temperature: float) -> None:
        self.loader, self.targets, self.temperature = loader, targets, temperature
        self._position = {int(row): i for i, row in enumerate(targets.rows.tolist())}

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            examples = [self._position[int(row)] for row in batch["public_row"]]
            probs, indices, mask = batch_targets(self.targets, examples, batch["input_ids"].shape[1], self.temperature)
            yield {**batch, "target_probs": probs, "target_indices": indices, "target_mask": mask}


def pass_steps(batches: int, accumulate: int) -> int:
    """Optimizer steps of one pass over ``batches`` micro-batches (Lightning steps on an epoch's last batch)."""
    return max(1, math.ceil(batches / accumulate))
