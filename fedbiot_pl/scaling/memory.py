"""An estimate of a client's peak memory while it trains LoRA (pure arithmetic, no model needed).

peak = weights + LoRA training state + saved activations + logits, where

* weights: every parameter of the model the client holds, in the base dtype;
* LoRA training state: the trained LoRA in float32 with its gradient and AdamW's two moments
  (16 bytes per trained parameter);
* saved activations: autograd keeps activations only in the layers that backward must cross, i.e.
  from the lowest layer with trained LoRA up to the top (FedBiOT: just the top adapter; FedOT: every
  layer, since its bottom adapter trains; FedAvg-LoRA: every layer). Per token and such layer, a
  LLaMA-style block saves about ``7 h + 3 i`` values in the base dtype: the inputs of its two RMSNorms
  (2h), the LoRA input (h), the attention's query, key, value and output kept by SDPA (4h, an upper
  bound under grouped-query attention), and SwiGLU's gate, up and activated gate (3i). The frozen
  linears keep no input (no weight gradient), and SDPA keeps no T x T matrix;
* logits: ``tokens x vocab`` in float32, twice (the logits and their softmax gradient), only for a
  client that holds the LM head (a vanilla split-learning client does not: its server computes the loss).

It leaves out the CUDA context, allocator fragmentation and temporary buffers (so real peaks are
higher by a roughly constant amount); gradient checkpointing would cut the activation term.
"""

from __future__ import annotations

LORA_STATE_BYTES = 4 * 4  # float32 weight + gradient + AdamW exp_avg + exp_avg_sq


def activation_values_per_token(hidden_size: int, intermediate_size: int) -> int:
    """Values one LLaMA-style decoder layer saves for backward, per token (see the module docstring)."""
    return 7 * hidden_size + 3 * intermediate_size


def client_peak_memory(*, model_params: int, trained_lora: int, layers_with_activations: int, hidden_size: int,
                       intermediate_size: int, vocab_size: int, tokens: int, dtype_bytes: int,
                       head: bool = True) -> dict[str, int]:
    """Bytes of each term and their ``total`` for one micro-batch of ``tokens`` tokens.

    ``head=False``: the client does not compute the logits (a vanilla split-learning client), so ``logits`` is 0.
    """
    terms = {
        "weights": model_params * dtype_bytes,
        "lora_state": trained_lora * LORA_STATE_BYTES,
        "activations": layers_with_activations * tokens * activation_values_per_token(hidden_size, intermediate_size)
        * dtype_bytes,
        "logits": 2 * tokens * vocab_size * 4 if head else 0,
    }
    return {**terms, "total": sum(terms.values())}
