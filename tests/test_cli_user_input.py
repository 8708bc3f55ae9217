"""What a new user meets on the command line: the embedded default as base config, errors as
messages with exit code 2, a missing model folder named, client counts that stay counts, quiet output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedbiot_pl.cli import DEFAULT_CONFIG, TRACEBACK_ENV, main, with_default_config
from fedbiot_pl.errors import ConfigError, MissingPathError
from fedbiot_pl.model.location import model_location

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--federated.rounds", "1", "--federated.pre_alignment_rounds", "1", "--federated.local_steps", "1",
        "--federated.align_steps", "1", "--data.max_task_examples", "9", "--data.max_public_examples", "10"]


def printed_config(args: list[str], capsys) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    assert exit_info.value.code == 0, capsys.readouterr().err
    return yaml.safe_load(capsys.readouterr().out)


def user_error(args: list[str], capsys) -> str:
    """stderr of a command that must stop with exit code 2 and no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    return err


# ---------------------------------------------------------------- the embedded default is the base config
def test_overrides_apply_to_the_embedded_default_without_config(capsys):
    config = printed_config(["fit", "--federated.rounds", "3"], capsys)
    assert config["federated"]["rounds"] == 3
    assert config["model"]["split"]["init_args"]["model"] == "embedded:models/stories260K"
    assert config["federated"]["pre_alignment_rounds"] == 2  # the rest of the default stays
    config = printed_config(["fit", "--trainer.strategy=deepspeed_stage_3"], capsys)
    assert config["trainer"]["strategy"] == "deepspeed_stage_3"
    assert config["data"]["val_fraction"] == 0.05 and config["data"]["num_clients"] == 3
    for subcommand in ("validate", "test"):
        assert printed_config([subcommand], capsys)["model"]["split"]["init_args"]["model"].startswith("embedded:")


def test_an_explicit_config_replaces_the_embedded_default(tmp_path, capsys):
    only_rounds = tmp_path / "rounds.yaml"
    only_rounds.write_text("federated:\n  rounds: 7\n")
    with pytest.raises(SystemExit) as exit_info:  # nothing of the default fills in the missing model
        # (were the default merged in, the missing data file would stop the run with another message)
        main(["fit", "--config", str(only_rounds), "--data.task_path", str(tmp_path / "none.jsonl")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "fit.model.split" in err and "none.jsonl" not in err
    assert printed_config(["fit", f"--config={DEFAULT_CONFIG}", "--config", str(only_rounds)], capsys)[
        "federated"]["rounds"] == 7


@pytest.mark.parametrize("option", ["--data.task.path", "--data.task_path"])
def test_either_data_option_overrides_the_defaults_data(option, tmp_path):
    from fedbiot_pl.cli import FedBiOTCLI
    from fedbiot_pl.datamodules import FederatedInstructionDataModule
    from fedbiot_pl.modules import EmulatorAlignmentModule

    dolly = "embedded:data/dolly/dolly_sample.jsonl"
    cli = FedBiOTCLI(EmulatorAlignmentModule, FederatedInstructionDataModule, run=False,
                     args=with_default_config(["fit", option, dolly, "--trainer.default_root_dir", str(tmp_path)])[1:])
    assert cli.datamodule.task.path == dolly
    assert cli.datamodule.public.path == "embedded:data/alpaca/alpaca_sample.json"  # the default's public data


def test_no_arguments_run_fit_on_the_default():
    assert with_default_config([]) == ["fit", "--config", str(DEFAULT_CONFIG)]
    assert with_default_config(["fit", "-c", "x.yaml"]) == ["fit", "-c", "x.yaml"]
    assert with_default_config(["--help"]) == ["--help"]
    assert with_default_config(["evaluate", "--run", "r"]) == ["evaluate", "--run", "r"]


def test_the_loop_sets_the_number_of_epochs(capsys):
    config = printed_config(["fit", "--federated.rounds", "4", "--federated.pre_alignment_rounds", "3"], capsys)
    assert "max_epochs" not in config["trainer"]  # linked: 3 + 4 epochs, no "max_epochs was not set"


def test_help_lists_evaluate_next_to_lightnings_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "{fit,validate,test,predict,evaluate}" in out
    assert "Evaluate a run's adapters" in out


# ---------------------------------------------------------------- user errors are messages
def test_invalid_loop_setting_is_a_message_with_exit_code_2(capsys):
    err = user_error(["fit", "--federated.rounds", "-1"], capsys)
    assert "rounds must be an integer >= 1, got -1." in err
    assert f"{TRACEBACK_ENV}=1" in err


def test_the_traceback_is_available_behind_the_environment_variable(monkeypatch):
    monkeypatch.setenv(TRACEBACK_ENV, "1")
    with pytest.raises(ConfigError, match="rounds must be an integer >= 1, got -1"):
        main(["fit", "--federated.rounds", "-1"])


def test_deepspeed_without_cuda_is_a_message(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = user_error(["fit", "--trainer.strategy=deepspeed_stage_3"], capsys)
    assert "trainer.strategy asks for DeepSpeed, which runs only on CUDA GPUs" in err


def test_bad_data_rows_are_a_message(tmp_path, capsys):
    rows = [{"question": "Q?", "answer": "#### 1"}, {"question": "Q2?", "answer": 72}]
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps(row) + "\n" for row in rows))
    err = user_error(["fit", "--data.task_path", str(task), "--trainer.default_root_dir", str(tmp_path),
                      "--trainer.logger.init_args.save_dir", str(tmp_path), *TINY], capsys)
    assert "row 2 field 'answer' is an int, not a string" in err


def test_a_real_process_prints_no_traceback(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "fit", "--federated.rounds", "-1"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False)
    assert done.returncode == 2
    assert "rounds must be an integer >= 1, got -1." in done.stderr and "Traceback" not in done.stderr


# ---------------------------------------------------------------- model locations
def test_a_missing_model_folder_is_named_with_the_accepted_forms(capsys):
    err = user_error(["fit", "--model.split.model=/data/nomodel"], capsys)
    assert "/data/nomodel does not exist" in err
    assert "hub id" in err and "config.json" in err and "embedded:" in err
    assert "Repo id" not in err


def test_model_location_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert model_location("meta-llama/Llama-2-7b-hf") == "meta-llama/Llama-2-7b-hf"  # a hub id, untouched
    assert model_location("embedded:models/stories260K").endswith("assets/models/stories260K")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingPathError, match="has no config.json"):
        model_location(str(tmp_path / "empty"))
    assert model_location(str(tmp_path / "empty"), needs_config=False) == str(tmp_path / "empty")  # a tokenizer
    for missing in ("./nomodel", "~/no/such/model", "runs/x/y"):
        with pytest.raises(MissingPathError, match="does not exist"):
            model_location(missing)
    (tmp_path / "Qwen").mkdir()  # a folder named like a hub namespace does not make the hub id a path
    assert model_location("Qwen/Qwen2-0.5B") == "Qwen/Qwen2-0.5B"


def test_a_hub_id_transformers_cannot_load_is_named_with_the_accepted_forms(monkeypatch):
    from transformers import AutoConfig

    from fedbiot_pl.model.views import ModelViews

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nmore")

    monkeypatch.setattr(AutoConfig, "from_pretrained", offline)
    with pytest.raises(MissingPathError, match=r"model='runs/x' is no local folder and could not be loaded as a hub "
                                               r"id \(OSError: We couldn't connect.*\); a model argument is"):
        ModelViews("runs/x")


# ---------------------------------------------------------------- client counts
@pytest.mark.parametrize(("given", "expected"), [("10", 10), ("1", 1), ("0.5", 0.5), ("1.0", 1.0)])
def test_clients_per_round_keeps_integers_from_the_command_line(given, expected, capsys):
    value = printed_config(["fit", "--federated.clients_per_round", given], capsys)["federated"]["clients_per_round"]
    assert value == expected and type(value) is type(expected)


def test_clients_per_round_keeps_integers_from_yaml(tmp_path):
    from fedbiot_pl.cli import FedBiOTCLI
    from fedbiot_pl.datamodules import FederatedInstructionDataModule
    from fedbiot_pl.modules import EmulatorAlignmentModule

    recipe = tmp_path / "ten.yaml"
    recipe.write_text("federated:\n  clients_per_round: 10\ndata:\n  num_clients: 12\n")
    cli = FedBiOTCLI(EmulatorAlignmentModule, FederatedInstructionDataModule, run=False,
                     args=["--config", str(DEFAULT_CONFIG), "--config", str(recipe),
                           "--trainer.default_root_dir", str(tmp_path)])
    loop = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "FederatedLoop")
    assert loop.clients_per_round == 10 and isinstance(loop.clients_per_round, int)


# ---------------------------------------------------------------- quiet output
@pytest.mark.slow
def test_a_default_run_shows_one_bar_per_round_and_no_expected_noise(tmp_path):
    env = {**os.environ, "COLUMNS": "120"}
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "fit", *TINY], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=600, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    for noise in ("Generating train split", "task:", "public:", "Loading weights", "is_gradient_checkpointing",
                  "litlogger", "in eval mode at the start of training", "max_epochs` was not set", "LeafSpec"):
        assert noise not in output, noise
    assert "Epoch 1/1" in output  # the round's progress bar (pre-alignment epoch 0, round epoch 1)
    assert (tmp_path / "runs" / "fedbiot" / "version_0" / "final_adapter" / "adapfu").is_dir()
