"""Batched generation from AdapFu (the adapter in the full model) or AdapEmu (the compressed model)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from torch import Tensor
from typing_extensions import override

from fedbiot_pl.data.tokenization import GenerationCollator, encode_prompt
from fedbiot_pl.errors import ConfigError
from fedbiot_pl.model.views import ModelViews

Variant = Literal["adapfu", "adapemu"]


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings (``do_sample=False`` is greedy; the sampling knobs apply only when sampling).

    Attributes:
        max_new_tokens: tokens to generate at most.
        do_sample: sample instead of greedy decoding.
        temperature: sampling temperature.
        top_p: nucleus sampling mass.
        top_k: top-k sampling (0 = off).
        num_return_sequences: completions per prompt (for pass@k).
        use_cache: use the KV cache.
        min_new_tokens: generate at least this many tokens (benchmarks use it to fix the length).
    """

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    num_return_sequences: int = 1
    use_cache: bool = True
    min_new_tokens: int = 0

    def generate_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``generate``; without the sampling ones under greedy decoding."""
        kwargs = asdict(self)
        if not self.do_sample:
            for key in ("temperature", "top_p", "top_k"):
                kwargs.pop(key)
        return kwargs


class GenerationModule(LightningModule):
    """Generates completions for left-padded prompt batches in ``predict_step``/``test_step``.

    Each batch holds ``input_ids``, ``attention_mask`` (left-padded) and ``ids`` (one per prompt).
    A step returns ``[{"id": ..., "completions": [str, ...]}, ...]``. ``variant`` picks AdapFu
    (``split.full_with_adapter``) or AdapEmu (``split.compressed``); both share the split's frozen
    weights, so switching variants costs nothing.

    Args:
        split: the model split with the run's LoRA loaded.
        tokenizer: the model's tokenizer (decodes the new tokens; its pad id pads the batch).
        variant: ``adapfu`` or ``adapemu``.
        settings: decoding settings.
        seed: if set, ``torch.manual_seed(seed)`` right before the first batch, so that sampling
            does not depend on what drew from the global generator before.
    """

    def __init__(self, split: ModelViews, tokenizer: Any, variant: Variant = "adapfu",
                 settings: GenerationSettings | None = None, seed: int | None = None) -> None:
        super().__init__()
        if variant not in ("adapfu", "adapemu"):
            raise ConfigError(f"variant must be 'adapfu' or 'adapemu', got {variant!r}.")
        self.split, self.tokenizer, self.variant = split, tokenizer, variant
        self.settings, self.seed = settings or GenerationSettings(), seed
        self.outputs: list[dict[str, Any]] = []

    @override
    def configure_model(self) -> None:
        self.split.build()

    @property
    def model(self) -> torch.nn.Module:
        """The variant's model: ``split.full_with_adapter`` (AdapFu) or ``split.compressed`` (AdapEmu)."""
        return self.split.full_with_adapter if self.variant == "adapfu" else self.split.compressed

    @torch.no_grad()
    def generate(self, input_ids: Tensor, attention_mask: Tensor) -> list[list[str]]:
        """Completions (new text only) per prompt: ``num_return_sequences`` strings each."""
        self.split.eval()
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        out = self.model.generate(
            input_ids=input_ids, attention_mask=attention_mask, pad_token_id=pad,
            eos_token_id=self.tokenizer.eos_token_id, **self.settings.generate_kwargs(),
        )
        texts = self.tokenizer.batch_decode(out[:, input_ids.shape[1] :], skip_special_tokens=True)
        n = self.settings.num_return_sequences
        return [texts[i * n : (i + 1) * n] for i in range(input_ids.shape[0])]

    @override
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        if batch_idx == 0 and self.seed is not None:
            torch.manual_seed(self.seed)
        completions = self.generate(batch["input_ids"], batch["attention_mask"])
        return [{"id": i, "completions": c} for i, c in zip(batch["ids"], completions, strict=True)]

    @override
    def on_test_epoch_start(self) -> None:
        self.outputs = []

    @override
    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.outputs.extend(self.predict_step(batch, batch_idx))


def left_padded_batches(tokenizer: Any, prompts: list[str], ids: list[Any], batch_size: int) -> list[dict[str, Any]]:
    """Prompts encoded exactly as they start a training example (BOS, no EOS), in left-padded batches."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collate = GenerationCollator(pad)
    batches = []
    for start in range(0, len(prompts), batch_size):
        encoded = [{"input_ids": encode_prompt(tokenizer, p)} for p in prompts[start : start + batch_size]]
        batches.append({**collate(encoded), "ids": ids[start : start + batch_size]})
    return batches
