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

HierFedLoRA (``hierfedlora``: :mod:`fedbiot_pl.algorithms.hierfedlora`) trains the LoRA of each group's top
``d_g`` layers for ``K_g`` intra-group rounds; the plan tabulates every depth's LoRA, message, FLOPs per token
and client peak memory, and a round's traffic at both levels (:func:`hier_traffic`, ``beta`` one layer's LoRA,
``c = max_g d_g`` the layers changed in the previous round)::

    device <-> edge, per device of group g   down = beta max(c, d_g) + (K_g - 1) beta d_g     up = K_g beta d_g
    edge <-> cloud                             up = sum_g beta d_g         down = sum_g beta max(c, d_g)

for explicit groups (consecutive device ids; ``--fleet`` adds their simulated times) or, from a run's
``--config``, the groups and the depth and intra rounds the run itself chooses (its data's category counts,
its ``federated.devices`` fleet)::

    fedbiot-plan --model configs/models/llama2-7b --algorithm hierfedlora --group-sizes 20,20,20,20 \
        --depths 16,8,8,4 --intra-rounds 1,2,2,3
    fedbiot-plan --config configs/dolly.yaml --config configs/algorithms/hierfedlora.yaml

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
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from fedbiot_pl.algorithms import ALGORITHMS, Algorithm, resolve_algorithm
from fedbiot_pl.federation.sampling import clients_per_round
from fedbiot_pl.model.views import DTYPES
from fedbiot_pl.planning.families import (
    hier_names,
    is_hier,
    is_kd,
    is_split,
    kd_names,
    split_names,
    with_split_settings,
)
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
from fedbiot_pl.planning.hierarchy import (
    HIER_FLAGS,
    HIER_FORMULA,
    LOCAL_STEPS,
    HierRequest,
    flat_traffic,
    hier_traffic,
    parse_counts,
    resolve_groups,
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
    "BATCH_SIZE", "DEFAULTS", "HIER_FLAGS", "HIER_FORMULA", "KD_FLAGS", "KD_FORMULA", "LAYER_INDEX", "LORA_BYTES",
    "MICRO_BATCHES", "SEQ_LEN", "SPLIT_FLAGS", "SPLIT_FORMULA", "SPLIT_KEYS", "SPLIT_TERMS", "compare", "count",
    "dtype_name", "flat_traffic", "flops", "held_params", "hier_names", "hier_traffic", "is_hier", "is_kd",
    "is_split", "kd_names", "kd_round", "kd_traffic", "main", "plan", "render", "render_comparison", "size",
    "split_names", "split_numbers", "split_round", "split_traffic", "traffic", "with_split_settings",
    "yaml_settings",
]


# ---------------------------------------------------------------- command line
def yaml_settings(path: str | Sequence[str]) -> dict[str, Any]:
    """Model, split, LoRA, dtype, algorithm, clients per round, ``seq_len`` and the split micro-batches of a YAML.

    ``path`` may list several YAMLs, later ones overriding earlier ones (``train.py``'s ``--config`` twice).

    ``seq_len`` is ``data.max_length`` (the KD traffic's tokens per public example, a split micro-batch's
    rows), when the data has one; ``batch_size`` is ``data.batch_size`` and ``micro_batches`` is
    ``federated.local_steps x federated.client_accumulate_grad_batches`` (a split client's micro-batches
    a round), when set.

    Read by the CLI's own parser (:func:`fedbiot_pl.cli.read_config`: its defaults, links and type
    checks).
    """
    from fedbiot_pl.cli import read_config

    return _config_settings(read_config([path] if isinstance(path, str) else list(path)))


def _config_settings(config: Any) -> dict[str, Any]:
    """:func:`yaml_settings` of parsed ``fit`` settings."""
    from fedbiot_pl.cli import config_algorithm

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
    wrong = [k for k in given if not ((k in KD_FLAGS and is_kd(algorithm)) or (k in HIER_FLAGS and is_hier(algorithm))
                                      or (k in SPLIT_FLAGS and is_split(algorithm)
                                          and (k != "client_top_layers" or takes_top)))]
    if not wrong:
        return None
    kd, split, hier = ", ".join(kd_names()), ", ".join(split_names()), ", ".join(hier_names())
    parts = []
    for keys, flags, family in (([k for k in wrong if k in KD_FLAGS], KD_FLAGS, f"the KD algorithms ({kd})"),
                                ([k for k in wrong if k in SPLIT_FLAGS and k not in KD_FLAGS
                                  and k != "client_top_layers"], SPLIT_FLAGS, f"the split algorithms ({split})"),
                                ([k for k in wrong if k in HIER_FLAGS], HIER_FLAGS,
                                 f"the hierarchical algorithms ({hier})")):
        if keys:
            text = f"{', '.join(flags[k] for k in keys)} {'applies' if len(keys) == 1 else 'apply'} to {family}"
            parts.append(text + (f", --seq-len to the split algorithms ({split}) too" if "seq_len" in keys else ""))
    if "client_top_layers" in wrong:
        u_shaped = ", ".join(n for n in split_names() if getattr(ALGORITHMS[n], "u_shaped", False))
        parts.append(f"--client-top-layers applies to the U-shaped split algorithms ({u_shaped})")
    moves = ("moves top-k logits" if is_kd(algorithm) else "is vanilla split learning (no client top layers)"
             if is_split(algorithm) else "moves LoRA in device groups" if is_hier(algorithm) else "moves LoRA")
    return f"{'; '.join(parts)}; algorithm {algorithm.label!r} {moves}."


def _fleet(source: Any, algorithm: Algorithm, data: Any, where: str) -> Any:
    """The fleet of ``source`` (``federated.devices`` or ``--fleet``) with one device per client of ``data``.

    ``data`` is the run's data settings, or (explicit groups) a count of devices.
    """
    from fedbiot_pl.hierarchy.simulation import fleet_data_issues, fleet_setting

    fleet, issues = fleet_setting(source, algorithm)
    if isinstance(data, int):
        if fleet is not None and fleet.num_devices not in (None, data):
            issues.append(f"the fleet has num_devices={fleet.num_devices} but the groups hold {data} devices; set "
                          "its num_devices to null (one device per group member) or make the groups sum to it.")
        data = SimpleNamespace(num_clients=data)
    else:
        issues += fleet_data_issues(fleet, data)
    if issues:
        raise ValueError(f"{where} {source!r}: {' '.join(issues)}")
    return None if fleet is None else fleet.with_devices(data.num_clients)


def _hier_request(args: argparse.Namespace, config: Any, algorithm: Algorithm, settings: dict[str, Any]) -> Algorithm:
    """Put HierFedLoRA's :class:`HierRequest` in ``settings["hier"]``; returns the algorithm with the flags applied.

    With a ``--config`` the run's clients are grouped by its data (the partition's key counts, before
    truncation drops) and its fleet, with the algorithm's settings (``--group-sizes``, ``--groups``,
    ``--depths`` and ``--intra-rounds`` override them); without one the flags' groups are consecutive
    device ids, timed on ``--fleet`` if given. The memory estimate defaults to the config's micro-batch
    (``data.batch_size x data.max_length``), as the run's fleet counts it.
    """
    sizes = parse_counts(args.group_sizes, "--group-sizes")
    depths = parse_counts(args.depths, "--depths")
    rounds = parse_counts(args.intra_rounds, "--intra-rounds")
    for flag, value in (("--groups", args.groups), ("--local-steps", args.local_steps)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}.")
    if args.micro_batch_tokens is None and "batch_size" in settings and "seq_len" in settings:
        settings["micro_batch_tokens"] = settings["batch_size"] * settings["seq_len"]
    if config is None:
        local_steps = args.local_steps or LOCAL_STEPS
        if sizes is None and args.groups is None and depths is None and rounds is None:
            if args.fleet is not None:
                raise ValueError(f"--fleet {args.fleet!r} times groups: give them with --group-sizes (or --groups "
                                 "and --clients), --depths and --intra-rounds, or a run's --config.")
            settings["hier"] = HierRequest(local_steps=local_steps)
            return algorithm
        sizes, depths, rounds = resolve_groups(sizes, args.groups, depths, rounds, settings.get("clients", 1),
                                               args.clients is not None)
        settings["clients"] = sum(sizes)
        fleet = (None if args.fleet is None else
                 _fleet(args.fleet, algorithm, sum(sizes), "--fleet"))
        settings["hier"] = HierRequest(sizes=sizes, depths=depths, intra_rounds=rounds, fleet=fleet,
                                       fleet_source=args.fleet, local_steps=local_steps)
        return algorithm
    # A run's config: the algorithm's own settings, the flags overriding them.
    overrides: dict[str, Any] = {}
    if sizes is not None:
        overrides.update(group_sizes=sizes, num_groups=len(sizes))
        if args.groups is not None and args.groups != len(sizes):
            raise ValueError(f"--groups {args.groups} disagrees with --group-sizes {args.group_sizes} "
                             f"({len(sizes)} groups); give one of them.")
    elif args.groups is not None:
        overrides.update(num_groups=args.groups, group_sizes=None)
    num_groups = overrides.get("num_groups", algorithm.num_groups)
    for flag, key, values in (("--depths", "depth", depths), ("--intra-rounds", "intra_rounds", rounds)):
        if values is not None:
            if len(values) not in (1, num_groups):
                raise ValueError(f"{flag} {','.join(map(str, values))} lists {len(values)} values for {num_groups} "
                                 "groups; give one per group or one for every group.")
            overrides[key] = values[0] if len(values) == 1 else values
    if overrides:
        accepted = inspect.signature(type(algorithm)).parameters
        current = {k: getattr(algorithm, k) for k in accepted if hasattr(algorithm, k)}
        algorithm = type(algorithm)(**{**current, **overrides})
    data = config.data
    source = args.fleet if args.fleet is not None else config.federated.get("devices")
    fleet = _fleet(source, algorithm, data, "--fleet" if args.fleet is not None else "federated.devices")
    table = _partition_counts(config)
    given = tuple(f"{HIER_FLAGS[k]} {getattr(args, k)}" for k in ("group_sizes", "groups", "depths", "intra_rounds")
                  if getattr(args, k) is not None)
    settings["hier"] = HierRequest(
        depths=depths, overridden=given, table=table, num_clients=data.num_clients,
        seed=int(config.federated.get("seed", 0)), fleet=fleet, fleet_source=None if fleet is None else str(source),
        local_steps=args.local_steps or config.federated.get("local_steps") or LOCAL_STEPS,
        accumulate=config.federated.get("client_accumulate_grad_batches") or 1,
        clients_per_round=settings.get("clients"), config_mode=True)
    return algorithm


def _partition_counts(config: Any) -> Any:
    """The run's per-client key counts (:meth:`FederatedInstructionDataModule.partition_counts`), not tokenised."""
    from fedbiot_pl.datamodules import FederatedInstructionDataModule

    return FederatedInstructionDataModule(**config.data.as_dict()).partition_counts()


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
    parser.add_argument("--config", action="append",
                        help="train.py YAML: model.split.*, data.num_clients, data.max_length, data.batch_size, "
                             "federated.clients_per_round, federated.local_steps, "
                             "federated.client_accumulate_grad_batches, federated.algorithm; give it again to "
                             "layer YAMLs as train.py does (e.g. a run and configs/algorithms/hierfedlora.yaml: "
                             "then the plan groups the run's clients by its data and fleet as the run does)")
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
                        help="tokens per client micro-batch for the memory estimate (default 4000 = 5 x 800; "
                             "hierfedlora: the --config's data.batch_size x data.max_length, else 4000)")
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
    parser.add_argument("--group-sizes", help="hierfedlora only: devices per group, a comma list (e.g. 20,20,20,20); "
                                              "explicit groups are consecutive device ids")
    parser.add_argument("--groups", type=int, help="hierfedlora only: this many balanced groups over --clients")
    parser.add_argument("--depths", help="hierfedlora only: LoRA layers each group trains from the output, a comma "
                                         "list (one value: every group; default every layer)")
    parser.add_argument("--intra-rounds", help="hierfedlora only: intra-group rounds per global round, a comma list "
                                               "(one value: every group; default 1)")
    parser.add_argument("--fleet", help="hierfedlora only: simulated device profiles to time the groups: default "
                                        "(the shipped tiers) or a fleet YAML; with --config it replaces "
                                        "federated.devices")
    parser.add_argument("--local-steps", type=int,
                        help=f"hierfedlora only: tau, local steps per intra-group round, for the times (default the "
                             f"--config's federated.local_steps, else {LOCAL_STEPS})")
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
        config = None
        if args.config:
            from fedbiot_pl.cli import read_config

            config = read_config(args.config)
        settings = _config_settings(config) if config is not None else {}
        flags = {k: getattr(args, k) for k in ("model", "dtype", "clients", "algorithm", "micro_batch_tokens",
                                                *KD_FLAGS, *SPLIT_FLAGS, *SPLIT_KEYS)}
        if flags["lora_targets"] is not None:
            flags["lora_targets"] = [t.strip() for t in flags["lora_targets"].split(",") if t.strip()]
        settings.update({k: v for k, v in flags.items() if v is not None})
        if "model" not in settings:
            raise ValueError("give --model (hub id, folder, config.json) or a --config YAML with model.split.model.")
        algorithm = resolve_algorithm(settings.pop("algorithm", "fedbiot"))
        hier_given = [k for k in HIER_FLAGS if getattr(args, k) is not None]
        if args.compare:
            if hier_given:
                raise ValueError(f"{', '.join(HIER_FLAGS[k] for k in hier_given)} set HierFedLoRA's groups in a "
                                 "single plan (--algorithm hierfedlora); --compare's hierfedlora row is one group at "
                                 "full depth (d = L, K = 1): drop them or --compare.")
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
            misplaced = _misplaced(algorithm, [k for k in {**KD_FLAGS, **SPLIT_FLAGS} if flags[k] is not None]
                                   + hier_given)
            if misplaced:
                raise ValueError(misplaced)
            if is_hier(algorithm):
                algorithm = _hier_request(args, config, algorithm, settings)
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
