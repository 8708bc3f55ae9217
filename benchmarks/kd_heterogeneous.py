"""KD-FedLLM with a 30-layer server and smaller clients: fed_kd and fedmkt on SmolLM2-135M-Instruct.

The server holds SmolLM2-135M-Instruct (30 layers, the paper model's depth); the clients hold the
emulator built from it (``client_model: emulator``: FedBiOT's uniform layer drop, beta 0.2, plus the
top 2 layers as the adapter, 24 layers in all) or, for reference, the full model. Every variant runs
``train.py fit`` in its own process with ``benchmarks/replicate_small.yaml`` (the replication's data,
client split, seed, local steps) plus its KD recipe and overrides, with
:class:`~fedbiot_pl.callbacks.ClientValidation` (each client's own model on its held-out rows, and
the server's model on all of them) and :class:`~fedbiot_pl.callbacks.EmulatorGap` (the untrained
models' losses)::

    python benchmarks/kd_heterogeneous.py --out benchmarks/results/kd_heterogeneous     # about 20 min, 2 cores
    python benchmarks/kd_heterogeneous.py --variants fedmkt_emulator --rounds 1          # a quicker look

The ledger's bytes are checked against the wire formula ``N_tok k (2 + index bytes) + 12 P + 4`` per
message, with ``N_tok`` the kept tokens of each round's public slice (read from the run's data).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from fedbiot_pl.artifacts.benchmark_runs import run_each
from fedbiot_pl.artifacts.csv_logger import newest_run

ROOT = Path(__file__).resolve().parents[1]
SHARED_MODEL = ROOT.parent / "shared" / "data" / "models" / "smollm2-135m-instruct-gguf" / \
    "SmolLM2-135M-Instruct.Q4_1.gguf"

# name -> (algorithm recipe, client model)
VARIANTS = {
    "fedmkt_emulator": ("fedmkt", "emulator"),
    "fed_kd_emulator": ("fed_kd", "emulator"),
    "fedmkt_full": ("fedmkt", "full"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's command-line arguments (``argv``, else ``sys.argv``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(SHARED_MODEL), help="the server model (default: the shared SmolLM2 GGUF)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--local-steps", type=int, default=10)
    p.add_argument("--top-k", type=int, default=128)
    p.add_argument("--public-examples", type=int, default=16)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "kd_heterogeneous")
    p.add_argument("--fit-arg", action="append", default=[], metavar="ARG", dest="fit_args",
                   help="one more 'train.py fit' argument, after the script's own (repeatable; give it with '=')")
    args = p.parse_args(argv)
    from fedbiot_pl.model.location import looks_local

    if looks_local(args.model) and not Path(args.model).expanduser().exists():
        p.error(f"--model {args.model} does not exist; point it at SmolLM2-135M-Instruct (a .gguf file or a folder)")
    if min(args.rounds, args.local_steps, args.top_k, args.public_examples) < 1:
        p.error("--rounds, --local-steps, --top-k and --public-examples must be >= 1")
    return args


def fit(name: str, args: argparse.Namespace, out: Path) -> float:
    """Train variant ``name`` in its own process; returns the wall time of the fit in seconds."""
    recipe, client_model = VARIANTS[name]
    command = [
        sys.executable, str(ROOT / "train.py"), "fit",
        "--config", str(ROOT / "benchmarks" / "replicate_small.yaml"),
        "--config", str(ROOT / "configs" / "algorithms" / f"{recipe}.yaml"),
        f"--model.split.model={args.model}", f"--federated.rounds={args.rounds}",
        f"--federated.local_steps={args.local_steps}",
        f"--federated.algorithm.init_args.top_k={args.top_k}",
        f"--federated.algorithm.init_args.public_examples={args.public_examples}",
        f"--federated.algorithm.init_args.client_model={client_model}",
        "--trainer.callbacks+=fedbiot_pl.callbacks.ClientValidation",
        "--trainer.callbacks+=fedbiot_pl.callbacks.EmulatorGap",
        f"--trainer.default_root_dir={out}", f"--trainer.logger.init_args.save_dir={out}",
        "--trainer.logger.init_args.name=run", *args.fit_args,
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def formula_bytes(run: Path) -> dict[str, int]:
    """The ledger's bytes by the wire formula, from the run's own data and settings."""
    import yaml

    from fedbiot_pl.cli import FedBiOTCLI
    from fedbiot_pl.datamodules import FederatedInstructionDataModule
    from fedbiot_pl.distillation.public import public_rows
    from fedbiot_pl.distillation.topk import topk_wire_bytes
    from fedbiot_pl.modules import EmulatorAlignmentModule
    from fedbiot_pl.quiet import quiet_lightning_cli

    settings = yaml.safe_load((run / "config.yaml").read_text())
    keep = ("seed_everything", "trainer", "model", "data", "federated", "checkpoint")
    settings = {key: value for key, value in settings.items() if key in keep}  # no `fit`-only keys (ckpt_path)
    quiet_lightning_cli()
    with warnings.catch_warnings():  # `args` is the point here, whatever this script's own argv holds
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        made = FedBiOTCLI(EmulatorAlignmentModule, FederatedInstructionDataModule, run=False,
                          args=["--config", yaml.safe_dump(settings)])  # builds nothing heavy: no weights load
    loop = next(callback for callback in made.trainer.callbacks if hasattr(callback, "round_index"))
    algorithm, data = loop.algorithm, made.datamodule
    data.setup("fit")
    vocab = int(made.model.split._config.vocab_size)
    rounds, clients, seed = loop.rounds, data.num_clients, loop.seed

    def message(round_idx: int) -> int:
        rows = public_rows(data.num_public_examples, algorithm.public_examples, seed, round_idx)
        tokens = sum(length - 1 for length in data.public_lengths(rows))
        return topk_wire_bytes(tokens, len(rows), algorithm.top_k, vocab)

    messages = [message(t) for t in range(rounds)]
    empty = topk_wire_bytes(0, 0, algorithm.top_k, vocab)
    return {"bytes_up": clients * sum(messages), "bytes_down": clients * (empty + sum(messages[:-1]))}


def collect(name: str, run: Path, wall: float, args: argparse.Namespace) -> dict[str, Any]:
    """One variant's results: validation history, untrained losses, bytes against the formula, wall time."""
    history = json.loads((run / "client_validation.json").read_text())
    gap = json.loads((run / "emulator_gap.json").read_text())
    ledger = json.loads((run / "final_adapter" / "federated_summary.json").read_text())["ledger"]
    split = json.loads((run / "final_adapter" / "split.json").read_text())
    expected = formula_bytes(run)
    return {
        "variant": name, "history": history, "start": gap["start"], "wall_s": wall, "ledger": ledger,
        "formula": expected, "bytes_match": all(ledger[key] == value for key, value in expected.items()),
        "client_layers": len(split["bottom_adapter"]) + len(split["emulator"]) + len(split["top_adapter"]),
        "server_layers": split["full_layers"],
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table: model sizes, losses before and after, bytes against the formula, wall time."""
    lines = ["| variant | server / client layers | clients' own models: untrained -> end | server model: untrained "
             "-> end | bytes / round (measured) | ledger = formula | fit wall time |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        start, end, ledger = r["start"], r["history"][-1], r["ledger"]
        rounds = len(r["history"])
        lines.append(
            f"| {r['variant']} | {r['server_layers']} / {r['client_layers']} "
            f"| {start['adapemu_loss']:.4f} -> {end['adapemu_loss']:.4f} "
            f"| {start['adapfu_loss']:.4f} -> {end['adapfu_loss']:.4f} "
            f"| {(ledger['bytes_down'] + ledger['bytes_up']) / rounds:,.0f} | {'yes' if r['bytes_match'] else 'NO'} "
            f"| {r['wall_s']:.0f} s |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Fit and collect every variant; write ``table.md`` and ``results.json``."""
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
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
