r"""The three framework families on one footing: parameters (FedAvg-LoRA, FedBiOT), logits (KD), split.

The use case of the framework-comparison paper (arXiv 2501.04436): every algorithm trains with
``train.py fit`` in its own process on the same recipe, data, partition seed, rounds and local steps
(``compare_algorithms.fit``), under several settings. The first value of each list is the base
setting every algorithm runs; each further value varies one setting for the algorithms it concerns::

    --clients 3 6        all algorithms again with 6 clients
    --cut-layers 2 1 4   the two split variants again with the cut after layer 1 and 4
    --top-ks 32 8        the KD algorithm again with k = 8

Per run: the final client validation loss (token-weighted over every client's held-out rows) of
the clients' model and of the full model (the same model for FedAvg-LoRA and split; FedBiOT's
AdapEmu and AdapFu; KD's clients' own models and the server's), GSM8K accuracy of the base setting's
runs (``--eval-limit`` rows, 0 = skip), bytes per round from the run's ledger (split: with the
activations, gradients, masks and labels of every micro-batch), and ``fedbiot-plan``'s client FLOPs per
token (forward + backward), the split server's FLOPs per client token and the client's estimated peak
memory. Out come ``table.md``, ``results.json`` and two plots (validation loss against cumulative
bytes; bytes, client compute and memory per algorithm)::

    python benchmarks/compare_frameworks.py --out benchmarks/results/frameworks                 # stories260K
    python benchmarks/compare_frameworks.py --recipe benchmarks/replicate_small.yaml \
        --model ../shared/data/models/smollm2-135m-instruct-gguf/SmolLM2-135M-Instruct.Q4_1.gguf --out ...
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import compare_algorithms  # noqa: E402  (the sibling script: its fit, accuracy and plot)

from fedbiot_pl.artifacts.benchmark_runs import run_each  # noqa: E402
from fedbiot_pl.artifacts.csv_logger import newest_run  # noqa: E402

SPLIT = ("splitfed_lora", "splitfed_lora_u")
KD = ("fed_kd", "fedmkt")


@dataclass(frozen=True)
class Setting:
    """One run: an algorithm and the settings it varies (``None``: the algorithm's recipe value)."""

    algorithm: str
    clients: int
    cut_layer: int | None = None
    top_k: int | None = None
    base: bool = True
    public_examples: int | None = None

    @property
    def name(self) -> str:
        """The run's folder name, e.g. ``splitfed_lora-c3-cut2``."""
        extra = (f"-cut{self.cut_layer}" if self.cut_layer is not None else "") + (
            f"-k{self.top_k}" if self.top_k is not None else "")
        return f"{self.algorithm}-c{self.clients}{extra}"

    def fit_args(self) -> list[str]:
        """``train.py fit`` overrides of this setting."""
        args = [f"--data.num_clients={self.clients}"]
        if self.cut_layer is not None:
            args.append(f"--federated.algorithm.init_args.cut_layer={self.cut_layer}")
        if self.top_k is not None:
            args.append(f"--federated.algorithm.init_args.top_k={self.top_k}")
        if self.public_examples is not None:
            args.append(f"--federated.algorithm.init_args.public_examples={self.public_examples}")
        return args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's command-line arguments (``argv``, else ``sys.argv``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", type=Path, default=ROOT / "configs" / "gsm8k.yaml", help="train.py YAML of the task")
    p.add_argument("--model", help="model for every run (model.split.model); default the recipe's")
    p.add_argument("--kd", default="fed_kd", choices=KD, help="the KD algorithm of the comparison")
    p.add_argument("--algorithms", nargs="+", default=["fedavg_lora", "fedbiot", "kd", *SPLIT],
                   help="'kd' stands for --kd")
    p.add_argument("--clients", type=int, nargs="+", default=[3])
    p.add_argument("--cut-layers", type=int, nargs="+", default=[2])
    p.add_argument("--top-ks", type=int, nargs="+", default=[32])
    p.add_argument("--kd-public-examples", type=int, help="public examples per round of the KD runs (default the "
                   "algorithm file's, 50)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--local-steps", type=int, default=5)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out share of each client's rows")
    p.add_argument("--eval-limit", type=int, default=0, help="GSM8K test rows scored per base run (0: none)")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "frameworks")
    p.add_argument("--fit-arg", action="append", default=[], metavar="ARG", dest="fit_args",
                   help="one more 'train.py fit' argument for every run (repeatable; give it with '=')")
    p.add_argument("--reuse", action="store_true",
                   help="reuse the finished runs already under --out (e.g. to score them with --eval-limit)")
    args = p.parse_args(argv)
    args.algorithms = [args.kd if a == "kd" else a for a in args.algorithms]
    return args


def settings(args: argparse.Namespace) -> list[Setting]:
    """Every run: the base setting for each algorithm, then one setting varied at a time."""
    clients, cut, top_k, public = args.clients[0], args.cut_layers[0], args.top_ks[0], args.kd_public_examples

    def base(algorithm: str, n: int = clients, is_base: bool = True) -> Setting:
        kd = algorithm in KD
        return Setting(algorithm, n, cut if algorithm in SPLIT else None, top_k if kd else None, is_base,
                       public if kd else None)

    runs = [base(a) for a in args.algorithms]
    runs += [Setting(a, clients, c, base=False) for c in args.cut_layers[1:] for a in args.algorithms if a in SPLIT]
    runs += [Setting(a, clients, top_k=k, base=False, public_examples=public)
             for k in args.top_ks[1:] for a in args.algorithms if a in KD]
    runs += [base(a, n, False) for n in args.clients[1:] for a in args.algorithms]
    return runs


def planned(run: Path) -> dict[str, float]:
    """``fedbiot-plan``'s client FLOPs/token, split server FLOPs per client token and client memory of a run."""
    import yaml

    from fedbiot_pl.plan import plan, yaml_settings

    config = run / "config.yaml"
    data = yaml.safe_load(config.read_text())["data"]
    p = plan(micro_batch_tokens=data["batch_size"] * data["max_length"], **yaml_settings(str(config)))
    server = p.get("server_compute_per_client")
    return {"client_flops_per_token": p["client_compute"]["total"],
            "server_flops_per_client_token": server["total"] if server else 0,
            "client_memory": p["client_peak_memory"]["total"]}


def collect(setting: Setting, run: Path, wall: float, args: argparse.Namespace) -> dict:
    """One row: validation losses, bytes per round (with the split breakdown), plan figures, accuracy, wall time."""
    history = json.loads((run / "client_validation.json").read_text())
    ledger = json.loads((run / "final_adapter" / "federated_summary.json").read_text())["ledger"]
    accuracy = compare_algorithms.accuracy(run, args) if setting.base and args.eval_limit else {}
    return {
        **asdict(setting), "name": setting.name, "history": history, "wall_s": wall,
        "clients_loss": history[-1]["adapemu_loss"], "full_loss": history[-1]["adapfu_loss"],
        "bytes_per_round": (ledger["bytes_down"] + ledger["bytes_up"]) / args.rounds,
        "split_bytes_per_round": {k: v / args.rounds for k, v in ledger.get("split_bytes", {}).items()},
        "accuracy": accuracy, **planned(run),
    }


def _flops(value: float) -> str:
    return f"{value / 1e6:,.2f} M" if value else "-"


def table(rows: list[dict]) -> str:
    """The markdown table, one line per run."""
    lines = ["| run | family | val loss (clients' model) | val loss (full model) | GSM8K acc (clients / full) "
             "| bytes / round | client FLOPs / token | server FLOPs / client token | est. client peak memory "
             "| fit wall time |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = r["accuracy"]
        scored = f"{acc['adapemu']:.1%} / {acc['adapfu']:.1%}" if acc else "-"
        family = "split" if r["algorithm"] in SPLIT else "kd" if r["algorithm"] in KD else "params"
        lines.append(
            f"| {r['name']} | {family} | {r['clients_loss']:.4f} | {r['full_loss']:.4f} | {scored} "
            f"| {r['bytes_per_round']:,.0f} | {_flops(r['client_flops_per_token'])} "
            f"| {_flops(r['server_flops_per_client_token'])} | {r['client_memory'] / 2**20:,.2f} MiB "
            f"| {r['wall_s']:.0f} s |")
    return "\n".join(lines)


def plot_losses(rows: list[dict], path: Path) -> None:
    """Save a PNG of each run's validation loss against the cumulative bytes communicated.

    One line per run for the clients' model; a dashed line for the full model where it is another model
    (FedBiOT's AdapFu, KD's server model). Markers by family.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5.5))
    colors = plt.get_cmap("tab20").colors
    for index, r in enumerate(rows):
        family = "split" if r["algorithm"] in SPLIT else "kd" if r["algorithm"] in KD else "params"
        xs, color = [h["total_bytes"] for h in r["history"]], colors[index % len(colors)]
        marker = {"params": "o", "kd": "s", "split": "^"}[family]
        ax.plot(xs, [h["adapemu_loss"] for h in r["history"]], marker=marker, color=color, label=r["name"])
        full = [h["adapfu_loss"] for h in r["history"]]
        if full != [h["adapemu_loss"] for h in r["history"]]:
            ax.plot(xs, full, marker=marker, linestyle="--", color=color, alpha=0.6, label=f"{r['name']} (full model)")
    ax.set_xscale("log")
    ax.set_xlabel("cumulative bytes communicated (down + up, all clients)")
    ax.set_ylabel("client validation loss")
    ax.set_title("Validation loss against communication (o parameters, s logits, ^ split)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_costs(rows: list[dict], path: Path) -> None:
    """Save a PNG of bytes per round, client FLOPs per token and client memory of the base runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = [r for r in rows if r["base"]]
    names = [r["algorithm"] for r in base]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    for ax, key, label, scale in (
        (axes[0], "bytes_per_round", "bytes per round (all clients)", 1),
        (axes[1], "client_flops_per_token", "client FLOPs per token (fwd + bwd)", 1),
        (axes[2], "client_memory", "est. client peak memory (MiB)", 2**20),
    ):
        ax.bar(names, [r[key] / scale for r in base], color=[f"C{i}" for i in range(len(base))])
        ax.set_yscale("log")
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run every setting, then write the table, the JSON rows and the two plots."""
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.json"
    previous = {r["name"]: r for r in json.loads(results.read_text())} if results.exists() else {}

    def run_one(name: str) -> dict:
        setting = by_name[name]
        run_args = argparse.Namespace(**{**vars(args), "task": "gsm8k"})
        extra = ([f"--model.split.model={args.model}"] if args.model else []) + setting.fit_args()
        run_args.fit_args = extra + list(args.fit_args)
        out = args.out / name
        if args.reuse and name in previous:
            wall = previous[name]["wall_s"]
        else:
            started = time.perf_counter()
            compare_algorithms.fit(setting.algorithm, run_args, out, recipe=args.recipe)
            wall = time.perf_counter() - started
        print(f"{name}: done in {wall:.0f} s", file=sys.stderr)
        return collect(setting, newest_run(out / "run"), wall, run_args)

    by_name = {setting.name: setting for setting in settings(args)}
    rows = run_each(by_name, run_one, args.out)
    if rows is None:
        return 1
    text = table(rows)
    (args.out / "table.md").write_text(text + "\n")
    plot_losses(rows, args.out / "loss_vs_bytes.png")
    plot_costs(rows, args.out / "costs.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
