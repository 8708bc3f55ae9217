"""The public examples as the KD algorithms read them: chosen rows, each batch with its ``public_row``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import torch


@dataclass(frozen=True)
class KeepColumns:
    """A collator that also stacks the integer columns ``keep`` (e.g. ``public_row``) into the batch."""

    collator: Any
    keep: tuple[str, ...]

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """The collator's batch plus one ``(B,)`` long tensor per kept column."""
        batch = self.collator(examples)
        for name in self.keep:
            batch[name] = torch.tensor([int(example[name]) for example in examples], dtype=torch.long)
        return batch


class PublicRows(torch.utils.data.Dataset):
    """Public examples ``rows`` in that order, each with its ``public_row``."""

    def __init__(self, public: datasets.Dataset, rows: list[int]) -> None:
        self.public, self.rows = public, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.public[self.rows[index]], "public_row": self.rows[index]}
