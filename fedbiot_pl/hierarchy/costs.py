"""What fine-tuning the top ``d`` decoder layers costs: FLOPs per step, message bytes and peak memory.

Depth ``d`` trains the LoRA of the top ``d`` of ``L`` layers. Every step runs forward through all ``L`` layers
and backward only down to layer ``L - d + 1`` (``flops.client_plan(L, d)``), so FLOPs per token are affine in
``d``; a message carries the ``d`` layers' LoRA in float32; the peak memory holds the whole frozen model plus
the LoRA training state and saved activations of ``d`` layers (``memory.client_peak_memory``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedbiot_pl.scaling.flops import DecoderShape, client_plan, flops_per_token, lora_params
from fedbiot_pl.scaling.memory import client_peak_memory

WIRE_BYTES = 4
"""Bytes per LoRA parameter on the wire (float32)."""


@dataclass(frozen=True)
class DepthCosts:
    """Per-depth costs of one device's training step and messages, for depths ``1..num_layers``.

    Raises:
        ValueError: ``num_layers < 1``, or a per-depth tuple does not have ``num_layers`` entries.
    """

    num_layers: int
    """``L``, the decoder layers that carry LoRA (the deepest depth)."""
    tokens_per_step: int
    """Tokens one optimiser step processes (micro-batch tokens times gradient accumulation)."""
    flops_per_token: tuple[int, ...]
    """Model FLOPs per token at depth ``d``, at index ``d - 1``."""
    lora_bytes_per_layer: int
    """Bytes of one layer's LoRA on the wire."""
    memory_bytes: tuple[int, ...]
    """Estimated peak training memory at depth ``d``, at index ``d - 1``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "flops_per_token", tuple(self.flops_per_token))
        object.__setattr__(self, "memory_bytes", tuple(self.memory_bytes))
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}.")
        for name in ("flops_per_token", "memory_bytes"):
            if len(getattr(self, name)) != self.num_layers:
                raise ValueError(f"{name} must have num_layers={self.num_layers} entries (depths 1..L), "
                                 f"got {len(getattr(self, name))}.")

    def _check(self, depth: int) -> int:
        if not 1 <= depth <= self.num_layers:
            raise ValueError(f"depth d={depth} must be in [1, L={self.num_layers}].")
        return depth - 1

    def step_flops(self, depth: int) -> int:
        """Model FLOPs of one optimiser step at ``depth``: ``tokens_per_step * flops_per_token[depth - 1]``.

        Raises:
            ValueError: ``depth`` is not in ``[1, num_layers]``.
        """
        return self.tokens_per_step * self.flops_per_token[self._check(depth)]

    def message_bytes(self, depth: int) -> int:
        """Bytes of one LoRA message at ``depth`` (the top ``depth`` layers).

        Raises:
            ValueError: ``depth`` is not in ``[1, num_layers]``.
        """
        self._check(depth)
        return depth * self.lora_bytes_per_layer

    def memory(self, depth: int) -> int:
        """Estimated peak training memory in bytes at ``depth``.

        Raises:
            ValueError: ``depth`` is not in ``[1, num_layers]``.
        """
        return self.memory_bytes[self._check(depth)]


def depth_costs(shape: DecoderShape, num_layers: int, seq_len: int, tokens_per_step: int, micro_batch_tokens: int,
                lora_rank: int, lora_targets: Sequence[str], base_params: int, dtype_bytes: int) -> DepthCosts:
    """The :class:`DepthCosts` of a LLaMA-style model with LoRA on every layer.

    Args:
        shape: The decoder's sizes.
        num_layers: ``L``, its decoder layers.
        seq_len: The (padded) sequence length, for the attention FLOPs.
        tokens_per_step: Tokens per optimiser step (batch x padded length x accumulation).
        micro_batch_tokens: Tokens per micro-batch (sets the saved activations).
        lora_rank: The LoRA rank ``r``.
        lora_targets: The linear modules with LoRA (e.g. ``("q_proj", "v_proj")``).
        base_params: Every parameter of the frozen model (its weights' memory).
        dtype_bytes: Bytes per value of the base dtype (2 for fp16/bf16).

    Returns:
        Per-depth FLOPs per token (forward through all ``L`` layers, backward through the top ``d``), float32 LoRA
        bytes per layer and estimated peak memory.
    """
    per_layer = lora_params(shape, lora_rank, lora_targets)
    depths = range(1, num_layers + 1)
    flops = tuple(flops_per_token(shape, seq_len, client_plan(num_layers, d), lora_rank, lora_targets) for d in depths)
    memory = tuple(client_peak_memory(model_params=base_params, trained_lora=d * per_layer, layers_with_activations=d,
                                      hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                                      vocab_size=shape.vocab, tokens=micro_batch_tokens,
                                      dtype_bytes=dtype_bytes)["total"] for d in depths)
    return DepthCosts(num_layers=num_layers, tokens_per_step=tokens_per_step, flops_per_token=flops,
                      lora_bytes_per_layer=WIRE_BYTES * per_layer, memory_bytes=memory)
