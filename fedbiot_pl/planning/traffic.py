"""The bytes one round moves, per client and in total, by algorithm family: pure functions of the settings.

LoRA travels as float32 (:func:`traffic`); a KD algorithm moves top-k logits on the public examples
(:func:`kd_traffic`, :data:`KD_FORMULA`); a split-learning one moves activations and gradients at the cut
and its client LoRA (:func:`split_traffic`, :data:`SPLIT_FORMULA`). :func:`kd_round` and :func:`split_round`
give the last two :func:`traffic`'s shape.
"""

from __future__ import annotations

from typing import Any

from fedbiot_pl.distillation.topk import index_bytes, topk_wire_bytes

LORA_BYTES = 4  # LoRA weights travel as float32
KD_FORMULA = "P·T·k·(2 + index bytes) + 12P + 4"
# Split-learning bytes per client and round, (upload, download); one template for symbols and numbers.
_SPLIT_TEMPLATES = {
    "vanilla": ("{M}·({b}·{B}·{T}·{d} + {B}·{T} + 4·{B}·{T} + 4) + 4·{L}", "{M}·(4 + {b}·{B}·{T}·{d}) + 4·{L}"),
    "u_shaped": ("{M}·({b}·{B}·{T}·{d} + {B}·{T} + {b}·{B}·{T}·{d}) + 4·{L}",
                 "{M}·({b}·{B}·{T}·{d} + {b}·{B}·{T}·{d}) + 4·{L}"),
}
_SYMBOLS = {"M": "M", "b": "b", "B": "B", "T": "T", "d": "d", "L": "LoRA_c"}
SPLIT_FORMULA = {kind: f"up = {up.format(**_SYMBOLS)}, down = {down.format(**_SYMBOLS)}"
                 for kind, (up, down) in _SPLIT_TEMPLATES.items()}
SPLIT_TERMS = ("per micro-batch of B examples x T tokens: activations b·B·T·d (b activation bytes, d hidden size), "
               "padding mask B·T (uint8), vanilla: labels 4·B·T (int32) and the loss's gradient scale 4 up, the "
               "loss 4 down (float32 scalars); gradients b·B·T·d; U-shaped: activations and gradients both ways; "
               "M micro-batches a round, and the client LoRA 4·LoRA_c (float32) each way")
# The command's flag of each KD and split setting, named in its errors.
KD_FLAGS = {"top_k": "--top-k", "public_examples": "--public-examples", "seq_len": "--seq-len"}
SPLIT_FLAGS = {"cut_layer": "--cut-layer", "client_top_layers": "--client-top-layers",
               "activation_dtype": "--activation-dtype", "batch_size": "--batch-size",
               "micro_batches": "--micro-batches", "seq_len": "--seq-len"}


def traffic(emulator_lora: int, adapter_lora: int, clients: int) -> dict[str, dict[str, int]]:
    """LoRA a round moves: each client downloads emulator + adapter LoRA and uploads adapter LoRA.

    Pass ``emulator_lora=0`` for algorithms whose emulator does not change during the rounds.
    """
    down, up = emulator_lora + adapter_lora, adapter_lora
    one = {"download_params": down, "download_bytes": down * LORA_BYTES,
           "upload_params": up, "upload_bytes": up * LORA_BYTES}
    return {"per_client_per_round": one, "per_round": {"clients": clients, **{k: v * clients for k, v in one.items()}}}


def kd_traffic(public_examples: int, seq_len: int, top_k: int, vocab_size: int) -> dict[str, int]:
    """Bytes of one top-k payload each way, per client and round, of a KD algorithm (an upper bound).

    A client uploads its top-k logits on ``P = public_examples`` examples and downloads the server's
    targets on the same examples (:func:`~fedbiot_pl.distillation.topk.topk_wire_bytes` each): per
    kept token ``k`` float16 values and ``k`` indices of :func:`~fedbiot_pl.distillation.topk.index_bytes`
    bytes, plus ``12 P + 4`` bytes of offsets, metric and rows. Every example is counted at ``T = seq_len``
    tokens (``P T`` rows), an upper bound: an example of ``L <= T`` tokens keeps only ``L - 1`` rows.
    ``dense_fp16_bytes`` is what the full float16 logits of the same tokens would take (``P T V 2``).

    Raises:
        ValueError: a setting below 1, or ``top_k`` above the vocabulary, naming it and its value.
    """
    for label, value in (("top_k", top_k), ("public_examples", public_examples), ("seq_len", seq_len),
                         ("vocab_size", vocab_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be an integer >= 1, got {value!r}.")
    if top_k > vocab_size:
        raise ValueError(f"top_k must be at most the vocabulary size {vocab_size:,}, got {top_k}.")
    tokens = public_examples * seq_len
    one = topk_wire_bytes(tokens, public_examples, top_k, vocab_size)
    return {"upload_bytes": one, "download_bytes": one, "index_bytes": index_bytes(vocab_size),
            "tokens_upper_bound": tokens, "dense_fp16_bytes": tokens * vocab_size * 2}


def kd_round(kd: dict[str, int], clients: int) -> dict[str, dict[str, int]]:
    """:func:`traffic`'s shape for a KD algorithm: bytes from :func:`kd_traffic`, no parameters."""
    one = {"download_params": 0, "download_bytes": kd["download_bytes"],
           "upload_params": 0, "upload_bytes": kd["upload_bytes"]}
    return {"per_client_per_round": one, "per_round": {"clients": clients, **{k: v * clients for k, v in one.items()}}}


def check_counts(**values: int) -> None:
    """Raise ``ValueError`` naming the first value that is not an integer >= 1 (a ``bool`` is not one)."""
    for label, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            fix = f"; set {SPLIT_FLAGS[label]}" if label in SPLIT_FLAGS else ""
            raise ValueError(f"{label} must be an integer >= 1, got {value!r}{fix}.")


def split_traffic(micro_batches: int, batch_size: int, seq_len: int, hidden_size: int, activation_bytes: int,
                  client_lora: int, u_shaped: bool) -> dict[str, Any]:
    """Bytes a split-learning client moves per round, in total and term by term (:data:`SPLIT_FORMULA`).

    Per micro-batch of ``B = batch_size`` examples x ``T = seq_len`` tokens, with ``b = activation_bytes``
    and ``d = hidden_size``: vanilla uploads the cut activations ``b B T d``, the padding mask ``B T``
    (uint8), the labels ``4 B T`` (int32) and the loss's gradient scale (a float32 scalar, 4), and downloads
    the loss (4) and the activations' gradients ``b B T d``; U-shaped uploads the activations, the mask and
    the gradients at the top cut, and downloads the activations at the top cut and the gradients at the
    bottom one. Over ``M = micro_batches`` micro-batches, plus the client LoRA (float32,
    ``4 client_lora``) once each way.

    Returns:
        ``upload_bytes``, ``download_bytes``; ``upload`` and ``download``: each term's bytes in the round
        (``lora`` included), summing to them; ``per_micro_batch``: the terms of one micro-batch;
        ``formula``: the :data:`SPLIT_FORMULA` of the shape.

    Raises:
        ValueError: a count below 1 (``client_lora`` below 0), naming it, its flag and its value.
    """
    check_counts(micro_batches=micro_batches, batch_size=batch_size, seq_len=seq_len, hidden_size=hidden_size,
                 activation_bytes=activation_bytes)
    if isinstance(client_lora, bool) or not isinstance(client_lora, int) or client_lora < 0:
        raise ValueError(f"client_lora must be an integer >= 0, got {client_lora!r}.")
    tokens = batch_size * seq_len
    activations = activation_bytes * tokens * hidden_size
    if u_shaped:
        up = {"activations": activations, "mask": tokens, "gradients": activations}
        down = {"activations": activations, "gradients": activations}
    else:
        up = {"activations": activations, "mask": tokens, "labels": 4 * tokens, "loss_grad": 4}
        down = {"loss": 4, "gradients": activations}
    lora = LORA_BYTES * client_lora
    upload = {**{k: micro_batches * v for k, v in up.items()}, "lora": lora}
    download = {**{k: micro_batches * v for k, v in down.items()}, "lora": lora}
    return {"upload_bytes": sum(upload.values()), "download_bytes": sum(download.values()),
            "upload": upload, "download": download, "per_micro_batch": {"upload": up, "download": down},
            "formula": SPLIT_FORMULA["u_shaped" if u_shaped else "vanilla"]}


def split_numbers(split: dict[str, Any]) -> str:
    """A plan's ``split`` block as ``up = <formula> = <its numbers> = <bytes> B, down = ...``."""
    values = {"M": f"{split['micro_batches']:,}", "b": split["activation_bytes"], "B": f"{split['batch_size']:,}",
              "T": f"{split['seq_len']:,}", "d": f"{split['hidden_size']:,}", "L": f"{split['client_lora']:,}"}
    templates = _SPLIT_TEMPLATES["u_shaped" if split["u_shaped"] else "vanilla"]
    return ", ".join(
        f"{way} = {template.format(**_SYMBOLS)} = {template.format(**values)} = {sum(split[key].values()):,} B"
        for way, key, template in zip(("up", "down"), ("upload", "download"), templates, strict=True))


def split_round(moved: dict[str, Any], client_lora: int, clients: int) -> dict[str, dict[str, int]]:
    """:func:`traffic`'s shape for a split algorithm: bytes from :func:`split_traffic`, the client LoRA each way."""
    one = {"download_params": client_lora, "download_bytes": moved["download_bytes"],
           "upload_params": client_lora, "upload_bytes": moved["upload_bytes"]}
    return {"per_client_per_round": one, "per_round": {"clients": clients, **{k: v * clients for k, v in one.items()}}}
