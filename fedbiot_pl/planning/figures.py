"""Every planning figure of one algorithm, from the model's config on the meta device (no weights).

:func:`plan` builds the full model on the meta device, splits and LoRA-injects it with
:class:`~fedbiot_pl.model.views.ModelViews` exactly as in training, and counts: parameters held and
trained, the bytes a round moves (:mod:`fedbiot_pl.planning.traffic`), a client's peak memory
(:mod:`fedbiot_pl.scaling.memory`) and FLOPs per token (:mod:`fedbiot_pl.scaling.flops`); for HierFedLoRA
also the per-depth costs and the grouped round (:mod:`fedbiot_pl.planning.hierarchy`).
:func:`compare` plans every algorithm with the same settings.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from fedbiot_pl.algorithms import ALGORITHMS, Algorithm, resolve_algorithm
from fedbiot_pl.model.location import load_model_config
from fedbiot_pl.model.views import DTYPES, ModelViews
from fedbiot_pl.planning.families import is_hier, is_kd, is_split, with_split_settings
from fedbiot_pl.planning.hierarchy import (
    HIER_FORMULA,
    HierRequest,
    check_depths,
    consecutive,
    depth_rows,
    flat_traffic,
    fleet_times,
    hier_traffic,
    planned_schedule,
    table_depths,
)
from fedbiot_pl.planning.traffic import (
    KD_FORMULA,
    LORA_BYTES,
    SPLIT_TERMS,
    check_counts,
    kd_round,
    kd_traffic,
    split_round,
    split_traffic,
    traffic,
)
from fedbiot_pl.scaling.flops import (
    DecoderShape,
    PassPlan,
    client_plan,
    decoder_shape,
    forward_backward,
    split_plans,
)
from fedbiot_pl.scaling.memory import client_peak_memory

SEQ_LEN = 512  # tokens per example (KD, split, FLOPs) when no --config gives data.max_length
BATCH_SIZE = 5  # split: examples per micro-batch when no --config gives data.batch_size
MICRO_BATCHES = 60  # split: micro-batches per client and round (30 local steps x 2 accumulation)
LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")  # a decoder layer's index in a parameter's name
SPLIT_KEYS = ("adapter_layers", "drop_rate", "bottom_adapter_layers", "lora_r", "lora_alpha", "lora_targets")
DEFAULTS: dict[str, Any] = {
    k: v.default for k, v in inspect.signature(ModelViews).parameters.items() if k in SPLIT_KEYS
}


def count(named: Iterable[tuple[str, nn.Parameter]], lora: bool) -> int:
    """Elements of the LoRA (``lora=True``) or base parameters in ``named`` (shared tensors once)."""
    return sum(p.numel() for name, p in named if ("lora_" in name) == lora)


def dtype_name(config: Any) -> str:
    """The config's weight dtype (``dtype``/``torch_dtype``) as a :data:`DTYPES` key; float32 if unset."""
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    name = str(value).removeprefix("torch.") if value is not None else "float32"
    return name if name in DTYPES else "float32"


@contextlib.contextmanager
def quiet_model_build() -> Iterator[None]:
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


def held_params(full: nn.Module, layers: Iterable[int], embeddings: bool, head: bool) -> int:
    """Base parameters of one side of a split model (shared tensors once).

    The decoder layers ``layers``, the input embeddings if ``embeddings``, and if ``head`` the LM head and
    every other non-layer parameter (the final norm). A tied LM head is the embeddings' tensor:
    ``named_parameters`` yields it once, so it is counted once, and held by a side with either.
    """
    keep = set(layers)
    inputs = {id(p) for p in full.get_input_embeddings().parameters()}
    output = full.get_output_embeddings()
    outputs = {id(p) for p in output.parameters()} if output is not None else set()
    total = 0
    for name, param in full.named_parameters():
        match = LAYER_INDEX.search(name)
        if match:
            held = int(match.group(1)) in keep
        elif id(param) in inputs:
            held = embeddings or (head and id(param) in outputs)
        else:
            held = head
        total += param.numel() if held and "lora_" not in name else 0
    return total


def _compute(shape: DecoderShape, seq_len: int, passes: PassPlan, views: ModelViews) -> dict[str, Any]:
    """FLOPs per token of ``passes`` (:func:`~fedbiot_pl.scaling.flops.forward_backward`) and what they cover."""
    return {"seq_len": seq_len,
            **forward_backward(shape, seq_len, passes, views.lora_r, sorted(views.lora_targets)),
            "forward_layers": passes.forward_layers, "backward_layers": passes.backward_layers,
            "head": passes.head_forward}


def _split_figures(result: dict[str, Any], algorithm: Algorithm, views: ModelViews, config: Any, clients: int,
                   seq_len: int, batch_size: int, micro_batches: int) -> None:
    """Replace ``result``'s client figures by a split-learning client's and add the ``split`` settings.

    The client holds the embeddings and its layers (U-shaped: also the norm and the head); it trains the
    LoRA of its layers, all of them, so it keeps the activations of every one of them; its memory counts
    one micro-batch of ``batch_size x seq_len`` tokens and logits only where it holds the head.
    """
    num_layers, u_shaped = views.layout.num_full_layers, algorithm.client_top_layers > 0
    mine, theirs = algorithm.client_positions(num_layers), algorithm.server_positions(num_layers)
    client_lora = sum(p.numel() for p in views.lora_of_layers(mine).values())
    server_lora = sum(p.numel() for p in views.lora_of_layers(theirs).values())
    dtype = result["model"]["dtype"]
    act_dtype = algorithm.activation_dtype or dtype
    moved = split_traffic(micro_batches, batch_size, seq_len, config.hidden_size, DTYPES[act_dtype].itemsize,
                          client_lora, u_shaped)
    held = held_params(views.full, mine, embeddings=True, head=u_shaped)
    tokens = batch_size * seq_len
    memory = client_peak_memory(
        model_params=held, trained_lora=client_lora, layers_with_activations=len(mine),
        hidden_size=config.hidden_size, intermediate_size=config.intermediate_size, vocab_size=config.vocab_size,
        tokens=tokens, dtype_bytes=DTYPES[dtype].itemsize, head=u_shaped,
    )
    client, server = split_plans(num_layers, algorithm.cut_layer, algorithm.client_top_layers)
    shape = decoder_shape(config)
    result["params"]["compressed"] = held
    result["trainable"] = {"client": client_lora, "server": server_lora}
    result.update(split_round(moved, client_lora, clients))
    result["one_time"] = {"compressed_base_bytes": held * DTYPES[dtype].itemsize, "emulator_lora_bytes": 0}
    result["client_peak_memory"] = {"micro_batch_tokens": tokens, **memory}
    result["client_compute"] = _compute(shape, seq_len, client, views)
    result["server_compute_per_client"] = _compute(shape, seq_len, server, views)
    result["split"].update({
        "cut_layer": algorithm.cut_layer, "client_top_layers": algorithm.client_top_layers, "u_shaped": u_shaped,
        "server_mode": algorithm.server_mode, "activation_dtype": act_dtype,
        "activation_bytes": DTYPES[act_dtype].itemsize, "batch_size": batch_size, "seq_len": seq_len,
        "micro_batches": micro_batches, "hidden_size": config.hidden_size,
        "tokens_per_client_per_round": micro_batches * tokens, "client_layers": list(mine),
        "server_layers": list(theirs), "client_lora": client_lora, "server_lora": server_lora,
        "server_params": held_params(views.full, theirs, embeddings=False, head=not u_shaped),
        "upload": moved["upload"], "download": moved["download"], "per_micro_batch": moved["per_micro_batch"],
        "formula": moved["formula"], "terms": SPLIT_TERMS,
    })


def _hier_figures(algorithm: Algorithm, views: ModelViews, config: Any, base: int, dtype: str,
                  micro_batch_tokens: int, seq_len: int, request: HierRequest, model: str) -> dict[str, Any]:
    """HierFedLoRA's ``hier`` block: per-depth costs, the groups (explicit or the run's), both levels' traffic.

    The costs are :func:`~fedbiot_pl.hierarchy.costs.depth_costs` of the model as built (its base parameters,
    dtype, LoRA rank and targets), at ``micro_batch_tokens`` a micro-batch and ``x request.accumulate`` a step,
    as the run's simulated fleet has them.
    """
    from fedbiot_pl.algorithms.base import RunSettings
    from fedbiot_pl.hierarchy.costs import depth_costs

    layers = views.num_layers
    costs = depth_costs(decoder_shape(config), layers, seq_len, micro_batch_tokens * request.accumulate,
                        micro_batch_tokens, views.lora_r, sorted(views.lora_targets), base, DTYPES[dtype].itemsize)
    block: dict[str, Any] = {
        "num_layers": layers, "lora_params_per_layer": costs.lora_bytes_per_layer // LORA_BYTES,
        "layer_bytes": costs.lora_bytes_per_layer, "micro_batch_tokens": micro_batch_tokens,
        "tokens_per_step": costs.tokens_per_step, "seq_len": seq_len, "local_steps": request.local_steps,
        "formula": HIER_FORMULA, "source": None, "groups": None,
    }
    schedule: dict[str, Any] = {}
    if request.config_mode:
        if request.depths:
            check_depths(request.depths, layers, request.depths_flag, model)
        issues = algorithm.check(RunSettings(num_clients=request.num_clients, num_layers=layers,
                                             simulated=request.fleet is not None))
        if issues:
            given = f" (settings given by {', '.join(request.overridden)})" if request.overridden else ""
            raise ValueError(" ".join(issues) + given)
        schedule = planned_schedule(algorithm, costs, request)
        members = schedule["members"]
        depths = [c["depth"] for c in schedule["startup"]]
        rounds = [c["intra_rounds"] for c in schedule["startup"]]
        block["source"] = "config"
    elif request.sizes is not None:
        members = consecutive(request.sizes)
        depths = request.depths or [layers] * len(members)
        rounds = request.intra_rounds or [1] * len(members)
        check_depths(depths, layers, request.depths_flag, model)
        block["source"] = "flags"
    in_use = sorted(set(depths)) if block["source"] else []
    block["depth_table"] = depth_rows(costs, table_depths(layers, in_use))
    devices = request.num_clients if request.config_mode else sum(request.sizes or [1])
    block["flat"] = {**flat_traffic(costs.lora_bytes_per_layer, layers, devices),
                     "peak_memory_bytes": costs.memory(layers)}
    if block["source"] is None:
        return block
    sizes = [len(m) for m in members]
    block["traffic"] = hier_traffic(costs.lora_bytes_per_layer, depths, sizes, rounds, num_layers=layers)
    timing = fleet_times(request.fleet, costs, members, depths, rounds, request.local_steps) if request.fleet else None
    divergence = schedule.get("divergence") or {}
    groups = []
    for g, (group, d, k) in enumerate(zip(members, depths, rounds, strict=True)):
        row: dict[str, Any] = {"group": g, "members": group, "size": len(group), "depth": d, "intra_rounds": k,
                               "peak_memory_bytes": costs.memory(d)}
        if divergence:
            row.update(examples=divergence["examples"][g], kl=divergence["kl"][g], tv=divergence["tv"][g])
        if timing is not None:
            row.update(timing[g])
        groups.append(row)
    block["groups"] = groups
    if divergence:
        block["divergence"] = {k: divergence[k] for k in ("divergence", "max_kl", "random") if k in divergence}
        block["grouping"] = algorithm.grouping
        block["group_table"] = schedule["group_table"]
        block["counts_before_truncation"] = True
    if request.config_mode:
        block.update(round0=schedule["round0"], budget_seconds=schedule["budget_seconds"],
                     num_clients=request.num_clients, seed=request.seed, clients_per_round=request.clients_per_round,
                     settings={k: getattr(algorithm, k) for k in (
                         "num_groups", "grouping", "group_sizes", "depth", "intra_rounds", "min_depth",
                         "base_intra_rounds", "max_intra_rounds", "budget_seconds", "budget_factor", "priority",
                         "objective", "reconfigure_every")})
    if request.fleet is not None:
        block["fleet"] = {"source": request.fleet_source, "jitter": request.fleet.jitter,
                          "latency_s": request.fleet.latency_s, "edge_cloud_mbps": request.fleet.edge_cloud_mbps,
                          "edge_latency_s": request.fleet.edge_latency_s, "tiers": request.fleet.table()}
        block["round_seconds"] = max(row["seconds"] for row in groups)
    return block


def plan(model: str, clients: int = 1, dtype: str | None = None, algorithm: str | Algorithm = "fedbiot",
         micro_batch_tokens: int = 4000, top_k: int | None = None, public_examples: int | None = None,
         seq_len: int = SEQ_LEN, cut_layer: int | None = None, client_top_layers: int | None = None,
         activation_dtype: str | None = None, batch_size: int = BATCH_SIZE, micro_batches: int = MICRO_BATCHES,
         hier: HierRequest | None = None, **split_kwargs: Any) -> dict[str, Any]:
    """Split ``model`` on the meta device and return every planning figure as a JSON-able dict.

    Args:
        model: hub id, model folder, ``config.json`` path or ``embedded:models/stories260K``.
        clients: clients taking part in each round.
        dtype: dtype of the base weights sent once; default the config's.
        algorithm: ``fedbiot``, a baseline, or any :class:`~fedbiot_pl.algorithms.Algorithm` (name, class
            path or object).
        micro_batch_tokens: tokens in one client micro-batch, for the memory estimate (the paper:
            5 examples of up to 800 tokens); split algorithms use ``batch_size x seq_len`` instead.
        top_k: KD algorithms only (others ignore it): logits kept per token; default the algorithm's.
        public_examples: KD algorithms only: public examples per round; default the algorithm's.
        seq_len: tokens per example: a KD public example (an upper bound), a split micro-batch's rows,
            and the attention length of every algorithm's FLOPs per token.
        cut_layer: split algorithms only: decoder layers below the cut; default the algorithm's.
        client_top_layers: U-shaped split only (vanilla ignores it): the client's top layers; default the
            algorithm's.
        activation_dtype: split algorithms only: dtype of the activations and gradients on the wire;
            default the algorithm's, else ``dtype``.
        batch_size: split algorithms only: examples per micro-batch.
        micro_batches: split algorithms only: micro-batches per client and round (local steps x accumulation).
        hier: HierFedLoRA only (others ignore it): explicit groups, or a run's partition, fleet and settings
            (:class:`~fedbiot_pl.planning.hierarchy.HierRequest`); default none: the per-depth table only.
        **split_kwargs: :class:`ModelViews` split/LoRA arguments (see :data:`SPLIT_KEYS`).

    A KD algorithm (``family == "kd"``) moves top-k logits instead of LoRA: its
    ``per_client_per_round`` bytes are :func:`kd_traffic`'s (``*_params`` 0) and a ``kd`` block gives
    its settings; its client model, trainable LoRA and memory come from its layout as for the others.
    A split algorithm (``family == "split"``) moves activations and gradients at the cut and its client
    LoRA: bytes from :func:`split_traffic` (``*_params``: the client LoRA), the ``split`` block gains its
    settings, layers, terms and formula, ``params.compressed`` is what the client holds and
    ``server_compute_per_client`` the server's FLOPs per token of a client's tokens. ``client_compute``
    (every algorithm) is a client training step's model FLOPs per token (:mod:`fedbiot_pl.scaling.flops`).
    A hierarchical algorithm (HierFedLoRA) gains a ``hier`` block (:func:`_hier_figures`): the per-depth
    costs, its groups with their depth and intra-group rounds, and a round's traffic device <-> edge and
    edge <-> cloud; its top-level figures are one device at full depth (``d = L``, ``K = 1``), FedAvg-LoRA's.

    Raises:
        ValueError: an impossible split, LoRA, KD, split-learning setting or client count, naming the value.
        OSError: the config cannot be found or read.
    """
    from transformers import AutoModelForCausalLM

    if clients < 1:
        raise ValueError(f"clients must be >= 1, got {clients}.")
    if micro_batch_tokens < 1:
        raise ValueError(f"micro_batch_tokens must be >= 1, got {micro_batch_tokens}.")
    check_counts(seq_len=seq_len)
    algorithm = resolve_algorithm(algorithm)
    if is_split(algorithm):
        algorithm = with_split_settings(algorithm, cut_layer, client_top_layers, activation_dtype)
        check_counts(batch_size=batch_size, micro_batches=micro_batches)
    kd_settings = None
    if is_kd(algorithm):
        kd_settings = {"top_k": getattr(algorithm, "top_k", None) if top_k is None else top_k,
                       "public_examples": (getattr(algorithm, "public_examples", None) if public_examples is None
                                           else public_examples), "seq_len": seq_len}
        if kd_settings["public_examples"] is None:
            raise ValueError(f"algorithm {algorithm.label!r} has public_examples null (the whole public set every "
                             "round); give --public-examples with the public set's size.")
    with quiet_model_build():
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
    layers, lowest_trained = len(layout.compressed), min(layout.adapter_positions)
    passes = client_plan(layers, len(layout.adapter_positions), layers - lowest_trained)
    memory = client_peak_memory(
        model_params=base, trained_lora=adapter_lora, layers_with_activations=layers - lowest_trained,
        hidden_size=config.hidden_size, intermediate_size=config.intermediate_size, vocab_size=config.vocab_size,
        tokens=micro_batch_tokens, dtype_bytes=DTYPES[dtype].itemsize,
    )
    result = {
        "algorithm": algorithm.label,
        "family": getattr(algorithm, "family", "params"),
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
        "client_compute": _compute(decoder_shape(config), seq_len, passes, split),
    }
    if kd_settings is not None:
        result["kd"] = {**kd_settings, "client_model": getattr(algorithm, "client_model", "full"),
                        "index_bytes": kd["index_bytes"], "tokens_upper_bound": kd["tokens_upper_bound"],
                        "dense_fp16_bytes": kd["dense_fp16_bytes"], "formula": KD_FORMULA + " per direction"}
        # Each round a client also runs its model forward (no grad) on the public tokens for its logits.
        result["client_compute"].update({"public_forward": result["client_compute"]["forward"],
                                         "public_tokens_per_round": kd["tokens_upper_bound"]})
    if is_split(algorithm):
        _split_figures(result, algorithm, split, config, clients, seq_len, batch_size, micro_batches)
    if is_hier(algorithm):
        result["hier"] = _hier_figures(algorithm, split, config, base, dtype, micro_batch_tokens, seq_len,
                                       hier or HierRequest(), model)
    return result


def compare(model: str, algorithms: Iterable[str | Algorithm] = tuple(ALGORITHMS),
            **kwargs: Any) -> list[dict[str, Any]]:
    """:func:`plan` of every algorithm in ``algorithms`` with the same model and settings.

    ``top_k``, ``public_examples`` and ``seq_len`` in ``kwargs`` set the KD rows; ``cut_layer``,
    ``client_top_layers``, ``activation_dtype``, ``batch_size``, ``micro_batches`` and ``seq_len`` the
    split rows; the others ignore them (``seq_len`` also sets every row's attention FLOPs).
    """
    return [plan(model, algorithm=name, **kwargs) for name in algorithms]
