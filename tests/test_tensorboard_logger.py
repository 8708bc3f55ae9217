"""Lightning's TensorBoardLogger gets the metrics of the CSV, under the same names, continues a
resumed run in its folder without the interrupted epoch's events, and the end of fit draws
training.png from the CSV logger's metrics.csv (and nothing without one)."""

import csv
import logging
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from fedbiot_pl.artifacts.csv_logger import AtomicCSVLogger
from fedbiot_pl.artifacts.logger_resume import continue_run
from fedbiot_pl.artifacts.training_plot import read_metrics, training_series
from fedbiot_pl.callbacks import FederatedLoop
from fedbiot_pl.datamodules.epoch_sampler import EpochShuffleSampler
from fedbiot_pl.model.views import ModelViews
from fedbiot_pl.modules import EmulatorAlignmentModule
from fedbiot_pl.testing.faults import InjectedCrash
from tests.helpers import LORA_PER_LAYER
from tests.toy_data import ToyFederatedData

EventAccumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator").EventAccumulator

DOWN = 3 * 4 * LORA_PER_LAYER * 4  # emulator + adapter LoRA (4 layers, fp32) to 3 clients
UP = 3 * 2 * LORA_PER_LAYER * 4  # adapter LoRA (2 layers) from 3 clients

pytestmark = pytest.mark.usefixtures("one_thread")


class EpochOrderedData(ToyFederatedData):
    """The public order a pure function of (seed, epoch), as the real datamodule's: resumable."""

    def train_dataloader(self) -> DataLoader:
        rows = super().train_dataloader().dataset
        return DataLoader(rows, batch_size=self.batch_size, sampler=EpochShuffleSampler(len(rows), seed=5),
                          generator=torch.Generator().manual_seed(0))  # no draw from the global random state


def fit(folder, loggers, ckpt_path=None, align_steps=1):
    """One pre-alignment epoch and two rounds of 3 clients; LoRA dropout on; a checkpoint per epoch."""
    torch.manual_seed(0)
    split = ModelViews("embedded:models/stories260K", adapter_layers=2, drop_rate=0.2, lora_dropout=0.1)
    module = EmulatorAlignmentModule(split, kl_weight=1.0, lr=1e-2)
    loop = FederatedLoop(rounds=2, pre_alignment_rounds=1, align_steps=align_steps, local_steps=1,
                         client_accumulate_grad_batches=1, export_final_adapter=False)
    checkpoint = ModelCheckpoint(dirpath=folder / "ckpt", save_last=True, every_n_epochs=1)
    for logger in loggers:
        continue_run(logger, ckpt_path)
    trainer = L.Trainer(accelerator="cpu", logger=loggers, callbacks=[loop, checkpoint], log_every_n_steps=1,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=folder)
    trainer.fit(module, datamodule=EpochOrderedData(vocab=512), ckpt_path=ckpt_path)
    return loop


def scalars(log_dir, skip=("hp_metric",)):
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"] if tag not in skip
    }


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """One run logging to the CSV logger and TensorBoard at once."""
    folder = tmp_path_factory.mktemp("both")
    loop = fit(folder, [AtomicCSVLogger(folder, name="csv"), TensorBoardLogger(folder, name="tb")])
    with open(folder / "csv" / "version_0" / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    return folder, loop, rows, scalars(folder / "tb" / "version_0")


def test_tensorboard_gets_the_csv_metrics_under_the_same_names(both):
    _, loop, rows, tb = both
    assert set(tb) == set(rows[0]) - {"step"}  # the CSV's step column is TensorBoard's x axis
    assert {"align/l2", "align/kl", "round/client_loss", "client/2/loss", "comm/bytes_down"} <= set(tb)
    for tag, points in tb.items():
        logged = [(int(row["step"]), float(row[tag])) for row in rows if row[tag] != ""]
        assert [step for step, _ in points] == [step for step, _ in logged], tag
        np.testing.assert_allclose([v for _, v in points], [v for _, v in logged], rtol=1e-6, err_msg=tag)
    assert [v for _, v in tb["comm/bytes_down"]] == [DOWN, DOWN]
    assert [v for _, v in tb["comm/bytes_up"]] == [UP, UP]
    assert [v for _, v in tb["comm/total_bytes"]] == [DOWN + UP, 2 * (DOWN + UP)]
    np.testing.assert_allclose([v for _, v in tb["round/client_loss"]],
                               [entry["round/client_loss"] for entry in loop.history], rtol=1e-6)


def test_end_of_fit_draws_training_png_next_to_metrics_csv(both):
    folder, loop, _, _ = both
    run = folder / "csv" / "version_0"
    assert (run / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (folder / "tb" / "version_0" / "training.png").exists()
    series = training_series(read_metrics(run / "metrics.csv"))
    assert series.pre_alignment == 1 and series.rounds == [-1, 0, 1]
    np.testing.assert_allclose(series.client_loss[1:], [e["round/client_loss"] for e in loop.history])
    np.testing.assert_allclose(series.bytes_down, [np.nan, DOWN, 2 * DOWN])


def test_resumed_tensorboard_run_continues_in_place_without_the_interrupted_epoch(tmp_path, faults, caplog):
    caplog.set_level(logging.INFO, logger="fedbiot_pl.artifacts.training_plot")
    reference_loop = fit(tmp_path / "reference", [TensorBoardLogger(tmp_path / "reference", name="tb")],
                         align_steps=2)
    expected = scalars(tmp_path / "reference" / "tb" / "version_0", skip=("hp_metric", "round/client_seconds"))
    # TensorBoard only: no metrics.csv, so no training.png, and one line that says so
    assert not list((tmp_path / "reference").rglob("training.png"))
    assert sum("training.png not written: the run has no CSV logger" in r.message for r in caplog.records) == 1

    crashed = tmp_path / "crashed"
    faults([{"point": "align_step", "epoch": 2, "step": 1, "action": "crash"}])
    with pytest.raises(InjectedCrash):  # round 1 done, its first alignment step logged, then killed
        fit(crashed, [AtomicCSVLogger(crashed, name="csv"), TensorBoardLogger(crashed, name="tb")], align_steps=2)
    faults.clear()
    assert max(step for points in scalars(crashed / "tb" / "version_0").values() for step, _ in points) == 4

    loggers = [AtomicCSVLogger(crashed, name="csv"), TensorBoardLogger(crashed, name="tb")]
    loop = fit(crashed, loggers, ckpt_path="last", align_steps=2)
    assert [logger.version for logger in loggers] == [0, 0]  # the crashed run's folders
    assert scalars(crashed / "tb" / "version_0", skip=("hp_metric", "round/client_seconds")) == expected
    # training.png of the resumed run holds the rows from before the resume
    series = training_series(read_metrics(crashed / "csv" / "version_0" / "metrics.csv"))
    assert series.rounds == [-1, 0, 1] and (crashed / "csv" / "version_0" / "training.png").is_file()
    reference_losses = [entry["round/client_loss"] for entry in reference_loop.history]
    assert [entry["round/client_loss"] for entry in loop.history] == reference_losses
    np.testing.assert_allclose(series.client_loss[1:], reference_losses)
    np.testing.assert_allclose(series.align["kl"][0], np.mean([v for _, v in expected["align/kl"][:2]]), rtol=1e-6)


def test_continue_run_picks_the_checkpoints_run_folder(tmp_path):
    for version in (0, 3):
        (tmp_path / "tb" / f"version_{version}" / "checkpoints").mkdir(parents=True)
    last = TensorBoardLogger(tmp_path, name="tb")
    continue_run(last, "last")
    assert last.version == 3
    by_path = TensorBoardLogger(tmp_path, name="tb")
    continue_run(by_path, tmp_path / "tb" / "version_0" / "checkpoints" / "last.ckpt")
    assert by_path.version == 0
    fresh = TensorBoardLogger(tmp_path, name="tb")
    continue_run(fresh, None)
    assert fresh.version == 4
    fixed = TensorBoardLogger(tmp_path, name="tb", version=7)
    continue_run(fixed, "last")
    assert fixed.version == 7
    continue_run(object(), "last")  # loggers without run folders are left alone


def test_only_loggers_that_keep_the_folders_rows_continue_it(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    from fedbiot_pl.artifacts.csv_logger import AtomicCSVLogger

    (tmp_path / "run" / "version_0" / "checkpoints").mkdir(parents=True)
    plain = CSVLogger(tmp_path, name="run")  # Lightning's: would delete the folder's metrics.csv
    continue_run(plain, "last")
    assert plain.version == 1
    atomic = AtomicCSVLogger(tmp_path, name="run")
    continue_run(atomic, "last")
    assert atomic.version == 0


def test_evaluations_of_a_round_checkpoint_log_below_its_run(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    from fedbiot_pl.artifacts.logger_resume import evaluate_into_run

    (tmp_path / "run" / "version_2" / "checkpoints").mkdir(parents=True)
    ckpt = tmp_path / "run" / "version_2" / "checkpoints" / "round-epoch=3.ckpt"
    for logger in (CSVLogger(tmp_path, name="run"), TensorBoardLogger(tmp_path, name="run")):
        evaluate_into_run(logger, ckpt, "test")
        assert Path(logger.log_dir) == tmp_path / "run" / "version_2" / "eval" / "test-round-epoch=3"
    copied = CSVLogger(tmp_path / "cwd", name="run")  # a run folder elsewhere (copied, renamed) is found too
    evaluate_into_run(copied, tmp_path / "moved" / "checkpoints" / "last.ckpt", "validate")
    assert Path(copied.log_dir) == tmp_path / "moved" / "eval" / "validate-last"
    loose = CSVLogger(tmp_path, name="run")
    evaluate_into_run(loose, tmp_path / "other.ckpt", "validate")
    assert loose.version == 3  # a checkpoint outside a run's checkpoints/ folder: Lightning's next version


def test_last_skips_newer_folders_without_a_checkpoint(tmp_path, caplog):
    from fedbiot_pl.artifacts.csv_logger import resume_version

    assert resume_version(tmp_path, "last") is None  # nothing yet: a new run
    (tmp_path / "version_0" / "checkpoints").mkdir(parents=True)
    assert resume_version(tmp_path, "last") == 0  # stopped before its first round: starts afresh there
    (tmp_path / "version_0" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (tmp_path / "version_1").mkdir()  # a command that failed at start-up
    (tmp_path / "version_2" / "checkpoints").mkdir(parents=True)
    with caplog.at_level(logging.WARNING):
        assert resume_version(tmp_path, "last") == 0
    assert "version_1, version_2" in caplog.text and "continuing version_0" in caplog.text
