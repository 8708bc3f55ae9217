"""Helpers shared by several test modules (each test module imports them from here, never from another)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest

from fedbiot_pl.algorithms import FedBiOT
from fedbiot_pl.evaluation import sandbox
from fedbiot_pl.flower.processes import free_port  # noqa: F401  (the gloo tests' port)
from fedbiot_pl.model.views import ModelViews
from fedbiot_pl.modules import EmulatorAlignmentModule

ROOT = Path(__file__).resolve().parents[1]

# --- the `fedbiot-plan` command ---------------------------------------------------------------------------------
def plan_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``fedbiot-plan`` run in-process on ``argv``: its exit code, stdout and stderr."""
    from fedbiot_pl.plan import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def plan_json(capsys: pytest.CaptureFixture[str], *argv: str):
    """``fedbiot-plan ... --json``'s object (the command must succeed)."""
    code, out, err = plan_cli(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def plan_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """``fedbiot-plan``'s one-line error for bad ``argv`` (exit code 2, nothing on stdout)."""
    code, out, err = plan_cli(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("fedbiot-plan: error: ") and err.count("\n") == 1
    return err


# --- the federated loop on the real pretrained stories260K ------------------------------------------------------

# stories260K: q_proj 64->64 and v_proj 64->32 (4 KV heads x 8), r = 8
LORA_PER_LAYER = (8 * 64 + 64 * 8) + (8 * 64 + 32 * 8)


def server_trainer(tmp_path, loop, **kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=tmp_path, callbacks=[loop, *kwargs.pop("callbacks", [])],
                     enable_checkpointing=kwargs.pop("enable_checkpointing", False), **kwargs)


def make_module(kl_weight: float = 1.0) -> EmulatorAlignmentModule:
    # The real pretrained stories260K (5 layers): emulator = layers 0, 2; adapter = layers 3, 4.
    split = ModelViews("embedded:models/stories260K", adapter_layers=2, drop_rate=0.2)
    return EmulatorAlignmentModule(split, kl_weight=kl_weight, lr=1e-2)


class SpyFedBiOT(FedBiOT):
    """FedBiOT that records every aggregation (the algorithm object is the injection point)."""

    def __init__(self):
        self.calls = []

    def aggregate(self, uploads, weights):
        out = super().aggregate(uploads, weights)
        self.calls.append((uploads, list(weights), out))
        return out


# --- the sandbox ------------------------------------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="dropping to an unprivileged uid needs root")
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")

PROBLEM = {
    "prompt": "def add(a: int, b: int) -> int:\n    \"\"\"Sum of a and b.\"\"\"\n",
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
    "entry_point": "add",
}


def sandbox_processes(base: int) -> list[int]:
    """Pids of live processes whose real uid is one of the sandbox uids from ``base``."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            uid_line = next(line for line in Path(f"/proc/{entry}/status").read_text().splitlines()
                            if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        if base <= int(uid_line.split()[1]) < base + sandbox.UID_SLOTS:
            found.append(int(entry))
    return found


# --- a tiny real `python train.py fit` run (tests/test_reliability_kill.py, tests/test_hooks.py) -----------------

PRE, ROUNDS, CLIENTS, STEPS = 1, 3, 3, 2  # epochs 0..3; 2 client and 2 alignment batches each
TINY_RUN = f"""
trainer: {{enable_progress_bar: false, enable_model_summary: false, accumulate_grad_batches: 1}}
federated: {{rounds: {ROUNDS}, pre_alignment_rounds: {PRE}, local_steps: {STEPS}, align_steps: {STEPS},
            client_accumulate_grad_batches: 1}}
data: {{task_path: "embedded:data/alpaca/alpaca_sample.json", max_task_examples: 40, max_public_examples: 20,
       batch_size: 2, max_length: 160, num_clients: {CLIENTS}}}
"""
"""The YAML config (on top of configs/default.yaml) of the tiny run; not tests/conftest.py's ``TINY`` model."""


def train(save_dir: Path, config: Path, faults: list[dict], resume: bool) -> subprocess.Popen:
    """``train.py fit`` on ``config`` in a subprocess; with ``faults``, through the fault launcher."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    entry = ["-m", "fedbiot_pl.testing.launch", json.dumps(faults)] if faults else ["train.py"]
    args = [sys.executable, *entry, "fit", "--config", "configs/default.yaml", "--config", str(config),
            "--trainer.default_root_dir", str(save_dir), "--trainer.logger.init_args.save_dir", str(save_dir)]
    return subprocess.Popen(args + (["--ckpt_path", "last"] if resume else []), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
