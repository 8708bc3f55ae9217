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

The split algorithms (``splitfed_lora``, ``splitfed_lora_u``: :mod:`fedbiot_pl.algorithms.split`) move
activations and gradients at the cut on each of a client's ``M`` micro-batches of ``B`` examples x ``T``
tokens (hidden size ``d``, ``b`` bytes an activation value), and the client LoRA once each way per round
(:func:`split_traffic`)::

    vanilla   up   = M·(b·B·T·d + B·T + 4·B·T + 4) + 4·LoRA_c    activations, mask, labels, the loss's gradient scale
              down = M·(4 + b·B·T·d) + 4·LoRA_c                  the loss, gradients
    U-shaped  up   = M·(b·B·T·d + B·T + b·B·T·d) + 4·LoRA_c      activations, mask, gradients
              down = M·(b·B·T·d + b·B·T·d) + 4·LoRA_c            activations, gradients

Every plan also gives a client's model FLOPs per token of a training step (``client_compute``,
:mod:`fedbiot_pl.scaling.flops`) and, for split learning, the server's on each client's tokens::

    fedbiot-plan --model configs/models/llama2-7b --algorithm splitfed_lora_u --cut-layer 2 --client-top-layers 1 \
        --activation-dtype bfloat16 --batch-size 5 --seq-len 512 --micro-batches 60
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from typing import Any

from fedbiot_pl.algorithms import ALGORITHMS, Algorithm, resolve_algorithm
from fedbiot_pl.federation.sampling import clients_per_round
from fedbiot_pl.model.views import DTYPES
from fedbiot_pl.planning.families import is_kd, is_split, kd_names, split_names, with_split_settings
from fedbiot_pl.planning.figures import (
    BATCH_SIZE,
    DEFAULTS,
    LAYER_INDEX,
    MICRO_BATCHES,
    SEQ_LEN,
    SPLIT_KEYS,
    compare,
    count,
    dtype_name,
    held_params,
    plan,
)
from fedbiot_pl.planning.report import flops, render, render_comparison, size
from fedbiot_pl.planning.traffic import (
    KD_FLAGS,
    KD_FORMULA,
    LORA_BYTES,
    SPLIT_FLAGS,
    SPLIT_FORMULA,
    SPLIT_TERMS,
    kd_round,
    kd_traffic,
    split_numbers,
    split_round,
    split_traffic,
    traffic,
)

# The names this module gave before the planning package; the command's own are yaml_settings and main.
__all__ = [
    "BATCH_SIZE", "DEFAULTS", "KD_FLAGS", "KD_FORMULA", "LAYER_INDEX", "LORA_BYTES", "MICRO_BATCHES", "SEQ_LEN",
    "SPLIT_FLAGS", "SPLIT_FORMULA", "SPLIT_KEYS", "SPLIT_TERMS", "compare", "count", "dtype_name", "flops",
    "held_params", "is_kd", "is_split", "kd_names", "kd_round", "kd_traffic", "main", "plan", "render",
    "render_comparison", "size", "split_names", "split_numbers", "split_round", "split_traffic", "traffic",
    "with_split_settings", "yaml_settings",
]


# ---------------------------------------------------------------- command line
def yaml_settings(path: str) -> dict[str, Any]:
    """Model, split, LoRA, dtype, algorithm, clients per round, ``seq_len`` and the split micro-batches of a YAML.

    ``seq_len`` is ``data.max_length`` (the KD traffic's tokens per public example, a split micro-batch's
    rows), when the data has one; ``batch_size`` is ``data.batch_size`` and ``micro_batches`` is
    ``federated.local_steps x federated.client_accumulate_grad_batches`` (a split client's micro-batches
    a round), when set.

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
    if config.data.get("batch_size") is not None:
        found["batch_size"] = config.data.batch_size
    steps, accumulate = config.federated.get("local_steps"), config.federated.get("client_accumulate_grad_batches")
    if steps is not None and accumulate is not None:
        found["micro_batches"] = steps * accumulate
    return found


def _misplaced(algorithm: Algorithm, given: list[str]) -> str | None:
    """The error for the KD and split flags in ``given`` (keys) that ``algorithm`` does not take, else ``None``."""
    takes_top = "client_top_layers" in inspect.signature(type(algorithm)).parameters
    wrong = [k for k in given if not ((k in KD_FLAGS and is_kd(algorithm)) or (
        k in SPLIT_FLAGS and is_split(algorithm) and (k != "client_top_layers" or takes_top)))]
    if not wrong:
        return None
    kd, split = ", ".join(kd_names()), ", ".join(split_names())
    parts = []
    for keys, flags, family in (([k for k in wrong if k in KD_FLAGS], KD_FLAGS, f"the KD algorithms ({kd})"),
                                ([k for k in wrong if k not in KD_FLAGS and k != "client_top_layers"], SPLIT_FLAGS,
                                 f"the split algorithms ({split})")):
        if keys:
            text = f"{', '.join(flags[k] for k in keys)} {'applies' if len(keys) == 1 else 'apply'} to {family}"
            parts.append(text + (f", --seq-len to the split algorithms ({split}) too" if "seq_len" in keys else ""))
    if "client_top_layers" in wrong:
        u_shaped = ", ".join(n for n in split_names() if getattr(ALGORITHMS[n], "u_shaped", False))
        parts.append(f"--client-top-layers applies to the U-shaped split algorithms ({u_shaped})")
    moves = ("moves top-k logits" if is_kd(algorithm) else "is vanilla split learning (no client top layers)"
             if is_split(algorithm) else "moves LoRA")
    return f"{'; '.join(parts)}; algorithm {algorithm.label!r} {moves}."


def _parser() -> argparse.ArgumentParser:
    kd, split = ", ".join(kd_names()) or "none registered", ", ".join(split_names()) or "none registered"
    parser = argparse.ArgumentParser(
        prog="fedbiot-plan",
        description=("What a FedBiOT split, a baseline, a KD or a split-learning algorithm costs, from the model's "
                     f"config alone (no weights). KD algorithms ({kd}) move top-k logits instead of LoRA: per "
                     f"client and direction {KD_FORMULA} bytes (every public example counted at T tokens, an upper "
                     f"bound). Split algorithms ({split}) move activations and gradients at the cut on M "
                     f"micro-batches of B x T tokens and the client LoRA: vanilla {SPLIT_FORMULA['vanilla']}; "
                     f"U-shaped {SPLIT_FORMULA['u_shaped']} (b activation bytes, d hidden size)."),
    )
    parser.add_argument("--config", help="train.py YAML: model.split.*, data.num_clients, data.max_length, "
                                         "data.batch_size, federated.clients_per_round, federated.local_steps, "
                                         "federated.client_accumulate_grad_batches, federated.algorithm")
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
                             "--public-examples, --seq-len; split rows with the split flags)")
    parser.add_argument("--micro-batch-tokens", type=int,
                        help="tokens per client micro-batch for the memory estimate (default 4000 = 5 x 800)")
    parser.add_argument("--top-k", type=int, help="KD only: logits kept per token (default the algorithm's, 128)")
    parser.add_argument("--public-examples", type=int,
                        help="KD only: public examples per round (default the algorithm's, 50)")
    parser.add_argument("--seq-len", type=int,
                        help=f"KD and split only: tokens counted per public example (KD, an upper bound) or per "
                             f"micro-batch row (split); also the attention length of the FLOPs (default the "
                             f"--config's data.max_length, else {SEQ_LEN})")
    parser.add_argument("--cut-layer", type=int, help="split only: decoder layers on the client below the cut "
                                                      "(default the algorithm's, 2)")
    parser.add_argument("--client-top-layers", type=int,
                        help="U-shaped split only: decoder layers on the client above the server's "
                             "(default the algorithm's, 1)")
    parser.add_argument("--activation-dtype", choices=sorted(DTYPES),
                        help="split only: dtype of the activations and gradients on the wire (default the "
                             "algorithm's, else the model's)")
    parser.add_argument("--batch-size", type=int,
                        help=f"split only: examples per micro-batch (default the --config's data.batch_size, "
                             f"else {BATCH_SIZE})")
    parser.add_argument("--micro-batches", type=int,
                        help="split only: micro-batches per client and round (default the --config's "
                             "federated.local_steps x client_accumulate_grad_batches, else "
                             f"{MICRO_BATCHES} = 30 x 2)")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of the report")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``fedbiot-plan``; returns 0, or 2 after one error line on bad input.

    ``--top-k``, ``--public-examples`` and ``--seq-len`` set a KD algorithm's traffic (and the KD rows
    of ``--compare``); ``--cut-layer``, ``--client-top-layers``, ``--activation-dtype``, ``--batch-size``,
    ``--micro-batches`` and ``--seq-len`` a split algorithm's (and the split rows). Given for a single
    algorithm that does not take them they are an error naming the flag.
    """
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = yaml_settings(args.config) if args.config else {}
        flags = {k: getattr(args, k) for k in ("model", "dtype", "clients", "algorithm", "micro_batch_tokens",
                                                *KD_FLAGS, *SPLIT_FLAGS, *SPLIT_KEYS)}
        if flags["lora_targets"] is not None:
            flags["lora_targets"] = [t.strip() for t in flags["lora_targets"].split(",") if t.strip()]
        settings.update({k: v for k, v in flags.items() if v is not None})
        if "model" not in settings:
            raise ValueError("give --model (hub id, folder, config.json) or a --config YAML with model.split.model.")
        algorithm = resolve_algorithm(settings.pop("algorithm", "fedbiot"))
        if args.compare:
            # The config's own algorithm (its KD settings, client_model) takes its registered name's row,
            # and its top_k and public_examples set every KD row unless the flags do.
            # Likewise a split config's cut and activation dtype set every split row.
            if is_kd(algorithm):
                settings.setdefault("top_k", algorithm.top_k)
                if algorithm.public_examples is not None:
                    settings.setdefault("public_examples", algorithm.public_examples)
            if is_split(algorithm):
                settings.setdefault("cut_layer", algorithm.cut_layer)
                if algorithm.client_top_layers:
                    settings.setdefault("client_top_layers", algorithm.client_top_layers)
                if algorithm.activation_dtype is not None:
                    settings.setdefault("activation_dtype", algorithm.activation_dtype)
            names = [algorithm if name == algorithm.label else name for name in ALGORITHMS]
            result: Any = compare(algorithms=names, **settings)
        else:
            misplaced = _misplaced(algorithm, [k for k in {**KD_FLAGS, **SPLIT_FLAGS} if flags[k] is not None])
            if misplaced:
                raise ValueError(misplaced)
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
