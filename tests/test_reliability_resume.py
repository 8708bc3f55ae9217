"""Resume: a run crashed at any point and resumed from its last round checkpoint ends exactly as an
uninterrupted run (in-process crashes here; real SIGKILLs in test_reliability_kill.py)."""

import csv
import os
import pickle
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from fedbiot_pl.artifacts.checkpoint_io import AtomicCheckpointIO
from fedbiot_pl.artifacts.csv_logger import AtomicCSVLogger, resume_version
from fedbiot_pl.artifacts.export import atomic_write
from fedbiot_pl.callbacks import FederatedLoop
from fedbiot_pl.datamodules.epoch_sampler import EpochShuffleSampler
from fedbiot_pl.model.views import ModelViews
from fedbiot_pl.modules import EmulatorAlignmentModule
from fedbiot_pl.testing.faults import InjectedCrash
from tests.toy_data import ToyFederatedData

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class EpochOrderedData(ToyFederatedData):
    """The toy data with the public order a pure function of (seed, epoch), as the real datamodule,
    and a validation split (so that every epoch also validates before its round checkpoint)."""

    def train_dataloader(self) -> DataLoader:
        rows = super().train_dataloader().dataset
        return DataLoader(rows, batch_size=self.batch_size, sampler=EpochShuffleSampler(len(rows), seed=5),
                          generator=torch.Generator().manual_seed(0))

    def val_dataloader(self) -> DataLoader:
        rows = self._loader(6, seed=77).dataset
        return DataLoader(rows, batch_size=self.batch_size, generator=torch.Generator().manual_seed(0))


def fit(folder, ckpt_path=None):
    """Two rounds after one pre-alignment epoch, LoRA dropout on, a checkpoint after every epoch."""
    torch.manual_seed(0)
    split = ModelViews("embedded:models/stories260K", adapter_layers=2, drop_rate=0.2, lora_dropout=0.1)
    module = EmulatorAlignmentModule(split, kl_weight=1.0, lr=1e-2)
    loop = FederatedLoop(rounds=2, pre_alignment_rounds=1, align_steps=2, local_steps=2,
                         client_accumulate_grad_batches=1, client_lr=2e-2, proximal_weight=0.1)
    checkpoint = ModelCheckpoint(dirpath=folder / "ckpt", filename="round-{epoch}", save_last=True, save_top_k=-1,
                                 every_n_epochs=1,
                                 enable_version_counter=False)
    trainer = L.Trainer(accelerator="cpu", logger=AtomicCSVLogger(folder, name="run", version=0),
                        plugins=[AtomicCheckpointIO()], callbacks=[loop, checkpoint], log_every_n_steps=1,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=folder)
    trainer.fit(module, datamodule=EpochOrderedData(vocab=512), ckpt_path=ckpt_path)
    return loop, split


def exported(folder):
    return load_file(folder / "run" / "version_0" / "final_adapter" / "compressed_lora.safetensors")


def metric_rows(folder):
    with open(folder / "run" / "version_0" / "metrics.csv") as file:
        return [{k: v for k, v in row.items() if k != "round/client_seconds"} for row in csv.DictReader(file)]


def without_timing(history):
    return [{k: v for k, v in entry.items() if k != "round/client_seconds"} for entry in history]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    loop, split = fit(folder)
    return folder, loop, split.lora_state("all"), metric_rows(folder)


@pytest.mark.parametrize(
    "crash",
    [
        {"point": "client_step", "round": 1, "client": 1, "step": 1},  # mid client fit
        {"point": "align_step", "epoch": 1, "step": 1},  # mid alignment, after the round's FedAvg
        {"point": "file_write", "epoch": 2, "name": "last.ckpt"},  # after round-epoch=2.ckpt, before last.ckpt
        {"point": "file_write", "name": "compressed_lora.safetensors"},  # after the last checkpoint, mid-export
    ],
    ids=["mid-client-fit", "mid-alignment", "mid-checkpoint-write", "mid-export"],
)
def test_crashed_run_resumes_to_the_same_adapter_and_metrics(tmp_path, faults, crash, reference):
    _, reference_loop, expected, expected_rows = reference
    faults([{**crash, "action": "crash"}])
    with pytest.raises(InjectedCrash):
        fit(tmp_path / "crashed")
    faults.clear()
    assert not list((tmp_path / "crashed" / "ckpt").glob(".*.tmp"))  # the failed write left no temporary file
    loop, resumed = fit(tmp_path / "crashed", ckpt_path=tmp_path / "crashed" / "ckpt" / "last.ckpt")

    got, written = resumed.lora_state("all"), exported(tmp_path / "crashed")
    assert all(torch.equal(expected[key], got[key]) and torch.equal(expected[key], written[key]) for key in expected)
    assert without_timing(loop.history) == without_timing(reference_loop.history)
    assert loop.ledger == reference_loop.ledger
    assert metric_rows(tmp_path / "crashed") == expected_rows
    assert sum(1 for row in expected_rows if row.get("val/adapemu_loss")) == 3  # validated after every epoch


def test_round_checkpoint_holds_everything_a_resume_needs(reference):
    state = torch.load(reference[0] / "ckpt" / "round-epoch=1.ckpt", weights_only=True)
    loop_state = next(v for k, v in state["callbacks"].items() if k.startswith("FederatedLoop"))
    assert loop_state["epoch"] == 1 and set(loop_state["rng"]) >= {"python", "numpy", "torch"}
    # the round checkpoint holds the LoRA of both parts and the server optimizer state
    assert any(".layers.0." in key and "lora_A" in key for key in state["state_dict"])  # emulator
    assert any(".layers.3." in key and "lora_A" in key for key in state["state_dict"])  # adapter
    assert state["optimizer_states"] and state["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == 2


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "metrics.csv"
    target.write_text("old,complete\n")

    def half_then_crash(tmp):
        with open(tmp, "w") as file:
            file.write("new,trunc")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_crash)
    assert target.read_text() == "old,complete\n" and os.listdir(tmp_path) == ["metrics.csv"]
    atomic_write(target, lambda tmp: Path(tmp).write_text("new,complete\n"))
    assert target.read_text() == "new,complete\n" and os.listdir(tmp_path) == ["metrics.csv"]


class Payload:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_checkpoints_are_read_without_unpickling_code(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "epoch": 0}, tmp_path / "good.ckpt")
    assert torch.equal(io.load_checkpoint(tmp_path / "good.ckpt")["state_dict"]["w"], torch.ones(2))
    torch.save({"evil": Payload()}, tmp_path / "evil.ckpt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        io.load_checkpoint(tmp_path / "evil.ckpt")


def test_resume_version_finds_the_run_folder(tmp_path):
    root = tmp_path / "fedbiot"
    assert resume_version(root, "last") is None  # nothing yet: a new run
    for name in ("version_0", "version_2", "version_10", "notes"):
        (root / name / "checkpoints").mkdir(parents=True)
    assert resume_version(root, "last") == 10
    assert resume_version(root, root / "version_2" / "checkpoints" / "round-epoch=3.ckpt") == 2
    assert resume_version(root, tmp_path / "elsewhere.ckpt") is None
    assert resume_version(root, None) is None


def test_logger_keeps_the_rows_up_to_the_checkpoint_epoch(tmp_path):
    folder = tmp_path / "run" / "version_0"
    folder.mkdir(parents=True)
    (folder / "metrics.csv").write_text("a,epoch,step\n1.5,0,0\n,0,0\n2.5,1,1\n3.5,2,2\n")
    logger = AtomicCSVLogger(tmp_path, name="run", version=0)
    logger.resume_rows(1)  # the checkpoint of epoch 1: the row of epoch 2 was written after it
    logger.log_metrics({"a": 9.0, "epoch": 2}, step=2)
    logger.save()
    assert (folder / "metrics.csv").read_text().splitlines() == ["a,epoch,step", "1.5,0,0", ",0,0", "2.5,1,1",
                                                                 "9.0,2,2"]
    fresh = AtomicCSVLogger(tmp_path, name="run", version=0)  # not resumed: a new run overwrites
    fresh.log_metrics({"a": 1.0, "epoch": 0}, step=0)
    fresh.save()
    assert (folder / "metrics.csv").read_text().splitlines() == ["a,epoch,step", "1.0,0,0"]
