r"""HierFedLoRA against its baselines on one non-IID Dolly split, one simulated device fleet, one seed.

Four variants, each a ``train.py fit`` in its own process with ``configs/dolly.yaml``, its algorithm
recipe and the same overrides (data, partition, seed, rounds, local steps, fleet)::

    hierfedlora      HierFedLoRA: greedy_kl groups (speed_weight: similar speeds together), depth and
                     intra-group rounds chosen per group under the round budget (auto)
    fedavg_lora      flat FedAvg-LoRA on the same fleet: every device trains every layer each round;
                     it ignores the devices' memory (a device that could not hold that depth trains anyway),
                     so it is favoured
    hier_uniform     hierarchical FedAvg, uniform: greedy_kl groups (speed_weight 0), every group at the
                     model's full depth with 2 intra-group rounds (``--uniform-depth``)
    random_grouping  HierFedLoRA with random groups (speed_weight 0), depth and rounds auto

The data: Dolly-15k partitioned by ``category`` with a Dirichlet(0.3) label skew over ``--clients`` clients
(10 % of each client's rows held out; their token-weighted loss is ``val/adapfu_loss``). The fleet: the
shipped default (``fedbiot_pl/assets/fleets/default-80.yaml``) describes devices for LLaMA-2-7B; on
stories260K its compute would vanish next to the latency, so :func:`scaled_fleet` derives a fleet whose
compute, communication and memory keep the proportions they have for LLaMA-2-7B, written to
``<out>/fleet.yaml`` (the derivation goes into ``results.json``)::

    python benchmarks/hierfedlora.py                                      # 4 variants x 6 rounds, 80 clients
    python benchmarks/hierfedlora.py --rounds 2 --out /tmp/hier_try       # a quicker look
    python benchmarks/hierfedlora.py --reuse --target 3.9                 # re-read the runs, another target

Per variant: the final validation loss, the curve of validation loss against simulated seconds, the
simulated time to reach the target loss (default: the worst final loss among the variants, which every
variant reaches) and the speed-up over ``fedavg_lora``, the bytes device<->edge and edge<->cloud, the depths
and intra-group rounds of round 0, and the grouping's size-weighted KL ``J`` next to random groupings'.
Out come ``table.md``, ``results.json``, ``fleet.yaml`` and ``hierfedlora.png``. All times are simulated
(FLOPs, bytes and the assumed device profiles), never measured; only ``fit wall`` is wall time.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from fedbiot_pl.artifacts.benchmark_runs import run_each
from fedbiot_pl.artifacts.csv_logger import newest_run
from fedbiot_pl.hierarchy.clock import time_to_target
from fedbiot_pl.hierarchy.costs import DepthCosts, depth_costs
from fedbiot_pl.hierarchy.fleet import Fleet, load_fleet, mbps_to_Bps
from fedbiot_pl.planning.figures import quiet_model_build

ROOT = Path(__file__).resolve().parents[1]
SHARED_DOLLY = ROOT.parent / "shared" / "data" / "dolly" / "databricks-dolly-15k.jsonl.gz"
SMALL_MODEL = "embedded:models/stories260K"  # configs/dolly.yaml's model
GIB = 2**30

VARIANTS = ("hierfedlora", "fedavg_lora", "hier_uniform", "random_grouping")
HIERARCHICAL = ("hierfedlora", "hier_uniform", "random_grouping")

# The batch shape, partition and local training every variant shares; `--fit-arg` comes after and wins.
BATCH_SIZE, MAX_LENGTH, CLIENT_ACCUMULATION = 4, 256, 1
SHARED_ARGS = (
    "--data.partition=dirichlet", "--data.partition_key=category", "--data.dirichlet_alpha=0.3",
    "--data.min_client_size=2", f"--data.max_length={MAX_LENGTH}", f"--data.batch_size={BATCH_SIZE}",
    "--data.val_fraction=0.1", "--federated.local_steps=2",
    f"--federated.client_accumulate_grad_batches={CLIENT_ACCUMULATION}",
)

REFERENCE = {
    "model": str(ROOT / "configs" / "models" / "llama2-7b"),
    "seq_len": 800, "micro_batch_tokens": 4000, "tokens_per_step": 8000,  # 5 x 800 per micro-batch, x 2 accumulation
    "lora_rank": 8, "lora_targets": ["q_proj", "v_proj"], "dtype_bytes": 2,  # fp16 base weights
}
"""The setting the default fleet's tiers were written for (LLaMA-2-7B, the FedBiOT paper's batch)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's command-line arguments (``argv``, else ``sys.argv``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "hierfedlora")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--clients", type=int, default=80, help="clients = simulated devices")
    p.add_argument("--groups", type=int, default=8, help="device groups of the hierarchical variants")
    p.add_argument("--seed", type=int, default=42, help="seed_everything (partition, grouping, training)")
    p.add_argument("--speed-weight", type=float, default=1.0,
                   help="hierfedlora's speed_weight (> 0: groups of similar speed, so fast groups go deeper)")
    p.add_argument("--max-intra-rounds", type=int, default=4, help="the most intra-group rounds 'auto' may choose")
    p.add_argument("--uniform-depth", type=int, help="hier_uniform's depth (default: the model's layer count)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--max-task-examples", type=int, default=8000, help="read only the first N Dolly rows")
    p.add_argument("--data", default=str(SHARED_DOLLY),
                   help="the Dolly task file (default the shared Dolly-15k; embedded:data/dolly/dolly_sample.jsonl "
                        "for a smoke run)")
    p.add_argument("--target", type=float,
                   help="the validation loss to reach (default: the worst final loss among the variants)")
    p.add_argument("--reuse", action="store_true", help="re-read the finished runs under --out instead of fitting")
    p.add_argument("--fit-arg", action="append", default=[], metavar="ARG", dest="fit_args",
                   help="one more 'train.py fit' argument for every variant, after the script's own (repeatable; "
                        "give it with '='); the fleet follows --data.batch_size/max_length and "
                        "--federated.client_accumulate_grad_batches given here")
    args = p.parse_args(argv)
    if min(args.rounds, args.clients, args.groups, args.max_intra_rounds, args.max_task_examples) < 1:
        p.error("--rounds, --clients, --groups, --max-intra-rounds and --max-task-examples must be >= 1")
    if args.groups > args.clients:
        p.error(f"--groups {args.groups} exceeds --clients {args.clients}")
    if args.speed_weight < 0:
        p.error("--speed-weight must be >= 0")
    if args.uniform_depth is not None and args.uniform_depth < 1:
        p.error("--uniform-depth must be >= 1")
    if not args.data.startswith(("embedded:", "hf:")) and not Path(args.data).expanduser().exists():
        p.error(f"--data {args.data} does not exist; point it at databricks-dolly-15k.jsonl(.gz), or give "
                "embedded:data/dolly/dolly_sample.jsonl for a quick run")
    return args


def _fit_setting(fit_args: Sequence[str], key: str, default: Any) -> Any:
    """The last ``--key=value`` among ``fit_args`` (as ``default``'s type), else ``default``."""
    value = default
    for arg in fit_args:
        if arg.startswith(f"--{key}="):
            value = type(default)(arg.split("=", 1)[1])
    return value


# ---------------------------------------------------------------------------------------------- the fleet
def model_costs(model: str, seq_len: int, tokens_per_step: int, micro_batch_tokens: int, lora_rank: int = 8,
                lora_targets: Sequence[str] = ("q_proj", "v_proj"), dtype_bytes: int = 4) -> DepthCosts:
    """:func:`~fedbiot_pl.hierarchy.costs.depth_costs` of ``model`` with LoRA on every layer.

    The base parameters are counted on the meta device (no weights load), as the run counts them; the
    arguments are those of :func:`depth_costs` (``dtype_bytes`` 4: this toolkit's default float32 weights).
    """
    import torch
    from transformers import AutoModelForCausalLM

    from fedbiot_pl.model.location import load_model_config
    from fedbiot_pl.scaling.flops import decoder_shape

    with quiet_model_build():
        config = load_model_config(model)
        with torch.device("meta"):
            full = AutoModelForCausalLM.from_config(config)
    base = sum(p.numel() for p in full.parameters())
    return depth_costs(decoder_shape(config), int(config.num_hidden_layers), seq_len, tokens_per_step,
                       micro_batch_tokens, lora_rank, list(lora_targets), base, dtype_bytes)


def deepest_depth(costs: DepthCosts, memory_bytes: float) -> int:
    """The largest depth whose estimated peak memory ``memory_bytes`` holds (0 if not even depth 1)."""
    return max((d for d in range(1, costs.num_layers + 1) if costs.memory(d) <= memory_bytes), default=0)


def scaled_fleet(reference_fleet: Fleet, small: DepthCosts, reference: DepthCosts,
                 num_devices: int) -> tuple[Fleet, dict[str, Any]]:
    """The fleet for the small model whose compute, communication and memory keep the reference's proportions.

    ``reference_fleet``'s tiers were written for ``reference`` (LLaMA-2-7B); on a small model every
    training step would take microseconds and the latency would dominate. With ``L`` and ``L_ref`` the two
    models' layer counts:

    * speeds (``tflops``) scale by ``c = small.step_flops(L) / reference.step_flops(L_ref)``, so a full-depth
      step takes each tier as many seconds as the reference step took it;
    * bandwidths (``up_mbps``, ``down_mbps``, ``edge_cloud_mbps``) scale by ``b = small.message_bytes(L) /
      reference.message_bytes(L_ref)``, so a full-depth LoRA message takes as many seconds as the reference's;
    * latencies (``latency_s``, ``edge_latency_s``) stay: with the two factors above every compute and transfer
      time is the reference's in seconds, so unchanged latencies keep their share of a round (scaling them by
      ``c`` too would shrink them ``1/c``-fold against the rest);
    * memory: a tier whose memory held depths ``1..d_ref`` of the reference holds the same fraction of the small
      model, ``d = max(1, floor(d_ref * L / L_ref))``; its ``mem_gib`` is set halfway between ``small.memory(d)``
      and ``small.memory(d + 1)`` (twice ``small.memory(L)`` when ``d = L``), so exactly depths ``1..d`` fit;
    * jitter, seed and shares stay; ``num_devices`` is ``num_devices`` (one device per client).

    Args:
        reference_fleet: The fleet as written for the reference model (e.g. the shipped default).
        small: The benchmark model's per-depth costs (its batch shape).
        reference: The reference model's per-depth costs.
        num_devices: The devices of the derived fleet (the run's clients).

    Returns:
        The derived fleet, and the derivation (factors, per tier the reference and small depths held, both
        memories, and the step and message seconds of both) as a JSON-able dict.
    """
    L, L_ref = small.num_layers, reference.num_layers
    c = small.step_flops(L) / reference.step_flops(L_ref)
    b = small.message_bytes(L) / reference.message_bytes(L_ref)
    tiers, rows = [], []
    for tier in reference_fleet.tiers:
        d_ref = deepest_depth(reference, tier.mem_gib * GIB)
        depth = max(1, d_ref * L // L_ref)
        mem = 2 * small.memory(L) if depth >= L else (small.memory(depth) + small.memory(depth + 1)) / 2
        scaled = replace(tier, tflops=tier.tflops * c, up_mbps=tier.up_mbps * b, down_mbps=tier.down_mbps * b,
                         mem_gib=mem / GIB)
        tiers.append(scaled)
        rows.append({
            "tier": tier.name, "share": tier.share, "tflops": scaled.tflops, "up_mbps": scaled.up_mbps,
            "down_mbps": scaled.down_mbps, "mem_gib": scaled.mem_gib, "reference_mem_gib": tier.mem_gib,
            "reference_depth": d_ref, "reference_fraction": d_ref / L_ref, "depth": depth,
            "step_seconds": small.step_flops(L) / (scaled.tflops * 1e12),
            "reference_step_seconds": reference.step_flops(L_ref) / (tier.tflops * 1e12),
            "upload_seconds": small.message_bytes(L) / mbps_to_Bps(scaled.up_mbps),
            "reference_upload_seconds": reference.message_bytes(L_ref) / mbps_to_Bps(tier.up_mbps),
        })
    fleet = replace(reference_fleet, tiers=tuple(tiers), num_devices=num_devices,
                    edge_cloud_mbps=reference_fleet.edge_cloud_mbps * b)
    derivation = {
        "compute_factor": c, "bandwidth_factor": b, "latency_factor": 1.0,
        "small": {"num_layers": L, "tokens_per_step": small.tokens_per_step, "step_flops": small.step_flops(L),
                  "message_bytes": small.message_bytes(L), "memory_bytes": list(small.memory_bytes)},
        "reference": {"num_layers": L_ref, "tokens_per_step": reference.tokens_per_step,
                      "step_flops": reference.step_flops(L_ref), "message_bytes": reference.message_bytes(L_ref),
                      "memory_bytes": list(reference.memory_bytes), "fleet": reference_fleet.to_dict()},
        "tiers": rows,
    }
    return fleet, derivation


def unbounded_memory(fleet: Fleet, costs: DepthCosts) -> Fleet:
    """``fleet`` with every tier's memory holding every depth (twice ``costs.memory(L)``); all else the same."""
    mem = 2 * costs.memory(costs.num_layers) / GIB
    return replace(fleet, tiers=tuple(replace(t, mem_gib=max(t.mem_gib, mem)) for t in fleet.tiers))


def tier_table(derivation: dict[str, Any]) -> str:
    """The derived tiers as a markdown table, next to the reference's memory and depths."""
    ref_layers, layers = derivation["reference"]["num_layers"], derivation["small"]["num_layers"]
    lines = [f"| tier | share | TFLOP/s | up / down Mbps | memory | depths held (of {layers}) | reference: memory, "
             f"depths held (of {ref_layers}) | full-depth step / upload s |", "|---|---|---|---|---|---|---|---|"]
    for t in derivation["tiers"]:
        lines.append(
            f"| {t['tier']} | {t['share']:g} | {t['tflops']:.4g} | {t['up_mbps']:.4g} / {t['down_mbps']:.4g} "
            f"| {t['mem_gib'] * 1024:.4g} MiB | 1..{t['depth']} | {t['reference_mem_gib']:g} GiB, "
            f"1..{t['reference_depth']} | {t['step_seconds']:.4g} / {t['upload_seconds']:.4g} |")
    return "\n".join(lines)


def derive_fleet(args: argparse.Namespace) -> tuple[Fleet, dict[str, Any]]:
    """The benchmark's fleet and its derivation.

    The fleet goes to ``<out>/fleet.yaml``, its unbounded-memory copy (for ``hier_uniform``) to
    ``<out>/fleet_unbounded_memory.yaml``.
    """
    batch = _fit_setting(args.fit_args, "data.batch_size", BATCH_SIZE)
    length = _fit_setting(args.fit_args, "data.max_length", MAX_LENGTH)
    accumulation = _fit_setting(args.fit_args, "federated.client_accumulate_grad_batches", CLIENT_ACCUMULATION)
    model = _fit_setting(args.fit_args, "model.split.model", SMALL_MODEL)
    small = model_costs(model, length, batch * length * accumulation, batch * length)
    ref = {k: v for k, v in REFERENCE.items() if k != "model"}
    reference = model_costs(REFERENCE["model"], ref.pop("seq_len"), ref.pop("tokens_per_step"),
                            ref.pop("micro_batch_tokens"), **ref)
    fleet, derivation = scaled_fleet(load_fleet(None), small, reference, args.clients)
    derivation["small"].update({"model": model, "batch_size": batch, "max_length": length,
                                "accumulation": accumulation})
    derivation["reference"].update(REFERENCE)
    unbounded = unbounded_memory(fleet, small)
    for name, value in (("fleet.yaml", fleet), ("fleet_unbounded_memory.yaml", unbounded)):
        (args.out / name).write_text(yaml.safe_dump(value.to_dict(), sort_keys=False))
    return fleet, derivation


# ---------------------------------------------------------------------------------------------- the runs
def variant_args(name: str, args: argparse.Namespace, num_layers: int, fleet_path: Path) -> list[str]:
    """``train.py fit`` overrides of variant ``name`` after the shared ones: the fleet and the algorithm's."""
    hier = "--federated.algorithm.init_args."
    common = [f"--federated.devices={fleet_path}"]
    if name == "fedavg_lora":
        return common
    common += [f"{hier}num_groups={args.groups}", f"{hier}max_intra_rounds={args.max_intra_rounds}"]
    if name == "hierfedlora":
        own = ["grouping=greedy_kl", f"speed_weight={args.speed_weight}", "depth=auto", "intra_rounds=auto"]
    elif name == "hier_uniform":
        own = ["grouping=greedy_kl", "speed_weight=0", f"depth={args.uniform_depth or num_layers}", "intra_rounds=2"]
    else:
        own = ["grouping=random", "speed_weight=0", "depth=auto", "intra_rounds=auto"]
    return common + [hier + setting for setting in own]


def fit(name: str, args: argparse.Namespace, out: Path, extra: list[str]) -> float:
    """Train variant ``name`` in its own process; returns the wall time of the fit in seconds."""
    recipe = "fedavg_lora" if name == "fedavg_lora" else "hierfedlora"
    command = [
        sys.executable, str(ROOT / "train.py"), "fit",
        "--config", str(ROOT / "configs" / "dolly.yaml"),
        "--config", str(ROOT / "configs" / "algorithms" / f"{recipe}.yaml"),
        f"--seed_everything={args.seed}", f"--federated.rounds={args.rounds}", f"--data.num_clients={args.clients}",
        f"--data.task.path={args.data}", f"--data.max_task_examples={args.max_task_examples}", *SHARED_ARGS,
        *extra, f"--trainer.default_root_dir={out}", f"--trainer.logger.init_args.save_dir={out}",
        "--trainer.logger.init_args.name=run", "--trainer.enable_progress_bar=false", *args.fit_args,
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def _number(value: str | None) -> float | None:
    return None if value in (None, "") else float(value)


def read_rounds(run: Path) -> list[dict[str, Any]]:
    """Per round of ``run``'s ``metrics.csv``: simulated seconds, validation loss, bytes, depths and rounds.

    A round's row and the validation row of the same epoch (validation follows the round) are joined.
    """
    with (run / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    losses = {r["epoch"]: float(r["val/adapfu_loss"]) for r in rows if r.get("val/adapfu_loss")}
    result = []
    for r in rows:
        if not r.get("round/index"):
            continue
        groups = sorted(int(m.group(1)) for k in r if (m := re.fullmatch(r"group/(\d+)/depth", k)) and r[k])
        result.append({
            "round": int(float(r["round/index"])), "sim_seconds": _number(r.get("sim/seconds")),
            "val_loss": losses.get(r["epoch"]), "total_bytes": _number(r.get("comm/total_bytes")) or 0.0,
            "cloud_total_bytes": _number(r.get("comm/cloud_total_bytes")) or 0.0,
            "depths": [int(float(r[f"group/{g}/depth"])) for g in groups],
            "intra_rounds": [int(float(r[f"group/{g}/intra_rounds"])) for g in groups],
        })
    return sorted(result, key=lambda x: x["round"])


_J = re.compile(r"size-weighted KL J = (\S+)(?: ; random grouping \((\d+) seeded draws\): mean (\S+), min (\S+))?")


def read_grouping(run: Path, fleet: Fleet) -> dict[str, Any]:
    """The grouping in ``run``'s ``algorithm.txt``: its groups (with their tiers), ``J`` and random groupings' ``J``.

    Empty for a flat run (no ``algorithm.txt``).
    """
    path = run / "algorithm.txt"
    if not path.exists():
        return {}
    groups, result = [], {}
    tiers = [fleet.tiers[i].name for i in fleet.tier_indices()]
    for line in path.read_text().splitlines():
        if match := _J.match(line):
            result = {"J": float(match.group(1))}
            if match.group(2):
                result.update({"random_draws": int(match.group(2)), "random_J_mean": float(match.group(3)),
                               "random_J_min": float(match.group(4))})
        elif (cells := line.split()) and len(cells) > 1 and cells[0].isdigit() and re.fullmatch(r"[\d,]+", cells[1]):
            groups.append([int(d) for d in cells[1].split(",")])
    result["groups"] = groups
    result["group_tiers"] = [{t.name: n for t in fleet.tiers if (n := [tiers[d] for d in g].count(t.name))}
                             for g in groups]
    return result


def collect(name: str, run: Path, wall: float, fleet: Fleet) -> dict[str, Any]:
    """One variant's row: its per-round curve, final loss, simulated time, bytes, round-0 schedule, grouping."""
    rounds = read_rounds(run)
    last, first = rounds[-1], rounds[0]
    return {
        "variant": name, "run": str(run), "wall_s": wall, "rounds": rounds,
        "final_loss": last["val_loss"], "sim_seconds": last["sim_seconds"],
        "total_bytes": last["total_bytes"], "cloud_total_bytes": last["cloud_total_bytes"],
        "depths_round0": first["depths"], "intra_rounds_round0": first["intra_rounds"],
        "grouping": read_grouping(run, fleet),
    }


def add_time_to_target(rows: list[dict[str, Any]], target: float | None) -> float:
    """Set every row's ``tta_s`` (simulated seconds to reach ``target``) and ``speedup`` over ``fedavg_lora``.

    Returns the target used: ``target``, else the worst (highest) final validation loss among the rows.
    """
    target = max(r["final_loss"] for r in rows) if target is None else target
    for r in rows:
        points = [(p["sim_seconds"], p["val_loss"]) for p in r["rounds"] if p["val_loss"] is not None]
        r["tta_s"] = time_to_target([t for t, _ in points], [v for _, v in points], target, mode="min")
    flat = next((r["tta_s"] for r in rows if r["variant"] == "fedavg_lora"), None)
    for r in rows:
        r["speedup"] = flat / r["tta_s"] if flat is not None and r["tta_s"] else None
    return target


def _list(values: Sequence[int]) -> str:
    return ",".join(map(str, values)) if values else "-"


def table(rows: list[dict[str, Any]], target: float, num_layers: int) -> str:
    """The markdown table, one line per variant."""
    lines = ["| variant | depths (round 0) | intra rounds (round 0) | grouping J (random) | final val loss "
             "| sim time | time to target | speed-up vs fedavg_lora | device<->edge bytes | edge<->cloud bytes "
             "| fit wall |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        flat = r["variant"] == "fedavg_lora"
        g = r["grouping"]
        j = f"{g['J']:.4f} ({g['random_J_mean']:.4f})" if "random_J_mean" in g else (
            f"{g['J']:.4f}" if "J" in g else "-")
        tta = f"{r['tta_s']:,.0f} s" if r["tta_s"] is not None else "not reached"
        speedup = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
        lines.append(
            f"| {r['variant']} | {f'{num_layers} (all)' if flat else _list(r['depths_round0'])} "
            f"| {'1' if flat else _list(r['intra_rounds_round0'])} | {j} | {r['final_loss']:.4f} "
            f"| {r['sim_seconds']:,.0f} s | {tta} | {speedup} | {r['total_bytes'] / 1e6:,.2f} MB "
            f"| {r['cloud_total_bytes'] / 1e6:,.3f} MB | {r['wall_s']:.0f} s |")
    lines.append("")
    lines.append(f"Target validation loss {target:.4f}; times are simulated seconds on the derived fleet.")
    return "\n".join(lines)


def notes(rows: list[dict[str, Any]], derivation: dict[str, Any], fleet: Fleet, uniform_unbounded: bool) -> str:
    """What the table does not say: who is favoured, and the fleet."""
    layers = derivation["small"]["num_layers"]
    counts = dict(zip([t.name for t in fleet.tiers], fleet.tier_counts(), strict=True))
    short = sum(counts[t["tier"]] for t in derivation["tiers"] if t["depth"] < layers)
    names = {r["variant"] for r in rows}
    text = []
    if "fedavg_lora" in names:
        text.append(f"- fedavg_lora (flat) trains all {layers} layers on every device each round and ignores the "
                    f"memory limit: {short} of {fleet.num_devices} devices could not hold that depth, so it is "
                    "favoured. Its bytes are device<->server; it has no edge<->cloud link.")
    if "hier_uniform" in names and uniform_unbounded:
        text.append("- hier_uniform's depth exceeds what the smaller tiers hold, so it ran on fleet_unbounded_memory."
                    "yaml (the same fleet with every tier's memory holding every depth): favoured as fedavg_lora.")
    text.append(f"- Fleet: the shipped default's tiers scaled for {derivation['small']['model']} (speeds x "
                f"{derivation['compute_factor']:.4g}, bandwidths x {derivation['bandwidth_factor']:.4g}, latencies "
                "kept; memory: the reference's fraction of the depth); ASSUMED profiles, not measured.")
    return "\n".join(text) + "\n\n" + tier_table(derivation)


def plot(rows: list[dict[str, Any]], target: float, path: Path) -> None:
    """Save a PNG: validation loss against simulated seconds per variant, and bytes per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for index, r in enumerate(rows):
        points = [(p["sim_seconds"], p["val_loss"]) for p in r["rounds"] if p["val_loss"] is not None]
        left.plot([t for t, _ in points], [v for _, v in points], marker="o", color=f"C{index}", label=r["variant"])
    left.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:.3f}")
    left.set_xlabel("simulated seconds")
    left.set_ylabel("validation loss (val/adapfu_loss)")
    left.set_title("Validation loss against simulated time", fontsize=10)
    left.legend(fontsize=8)
    names, width = [r["variant"] for r in rows], 0.4
    xs = range(len(rows))
    for offset, key, label in ((-width / 2, "total_bytes", "device<->edge"),
                               (width / 2, "cloud_total_bytes", "edge<->cloud")):
        values = [r[key] if r[key] > 0 else math.nan for r in rows]
        right.bar([x + offset for x in xs], values, width, label=label)
    right.set_xticks(list(xs), names, rotation=20, fontsize=8)
    right.set_yscale("log")
    right.set_ylabel("bytes (whole run)")
    right.set_title("Bytes communicated (flat FedAvg: no edge<->cloud link)", fontsize=10)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Derive the fleet, fit (or re-read) every variant, then write ``table.md``, ``results.json`` and the plot."""
    started = time.perf_counter()
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    fleet, derivation = derive_fleet(args)
    print(f"Fleet for {derivation['small']['model']} ({args.out / 'fleet.yaml'}):\n{tier_table(derivation)}\n",
          flush=True)
    layers = derivation["small"]["num_layers"]
    uniform_depth = args.uniform_depth or layers
    uniform_unbounded = uniform_depth > min(t["depth"] for t in derivation["tiers"])
    results = args.out / "results.json"
    previous = json.loads(results.read_text()) if results.exists() else []
    previous = {r["variant"]: r for r in (previous["rows"] if isinstance(previous, dict) else previous)}

    def run_one(name: str) -> dict:
        out = args.out / name
        fleet_path = args.out / ("fleet_unbounded_memory.yaml" if name == "hier_uniform" and uniform_unbounded
                                 else "fleet.yaml")
        if args.reuse and name in previous:
            wall = previous[name]["wall_s"]
        else:
            wall = fit(name, args, out, variant_args(name, args, layers, fleet_path))
        print(f"{name}: done in {wall:.0f} s", file=sys.stderr, flush=True)
        return collect(name, newest_run(out / "run"), wall, fleet)

    rows = run_each(args.variants, run_one, args.out)
    if rows is None:
        return 1
    target = add_time_to_target(rows, args.target)
    text = table(rows, target, layers) + "\n\n" + notes(rows, derivation, fleet, uniform_unbounded)
    wall = time.perf_counter() - started
    results.write_text(json.dumps({
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "target": target, "uniform_depth": uniform_depth, "uniform_unbounded_memory": uniform_unbounded,
        "fleet": derivation, "wall_s": wall, "rows": rows}, indent=2))
    (args.out / "table.md").write_text(text + "\n")
    plot(rows, target, args.out / "hierfedlora.png")
    print(text)
    print(f"\ntotal wall time: {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
