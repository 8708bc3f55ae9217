"""Shared fixtures: tiny randomly initialised decoder-only models built in code (no downloads)."""

from __future__ import annotations

import random
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from fedbiot_pl.evaluation import sandbox
from fedbiot_pl.testing.faults import Faults, attach_faults
from tests.helpers import sandbox_processes

TINY = dict(
    vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64,
)


def tiny_llama(num_layers: int = 6, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**{**TINY, "num_hidden_layers": num_layers}))


TINY_FAMILIES = {
    "llama": lambda: tiny_llama(),
    "mistral": lambda: MistralForCausalLM(MistralConfig(**TINY, sliding_window=4)),
    "qwen2": lambda: Qwen2ForCausalLM(
        Qwen2Config(**TINY, use_sliding_window=True, sliding_window=4, max_window_layers=3)
    ),
}


@pytest.fixture(autouse=True)
def _seed_and_dtype():
    torch.manual_seed(0)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)


def padded_batch(seed: int = 1, vocab: int = 128, length: int = 12, padding: int = 3) -> dict[str, torch.Tensor]:
    """Two sequences, the second right-padded by ``padding`` tokens; labels mask the first 4 (prompt) tokens."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab, (2, length), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, length - padding :] = 0
    labels = input_ids.clone()
    labels[:, :4] = -100
    labels[attention_mask == 0] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    return padded_batch()


class AttachedFaults:
    """The ``faults`` fixture: ``faults([...])`` attaches faults (:func:`fedbiot_pl.testing.faults.attach_faults`)
    in place of those it attached before, like ``monkeypatch.setenv``; ``faults.clear()`` detaches them."""

    def __init__(self) -> None:
        self._detach: Callable[[], None] | None = None

    def __call__(self, faults: Faults) -> Callable[[], None]:
        self.clear()
        self._detach = attach_faults(faults)
        return self.clear

    def clear(self) -> None:
        if self._detach is not None:
            self._detach()
            self._detach = None


@pytest.fixture
def faults() -> Iterator[AttachedFaults]:
    """Attach faults for one test; whatever it attached is detached at teardown, even after a failure."""
    attached = AttachedFaults()
    yield attached
    attached.clear()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a shared 2-core machine two threads spin against other processes
    (a 30x slow-down of these tiny models); results do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def private_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Sandbox runs use this test's temp folder and uids no other test session uses; both are checked after."""
    base = 1_000_000 + random.randrange(0, 1_000_000, sandbox.UID_SLOTS)
    monkeypatch.setattr(sandbox, "UID_BASE", base)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    yield
    assert sorted(p.name for p in scratch.iterdir()) in ([], ["fedbiot-sandbox-uids"]), "run folder left behind"
    assert sandbox_processes(base) == [], "processes of the sandbox users left behind"
