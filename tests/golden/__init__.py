"""Golden outputs of the five algorithms: one seeded 2-round run each of the embedded stories260K default.

Shared by the recorder (``python -m tests.golden.record``) and the test that re-runs the same settings and
requires bit-identical results (``tests/test_golden_algorithms.py``). Per algorithm, ``tests/golden/<name>/``
holds

* ``lora.safetensors``: every tensor of ``<run>/final_adapter/compressed_lora.safetensors``;
* ``metrics.csv``: the rows of ``<run>/metrics.csv``, every column but the timings (compared as strings);
* ``ledger.json``: the communication ledger of ``<run>/final_adapter/federated_summary.json``.

``tests/golden/environment.json`` names the environment they were recorded in. Bit-identity holds across
processes and runs there, but not across CPU kernels: with the same torch, forcing AVX2 instead of AVX-512
(``ATEN_CPU_CAPABILITY=avx2``, or MKL's ``MKL_ENABLE_INSTRUCTIONS=AVX2``) moves LoRA values by ~1e-8. In
another environment, record the goldens at the commit before the change under test, then test the change.

The settings below are part of the golden outputs: change them and the outputs must be recorded again.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent
ALGORITHMS = ("fedbiot", "offsite_tuning", "fedot", "fedavg_lora", "fedprox")
# One pre-alignment epoch where the algorithm has an emulator (FedBiOT's first alignment, the one-shot
# distillation of offsite-tuning and FedOT); none for the full-model algorithms, which refuse it. On the
# 5-layer stories260K, offsite-tuning's and FedOT's emulator is the one middle layer itself, so their
# distillation losses are 0: the path runs, and the LoRA does not move.
PRE_ALIGNMENT_ROUNDS = {"fedbiot": 1, "offsite_tuning": 1, "fedot": 1, "fedavg_lora": 0, "fedprox": 0}
# On top of the embedded default and configs/algorithms/<name>.yaml (offsite-tuning's sets 1 client,
# fedprox's a proximal weight of 0.01, the others' 0 where the algorithm has no proximal term).
SETTINGS = [
    "--seed_everything", "7",
    "--federated.rounds", "2", "--federated.local_steps", "2", "--federated.align_steps", "1",
    "--data.max_task_examples", "30", "--data.max_public_examples", "10", "--data.batch_size", "2",
]
PACKAGES = ("fedbiot_pl", "fedbiot_pl.callbacks", "fedbiot_pl.modules", "fedbiot_pl.datamodules")


def environment() -> dict[str, str]:
    """What the bit-identity depends on besides the code: the libraries and the CPU kernels torch uses."""
    import platform
    from importlib.metadata import version

    return {"machine": platform.machine(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            **{package: version(package) for package in ("torch", "transformers", "peft", "lightning", "numpy")}}


def is_timing(column: str) -> bool:
    """Columns that measure time (``round/client_seconds``): they vary run to run and are not compared."""
    return "seconds" in column or "time" in column


@dataclass
class Outputs:
    """What is compared of one run."""

    lora: dict[str, torch.Tensor]
    metrics: list[dict[str, str]]
    ledger: dict

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.lora.items()}, str(folder / "lora.safetensors"))
        columns = list(self.metrics[0]) if self.metrics else []
        with open(folder / "metrics.csv", "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(self.metrics)
        (folder / "ledger.json").write_text(json.dumps(self.ledger, indent=1, sort_keys=True) + "\n")

    @classmethod
    def load(cls, folder: Path) -> Outputs:
        return cls(load_file(str(folder / "lora.safetensors")), metric_rows(folder / "metrics.csv"),
                   json.loads((folder / "ledger.json").read_text()))


def metric_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a ``metrics.csv`` as strings, without the timing columns."""
    with open(path, newline="") as file:
        return [{k: v for k, v in row.items() if not is_timing(k)} for row in csv.DictReader(file)]


def cli_args(algorithm: str, folder: Path) -> list[str]:
    from fedbiot_pl.cli import DEFAULT_CONFIG

    return [
        "fit", "--config", str(DEFAULT_CONFIG), "--config", str(ROOT / "configs" / "algorithms" / f"{algorithm}.yaml"),
        "--trainer.default_root_dir", str(folder), "--trainer.logger.init_args.save_dir", str(folder),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--federated.pre_alignment_rounds", str(PRE_ALIGNMENT_ROUNDS[algorithm]), *SETTINGS,
    ]


def foreign_packages() -> list[str]:
    """The toolkit's packages imported from outside this repository (``[]`` when all are this checkout's).

    An editable install made from another checkout maps ``fedbiot_pl.callbacks``, ``.modules`` and
    ``.datamodules`` to that checkout's folders even when ``fedbiot_pl`` itself comes from here (the
    current directory): the golden runs would then check that code, not this working tree.
    """
    import importlib

    found = []
    for name in PACKAGES:
        origin = Path(importlib.import_module(name).__file__).resolve().parent
        if not origin.is_relative_to(ROOT):
            found.append(f"{name} from {origin}")
    return found


def run(algorithm: str, folder: Path) -> Outputs:
    """Fit ``algorithm`` with the golden settings in ``folder`` (one intra-op thread) and read its outputs.

    Raises:
        RuntimeError: the toolkit is imported from another checkout (reinstall with ``pip install -e .``).
    """
    from fedbiot_pl.cli import main

    foreign = foreign_packages()
    if foreign:
        raise RuntimeError(f"the golden runs must run this checkout's code ({ROOT}), but imported "
                           f"{'; '.join(foreign)}: run `pip install -e .` in {ROOT}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: fastest, and the results do not depend on the machine's core count
    try:
        made = main(cli_args(algorithm, Path(folder)))
    finally:
        torch.set_num_threads(threads)
    run_dir = Path(made.trainer.log_dir)
    summary = json.loads((run_dir / "final_adapter" / "federated_summary.json").read_text())
    return Outputs(load_file(str(run_dir / "final_adapter" / "compressed_lora.safetensors")),
                   metric_rows(run_dir / "metrics.csv"), summary["ledger"])


def first_difference(expected: Outputs, got: Outputs) -> str | None:
    """The first place where ``got`` differs from ``expected`` (LoRA, then metrics, then ledger), or ``None``."""
    missing, extra = sorted(set(expected.lora) - set(got.lora)), sorted(set(got.lora) - set(expected.lora))
    if missing or extra:
        return f"LoRA keys differ: missing {missing[:3]}, unexpected {extra[:3]}"
    for key in sorted(expected.lora):
        want, have = expected.lora[key], got.lora[key]
        if want.dtype != have.dtype or want.shape != have.shape:
            return f"LoRA tensor {key}: {have.dtype} {tuple(have.shape)}, golden {want.dtype} {tuple(want.shape)}"
        if not torch.equal(want, have):
            diff = (want.double() - have.double()).abs()
            return (f"LoRA tensor {key}: {int((diff > 0).sum())} of {diff.numel()} values differ, "
                    f"max |diff| {diff.max().item():.3g}")
    if len(expected.metrics) != len(got.metrics):
        return f"metrics.csv: {len(got.metrics)} rows, golden {len(expected.metrics)}"
    for index, (want, have) in enumerate(zip(expected.metrics, got.metrics, strict=True)):
        if want != have:
            columns = [c for c in dict.fromkeys([*want, *have]) if want.get(c) != have.get(c)]
            shown = ", ".join(f"{c}: {have.get(c)!r} (golden {want.get(c)!r})" for c in columns[:3])
            return f"metrics.csv row {index} (epoch {want.get('epoch')}): {shown}"
    # Totals the ledger gained after the goldens were recorded are new figures, not changed ones.
    ledger = {k: v for k, v in got.ledger.items() if k in expected.ledger}
    if expected.ledger != ledger:
        keys = [k for k in dict.fromkeys([*expected.ledger, *ledger]) if expected.ledger.get(k) != ledger.get(k)]
        return "ledger: " + ", ".join(f"{k}: {got.ledger.get(k)!r} (golden {expected.ledger.get(k)!r})" for k in keys)
    return None
