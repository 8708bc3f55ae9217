"""Run FedBiOT and the baselines on the same model, client split, rounds and seed; tabulate and plot.

Every algorithm runs ``train.py fit`` with the task recipe plus its algorithm file
(``configs/algorithms/<name>.yaml``), the same data (same partition seed, same held-out client rows)
and the same number of rounds, in its own process; then ``train.py evaluate`` scores AdapFu and
AdapEmu on the GSM8K test sample. One table (markdown) and one PNG (client validation loss against
the cumulative bytes communicated) come out::

    python benchmarks/compare_algorithms.py --out benchmarks/results/compare
    python benchmarks/compare_algorithms.py --rounds 2 --algorithms fedbiot fedot --out /tmp/cmp   # quick
    python benchmarks/compare_algorithms.py --rounds 1 --fit-arg=--federated.pre_alignment_rounds=0 ...  # smoke

Columns: final client validation loss (token-weighted over every client's held-out rows) of AdapEmu
and AdapFu, GSM8K accuracy of both (greedy, zero-shot, on ``--eval-limit`` test rows), bytes per
round (down + up, all clients: LoRA, or top-k logits for ``fed_kd``/``fedmkt``), the client peak
training memory estimated by ``fedbiot-plan``
for one micro-batch (this CPU run cannot measure a GPU peak), and the wall time of the fit.

For the KD algorithms, whose clients keep models of their own, AdapEmu is the clients' own models
(validation loss: each on its own held-out rows; accuracy: the mean over the clients' adapters) and
AdapFu the server's model (``fedmkt``'s distilled LLM; ``fed_kd`` trains none, so its AdapFu is the
untouched base model).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from fedbiot_pl.algorithms import ALGORITHMS as REGISTERED
from fedbiot_pl.artifacts.csv_logger import newest_run

ROOT = Path(__file__).resolve().parents[1]
ALGORITHMS = tuple(REGISTERED)  # every registered algorithm, in registration order


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's command-line arguments (``argv``, else ``sys.argv``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="gsm8k", choices=("gsm8k", "code", "dolly"), help="task recipe in configs/")
    p.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--local-steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out share of each client's rows")
    p.add_argument("--eval-limit", type=int, default=50, help="GSM8K test rows scored per variant")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "compare")
    p.add_argument("--fit-arg", action="append", default=[], metavar="ARG", dest="fit_args",
                   help="one more 'train.py fit' argument, after the script's own so it wins (repeatable; "
                        "give it with '=': --fit-arg=--federated.align_steps=1); for quick smoke runs")
    return p.parse_args(argv)


def fit(algorithm: str, args: argparse.Namespace, out: Path, recipe: Path | None = None) -> float:
    """Train one algorithm in its own process (``recipe``: the task's YAML, default ``configs/<task>.yaml``).

    Returns the wall time of the fit in seconds.
    """
    command = [
        sys.executable, str(ROOT / "train.py"), "fit",
        "--config", str(recipe or ROOT / "configs" / f"{args.task}.yaml"),
        "--config", str(ROOT / "configs" / "algorithms" / f"{algorithm}.yaml"),
        f"--seed_everything={args.seed}", f"--federated.rounds={args.rounds}",
        f"--federated.local_steps={args.local_steps}", f"--data.val_fraction={args.val_fraction}",
        "--trainer.callbacks+=fedbiot_pl.callbacks.ClientValidation",
        f"--trainer.default_root_dir={out}", f"--trainer.logger.init_args.save_dir={out}",
        "--trainer.logger.init_args.name=run", "--trainer.enable_progress_bar=false", *args.fit_args,
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def evaluate(run: Path, args: argparse.Namespace, extra: tuple[str, ...] = ()) -> dict[str, float]:
    """Score a run with ``train.py evaluate`` on GSM8K in its own process; returns the accuracy per variant."""
    command = [sys.executable, str(ROOT / "train.py"), "evaluate", "--run", str(run), "--task", "gsm8k",
               "--limit", str(args.eval_limit), "--shots", "0", "--max-new-tokens", str(args.max_new_tokens),
               "--json", *extra]
    result = json.loads(subprocess.run(command, check=True, cwd=ROOT, capture_output=True, text=True).stdout)
    return {variant: metrics["accuracy"] for variant, metrics in result["metrics"].items()}


def accuracy(run: Path, args: argparse.Namespace) -> dict[str, float]:
    """GSM8K accuracy of AdapFu and AdapEmu.

    Where clients keep models of their own (the KD algorithms: ``final_adapter/clients/``), AdapFu is
    the server's model and AdapEmu the mean over the clients' own adapters.
    """
    scores = evaluate(run, args)
    clients = sorted((run / "final_adapter" / "clients").glob("client_*"))
    if clients:
        own = [evaluate(run, args, ("--ckpt", str(c), "--variants", "adapemu"))["adapemu"] for c in clients]
        scores["adapemu"] = sum(own) / len(own)
    return scores


def client_memory(run: Path) -> int:
    """``fedbiot-plan``'s estimate of the client's peak training memory for the run's settings."""
    from fedbiot_pl.plan import plan, yaml_settings

    config = run / "config.yaml"
    import yaml

    data = yaml.safe_load(config.read_text())["data"]
    settings = yaml_settings(str(config))
    tokens = data["batch_size"] * data["max_length"]
    return plan(micro_batch_tokens=tokens, **settings)["client_peak_memory"]["total"]


def collect(algorithm: str, run: Path, wall: float, args: argparse.Namespace) -> dict:
    """One table row of a finished run: validation history and losses, accuracy, bytes, memory, wall time."""
    history = json.loads((run / "client_validation.json").read_text())
    ledger = json.loads((run / "final_adapter" / "federated_summary.json").read_text())["ledger"]
    return {
        "algorithm": algorithm, "history": history, "wall_s": wall,
        "adapemu_loss": history[-1]["adapemu_loss"], "adapfu_loss": history[-1]["adapfu_loss"],
        "accuracy": accuracy(run, args), "bytes_per_round": (ledger["bytes_down"] + ledger["bytes_up"]) / args.rounds,
        "client_memory": client_memory(run),
    }


def table(rows: list[dict]) -> str:
    """The markdown table of ``rows``, one line per algorithm."""
    lines = [
        "| algorithm | val loss AdapEmu | val loss AdapFu | GSM8K acc AdapEmu | GSM8K acc AdapFu | bytes / round "
        "| est. client peak memory | fit wall time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        acc = r["accuracy"]
        lines.append(
            f"| {r['algorithm']} | {r['adapemu_loss']:.4f} | {r['adapfu_loss']:.4f} | {acc['adapemu']:.1%} "
            f"| {acc['adapfu']:.1%} | {r['bytes_per_round']:,.0f} | {r['client_memory'] / 2**20:.2f} MiB "
            f"| {r['wall_s']:.0f} s |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Save to ``path`` a PNG of each algorithm's validation losses against the cumulative bytes communicated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for index, r in enumerate(rows):
        xs, color = [h["total_bytes"] for h in r["history"]], f"C{index}"
        ax.plot(xs, [h["adapemu_loss"] for h in r["history"]], marker="o", color=color,
                label=f"{r['algorithm']} (AdapEmu)")
        ax.plot(xs, [h["adapfu_loss"] for h in r["history"]], marker="x", linestyle="--", color=color, alpha=0.6,
                label=f"{r['algorithm']} (AdapFu)")
    ax.set_xscale("log")
    ax.set_xlabel("cumulative bytes communicated (down + up, all clients)")
    ax.set_ylabel("client validation loss")
    ax.set_title("Validation loss against communication")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Fit, evaluate and collect every algorithm, then write the table, the JSON results and the plot."""
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for algorithm in args.algorithms:
        out = args.out / algorithm
        wall = fit(algorithm, args, out)
        rows.append(collect(algorithm, newest_run(out / "run"), wall, args))
        print(f"{algorithm}: done in {wall:.0f} s", file=sys.stderr)
    text = table(rows)
    (args.out / "table.md").write_text(text + "\n")
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    plot(rows, args.out / "loss_vs_bytes.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
