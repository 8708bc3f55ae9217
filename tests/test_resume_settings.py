"""Resuming with other split or algorithm settings than the checkpoint's is refused, naming each one."""

import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

from fedbiot_pl.artifacts.resume_settings import (
    NOT_USED,
    SETTINGS_KEY,
    SettingsMismatchError,
    check_resume_settings,
    mismatch_message,
    run_settings,
    settings_differences,
)
from fedbiot_pl.callbacks import FederatedLoop
from fedbiot_pl.cli import DEFAULT_CONFIG, main
from fedbiot_pl.errors import ConfigError
from fedbiot_pl.model.views import ModelViews

STORIES = "embedded:models/stories260K"


def test_run_settings_name_what_the_checkpoint_depends_on():
    split = ModelViews(STORIES, adapter_layers=2, drop_rate=0.2, lora_r=4, lora_alpha=8,
                       lora_targets=["v_proj", "q_proj"],
                       lora_dropout=0.3, dtype="bfloat16")  # dropout and dtype may change on resume: not listed
    assert run_settings(split, FederatedLoop(pre_alignment_rounds=2, rounds=7, local_steps=3)) == {
        "federated.algorithm": "fedbiot", "federated.pre_alignment_rounds": 2, "model.split.model": STORIES,
        "model.split.adapter_layers": 2, "model.split.drop_rate": 0.2, "model.split.bottom_adapter_layers": 0,
        "model.split.lora_r": 4, "model.split.lora_alpha": 8, "model.split.lora_targets": ["q_proj", "v_proj"],
    }
    # offsite-tuning's default bottom adapter is recorded as the value it resolved to
    fedot = ModelViews(STORIES, adapter_layers=1).use_algorithm("fedot")
    assert run_settings(fedot, FederatedLoop(algorithm="fedot"))["model.split.bottom_adapter_layers"] == 2


def test_full_model_algorithms_leave_out_the_layout_they_do_not_use():
    split = ModelViews(STORIES, adapter_layers=3, drop_rate=0.5).use_algorithm("fedavg_lora")
    assert run_settings(split, FederatedLoop(algorithm="fedavg_lora")) == {
        "federated.algorithm": "fedavg_lora", "federated.pre_alignment_rounds": 0, "model.split.model": STORIES,
        "model.split.lora_r": 8, "model.split.lora_alpha": 16, "model.split.lora_targets": ["q_proj", "v_proj"],
    }


def test_differences_list_every_setting_with_both_values():
    saved = {"federated.algorithm": "fedbiot", "model.split.adapter_layers": 2, "model.split.lora_r": 8,
             "model.split.lora_targets": ["q_proj", "v_proj"]}
    current = {"federated.algorithm": "fedavg_lora", "model.split.lora_r": 4,
               "model.split.lora_targets": ["q_proj", "v_proj"]}
    assert settings_differences(saved, current) == [
        ("federated.algorithm", "fedbiot", "fedavg_lora"), ("model.split.adapter_layers", 2, NOT_USED),
        ("model.split.lora_r", 8, 4),
    ]
    assert settings_differences(saved, dict(saved)) == []


def test_mismatch_message_names_both_values_and_the_arguments_that_resume():
    message = mismatch_message("runs/last.ckpt", [("model.split.adapter_layers", 2, 1),
                                                  ("model.split.lora_targets", ["q_proj", "v_proj"], ["q_proj"])])
    assert message == (
        "Cannot resume from runs/last.ckpt: it was written with other settings than this run's (2 differ):\n"
        "  model.split.adapter_layers: checkpoint 2, this run 1\n"
        "  model.split.lora_targets: checkpoint ['q_proj', 'v_proj'], this run ['q_proj']\n"
        "Resume with the checkpoint's settings (--model.split.adapter_layers 2 --model.split.lora_targets "
        "[q_proj,v_proj]), or start a new run without --ckpt_path."
    )


def test_check_refuses_differences_and_lets_old_checkpoints_through_with_a_warning(caplog):
    settings = {"model.split.lora_r": 8, "federated.pre_alignment_rounds": 1}
    check_resume_settings({SETTINGS_KEY: settings}, dict(settings), "a.ckpt")
    with pytest.raises(SettingsMismatchError,
                       match="federated.pre_alignment_rounds: checkpoint 1, this run 2") as error:
        check_resume_settings({SETTINGS_KEY: settings}, {**settings, "federated.pre_alignment_rounds": 2}, "a.ckpt")
    assert isinstance(error.value, ConfigError)
    with caplog.at_level(logging.WARNING):
        check_resume_settings({"epoch": 3}, settings, "old.ckpt")  # written before settings were recorded
    assert "old.ckpt records no settings" in caplog.text


# ---------------------------------------------------------------------- through the CLI
TINY = """
trainer: {enable_progress_bar: false, enable_model_summary: false, accumulate_grad_batches: 1}
federated: {rounds: 1, pre_alignment_rounds: 0, local_steps: 1, align_steps: 1, client_accumulate_grad_batches: 1}
data: {task_path: "embedded:data/alpaca/alpaca_sample.json", max_task_examples: 12, max_public_examples: 6,
       batch_size: 2, max_length: 160, num_clients: 2}
"""


def fit(root: Path, *extra: str):
    root.mkdir(exist_ok=True)
    (root / "tiny.yaml").write_text(TINY)
    return main(["fit", "--config", str(DEFAULT_CONFIG), "--config", str(root / "tiny.yaml"),
                 "--trainer.default_root_dir", str(root), "--trainer.logger.init_args.save_dir", str(root), *extra])


@pytest.mark.slow
def test_cli_resume_with_another_split_is_refused_and_with_more_rounds_continues(tmp_path, capsys, one_thread):
    fit(tmp_path / "run")  # 1 round, adapter_layers 2, lora_r 8
    run = tmp_path / "run" / "fedbiot" / "version_0"
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)[SETTINGS_KEY]
    assert saved["model.split.adapter_layers"] == 2 and saved["model.split.lora_r"] == 8
    config, files = (run / "config.yaml").read_text(), sorted(os.listdir(run / "checkpoints"))
    capsys.readouterr()

    with pytest.raises(SystemExit) as exit_info:
        fit(tmp_path / "run", "--model.split.adapter_layers", "1", "--model.split.lora_r", "4", "--ckpt_path", "last")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and "parameter group" not in err
    assert f"Cannot resume from {run / 'checkpoints' / 'last.ckpt'}: it was written with other settings" in err
    assert ("model.split.adapter_layers: checkpoint 2, this run 1\n"
            "  model.split.lora_r: checkpoint 8, this run 4\n") in err
    assert "(--model.split.adapter_layers 2 --model.split.lora_r 8)" in err
    # refused before anything was written: the run's config and checkpoints are as they were
    assert (run / "config.yaml").read_text() == config and sorted(os.listdir(run / "checkpoints")) == files

    # `rounds` may change: the same split extends the run by one round
    shutil.rmtree(run / "final_adapter")
    cli = fit(tmp_path / "run", "--federated.rounds", "2", "--ckpt_path", "last")
    assert cli.trainer.ckpt_path == str(run / "checkpoints" / "last.ckpt") and cli.trainer.current_epoch == 2
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    assert (run / "final_adapter" / "compressed_lora.safetensors").exists()


def test_a_local_model_is_recorded_by_its_real_path(tmp_path, monkeypatch):
    from fedbiot_pl.artifacts.resume_settings import model_identity

    (tmp_path / "m").mkdir()
    monkeypatch.chdir(tmp_path)
    assert model_identity("./m") == model_identity(str(tmp_path / "m")) == str((tmp_path / "m").resolve())
    assert model_identity("meta-llama/Llama-2-7b-hf") == "meta-llama/Llama-2-7b-hf"
    assert model_identity(STORIES) == STORIES


def test_other_data_settings_only_warn_naming_each(caplog):
    from fedbiot_pl.artifacts.resume_settings import DATA_KEY, data_settings, warn_data_differences
    from fedbiot_pl.datamodules import FederatedInstructionDataModule

    before = data_settings(FederatedInstructionDataModule(num_clients=3, val_fraction=0.0, seed=1))
    assert before == {"data.num_clients": 3, "data.partition": "iid", "data.partition_key": None,
                      "data.exclude_keys": None, "data.dirichlet_alpha": 0.5, "data.min_client_size": 1,
                      "data.val_fraction": 0.0,
                      "data.max_task_examples": None, "data.seed": 1}
    now = data_settings(FederatedInstructionDataModule(num_clients=3, val_fraction=0.05, seed=1))
    with caplog.at_level(logging.WARNING):
        warn_data_differences({DATA_KEY: before}, before, "a.ckpt")
        assert not caplog.records
        warn_data_differences({DATA_KEY: before}, now, "a.ckpt")
    assert "data.val_fraction: checkpoint 0.0, this run 0.05" in caplog.text
    assert "data.num_clients" not in caplog.text
