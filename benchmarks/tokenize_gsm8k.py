"""Time loading + checking + tokenising the full GSM8K train set, cold and from the ``datasets`` cache.

Each timed run is a fresh Python process (so nothing stays in memory between runs) that loads the
tokenizer, then times the datamodule's per-source path: :func:`load_source` (JSON lines -> Arrow),
:func:`check_source` (every row's fields) and :func:`tokenize_dataset` (batched ``datasets.map``).
A *cold* run starts from an empty cache folder; the *cached* run right after it reuses that folder.

    python benchmarks/tokenize_gsm8k.py --repeats 5
    python benchmarks/tokenize_gsm8k.py --data rows.jsonl --tokenizer path/to/tokenizer --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_DATA = SHARED / "gsm8k" / "train.jsonl"
DEFAULT_TOKENIZER = SHARED / "tokenizers" / "llama2"


def one_run(data: str, tokenizer_dir: str, cache_dir: str, max_length: int) -> dict[str, float]:
    """Time one pass in this process; returns seconds per stage and the example counts."""
    import datasets
    from transformers import AutoTokenizer

    from fedbiot_pl.data.pipeline import tokenize_dataset
    from fedbiot_pl.data.sources import DataSource, check_source, load_source
    from fedbiot_pl.data.tokenization import ensure_pad_token, tokenizer_fingerprint

    datasets.disable_progress_bars()
    start = time.perf_counter()
    tokenizer = ensure_pad_token(AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True))
    loaded = time.perf_counter()
    source = DataSource(data, format="gsm8k")
    rows = load_source(source, cache_dir)
    read = time.perf_counter()
    spec = check_source(source, rows)
    checked = time.perf_counter()
    tokenizer_hash = tokenizer_fingerprint(tokenizer)
    hashed = time.perf_counter()
    examples = tokenize_dataset(rows, spec, tokenizer, max_length, tokenizer_hash)
    done = time.perf_counter()
    kept = sum(1 for ids in examples["input_ids"] if ids)
    return {
        "tokenizer_load": loaded - start, "load_source": read - loaded, "check_source": checked - read,
        "tokenizer_fingerprint": hashed - checked, "tokenize_dataset": done - hashed,
        "total_without_tokenizer_load": done - loaded, "rows": len(rows), "kept": kept,
    }


def run_child(data: str, tokenizer_dir: str, cache_dir: str, max_length: int) -> dict[str, float]:
    """Run :func:`one_run` in a fresh interpreter and return its numbers."""
    command = [sys.executable, __file__, "--child", "--data", data, "--tokenizer", tokenizer_dir,
               "--cache-dir", cache_dir, "--max-length", str(max_length)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Parse the arguments, run the repeats, and print every run and the medians.

    Returns (and with ``--json`` writes) every run and the medians.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER))
    parser.add_argument("--max-length", type=int, default=800)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--json", type=Path, help="write every run and the medians to this JSON file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(one_run(args.data, args.tokenizer, args.cache_dir, args.max_length)))
        return None
    results: dict[str, list[dict[str, float]]] = {"cold": [], "cached": []}
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="tok_bench_") as cache_dir:
            for kind in ("cold", "cached"):
                numbers = run_child(args.data, args.tokenizer, cache_dir, args.max_length)
                results[kind].append(numbers)
                print(f"repeat {repeat} {kind:6s}: " + ", ".join(
                    f"{name}={value:.3f}" if isinstance(value, float) else f"{name}={value}"
                    for name, value in numbers.items()), flush=True)
    print(f"\nmedians over {args.repeats} repeats (s), {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}:")
    medians = {}
    for kind, runs in results.items():
        medians[kind] = {name: statistics.median(run[name] for run in runs) for name in runs[0]}
        print(f"{kind:6s}: " + ", ".join(f"{name}={value:.3f}" for name, value in medians[kind].items()))
    report = {"settings": {"data": args.data, "tokenizer": args.tokenizer, "max_length": args.max_length,
                           "repeats": args.repeats}, "runs": results, "medians": medians}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
