"""Generation throughput (new tokens per second) of AdapFu and AdapEmu, with and without KV cache.

    python benchmarks/generation_throughput.py                   # stories260K, batch 8, 128 new tokens
    python benchmarks/generation_throughput.py --new-tokens 256 --batch-size 16 --repeats 5
    python benchmarks/generation_throughput.py --json out.json   # also write every number

Every prompt generates exactly ``--new-tokens`` tokens (``min_new_tokens`` = ``max_new_tokens``), so
the token count is fixed; the figure is the median over ``--repeats`` runs after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from fedbiot_pl.assets import resolve
from fedbiot_pl.model.views import ModelViews
from fedbiot_pl.modules import GenerationModule, GenerationSettings
from fedbiot_pl.modules.generation_module import left_padded_batches

PROMPTS = ["Once upon a time", "Lily had a red ball", "The little dog ran to the park", "Tom and Sue",
           "One day, a bird", "The sun was hot and", "Max wanted to play", "In a small house there was"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns (and with ``--json`` writes) the numbers printed."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="embedded:models/stories260K")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, help="write every number to this JSON file")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    split = ModelViews(args.model, adapter_layers=2, drop_rate=0.2).build()
    tokenizer = AutoTokenizer.from_pretrained(resolve(args.model))
    prompts = (PROMPTS * (args.batch_size // len(PROMPTS) + 1))[: args.batch_size]
    batch = left_padded_batches(tokenizer, prompts, list(range(len(prompts))), args.batch_size)[0]
    print(f"{args.model}: batch {args.batch_size}, {args.new_tokens} new tokens, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'variant':<8} {'kv cache':<9} {'median s':>9} {'tokens/s':>10}   all runs [s]")
    rates, runs = {}, {}
    for variant in ("adapfu", "adapemu"):
        for cache in (True, False):
            settings = GenerationSettings(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                          use_cache=cache)
            module = GenerationModule(split, tokenizer, variant, settings)
            module.generate(batch["input_ids"], batch["attention_mask"])  # warm-up
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                module.generate(batch["input_ids"], batch["attention_mask"])
                times.append(time.perf_counter() - start)
            median = statistics.median(times)
            rates[variant, cache] = args.batch_size * args.new_tokens / median
            runs[f"{variant}/{'cache' if cache else 'no_cache'}"] = {
                "median_s": median, "tokens_per_s": rates[variant, cache], "runs_s": times}
            print(f"{variant:<8} {'on' if cache else 'off':<9} {median:>9.3f} {rates[variant, cache]:>10.1f}   "
                  + ", ".join(f"{t:.3f}" for t in times))
    speedups = {variant: rates[variant, True] / rates[variant, False] for variant in ("adapfu", "adapemu")}
    for variant, speedup in speedups.items():
        print(f"{variant}: KV cache speed-up x{speedup:.2f}")
    result = {"settings": {k: v for k, v in vars(args).items() if k != "json"},
              "torch_threads": torch.get_num_threads(), "runs": runs, "kv_cache_speedup": speedups}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
