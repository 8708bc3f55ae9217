"""A shuffling sampler whose order is a pure function of (seed, epoch).

So a resumed run sees the same batches in every epoch as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from .client_shards import loader_seed


class EpochShuffleSampler(Sampler[int]):
    """Yields a permutation of ``range(size)`` fixed by ``(seed, epoch)``.

    Lightning calls :meth:`set_epoch` at the start of every epoch (as for a ``DistributedSampler``);
    the permutation is drawn when iteration starts, from a generator of its own, so it neither
    depends on how many epochs this process has run nor touches the global random state.

    Args:
        size: number of examples.
        seed: non-negative seed.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` from the next iteration on."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(loader_seed(self.seed, 0, self.epoch))
        yield from torch.randperm(self.size, generator=generator).tolist()
