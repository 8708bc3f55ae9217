"""``fedbiot-plan``: what FedBiOT, a baseline or a KD algorithm costs, from the model's ``config.json`` alone.

The full model is instantiated on the meta device (no weights, no memory), split and LoRA-injected
by :class:`~fedbiot_pl.model.views.ModelViews` exactly as in training, and every figure is a ``numel()``
of that model: layers kept, parameter counts, trainable LoRA on clients and server, and the bytes
one round moves (LoRA as float32) plus the one-time download of the compressed base weights, and an
estimate of a client's peak training memory (:mod:`fedbiot_pl.scaling.memory`, logits of one
micro-batch included). ``--compare`` puts every registered algorithm side by side::

    fedbiot-plan --model configs/models/llama2-7b --adapter-layers 2 --drop-rate 0.2 --lora-r 8
    fedbiot-plan --config fedbiot_pl/assets/configs/default.yaml --json
    fedbiot-plan --model configs/models/llama2-7b --compare --clients 3

The KD algorithms (``fed_kd``, ``fedmkt``: :mod:`fedbiot_pl.algorithms.kd`) move no LoRA: each round
a client uploads its top-k logits on ``P`` public examples and downloads the server's targets on
them, each a payload of :mod:`fedbiot_pl.distillation.topk`. The plan counts every example at
``T = --seq-len`` tokens, so per client and direction (:func:`kd_traffic`)::

    P T k (2 + index bytes) + 12 P + 4        index bytes: 2 for a vocabulary <= 65,536, else 4

an upper bound (an example of ``L <= T`` tokens sends ``L - 1`` rows). Their client holds the full
model with LoRA on every layer (``client_model: full``) or FedBiOT's emulator (``emulator``)::

    fedbiot-plan --model configs/models/llama2-7b --algorithm fed_kd --top-k 128 --public-examples 50 --seq-len 512
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import sys
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from fedbiot_pl.algorithms import ALGORITHMS, Algorithm, resolve_algorithm
from fedbiot_pl.distillation.topk import index_bytes, topk_wire_bytes
from fedbiot_pl.federation.sampling import clients_per_round
from fedbiot_pl.model.location import load_model_config
from fedbiot_pl.model.views import DTYPES, ModelViews
from fedbiot_pl.scaling.memory import client_peak_memory

LORA_BYTES = 4  # LoRA weights travel as float32
SEQ_LEN = 512  # tokens per public example for the KD traffic when no --config gives data.max_length
KD_FORMULA = "P·T·k·(2 + index bytes) + 12P + 4"
SPLIT_KEYS = ("adapter_layers", "drop_rate", "bottom_adapter_layers", "lora_r", "lora_alpha", "lora_targets")
DEFAULTS: dict[str, Any] = {
    k: v.default for k, v in inspect.signature(ModelViews).parameters.items() if k in SPLIT_KEYS
}


# ---------------------------------------------------------------- pure planning math
def count(named: Iterable[tuple[str, nn.Parameter]], lora: bool) -> int:
    """Elements of the LoRA (``lora=True``) or base parameters in ``named`` (shared tensors once)."""
    return sum(p.numel() for name, p in named if ("lora_" in name) == lora)


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


def is_kd(algorithm: Algorithm) -> bool:
    """Whether ``algorithm`` shares top-k logits (``family == "kd"``) instead of LoRA."""
    return getattr(algorithm, "family", "params") == "kd"


def kd_names() -> list[str]:
    """The registered KD algorithms."""
    return [name for name, cls in ALGORITHMS.items() if getattr(cls, "family", "params") == "kd"]


def dtype_name(config: Any) -> str:
    """The config's weight dtype (``dtype``/``torch_dtype``) as a :data:`DTYPES` key; float32 if unset."""
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    name = str(value).removeprefix("torch.") if value is not None else "float32"
    return name if name in DTYPES else "float32"


def size(num_bytes: int) -> str:
    """``num_bytes`` with thousands separators and in binary units."""
    if num_bytes < 1024:
        return f"{num_bytes:,} B"
    scaled, unit = num_bytes / 1024, "TiB"
    for candidate in ("KiB", "MiB", "GiB"):
        if scaled < 1024:
            unit = candidate
            break
        scaled /= 1024
    return f"{num_bytes:,} B ({scaled:.1f} {unit})"


# ---------------------------------------------------------------- model on the meta device
@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence transformers' logging and Python warnings (deprecations) while the model is built."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)


def plan(model: str, clients: int = 1, dtype: str | None = None, algorithm: str | Algorithm = "fedbiot",
         micro_batch_tokens: int = 4000, top_k: int | None = None, public_examples: int | None = None,
         seq_len: int = SEQ_LEN, **split_kwargs: Any) -> dict[str, Any]:
    """Split ``model`` on the meta device and return every planning figure as a JSON-able dict.

    Args:
        model: hub id, model folder, ``config.json`` path or ``embedded:models/stories260K``.
        clients: clients taking part in each round.
        dtype: dtype of the base weights sent once; default the config's.
        algorithm: ``fedbiot``, a baseline, or any :class:`~fedbiot_pl.algorithms.Algorithm` (name, class
            path or object).
        micro_batch_tokens: tokens in one client micro-batch, for the memory estimate (the paper:
            5 examples of up to 800 tokens).
        top_k: KD algorithms only (others ignore it): logits kept per token; default the algorithm's.
        public_examples: KD algorithms only: public examples per round; default the algorithm's.
        seq_len: KD algorithms only: tokens counted per public example (an upper bound).
        **split_kwargs: :class:`ModelViews` split/LoRA arguments (see :data:`SPLIT_KEYS`).

    A KD algorithm (``family == "kd"``) moves top-k logits instead of LoRA: its
    ``per_client_per_round`` bytes are :func:`kd_traffic`'s (``*_params`` 0) and a ``kd`` block gives
    its settings; its client model, trainable LoRA and memory come from its layout as for the others.

    Raises:
        ValueError: an impossible split, LoRA, KD setting or client count, naming the value.
        OSError: the config cannot be found or read.
    """
    from transformers import AutoModelForCausalLM

    if clients < 1:
        raise ValueError(f"clients must be >= 1, got {clients}.")
    if micro_batch_tokens < 1:
        raise ValueError(f"micro_batch_tokens must be >= 1, got {micro_batch_tokens}.")
    algorithm = resolve_algorithm(algorithm)
    kd_settings = None
    if is_kd(algorithm):
        kd_settings = {"top_k": getattr(algorithm, "top_k", None) if top_k is None else top_k,
                       "public_examples": (getattr(algorithm, "public_examples", None) if public_examples is None
                                           else public_examples), "seq_len": seq_len}
        if kd_settings["public_examples"] is None:
            raise ValueError(f"algorithm {algorithm.label!r} has public_examples null (the whole public set every "
                             "round); give --public-examples with the public set's size.")
    with _quiet():
        config = load_model_config(model)
        dtype = dtype or dtype_name(config)
        with torch.device("meta"):
            full = AutoModelForCausalLM.from_config(config)
        try:
            split = ModelViews.from_model(full, dtype=dtype, algorithm=algorithm, **split_kwargs).build()
        except ValueError as error:
            raise ValueError(str(error).replace("'<in-memory>'", repr(model))) from None
    layout, base = split.layout, count(split.compressed.named_parameters(), lora=False)
    emulator_lora = sum(p.numel() for p in split.lora_parameters("emulator").values())
    adapter_lora = sum(p.numel() for p in split.lora_parameters("adapter").values())
    # The emulator's LoRA travels every round only where the algorithm re-aligns it every round.
    moving_emulator = emulator_lora if algorithm.broadcast_part(1) == "all" else 0
    server_trainable = moving_emulator
    if kd_settings is not None:
        kd = kd_traffic(**kd_settings, vocab_size=config.vocab_size)
        moving = kd_round(kd, clients)
        # FedMKT's server distils its own LoRA (the same layout); FedKD's only averages logits.
        server_trainable = adapter_lora if getattr(algorithm, "server_trains", False) else 0
    else:
        moving = traffic(moving_emulator, adapter_lora, clients)
    # Backward crosses every layer from the lowest one with trained LoRA up to the top.
    lowest_trained = min(layout.adapter_positions)
    memory = client_peak_memory(
        model_params=base, trained_lora=adapter_lora, layers_with_activations=len(layout.compressed) - lowest_trained,
        hidden_size=config.hidden_size, intermediate_size=config.intermediate_size, vocab_size=config.vocab_size,
        tokens=micro_batch_tokens, dtype_bytes=DTYPES[dtype].itemsize,
    )
    result = {
        "algorithm": algorithm.label,
        "model": {"name": model, "class": type(full).__name__, "num_layers": layout.num_full_layers,
                  "dtype": dtype},
        "split": {"adapter_layers": len(layout.top_adapter), "bottom_adapter_layers": len(layout.bottom_adapter),
                  "drop_rate": (0.0 if not algorithm.compresses()
                                else split_kwargs.get("drop_rate", DEFAULTS["drop_rate"])),
                  "lora_r": split.lora_r, "lora_alpha": split.lora_alpha, "lora_targets": sorted(split.lora_targets)},
        "layers": {"emulator": list(layout.emulator), "adapter": list(layout.bottom_adapter + layout.top_adapter)},
        "params": {"full": count(split.full.named_parameters(), lora=False), "compressed": base,
                   "emulator_lora": emulator_lora, "adapter_lora": adapter_lora},
        "trainable": {"client": adapter_lora, "server": server_trainable},
        **moving,
        "one_time": {"compressed_base_bytes": base * DTYPES[dtype].itemsize,
                     "emulator_lora_bytes": (emulator_lora - moving_emulator) * LORA_BYTES},
        "client_peak_memory": {"micro_batch_tokens": micro_batch_tokens, **memory},
    }
    if kd_settings is not None:
        result["kd"] = {**kd_settings, "client_model": getattr(algorithm, "client_model", "full"),
                        "index_bytes": kd["index_bytes"], "tokens_upper_bound": kd["tokens_upper_bound"],
                        "dense_fp16_bytes": kd["dense_fp16_bytes"], "formula": KD_FORMULA + " per direction"}
    return result


def _kd_moves(kd: dict[str, Any]) -> str:
    """One line on what a KD algorithm's payload holds."""
    index = "uint16" if kd["index_bytes"] == 2 else "int32"
    return (f"top-k logits on P={kd['public_examples']:,} public examples x T={kd['seq_len']:,} tokens, "
            f"k={kd['top_k']:,} (float16 values + {index} indices): {KD_FORMULA}, an upper bound")


def render(p: dict[str, Any]) -> str:
    """The human-readable report of a :func:`plan` dict."""
    m, s, lay, par = p["model"], p["split"], p["layers"], p["params"]
    one, rnd = p["per_client_per_round"], p["per_round"]
    kept, span = lay["emulator"], m["num_layers"] - len(lay["adapter"])
    clients = f"{rnd['clients']} client{'s' if rnd['clients'] != 1 else ''}"
    mem = p["client_peak_memory"]
    kd = p.get("kd")
    if kd is None:
        trainable = (f"trainable: client (adapter LoRA) {p['trainable']['client']:,}, "
                     f"server (emulator LoRA) {p['trainable']['server']:,}")
        moving = [
            "per client per round (LoRA as float32)",
            f"  download {one['download_params']:>14,} params  {size(one['download_bytes'])}",
            f"  upload   {one['upload_params']:>14,} params  {size(one['upload_bytes'])}",
            f"per round ({clients})",
            f"  download {rnd['download_params']:>14,} params  {size(rnd['download_bytes'])}",
            f"  upload   {rnd['upload_params']:>14,} params  {size(rnd['upload_bytes'])}",
        ]
    else:
        server = p["trainable"]["server"]
        trainable = (f"trainable: client (its own LoRA, kept across rounds) {p['trainable']['client']:,}, server "
                     + (f"(its LoRA, distilled) {server:,}" if server else "none (averages the clients' top-k logits)"))
        moving = [
            f"KD ({kd['client_model']} client model): no LoRA travels; each way {_kd_moves(kd)}",
            "per client per round",
            f"  download {size(one['download_bytes'])}",
            f"  upload   {size(one['upload_bytes'])}",
            f"  (dense float16 logits of the same tokens: {size(kd['dense_fp16_bytes'])})",
            f"per round ({clients})",
            f"  download {size(rnd['download_bytes'])}",
            f"  upload   {size(rnd['upload_bytes'])}",
        ]
    return "\n".join([
        f"{p['algorithm']} plan for {m['name']} ({m['class']}, {m['num_layers']} decoder layers, {m['dtype']})",
        (f"split: adapter layers {s['adapter_layers']} top + {s['bottom_adapter_layers']} bottom, drop rate "
         f"{s['drop_rate']}, LoRA r={s['lora_r']} alpha={s['lora_alpha']} on {', '.join(s['lora_targets'])}"),
        f"  emulator layers ({len(kept)} of {span} kept): {', '.join(map(str, kept)) or 'none'}",
        f"  adapter layers: {', '.join(map(str, lay['adapter']))}",
        "parameters",
        f"  full model                {par['full']:>16,}",
        f"  compressed model (base)   {par['compressed']:>16,}",
        f"  emulator LoRA             {par['emulator_lora']:>16,}",
        f"  adapter LoRA              {par['adapter_lora']:>16,}",
        trainable,
        *moving,
        (f"one-time download of the compressed base weights ({m['dtype']}): "
         f"{size(p['one_time']['compressed_base_bytes'])}"),
        (f"client peak training memory, estimated for {mem['micro_batch_tokens']:,} tokens a micro-batch: "
         f"{size(mem['total'])} (weights {size(mem['weights'])}, activations {size(mem['activations'])}, "
         f"logits {size(mem['logits'])})"),
    ])


def compare(model: str, algorithms: Iterable[str | Algorithm] = tuple(ALGORITHMS),
            **kwargs: Any) -> list[dict[str, Any]]:
    """:func:`plan` of every algorithm in ``algorithms`` with the same model and settings.

    ``top_k``, ``public_examples`` and ``seq_len`` in ``kwargs`` set the KD rows; the others ignore them.
    """
    return [plan(model, algorithm=name, **kwargs) for name in algorithms]


def render_comparison(plans: list[dict[str, Any]]) -> str:
    """A markdown table of :func:`compare`'s plans, with the traffic reductions spelled out.

    Bytes are per client and round (LoRA as float32, KD as top-k payloads). "vs full model" compares
    one client's download in a round with sending the full model's weights once as float32 (what full
    fine-tuning exchanges each way per client and round; for LoRA the ratio of parameter counts); "vs
    own model" compares it with the model that client holds and adapts. A KD row's bytes are an upper
    bound (see the footer); they do not grow with the model, so on a tiny model they can exceed it
    (a negative reduction).
    """
    full = plans[0]["params"]["full"]
    clients = plans[0]["per_round"]["clients"]
    head = ("| algorithm | client model params | client trainable | down / client / round | up / client / round "
            f"| round total ({clients} client{'s' if clients != 1 else ''}) | down vs full model | down vs own model "
            "| est. client peak memory |")
    rows = [head, "|" + "---|" * 9]
    for p in plans:
        one, rnd, client_params = p["per_client_per_round"], p["per_round"], p["params"]["compressed"]
        down = one["download_bytes"]
        rows.append(
            f"| {p['algorithm']} | {client_params:,} | {p['trainable']['client']:,} | {size(down)} "
            f"| {size(one['upload_bytes'])} | {size(rnd['download_bytes'] + rnd['upload_bytes'])} "
            f"| {1 - down / (full * LORA_BYTES):.4%} | {1 - down / (client_params * LORA_BYTES):.4%} "
            f"| {p['client_peak_memory']['total'] / 2**30:.2f} GiB |"
        )
    m = plans[0]["model"]
    rows.append(
        f"\n{m['name']}: {full:,} parameters ({m['dtype']}); LoRA travels as float32; peak memory for "
        f"{plans[0]['client_peak_memory']['micro_batch_tokens']:,} tokens a micro-batch (fedbiot_pl.scaling.memory)."
    )
    kd_plans = [p for p in plans if "kd" in p]
    if kd_plans:
        kd = kd_plans[0]["kd"]
        names = ", ".join(p["algorithm"] for p in kd_plans)
        rows.append(
            f"KD ({names}): no LoRA travels; per client and direction {_kd_moves(kd)} (every example counted at T "
            f"tokens; one of L tokens sends L - 1): {kd['public_examples']:,}·{kd['seq_len']:,}·{kd['top_k']:,}·"
            f"(2 + {kd['index_bytes']}) + 12·{kd['public_examples']:,} + 4 = "
            f"{kd_plans[0]['per_client_per_round']['upload_bytes']:,} B; dense float16 logits would be "
            f"{size(kd['dense_fp16_bytes'])}."
            + (" A negative reduction: more bytes than the model's weights." if any(
                p["per_client_per_round"]["download_bytes"] > full * LORA_BYTES for p in kd_plans) else "")
        )
    return "\n".join(rows)


# ---------------------------------------------------------------- command line
def yaml_settings(path: str) -> dict[str, Any]:
    """Model, split, LoRA, dtype, algorithm, clients per round and ``seq_len`` of a ``train.py`` YAML.

    ``seq_len`` is ``data.max_length`` (the KD traffic's tokens per public example), when the data has one.

    Read by the CLI's own parser (:func:`fedbiot_pl.cli.read_config`: its defaults, links and type
    checks).
    """
    from fedbiot_pl.cli import config_algorithm, read_config

    config = read_config([path])
    split = config.model.split.init_args
    found = {k: split[k] for k in ("model", "dtype", *SPLIT_KEYS) if split.get(k) is not None}
    found["algorithm"] = config_algorithm(config)
    found["clients"] = clients_per_round(config.data.num_clients, config.federated.clients_per_round)
    if config.data.get("max_length") is not None:
        found["seq_len"] = config.data.max_length
    return found


KD_FLAGS = {"top_k": "--top-k", "public_examples": "--public-examples", "seq_len": "--seq-len"}


def _parser() -> argparse.ArgumentParser:
    kd = ", ".join(kd_names()) or "none registered"
    parser = argparse.ArgumentParser(
        prog="fedbiot-plan",
        description=("What a FedBiOT split, a baseline or a KD algorithm costs, from the model's config alone "
                     f"(no weights). KD algorithms ({kd}) move top-k logits instead of LoRA: per client and "
                     f"direction {KD_FORMULA} bytes (every public example counted at T tokens, an upper bound)."),
    )
    parser.add_argument("--config", help="train.py YAML: model.split.*, data.num_clients, data.max_length, "
                                         "federated.clients_per_round, federated.algorithm")
    parser.add_argument("--model", help="hub id, model folder, config.json or embedded:models/stories260K")
    parser.add_argument("--adapter-layers", type=int, help=f"top adapter layers (default {DEFAULTS['adapter_layers']})")
    parser.add_argument("--drop-rate", type=float, help=f"beta (default {DEFAULTS['drop_rate']})")
    parser.add_argument("--bottom-adapter-layers", type=int, help="adapter layers at the input (default 0)")
    parser.add_argument("--lora-r", type=int, help=f"LoRA rank (default {DEFAULTS['lora_r']})")
    parser.add_argument("--lora-alpha", type=int, help=f"LoRA alpha (default {DEFAULTS['lora_alpha']})")
    parser.add_argument("--lora-targets", help="comma-separated linear modules (default q_proj,v_proj)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="dtype of the base weights (default the config's)")
    parser.add_argument("--clients", type=int, help="clients per round (default 1)")
    parser.add_argument("--algorithm", choices=sorted(ALGORITHMS), help=f"algorithm (default fedbiot; KD: {kd})")
    parser.add_argument("--compare", action="store_true",
                        help="a table of every registered algorithm with these settings (KD rows with --top-k, "
                             "--public-examples, --seq-len)")
    parser.add_argument("--micro-batch-tokens", type=int,
                        help="tokens per client micro-batch for the memory estimate (default 4000 = 5 x 800)")
    parser.add_argument("--top-k", type=int, help="KD only: logits kept per token (default the algorithm's, 128)")
    parser.add_argument("--public-examples", type=int,
                        help="KD only: public examples per round (default the algorithm's, 50)")
    parser.add_argument("--seq-len", type=int,
                        help=f"KD only: tokens counted per public example, an upper bound (default the --config's "
                             f"data.max_length, else {SEQ_LEN})")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of the report")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``fedbiot-plan``; returns 0, or 2 after one error line on bad input.

    ``--top-k``, ``--public-examples`` and ``--seq-len`` set a KD algorithm's traffic (and the KD rows
    of ``--compare``); given for a single non-KD algorithm they are an error naming the flag.
    """
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = yaml_settings(args.config) if args.config else {}
        flags = {k: getattr(args, k) for k in ("model", "dtype", "clients", "algorithm", "micro_batch_tokens",
                                                *KD_FLAGS, *SPLIT_KEYS)}
        if flags["lora_targets"] is not None:
            flags["lora_targets"] = [t.strip() for t in flags["lora_targets"].split(",") if t.strip()]
        settings.update({k: v for k, v in flags.items() if v is not None})
        if "model" not in settings:
            raise ValueError("give --model (hub id, folder, config.json) or a --config YAML with model.split.model.")
        algorithm = resolve_algorithm(settings.pop("algorithm", "fedbiot"))
        if args.compare:
            # The config's own algorithm (its KD settings, client_model) takes its registered name's row,
            # and its top_k and public_examples set every KD row unless the flags do.
            if is_kd(algorithm):
                settings.setdefault("top_k", algorithm.top_k)
                if algorithm.public_examples is not None:
                    settings.setdefault("public_examples", algorithm.public_examples)
            names = [algorithm if name == algorithm.label else name for name in ALGORITHMS]
            result: Any = compare(algorithms=names, **settings)
        else:
            given = [flag for key, flag in KD_FLAGS.items() if flags[key] is not None]
            if given and not is_kd(algorithm):
                raise ValueError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to the KD "
                                 f"algorithms ({', '.join(kd_names())}) only; "
                                 f"algorithm {algorithm.label!r} moves LoRA.")
            result = plan(algorithm=algorithm, **settings)
    except (OSError, ValueError) as error:
        print(f"fedbiot-plan: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render_comparison(result) if args.compare else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
