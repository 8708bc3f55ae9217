"""Evaluate a run's checkpoint: ``python -m fedbiot_pl.evaluate --run <run folder> --task gsm8k``.

Also ``python train.py evaluate ...``. It rebuilds the model split from the run's ``config.yaml``,
loads the LoRA of ``--ckpt`` (default: the run's ``checkpoints/last.ckpt``, else its
``final_adapter``), generates with AdapFu and/or AdapEmu, and writes
``<run>/eval/<task>-<variant>.predictions.jsonl`` and ``<run>/eval/<task>.metrics.json``.

``--ckpt best`` evaluates the run's round checkpoint with the lowest validation loss
``val/<variant>_loss`` (``--select-by``, default AdapFu): the response-only cross-entropy over the
clients' held-out rows (``data.val_fraction``) that each round checkpoint recorded when it was
written (:func:`~fedbiot_pl.artifacts.round_selection.select_best_round`; nothing is recomputed). It
prints every round's loss and the picked round, and adds them to the metrics file (``selection``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from fedbiot_pl.artifacts.export import atomic_write
from fedbiot_pl.evaluation.generation import DEFAULT_DATA, EvalResult, evaluate_split, read_eval_records
from fedbiot_pl.evaluation.tasks import EVAL_TASKS, eval_task
from fedbiot_pl.model.location import load_tokenizer
from fedbiot_pl.modules.generation_module import GenerationSettings


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The ``fedbiot-evaluate`` command-line arguments (``argv``, else ``sys.argv``)."""
    p = argparse.ArgumentParser(prog="fedbiot-evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run folder holding config.yaml (e.g. runs/fedbiot/version_0)")
    p.add_argument("--ckpt", help="a .ckpt, a compressed_lora.safetensors, a final_adapter folder, or `best`: the "
                                  "round checkpoint with the lowest recorded validation loss (see --select-by)")
    p.add_argument("--select-by", choices=["adapfu", "adapemu"], default="adapfu",
                   help="with --ckpt best: the variant whose validation loss (val/<variant>_loss) picks the round")
    p.add_argument("--task", choices=list(EVAL_TASKS), default="gsm8k",
                   help="mc: a local multiple-choice jsonl (question, choices, answer index), ranked by log-likelihood")
    p.add_argument("--data", help="evaluation file (.jsonl/.jsonl.gz); gsm8k defaults to the embedded test sample")
    p.add_argument("--variants", default="adapfu,adapemu", help="comma list of adapfu, adapemu")
    p.add_argument("--limit", type=int, help="evaluate the first N rows only")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--shots", type=int, default=8, help="GSM8K demonstrations (0 to 8)")
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=1, help="completions per prompt (pass@k needs n >= k)")
    p.add_argument("--generation", help="YAML file of decoding settings (GenerationSettings fields); overrides the "
                                       "decoding flags above")
    p.add_argument("--k", default="1", help="comma list of k for pass@k")
    p.add_argument("--seed", type=int, default=0, help="seed of the demonstration order and of sampling")
    p.add_argument("--device", help="torch device for generation (default: cuda if available, else cpu)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    return p.parse_args(argv)


def run_views(run: Path) -> tuple[Any, str]:
    """The model views and the tokenizer of a run, from its saved ``config.yaml``.

    The views are laid out by the run's algorithm, not built; the config is read by the CLI's own
    parser (:func:`fedbiot_pl.cli.read_config`).
    """
    from fedbiot_pl.cli import config_views, read_config

    config_file = run / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} does not exist; --run must be a run folder written by train.py.")
    config = read_config([config_file])
    return config_views(config), config.data.tokenizer or config.model.split.init_args.model


def print_table(result: EvalResult) -> None:
    """Print ``result``'s metrics as a table: one row per variant, one column per metric."""
    names = sorted({name for metrics in result.metrics.values() for name in metrics})
    print(f"{result.task:<10}" + "".join(f"{n:>14}" for n in names))
    for variant, metrics in result.metrics.items():
        print(f"{variant:<10}" + "".join(f"{metrics.get(n, float('nan')):>14.4f}" for n in names))


def check_samples(task: str, ks: list[int], settings: GenerationSettings) -> None:
    """Raise ``ValueError`` if pass@k would need more completions per prompt than ``settings`` draws."""
    if max(ks) > settings.num_return_sequences and eval_task(task).uses_pass_at_k:
        raise ValueError(f"pass@{max(ks)} needs --num-samples >= {max(ks)} (or num_return_sequences in "
                         f"--generation), got {settings.num_return_sequences}.")


def main(argv: list[str] | None = None) -> int:
    """Evaluate a run's LoRA on a task and write its predictions and metrics under ``<run>/eval``.

    Returns:
        The exit status: 0, or 2 (with the error on stderr) for a bad argument or a missing file.
    """
    args = parse_args(argv)
    try:
        import torch

        from fedbiot_pl.artifacts.round_selection import select_best_round
        from fedbiot_pl.artifacts.run_artifacts import load_run_lora

        run = Path(args.run)
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        bad = [v for v in variants if v not in ("adapfu", "adapemu")]
        ks = [int(k) for k in args.k.split(",")]
        if bad or not variants:
            raise ValueError(f"--variants takes adapfu and/or adapemu, got {args.variants!r}.")
        settings = GenerationSettings(
            max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
            top_p=args.top_p, top_k=args.top_k, num_return_sequences=args.num_samples,
        )
        if not args.generation:  # a --generation file's own sample count is checked once it is read
            check_samples(args.task, ks, settings)
        data = args.data or DEFAULT_DATA.get(args.task)
        if data is None:
            raise ValueError(f"--data is required for --task {args.task}.")
        split, tokenizer_name = run_views(run)  # reads the model's config: a missing model is named here
        if args.generation:  # the file's settings replace the decoding flags, its sample count included
            settings = GenerationSettings(**(yaml.safe_load(Path(args.generation).read_text()) or {}))
            check_samples(args.task, ks, settings)
        rows = read_eval_records(args.task, data, args.limit)
        selection = select_best_round(run, args.select_by) if args.ckpt == "best" else None
        if selection is not None:
            print(selection.table(), file=sys.stderr)
        ckpt = selection.best.path if selection else Path(args.ckpt) if args.ckpt else run / "checkpoints" / "last.ckpt"
        if not args.ckpt and not ckpt.exists():
            ckpt = run / "final_adapter"
        lora = load_run_lora(ckpt)
    except (FileNotFoundError, ValueError, KeyError, TypeError) as error:
        print(f"fedbiot-evaluate: error: {error}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    split.build(device=device)
    split.load_lora_state(lora)
    tokenizer = load_tokenizer(tokenizer_name)
    result = evaluate_split(split, tokenizer, args.task, rows, variants, settings, args.batch_size,
                            args.shots, args.seed, ks, device)
    out = run / "eval"
    for variant, predictions in result.predictions.items():
        lines = "".join(json.dumps(p) + "\n" for p in predictions)
        atomic_write(out / f"{args.task}-{variant}.predictions.jsonl", lambda tmp, t=lines: Path(tmp).write_text(t))
    summary = {"task": args.task, "checkpoint": str(ckpt), "data": data, "rows": len(rows), "metrics": result.metrics,
               **({"selection": selection.as_dict()} if selection else {})}
    text = json.dumps(summary, indent=2)
    atomic_write(out / f"{args.task}.metrics.json", lambda tmp: Path(tmp).write_text(text))
    if args.json:
        print(text)
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
