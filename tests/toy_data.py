"""A tiny in-memory federated datamodule with a learnable pattern (for fast loop tests)."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader


def counting_batch(starts: torch.Tensor, length: int, vocab: int) -> dict[str, torch.Tensor]:
    """Sequences ``s, s+1, s+2, ... (mod vocab)``: easy to learn, so the loss must fall."""
    ids = (starts[:, None] + torch.arange(length)[None, :]) % (vocab - 3) + 3
    labels = ids.clone()
    labels[:, :2] = -100  # a two-token "prompt"
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


class ToyFederatedData(L.LightningDataModule):
    def __init__(self, num_clients: int = 3, examples: tuple[int, ...] = (8, 8, 16), batch_size: int = 4,
                 length: int = 12, vocab: int = 128, seed: int = 0) -> None:
        super().__init__()
        self._num_clients, self.examples, self.batch_size = num_clients, examples, batch_size
        self.length, self.vocab, self.seed = length, vocab, seed
        self.requested: list[tuple[int, int]] = []

    @property
    def num_clients(self) -> int:
        return self._num_clients

    def client_num_examples(self, client_id: int) -> int:
        return self.examples[client_id]

    def _loader(self, count: int, seed: int) -> DataLoader:
        g = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, self.vocab, (count,), generator=g)
        batch = counting_batch(starts, self.length, self.vocab)
        rows = [{k: v[i] for k, v in batch.items()} for i in range(count)]
        return DataLoader(rows, batch_size=self.batch_size, shuffle=True, generator=g)

    def client_dataloader(self, client_id: int, round_idx: int = 0) -> DataLoader:
        self.requested.append((client_id, round_idx))
        return self._loader(self.examples[client_id], seed=1000 * self.seed + 10 * client_id + round_idx)

    def train_dataloader(self) -> DataLoader:
        return self._loader(64, seed=self.seed + 99)


class ToyKDData(ToyFederatedData):
    """:class:`ToyFederatedData` plus a public set of counting sequences of different lengths (for KD)."""

    def __init__(self, *args, public_lengths: tuple[int, ...] = (6, 9, 12, 7, 10, 8), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lengths = public_lengths

    @property
    def num_public_examples(self) -> int:
        return len(self.lengths)

    def public_lengths(self, rows) -> list[int]:
        return [self.lengths[row] for row in rows]

    def public_row(self, row: int) -> dict[str, torch.Tensor]:
        batch = counting_batch(torch.tensor([7 * row]), self.lengths[row], self.vocab)
        return {key: value[0] for key, value in batch.items()}

    def public_dataloader(self, rows, seed: int | None = None) -> DataLoader:
        rows = [int(r) for r in rows]
        if seed is not None:
            rows = [rows[i] for i in torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))]
        batches = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            width = max(self.lengths[r] for r in chunk)
            batch = {"input_ids": torch.zeros(len(chunk), width, dtype=torch.long),
                     "attention_mask": torch.zeros(len(chunk), width, dtype=torch.long),
                     "labels": torch.full((len(chunk), width), -100), "public_row": torch.tensor(chunk)}
            for i, row in enumerate(chunk):
                example, n = self.public_row(row), self.lengths[row]
                for key in ("input_ids", "attention_mask", "labels"):
                    batch[key][i, :n] = example[key]
            batches.append(batch)
        return batches


class ToyGroupedData(ToyFederatedData):
    """:class:`ToyFederatedData` whose clients hold categories (a partition report, for grouping) and a max length."""

    def __init__(self, categories: tuple[dict[str, int], ...], **kwargs) -> None:
        from fedbiot_pl.data.partition_report import partition_table

        examples = tuple(sum(c.values()) for c in categories)
        super().__init__(num_clients=len(categories), examples=examples, **kwargs)
        keys = [[name for name, count in c.items() for _ in range(count)] for c in categories]
        self.partition_report = partition_table(keys, [0] * len(keys), [0] * len(keys), "category")
        self.max_length = self.length
