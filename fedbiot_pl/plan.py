"""``fedbiot-plan``: what FedBiOT (or a baseline) costs, from the model's ``config.json`` alone.

The full model is instantiated on the meta device (no weights, no memory), split and LoRA-injected
by :class:`~fedbiot_pl.model.views.ModelViews` exactly as in training, and every figure is a ``numel()``
of that model: layers kept, parameter counts, trainable LoRA on clients and server, and the bytes
one round moves (LoRA as float32) plus the one-time download of the compressed base weights, and an
estimate of a client's peak training memory (:mod:`fedbiot_pl.scaling.memory`). ``--compare`` puts
every algorithm side by side::

    fedbiot-plan --model configs/models/llama2-7b --adapter-layers 2 --drop-rate 0.2 --lora-r 8
    fedbiot-plan --config fedbiot_pl/assets/configs/default.yaml --json
    fedbiot-plan --model configs/models/llama2-7b --compare --clients 3
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
from fedbiot_pl.federation.sampling import clients_per_round
from fedbiot_pl.model.location import load_model_config
from fedbiot_pl.model.views import DTYPES, ModelViews
from fedbiot_pl.scaling.memory import client_peak_memory

LORA_BYTES = 4  # LoRA weights travel as float32
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
         micro_batch_tokens: int = 4000, **split_kwargs: Any) -> dict[str, Any]:
    """Split ``model`` on the meta device and return every planning figure as a JSON-able dict.

    Args:
        model: hub id, model folder, ``config.json`` path or ``embedded:models/stories260K``.
        clients: clients taking part in each round.
        dtype: dtype of the base weights sent once; default the config's.
        algorithm: ``fedbiot``, a baseline, or any :class:`~fedbiot_pl.algorithms.Algorithm` (name, class
            path or object).
        micro_batch_tokens: tokens in one client micro-batch, for the memory estimate (the paper:
            5 examples of up to 800 tokens).
        **split_kwargs: :class:`ModelViews` split/LoRA arguments (see :data:`SPLIT_KEYS`).

    Raises:
        ValueError: an impossible split, LoRA setting or client count, naming the value.
        OSError: the config cannot be found or read.
    """
    from transformers import AutoModelForCausalLM

    if clients < 1:
        raise ValueError(f"clients must be >= 1, got {clients}.")
    if micro_batch_tokens < 1:
        raise ValueError(f"micro_batch_tokens must be >= 1, got {micro_batch_tokens}.")
    algorithm = resolve_algorithm(algorithm)
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
    # Backward crosses every layer from the lowest one with trained LoRA up to the top.
    lowest_trained = min(layout.adapter_positions)
    memory = client_peak_memory(
        model_params=base, trained_lora=adapter_lora, layers_with_activations=len(layout.compressed) - lowest_trained,
        hidden_size=config.hidden_size, intermediate_size=config.intermediate_size, vocab_size=config.vocab_size,
        tokens=micro_batch_tokens, dtype_bytes=DTYPES[dtype].itemsize,
    )
    return {
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
        "trainable": {"client": adapter_lora, "server": moving_emulator},
        **traffic(moving_emulator, adapter_lora, clients),
        "one_time": {"compressed_base_bytes": base * DTYPES[dtype].itemsize,
                     "emulator_lora_bytes": (emulator_lora - moving_emulator) * LORA_BYTES},
        "client_peak_memory": {"micro_batch_tokens": micro_batch_tokens, **memory},
    }


def render(p: dict[str, Any]) -> str:
    """The human-readable report of a :func:`plan` dict."""
    m, s, lay, par = p["model"], p["split"], p["layers"], p["params"]
    one, rnd = p["per_client_per_round"], p["per_round"]
    kept, span = lay["emulator"], m["num_layers"] - len(lay["adapter"])
    clients = f"{rnd['clients']} client{'s' if rnd['clients'] != 1 else ''}"
    mem = p["client_peak_memory"]
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
        (f"trainable: client (adapter LoRA) {p['trainable']['client']:,}, "
         f"server (emulator LoRA) {p['trainable']['server']:,}"),
        "per client per round (LoRA as float32)",
        f"  download {one['download_params']:>14,} params  {size(one['download_bytes'])}",
        f"  upload   {one['upload_params']:>14,} params  {size(one['upload_bytes'])}",
        f"per round ({clients})",
        f"  download {rnd['download_params']:>14,} params  {size(rnd['download_bytes'])}",
        f"  upload   {rnd['upload_params']:>14,} params  {size(rnd['upload_bytes'])}",
        (f"one-time download of the compressed base weights ({m['dtype']}): "
         f"{size(p['one_time']['compressed_base_bytes'])}"),
        (f"client peak training memory, estimated for {mem['micro_batch_tokens']:,} tokens a micro-batch: "
         f"{size(mem['total'])} (weights {size(mem['weights'])}, activations {size(mem['activations'])})"),
    ])


def compare(model: str, algorithms: Iterable[str] = tuple(ALGORITHMS), **kwargs: Any) -> list[dict[str, Any]]:
    """:func:`plan` of every algorithm in ``algorithms`` with the same model and settings."""
    return [plan(model, algorithm=name, **kwargs) for name in algorithms]


def render_comparison(plans: list[dict[str, Any]]) -> str:
    """A markdown table of :func:`compare`'s plans, with the traffic reductions spelled out.

    "vs full model" compares one client's LoRA download (or upload) in a round with sending the full
    model's weights once (what full fine-tuning exchanges each way per client and round); "vs own
    model" compares it with the model that client holds and adapts.
    """
    full = plans[0]["params"]["full"]
    head = ("| algorithm | client model params | client trainable | down / client / round | up / client / round "
            "| down vs full model | down vs own model | est. client peak memory |")
    rows = [head, "|" + "---|" * 8]
    for p in plans:
        one, client_params = p["per_client_per_round"], p["params"]["compressed"]
        rows.append(
            f"| {p['algorithm']} | {client_params:,} | {p['trainable']['client']:,} | {one['download_params']:,} "
            f"| {one['upload_params']:,} | {1 - one['download_params'] / full:.4%} "
            f"| {1 - one['download_params'] / client_params:.4%} | {p['client_peak_memory']['total'] / 2**30:.2f} GiB |"
        )
    m = plans[0]["model"]
    rows.append(
        f"\n{m['name']}: {full:,} parameters ({m['dtype']}); LoRA travels as float32; peak memory for "
        f"{plans[0]['client_peak_memory']['micro_batch_tokens']:,} tokens a micro-batch (fedbiot_pl.scaling.memory)."
    )
    return "\n".join(rows)


# ---------------------------------------------------------------- command line
def yaml_settings(path: str) -> dict[str, Any]:
    """Model, split, LoRA, dtype, algorithm and clients per round of a ``train.py`` YAML.

    Read by the CLI's own parser (:func:`fedbiot_pl.cli.read_config`: its defaults, links and type
    checks).
    """
    from fedbiot_pl.cli import config_algorithm, read_config

    config = read_config([path])
    split = config.model.split.init_args
    found = {k: split[k] for k in ("model", "dtype", *SPLIT_KEYS) if split.get(k) is not None}
    found["algorithm"] = config_algorithm(config)
    found["clients"] = clients_per_round(config.data.num_clients, config.federated.clients_per_round)
    return found


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedbiot-plan", description="What a FedBiOT split costs, from the model's config alone (no weights)."
    )
    parser.add_argument("--config", help="train.py YAML: model.split.*, data.num_clients, federated.clients_per_round")
    parser.add_argument("--model", help="hub id, model folder, config.json or embedded:models/stories260K")
    parser.add_argument("--adapter-layers", type=int, help=f"top adapter layers (default {DEFAULTS['adapter_layers']})")
    parser.add_argument("--drop-rate", type=float, help=f"beta (default {DEFAULTS['drop_rate']})")
    parser.add_argument("--bottom-adapter-layers", type=int, help="adapter layers at the input (default 0)")
    parser.add_argument("--lora-r", type=int, help=f"LoRA rank (default {DEFAULTS['lora_r']})")
    parser.add_argument("--lora-alpha", type=int, help=f"LoRA alpha (default {DEFAULTS['lora_alpha']})")
    parser.add_argument("--lora-targets", help="comma-separated linear modules (default q_proj,v_proj)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="dtype of the base weights (default the config's)")
    parser.add_argument("--clients", type=int, help="clients per round (default 1)")
    parser.add_argument("--algorithm", choices=sorted(ALGORITHMS), help="algorithm (default fedbiot)")
    parser.add_argument("--compare", action="store_true", help="a table of every algorithm with these settings")
    parser.add_argument("--micro-batch-tokens", type=int,
                        help="tokens per client micro-batch for the memory estimate (default 4000 = 5 x 800)")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of the report")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``fedbiot-plan``; returns 0, or 2 after one error line on bad input."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = yaml_settings(args.config) if args.config else {}
        flags = {k: getattr(args, k) for k in ("model", "dtype", "clients", "algorithm", "micro_batch_tokens",
                                                *SPLIT_KEYS)}
        if flags["lora_targets"] is not None:
            flags["lora_targets"] = [t.strip() for t in flags["lora_targets"].split(",") if t.strip()]
        settings.update({k: v for k, v in flags.items() if v is not None})
        if "model" not in settings:
            raise ValueError("give --model (hub id, folder, config.json) or a --config YAML with model.split.model.")
        if args.compare:
            settings.pop("algorithm", None)
            result = compare(**settings)
        else:
            result = plan(**settings)
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
