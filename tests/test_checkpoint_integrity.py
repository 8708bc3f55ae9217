"""Damaged checkpoints: checksummed when written, named when found, replaced by the newest intact one."""

import hashlib
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

from fedbiot_pl.artifacts.checkpoint_integrity import (
    DamagedCheckpointError,
    checkpoint_problem,
    newest_intact,
    resume_path,
)
from fedbiot_pl.artifacts.checkpoint_io import AtomicCheckpointIO
from fedbiot_pl.cli import DEFAULT_CONFIG, main
from fedbiot_pl.errors import ConfigError
from fedbiot_pl.testing.faults import InjectedCrash

pytestmark = pytest.mark.usefixtures("one_thread")


def save(folder: Path, name: str, epoch: int, value: float = 1.0) -> Path:
    path = folder / name
    AtomicCheckpointIO().save_checkpoint({"epoch": epoch, "global_step": 2 * epoch,
                                          "state_dict": {"w": torch.full((64,), value)}}, path)
    return path


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path, size: int = 300) -> None:
    with open(path, "r+b") as file:
        file.truncate(size)


def test_checkpoint_io_writes_a_sha256sum_sidecar_and_removes_it_with_the_checkpoint(tmp_path):
    path = save(tmp_path, "round-epoch=0.ckpt", 0)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert (tmp_path / "round-epoch=0.ckpt.sha256").read_text() == f"{digest}  round-epoch=0.ckpt\n"
    AtomicCheckpointIO().remove_checkpoint(path)  # what ModelCheckpoint calls for a checkpoint out of its top k
    assert os.listdir(tmp_path) == []


def test_a_flipped_byte_loads_without_complaint_but_the_checksum_names_it(tmp_path):
    path = save(tmp_path, "last.ckpt", 1)
    assert checkpoint_problem(path) is None
    flip_byte(path)
    torch.load(path, weights_only=True)  # torch itself does not notice: hence the sidecar
    problem = checkpoint_problem(path)
    assert "SHA-256" in problem and "last.ckpt.sha256" in problem


def test_checkpoints_without_a_checksum_are_checked_by_loading_them_whole(tmp_path):
    legacy = tmp_path / "round-epoch=0.ckpt"
    torch.save({"epoch": 0, "global_step": 0, "state_dict": {"w": torch.ones(64)}}, legacy)  # before checksums
    assert checkpoint_problem(legacy) is None
    truncate(legacy)
    assert checkpoint_problem(legacy).startswith("it cannot be read (300 bytes;")


def test_a_symlinked_last_is_checked_through_its_target(tmp_path):
    target = save(tmp_path, "round-epoch=3.ckpt", 3)
    (tmp_path / "last.ckpt").symlink_to("round-epoch=3.ckpt")  # ModelCheckpoint(save_last="link")
    assert checkpoint_problem(tmp_path / "last.ckpt") is None
    flip_byte(target)
    assert "round-epoch=3.ckpt.sha256" in checkpoint_problem(tmp_path / "last.ckpt")


@pytest.mark.parametrize("name", ["last.ckpt", "last.ckpt.sha256"])
def test_a_crash_between_checkpoint_and_checksum_leaves_a_file_that_checks(tmp_path, faults, name):
    save(tmp_path, "last.ckpt", 1, value=1.0)
    faults([{"point": "file_write", "name": name, "action": "crash"}])
    with pytest.raises(InjectedCrash):
        save(tmp_path, "last.ckpt", 2, value=2.0)
    # before the rename: the old checkpoint; after it, before the new checksum: the new one; no sidecar
    # describes another content than its file's, so both check as intact
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt"]
    assert checkpoint_problem(tmp_path / "last.ckpt") is None
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["epoch"] == (1 if name == "last.ckpt" else 2)


def test_newest_intact_ranks_by_recorded_progress_not_by_file_time(tmp_path):
    for epoch in range(4):
        save(tmp_path, f"round-epoch={epoch}.ckpt", epoch)
    os.utime(tmp_path / "round-epoch=0.ckpt", (2e9, 2e9))  # a copy between machines reorders the times
    flip_byte(tmp_path / "round-epoch=3.ckpt")
    truncate(tmp_path / "round-epoch=2.ckpt")
    path, epoch, problems = newest_intact([tmp_path])
    assert (path.name, epoch) == ("round-epoch=1.ckpt", 1)
    assert sorted(p.name for p in problems) == ["round-epoch=2.ckpt", "round-epoch=3.ckpt"]


def test_resume_path_picks_an_intact_last_and_keeps_explicit_intact_paths(tmp_path):
    save(tmp_path, "round-epoch=0.ckpt", 0)
    last = save(tmp_path, "last.ckpt", 0)
    assert resume_path("last", [tmp_path]) == last
    assert resume_path(tmp_path / "round-epoch=0.ckpt", []) == tmp_path / "round-epoch=0.ckpt"
    assert resume_path(None, [tmp_path]) is None
    assert resume_path("last", [tmp_path / "nothing-yet"]) == "last"  # a new run: Lightning starts it


def test_damaged_last_falls_back_to_the_newest_intact_checkpoint_with_a_warning(tmp_path, caplog):
    for epoch in range(3):
        save(tmp_path, f"round-epoch={epoch}.ckpt", epoch)
    truncate(save(tmp_path, "last.ckpt", 2))
    flip_byte(tmp_path / "round-epoch=2.ckpt")
    with caplog.at_level(logging.WARNING):
        assert resume_path("last", [tmp_path]) == tmp_path / "round-epoch=1.ckpt"
    assert f"{tmp_path / 'last.ckpt'} is damaged: its SHA-256" in caplog.text
    assert f"resuming from {tmp_path / 'round-epoch=1.ckpt'} (epoch 1)" in caplog.text
    assert "round-epoch=2.ckpt: its SHA-256" in caplog.text
    (tmp_path / "last.ckpt").unlink()  # a folder with round checkpoints but no last.ckpt: not a new run
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert resume_path("last", [tmp_path]) == tmp_path / "round-epoch=1.ckpt"
    assert "holds no last.ckpt" in caplog.text


def test_no_intact_checkpoint_stops_instead_of_starting_over(tmp_path):
    truncate(save(tmp_path, "round-epoch=0.ckpt", 0))
    flip_byte(save(tmp_path, "last.ckpt", 0))
    with pytest.raises(DamagedCheckpointError) as error:
        resume_path("last", [tmp_path])
    message = str(error.value)
    assert isinstance(error.value, ConfigError)
    assert f"{tmp_path / 'last.ckpt'} is damaged" in message and "no other checkpoint there is intact" in message
    assert f"{tmp_path / 'round-epoch=0.ckpt'}: it cannot be read" in message and "Not starting over" in message


def test_damaged_explicit_path_is_refused_naming_it_and_the_alternative(tmp_path):
    save(tmp_path, "round-epoch=0.ckpt", 0)
    save(tmp_path, "round-epoch=1.ckpt", 1)
    flip_byte(save(tmp_path, "round-epoch=2.ckpt", 2))
    with pytest.raises(DamagedCheckpointError,
                       match="Checkpoint .*round-epoch=2.ckpt is damaged: its SHA-256") as error:
        resume_path(tmp_path / "round-epoch=2.ckpt", [])
    assert f"--ckpt_path {tmp_path / 'round-epoch=1.ckpt'} (epoch 1)" in str(error.value)
    with pytest.raises(DamagedCheckpointError, match="round-epoch=9.ckpt does not exist.\n.*round-epoch=1.ckpt"):
        resume_path(tmp_path / "round-epoch=9.ckpt", [])


# ---------------------------------------------------------------------- through the CLI
TINY = """
trainer: {enable_progress_bar: false, enable_model_summary: false, accumulate_grad_batches: 1}
federated: {rounds: 2, pre_alignment_rounds: 1, local_steps: 1, align_steps: 1, client_accumulate_grad_batches: 1}
data: {task_path: "embedded:data/alpaca/alpaca_sample.json", max_task_examples: 12, max_public_examples: 6,
       batch_size: 2, max_length: 160, num_clients: 2}
"""


def fit(root: Path, *extra: str):
    (root / "tiny.yaml").write_text(TINY)
    return main(["fit", "--config", str(DEFAULT_CONFIG), "--config", str(root / "tiny.yaml"),
                 "--trainer.default_root_dir", str(root), "--trainer.logger.init_args.save_dir", str(root), *extra])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A whole tiny run: epochs 0 (pre-alignment), 1 and 2 (rounds 1 and 2): round-0001.ckpt, round-0002.ckpt, last."""
    root = tmp_path_factory.mktemp("run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    fit(root)
    torch.set_num_threads(threads)
    return root


@pytest.mark.slow
def test_cli_resume_last_skips_damaged_checkpoints_and_finishes_the_run(finished_run, tmp_path, caplog):
    shutil.copytree(finished_run / "fedbiot", tmp_path / "fedbiot")
    checkpoints = tmp_path / "fedbiot" / "version_0" / "checkpoints"
    expected = torch.load(checkpoints / "last.ckpt", weights_only=True)["state_dict"]
    truncate(checkpoints / "last.ckpt", 40_000)  # what made fsspec's seek fail with Errno 22
    flip_byte(checkpoints / "round-0002.ckpt")
    with caplog.at_level(logging.WARNING):
        cli = fit(tmp_path, "--ckpt_path", "last")
    assert cli.trainer.ckpt_path == str(checkpoints / "round-0001.ckpt")
    assert f"{checkpoints / 'last.ckpt'} is damaged" in caplog.text and "(epoch 1)" in caplog.text
    loop = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "FederatedLoop")
    assert loop._resumed_epoch == 1 and [entry["round"] for entry in loop.history] == [0, 1]
    # the run finished: epoch 2 redone to the same weights, its checkpoints rewritten intact
    assert cli.trainer.current_epoch == 3 and (tmp_path / "fedbiot" / "version_0" / "final_adapter").is_dir()
    assert checkpoint_problem(checkpoints / "last.ckpt") is None
    assert checkpoint_problem(checkpoints / "round-0002.ckpt") is None
    got = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert got["epoch"] == 2 and all(torch.equal(expected[k], got["state_dict"][k]) for k in expected)


@pytest.mark.slow
def test_cli_damaged_explicit_checkpoint_exits_naming_it(finished_run, tmp_path, capsys):
    shutil.copytree(finished_run / "fedbiot", tmp_path / "fedbiot")
    checkpoints = tmp_path / "fedbiot" / "version_0" / "checkpoints"
    truncate(checkpoints / "round-0001.ckpt", 40_000)
    before = sorted(os.listdir(checkpoints))
    with pytest.raises(SystemExit) as exit_info:
        fit(tmp_path, "--ckpt_path", str(checkpoints / "round-0001.ckpt"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert f"Checkpoint {checkpoints / 'round-0001.ckpt'} is damaged: its SHA-256" in err
    assert f"--ckpt_path {checkpoints / 'round-0002.ckpt'} (epoch 2)" in err
    assert sorted(os.listdir(checkpoints)) == before  # nothing written, nothing started
