"""Model FLOPs of FedBiOT's training passes, for tokens/s -> MFU (pure arithmetic on a model config).

What is counted, per token (``d`` hidden size, ``T`` sequence length, ``r`` LoRA rank):

* a frozen linear ``d_in x d_out``: forward ``2 d_in d_out``; backward ``2 d_in d_out`` for the input
  gradient, only where the backward pass goes through it; no weight gradient (frozen);
* a LoRA pair on it (``A: r x d_in``, ``B: d_out x r``): forward ``2 r (d_in + d_out)``; where it trains,
  backward ``4 r (d_in + d_out)`` (input and weight gradients);
* attention scores and mixing (``QK^T`` and ``PV``, no weights): forward ``4 T d``, backward ``8 T d``,
  the PaLM convention (no discount for the causal mask);
* the LM head ``d x V``: forward ``2 d V``; backward ``2 d V`` when the loss reaches it;
* not counted: embeddings (a lookup), norms, activations, softmax, the loss, optimizer steps, and
  recomputation by gradient checkpointing (so this is MFU, not hardware FLOPs utilisation).

The backward pass runs from the loss down to the lowest layer with trained LoRA and no further:
autograd never enters the frozen layers below it. So a FedBiOT client (top adapter trained) costs
about ``2 N_compressed + 2 N_adapter`` per token, not the ``6 N`` of full fine-tuning.

Split learning (:func:`split_plans`) divides FedAvg-LoRA's step between the client and the server: every
term is a sum over layers (or the head, counted on the side that holds it), so the two sides' FLOPs per
token add up exactly to FedAvg-LoRA's ``client_plan(L, L)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class DecoderShape:
    """The sizes that set a LLaMA-style decoder layer's FLOPs."""

    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int

    @property
    def kv_dim(self) -> int:
        """The width of the key and value projections: ``kv_heads`` heads of ``hidden // heads``."""
        return self.hidden // self.heads * self.kv_heads

    def linears(self) -> dict[str, tuple[int, int]]:
        """``name -> (d_in, d_out)`` of one layer's linear modules."""
        d, f, kv = self.hidden, self.intermediate, self.kv_dim
        return {"q_proj": (d, d), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (d, d),
                "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}


def decoder_shape(config: Any) -> DecoderShape:
    """The :class:`DecoderShape` of a Hugging Face config (or anything with the same attributes)."""
    heads = config.num_attention_heads
    return DecoderShape(config.hidden_size, config.intermediate_size, heads,
                        getattr(config, "num_key_value_heads", None) or heads, config.vocab_size)


def layer_weight_params(shape: DecoderShape) -> int:
    """Weights in one layer's linear modules (the ``N`` of ``2N`` FLOPs per token)."""
    return sum(i * o for i, o in shape.linears().values())


def lora_params(shape: DecoderShape, rank: int, targets: Sequence[str]) -> int:
    """LoRA weights ``r (d_in + d_out)`` of one layer's ``targets``."""
    linears = shape.linears()
    return sum(rank * sum(linears[t]) for t in targets)


@dataclass(frozen=True)
class PassPlan:
    """Which layers one training step runs forward and backward.

    Attributes:
        forward_layers: decoder layers run forward (with grad or not).
        backward_layers: decoder layers the backward pass goes through (top ones).
        lora_forward_layers: layers whose LoRA runs forward.
        trained_lora_layers: layers whose LoRA trains (weight gradients).
        head_forward: the LM head runs forward.
        head_backward: the loss's gradient goes through the LM head.
    """

    forward_layers: int
    backward_layers: int
    lora_forward_layers: int
    trained_lora_layers: int
    head_forward: bool = True
    head_backward: bool = True


def flops_per_token(shape: DecoderShape, seq_len: int, plan: PassPlan, lora_rank: int,
                    lora_targets: Sequence[str]) -> int:
    """Model FLOPs per token of one pass ``plan`` (see the module docstring for what counts)."""
    weights, lora = layer_weight_params(shape), lora_params(shape, lora_rank, lora_targets)
    attention = 4 * seq_len * shape.hidden
    head = 2 * shape.hidden * shape.vocab
    total = plan.forward_layers * (2 * weights + attention) + plan.lora_forward_layers * 2 * lora
    total += plan.backward_layers * (2 * weights + 2 * attention + 2 * lora)  # input gradients
    total += plan.trained_lora_layers * 2 * lora  # LoRA weight gradients
    total += head * (int(plan.head_forward) + int(plan.head_backward))
    return total


def client_plan(compressed_layers: int, trained_layers: int, lowest_trained_from_top: int | None = None) -> PassPlan:
    """A client step: forward through the whole compressed model, backward down to the lowest trained layer.

    Backward runs from the loss down to the lowest trained layer (``lowest_trained_from_top`` layers
    counted from the top; default the trained layers, i.e. a top adapter). FedAvg-LoRA:
    ``client_plan(n, n)``.
    """
    down = trained_layers if lowest_trained_from_top is None else lowest_trained_from_top
    return PassPlan(compressed_layers, down, compressed_layers, trained_layers)


def split_plans(num_layers: int, cut_layer: int, client_top_layers: int) -> tuple[PassPlan, PassPlan]:
    """A split-learning step's (client, server) passes, LoRA on every layer and all of it trained.

    The client runs layers ``[0, k)`` and, U-shaped (``m = client_top_layers >= 1``), ``[L - m, L)``
    with the head and the loss; the server runs ``[k, L - m)``, plus the head and the loss when vanilla
    (``m = 0``). Each side's backward crosses all of its layers: the server's must reach ``h_k`` (the
    gradient it sends down), a U-shaped client's top must reach ``h_{L-m}`` (the gradient it sends up),
    and the client's bottom trains the LoRA of layer 0. Field by field the two add up to
    FedAvg-LoRA's ``client_plan(L, L)`` with the head once.

    Raises:
        ValueError: the cut leaves the server no layer, or a setting is negative, naming it.
    """
    if cut_layer < 0 or client_top_layers < 0:
        raise ValueError(f"cut_layer and client_top_layers must be >= 0, got {cut_layer} and {client_top_layers}.")
    client_layers = cut_layer + client_top_layers
    server_layers = num_layers - client_layers
    if server_layers < 1:
        raise ValueError(f"cut_layer {cut_layer} + client_top_layers {client_top_layers} leaves the server none of "
                         f"the {num_layers} decoder layers; set cut_layer <= {num_layers - client_top_layers - 1}.")
    u_shaped = client_top_layers > 0
    client = PassPlan(client_layers, client_layers, client_layers, client_layers,
                      head_forward=u_shaped, head_backward=u_shaped)
    server = PassPlan(server_layers, server_layers, server_layers, server_layers,
                      head_forward=not u_shaped, head_backward=not u_shaped)
    return client, server


def forward_only(plan: PassPlan) -> PassPlan:
    """The forward half of ``plan``: the same layers, LoRA and head forward, no backward (inference)."""
    return replace(plan, backward_layers=0, trained_lora_layers=0, head_backward=False)


def forward_backward(shape: DecoderShape, seq_len: int, plan: PassPlan, lora_rank: int,
                     lora_targets: Sequence[str]) -> dict[str, int]:
    """``forward``, ``backward`` and ``total`` model FLOPs per token of ``plan`` (:func:`flops_per_token`)."""
    total = flops_per_token(shape, seq_len, plan, lora_rank, lora_targets)
    forward = flops_per_token(shape, seq_len, forward_only(plan), lora_rank, lora_targets)
    return {"forward": forward, "backward": total - forward, "total": total}


def alignment_plans(compressed_layers: int, emulator_layers: int, full_layers: int,
                    kl: bool) -> tuple[PassPlan, PassPlan]:
    """The alignment step's (student, teacher) passes.

    Student: the compressed model, forward to the logits if ``kl`` else to the last emulator layer;
    backward from the logits (``kl``) or the emulator's output down to layer 0; the emulator LoRA
    trains. Teacher: the full model with the adapter, forward only (no grad), to the logits if ``kl``
    else up to the original layers the emulator replaces (about ``full_layers - adapter``).
    """
    adapter = compressed_layers - emulator_layers
    if kl:
        student = PassPlan(compressed_layers, compressed_layers, compressed_layers, emulator_layers)
        teacher = PassPlan(full_layers, 0, adapter, 0, head_forward=True, head_backward=False)
    else:
        student = PassPlan(emulator_layers, emulator_layers, emulator_layers, emulator_layers,
                           head_forward=False, head_backward=False)
        teacher = PassPlan(full_layers - adapter, 0, 0, 0, head_forward=False, head_backward=False)
    return student, teacher


def mfu(flops_per_tok: float, tokens_per_second: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the device's peak."""
    return flops_per_tok * tokens_per_second / peak_flops
