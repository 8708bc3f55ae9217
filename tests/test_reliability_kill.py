"""SIGKILL at random points of a real ``python train.py fit`` run; ``--ckpt_path last`` continues it
to exactly the adapter, metrics and checkpoints of an uninterrupted run.

The kill points are drawn from a seeded RNG over (point, epoch, client, step, file): mid client
fit, mid alignment and mid checkpoint write (after the temporary file, before its rename). Each
process is ``train.py`` started through the fault launcher (``python -m fedbiot_pl.testing.launch
'<faults>' fit ...``) with the kill points not yet survived; the first one it reaches kills it, and the
same command resumes it. The uninterrupted reference is a plain ``python train.py fit ...``.
"""

import csv
import json
import os
import random
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import CLIENTS, PRE, ROUNDS, STEPS, TINY_RUN, train

PHASES = ("client_step", "align_step", "file_write")


def kill_points(seed: int, per_kind: int = 2) -> list[dict]:
    """``per_kind`` distinct kill points of each kind, in the order a run reaches them."""
    rng, points = random.Random(seed), {}
    for phase in PHASES:
        chosen = 0
        while chosen < per_kind:
            epoch = rng.randrange(PRE, PRE + ROUNDS) if phase == "client_step" else rng.randrange(PRE + ROUNDS)
            point = {"point": phase, "action": "kill"}
            if phase == "client_step":
                point.update(round=epoch - PRE, client=rng.randrange(CLIENTS), step=rng.randrange(STEPS))
            elif phase == "align_step":
                point.update(epoch=epoch, step=rng.randrange(STEPS))
            else:
                # round checkpoints are named by round, counted from 1; a pre-alignment epoch writes only last.ckpt
                round_file = f"round-{epoch - PRE + 1:04d}.ckpt" if epoch >= PRE else "last.ckpt"
                point.update(epoch=epoch, name=rng.choice([round_file, "last.ckpt"]))
            key = (epoch, PHASES.index(phase), point.get("client", 0), point.get("step", 0),
                   point.get("name", "") == "last.ckpt")
            if key not in points:
                points[key], chosen = point, chosen + 1
    return [points[key] for key in sorted(points)]


def metric_rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as file:
        return [{k: v for k, v in row.items() if k != "round/client_seconds"} for row in csv.DictReader(file)]


def summary(run: Path) -> dict:
    data = json.loads((run / "final_adapter" / "federated_summary.json").read_text())
    for entry in data["rounds"]:
        entry.pop("round/client_seconds")
    return data


@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_uninterrupted_result(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_RUN)
    reference = train(tmp_path / "reference", config, [], resume=False)  # runs alongside the killed chain

    remaining, survived = kill_points(seed=3), []
    assert len(remaining) == 6
    while True:
        process = train(tmp_path / "killed", config, remaining, resume=True)
        _, err = process.communicate(timeout=600)
        if process.returncode != -signal.SIGKILL:
            break
        survived.append(remaining.pop(0))
    assert process.returncode == 0, err[-3000:]
    assert not remaining and len(survived) == 6, (survived, remaining)
    assert reference.wait(timeout=600) == 0, reference.stderr.read()[-3000:]

    ref, run = tmp_path / "reference" / "fedbiot" / "version_0", tmp_path / "killed" / "fedbiot" / "version_0"
    assert sorted(p.name for p in (tmp_path / "killed" / "fedbiot").iterdir()) == ["version_0"]  # one run folder
    for name in ("compressed_lora.safetensors", "adapfu/adapter_model.safetensors"):
        expected, got = load_file(ref / "final_adapter" / name), load_file(run / "final_adapter" / name)
        assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    assert metric_rows(run) == metric_rows(ref)
    assert summary(run) == summary(ref)
    # the same checkpoint files (no -v1 copies, no temporary files left), with the same weights
    assert sorted(os.listdir(run / "checkpoints")) == sorted(os.listdir(ref / "checkpoints"))
    expected = torch.load(ref / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    got = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    print(f"\nkills survived: {len(survived)}: {survived}")
