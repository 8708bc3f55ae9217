"""KD distillation loss, forward + backward: gathered top-k (``distill_loss``) vs dense (``dense_distill_loss``).

The dense reference is FedMKT's: the top-k target scattered into a ``tokens x vocabulary`` tensor.

    python benchmarks/kd_loss.py             # vocabulary 32,000, 1 x 512 tokens, k 128, alpha 0.9, 5 repeats
    python benchmarks/kd_loss.py --vocab 32000 --tokens 512 --top-k 128 --repeats 5 --out /tmp/kd_loss.json
    python benchmarks/kd_loss.py --method gathered --repeats 5 --json   # one method only (what the children run)

Each method is measured in its own fresh interpreter (``--method gathered|dense --json``): the inputs
(fp32 student logits requiring grad, labels, the teacher's top-k probabilities, indices and mask) are
built first, without any dense ``tokens x vocabulary`` temporary (after one pass on a tiny input, so
that one-time set-up such as autograd's engine is not counted); then one untimed warm-up and
``--repeats`` timed forward + backward passes (``logits.grad`` reset before each). *Time* is the median
wall time of a pass; *peak memory* is the increase of the process's peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, KiB on Linux) over the peak measured right after the
inputs were allocated. The logits tensor's own size (tokens x vocabulary x 4 B) is given for scale.
The parent process then runs both methods once more on the same inputs for the sanity figures (the
two losses and the largest gradient difference), prints a markdown section and writes every number as
JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from fedbiot_pl.distillation import dense_distill_loss, distill_loss
from fedbiot_pl.distillation.loss import CHUNK_ROWS

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("gathered", "dense")
TARGET_CHUNK = 16  # teacher rows drawn at a time, so that no dense temporary exists before the baseline


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (defaults: the full-size run whose JSON goes to ``benchmarks/results/kd_loss.json``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=int, default=32_000, help="vocabulary size V")
    p.add_argument("--tokens", type=int, default=512, help="tokens of the single sequence (batch 1)")
    p.add_argument("--top-k", type=int, default=128, help="teacher entries kept per token")
    p.add_argument("--alpha", type=float, default=0.9, help="weight of the cross-entropy (kd_alpha)")
    p.add_argument("--chunk-rows", type=int, default=CHUNK_ROWS, help="rows per chunk of the gathered loss")
    p.add_argument("--repeats", type=int, default=5, help="timed forward + backward passes (after one warm-up)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", default="both", choices=("both", *METHODS),
                   help="'both' runs each method in its own subprocess; a single method runs here")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line, not markdown")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "kd_loss.json",
                   help="JSON file written by --method both")
    return p.parse_args(argv)


def make_inputs(vocab: int, tokens: int, top_k: int, seed: int) -> dict[str, torch.Tensor]:
    """The measured inputs, built without any dense ``tokens x vocabulary`` temporary.

    Student logits ``(1, tokens, vocab)`` fp32 requiring grad, labels (first quarter ``-100``, a prompt),
    and a teacher's top-k targets (``softmax`` of its k largest logits) on every position but the last.
    """
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, tokens, vocab, generator=gen).mul_(2.0).requires_grad_(True)  # in place: no 2nd copy
    labels = torch.randint(0, vocab, (1, tokens), generator=gen)
    labels[:, : tokens // 4] = -100
    probs = torch.empty(1, tokens, top_k)
    indices = torch.empty(1, tokens, top_k, dtype=torch.long)
    for start in range(0, tokens, TARGET_CHUNK):
        teacher = torch.randn(min(TARGET_CHUNK, tokens - start), vocab, generator=gen).mul_(2.0)
        values, index = teacher.topk(top_k, dim=-1)
        probs[0, start:start + len(values)] = torch.softmax(values, dim=-1)
        indices[0, start:start + len(values)] = index
        del teacher
    mask = torch.ones(1, tokens, dtype=torch.bool)
    mask[:, -1] = False  # the last position predicts nothing
    return {"logits": logits, "labels": labels, "probs": probs, "indices": indices, "mask": mask}


def run_method(method: str, inputs: dict[str, torch.Tensor], alpha: float,
               chunk_rows: int = CHUNK_ROWS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward + backward pass; ``(loss, ce, kd)`` detached (the gradient is in ``logits.grad``)."""
    args = (inputs["logits"], inputs["labels"], inputs["probs"], inputs["indices"], inputs["mask"])
    if method == "gathered":
        loss, ce, kd = distill_loss(*args, alpha=alpha, chunk_rows=chunk_rows)
    else:
        loss, ce, kd = dense_distill_loss(*args, alpha=alpha)
    loss.backward()
    return loss.detach(), ce.detach(), kd.detach()


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def current_rss_bytes() -> int:
    """This process's resident set size now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Time and peak memory of ``args.method`` in this process (meant to be a fresh one)."""
    # One-time set-up (autograd's engine, kernels) on a tiny input first, so that it is not counted.
    run_method(args.method, make_inputs(64, 8, min(args.top_k, 64), args.seed + 1), args.alpha, args.chunk_rows)
    inputs = make_inputs(args.vocab, args.tokens, args.top_k, args.seed)
    baseline_peak, baseline_rss = peak_rss_bytes(), current_rss_bytes()
    times, loss = [], None
    for repeat in range(args.repeats + 1):  # repeat 0 is the warm-up
        inputs["logits"].grad = None
        start = time.perf_counter()
        loss, ce, kd = run_method(args.method, inputs, args.alpha, args.chunk_rows)
        elapsed = time.perf_counter() - start
        if repeat:
            times.append(elapsed)
    peak = peak_rss_bytes()
    return {"method": args.method, "median_s": statistics.median(times), "runs_s": times,
            "peak_increase_bytes": peak - baseline_peak, "baseline_peak_rss_bytes": baseline_peak,
            # bytes by which the baseline peak exceeded the RSS then: an upper bound of the undercount
            "baseline_slack_bytes": max(baseline_peak - baseline_rss, 0),
            "loss": float(loss), "ce": float(ce), "kd": float(kd), "torch_threads": torch.get_num_threads()}


def child(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """``measure`` of one method in a fresh interpreter."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--method", method, "--json", "--vocab", str(args.vocab),
           "--tokens", str(args.tokens), "--top-k", str(args.top_k), "--alpha", str(args.alpha),
           "--chunk-rows", str(args.chunk_rows),
           "--repeats", str(args.repeats), "--seed", str(args.seed)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the {method} child failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def sanity(args: argparse.Namespace) -> dict[str, Any]:
    """Both methods on the same inputs in this process: their losses and the largest gradient difference."""
    inputs = make_inputs(args.vocab, args.tokens, args.top_k, args.seed)
    out: dict[str, Any] = {}
    grads = {}
    for method in METHODS:
        inputs["logits"].grad = None
        loss, ce, kd = run_method(method, inputs, args.alpha, args.chunk_rows)
        out[method] = {"loss": float(loss), "ce": float(ce), "kd": float(kd)}
        grads[method] = inputs["logits"].grad
    out["max_abs_loss_diff"] = abs(out["gathered"]["loss"] - out["dense"]["loss"])
    out["max_abs_grad_diff"] = float((grads["gathered"] - grads["dense"]).abs().max())
    out["max_abs_grad"] = float(grads["dense"].abs().max())
    return out


def mib(n: float) -> str:
    """Bytes as MiB, one decimal."""
    return f"{n / 2**20:.1f}"


def markdown(res: dict[str, Any]) -> str:
    """The result as a markdown section (as appended to ``benchmarks/RESULTS.md``)."""
    s, g, d = res["settings"], res["methods"]["gathered"], res["methods"]["dense"]
    lines = [
        "## KD distillation loss: gathered vs dense",
        "",
        "```",
        res["command"],
        "```",
        "",
        f"Vocabulary {s['vocab']:,}, batch 1 x {s['tokens']} tokens, k = {s['top_k']}, alpha {s['alpha']}, fp32 "
        f"logits, gathered loss in chunks of {s['chunk_rows']} rows; forward + backward, median of {s['repeats']} "
        f"after one warm-up, each method in its own "
        f"process; torch {res['torch_version']}, {g['torch_threads']} threads; 2-core CPU, shared. "
        f"Logits tensor: {s['tokens']} x {s['vocab']:,} x 4 B = {mib(res['logits_bytes'])} MiB.",
        "",
        "| method | time [ms], median (all runs) | peak memory increase [MiB] | x logits size |",
        "|---|---|---|---|",
    ]
    for name, r in (("gathered (`distill_loss`)", g), ("dense (`dense_distill_loss`)", d)):
        runs = ", ".join(f"{1000 * t:.1f}" for t in r["runs_s"])
        lines.append(f"| {name} | **{1000 * r['median_s']:.1f}** ({runs}) | **{mib(r['peak_increase_bytes'])}** | "
                     f"{r['peak_increase_bytes'] / res['logits_bytes']:.2f} |")
    ratio = res["ratios"]
    mem_ratio = "n/a" if ratio["memory_dense_over_gathered"] is None else f"x{ratio['memory_dense_over_gathered']:.2f}"
    san = res["sanity"]
    lines += [
        "",
        f"Same run, dense / gathered: time x{ratio['time_dense_over_gathered']:.2f}, peak memory {mem_ratio}.",
        f"Sanity (both on the same inputs, one process): loss gathered {san['gathered']['loss']:.6f}, dense "
        f"{san['dense']['loss']:.6f} (|diff| {san['max_abs_loss_diff']:.2e}); max |grad diff| "
        f"{san['max_abs_grad_diff']:.2e} (max |grad| {san['max_abs_grad']:.2e}).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns (and writes to ``--out``) the numbers printed."""
    args = parse_args(argv)
    if args.method != "both":
        result = measure(args)
        print(json.dumps(result) if args.json else
              f"{args.method}: {1000 * result['median_s']:.1f} ms, peak +{mib(result['peak_increase_bytes'])} MiB")
        return result
    load = os.getloadavg()[0]
    methods = {method: child(method, args) for method in METHODS}
    g, d = methods["gathered"], methods["dense"]
    command = "python benchmarks/kd_loss.py" + "".join(
        f" --{k} {getattr(args, k.replace('-', '_'))}" for k, default in
        (("vocab", 32_000), ("tokens", 512), ("top-k", 128), ("alpha", 0.9), ("chunk-rows", CHUNK_ROWS),
         ("repeats", 5), ("seed", 0))
        if getattr(args, k.replace("-", "_")) != default)
    result = {
        "command": command,
        "settings": {"vocab": args.vocab, "tokens": args.tokens, "batch": 1, "top_k": args.top_k, "alpha": args.alpha,
                     "chunk_rows": args.chunk_rows, "repeats": args.repeats, "seed": args.seed, "dtype": "float32"},
        "logits_bytes": args.tokens * args.vocab * 4,
        "methods": methods,
        "ratios": {"time_dense_over_gathered": d["median_s"] / g["median_s"],
                   "memory_dense_over_gathered": (d["peak_increase_bytes"] / g["peak_increase_bytes"]
                                                  if g["peak_increase_bytes"] > 0 else None)},
        "sanity": sanity(args),
        "torch_version": torch.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "load_average_1min_at_start": load,
        "date": time.strftime("%Y-%m-%d"),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(markdown(result), end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
