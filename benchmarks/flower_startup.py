"""Flower: what a client's fresh process pays per message before its fit (imports, model load, views).

Flower starts a fresh ``flwr-clientapp`` process for every message, so a site pays its imports and the
load of the exported client model (``fedbiot_pl/flower/client_model.py``) on every round. This script
exports the client model of a ``train.py fit`` model once (``export_for_args``) and then times, each
item in its own fresh Python subprocess, ``--repeats`` times:

* ``import``: the imports of the ClientApp's train handler (torch, lightning, transformers, peft,
  ``fedbiot_pl.federation.client``, ``fedbiot_pl.datamodules``), timed inside the child;
* ``mmap_load``: ``load_client_model(folder)`` (the weights memory-mapped) wall time and the child's RSS
  growth (psutil), after the imports; then, after reading every weight once, the RSS growth and its
  private (anonymous: RSS less file-backed pages) part;
* ``copy_load``: ``AutoModelForCausalLM.from_pretrained(folder, dtype=<export dtype>)`` wall time and the
  same memory figures, for comparison;
* ``views``: ``client_views(folder, resolve_algorithm(<algorithm>))`` wall time and RSS growth (the model
  map plus the clients' views with LoRA).

It reports the median of each item, the model file size and the ratios copy / mmap, and writes every
number to ``--out`` (JSON)::

    python benchmarks/flower_startup.py --out startup.json
    python benchmarks/flower_startup.py --model <folder>/SmolLM2-135M-Instruct.Q4_1.gguf --out smollm2.json

Without ``--workdir`` the exported model goes to a temporary folder that is removed afterwards; with
it, a client model already exported there (``client_model_<model>_<algorithm>/manifest.sha256``) is
reused. Children inherit the environment (``OMP_NUM_THREADS`` included).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "embedded:models/stories260K"
ITEMS = ("import", "mmap_load", "copy_load", "views")
MB = 1e6


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _anon() -> int:
    """Private (anonymous) resident bytes: RSS less the file-backed pages (a mapped file's pages are file-backed)."""
    import psutil

    info = psutil.Process().memory_info()
    return info.rss - getattr(info, "shared", 0)


def _handler_imports() -> None:
    """What ``fedbiot_pl.flower.client_app.run_train`` imports, directly or through its own imports."""
    import lightning  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import fedbiot_pl.datamodules  # noqa: F401
    import fedbiot_pl.federation.client  # noqa: F401


def child(item: str, folder: str, algorithm: str) -> dict[str, Any]:
    """One item, measured in this (fresh) process; the parent runs it as ``--child ITEM``.

    Returns:
        ``seconds`` (wall time of the item) and, for the loads and the views, ``rss_bytes`` (RSS growth).
    """
    if item == "import":
        started = time.perf_counter()
        _handler_imports()
        return {"seconds": time.perf_counter() - started}
    _handler_imports()
    import torch
    from transformers import AutoModelForCausalLM

    from fedbiot_pl.algorithms import resolve_algorithm
    from fedbiot_pl.flower.client_model import client_views, load_client_model, read_settings
    from fedbiot_pl.model.views import ModelViews  # noqa: F401 - client_views imports it lazily

    dtype = getattr(torch, read_settings(folder).dtype)
    resolved = resolve_algorithm(algorithm)
    before, anon_before = _rss(), _anon()
    started = time.perf_counter()
    if item == "mmap_load":
        model = load_client_model(folder)
    elif item == "copy_load":
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
    elif item == "views":
        model = client_views(folder, resolved)
    else:
        raise ValueError(f"unknown item {item!r}")
    seconds = time.perf_counter() - started
    result = {"seconds": seconds, "rss_bytes": _rss() - before, "torch_threads": torch.get_num_threads()}
    if item != "views":  # read every weight once (as a fit does): what stays resident, and how much is private
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.sum()
        result["rss_touched_bytes"] = _rss() - before
        result["anon_touched_bytes"] = _anon() - anon_before
    del model
    return result


def run_child(item: str, folder: Path, algorithm: str) -> dict[str, Any]:
    """Run :func:`child` in a fresh Python process; its result plus ``process_seconds`` (the whole child)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", item, "--folder", str(folder),
               "--algorithm", algorithm]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"child {item} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = wall
    return result


def export_model(model: str, algorithm: str, workdir: Path) -> Path:
    """The client model of ``train.py fit --model.split.model <model>`` (and ``algorithm``), exported once.

    The data's tokenizer follows the model through the CLI's link (a ``.gguf`` file's own tokenizer).
    """
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(model.split(":", 1)[-1]).name)
    folder = workdir / f"client_model_{slug}_{algorithm}"
    from fedbiot_pl.flower.client_model import is_exported
    from fedbiot_pl.flower.export import export_for_args

    if is_exported(folder):
        return folder

    args = ["--model.split.model", model]
    if algorithm != "fedbiot":
        args += ["--federated.algorithm", algorithm]
    workdir.mkdir(parents=True, exist_ok=True)
    export_for_args(args, folder)
    return folder


def measure(folder: Path, algorithm: str, repeats: int) -> dict[str, Any]:
    """Every item ``repeats`` times (in the order of :data:`ITEMS` each repeat), each in a fresh process.

    Returns:
        ``runs`` (every child's result per item), ``median`` (per item: seconds, and RSS MB for the
        loads), ``ratio_copy_over_mmap`` (seconds and RSS) and ``model_file_mb``.
    """
    runs: dict[str, list[dict[str, Any]]] = {item: [] for item in ITEMS}
    for repeat in range(repeats):
        for item in ITEMS:
            result = run_child(item, folder, algorithm)
            runs[item].append(result)
            rss = f", RSS +{result['rss_bytes'] / MB:.1f} MB" if "rss_bytes" in result else ""
            print(f"repeat {repeat + 1}/{repeats} {item}: {result['seconds']:.3f} s{rss}", file=sys.stderr)
    median: dict[str, dict[str, float]] = {}
    for item, results in runs.items():
        median[item] = {"seconds": statistics.median(r["seconds"] for r in results),
                        "process_seconds": statistics.median(r["process_seconds"] for r in results)}
        for key in ("rss", "rss_touched", "anon_touched"):
            if f"{key}_bytes" in results[0]:
                median[item][f"{key}_mb"] = statistics.median(r[f"{key}_bytes"] for r in results) / MB
    ratio = {"seconds": median["copy_load"]["seconds"] / median["mmap_load"]["seconds"],
             "rss": median["copy_load"]["rss_mb"] / median["mmap_load"]["rss_mb"]
             if median["mmap_load"]["rss_mb"] > 0 else float("inf")}
    from fedbiot_pl.flower.client_model import model_dir_size, read_settings

    settings = read_settings(folder)
    return {"runs": runs, "median": median, "ratio_copy_over_mmap": ratio,
            "model_file_mb": (folder / "model.safetensors").stat().st_size / MB,
            "model_folder_mb": model_dir_size(folder) / MB,
            "client_layers": settings.num_layers, "dtype": settings.dtype}


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help="a train.py fit --model.split.model value")
    p.add_argument("--algorithm", default="fedbiot", help="the algorithm whose client model is exported")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, help="JSON results file")
    p.add_argument("--workdir", type=Path, help="folder for the exported client model (default: a temporary one)")
    p.add_argument("--child", choices=ITEMS, help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Export, measure, print the medians and write ``--out``; return the results."""
    args = parser().parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.folder, args.algorithm)))
        return None
    load = os.getloadavg()[0]  # the machine's load: these timings scatter with it
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="flower_startup_"))
    try:
        started = time.perf_counter()
        folder = export_model(args.model, args.algorithm, workdir)
        export_seconds = time.perf_counter() - started
        results = measure(folder, args.algorithm, args.repeats)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    results.update(model=args.model, algorithm=args.algorithm, repeats=args.repeats,
                   export_seconds=export_seconds, omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
                   load_average_1min_at_start=load,
                   python=sys.version.split()[0])
    m = results["median"]
    print(f"model {args.model} ({args.algorithm}, {results['client_layers']} client layers, {results['dtype']}), "
          f"model file {results['model_file_mb']:.2f} MB; medians of {args.repeats}:")
    print(f"  import        {m['import']['seconds']:.3f} s")
    for item in ("mmap_load", "copy_load", "views"):
        touched = (f"; after reading every weight RSS +{m[item]['rss_touched_mb']:.1f} MB, of it private "
                   f"+{m[item]['anon_touched_mb']:.1f} MB" if "rss_touched_mb" in m[item] else "")
        print(f"  {item:<13} {m[item]['seconds']:.3f} s, RSS +{m[item]['rss_mb']:.1f} MB{touched}")
    ratio = results["ratio_copy_over_mmap"]
    print(f"  copy / mmap: {ratio['seconds']:.2f}x time, {ratio['rss']:.2f}x RSS")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
