"""Impossible settings fail at start-up, each message naming the field and what it allows."""

import pytest

from fedbiot_pl.callbacks import FederatedLoop
from fedbiot_pl.cli import DEFAULT_CONFIG, main
from fedbiot_pl.datamodules import FederatedInstructionDataModule
from fedbiot_pl.model.views import ModelViews
from fedbiot_pl.testing.faults import parse_faults
from tests.helpers import make_module, server_trainer
from tests.toy_data import ToyFederatedData

MODEL = "embedded:models/stories260K"  # 5 decoder layers
LINEAR = "['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj']"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"adapter_layers": 5}, ("adapter_layers + bottom_adapter_layers = 5 must be smaller than the model's 5 "
                                 "decoder layers")),
        ({"adapter_layers": 4, "bottom_adapter_layers": 2}, "adapter_layers + bottom_adapter_layers = 6"),
        ({"drop_rate": 1.0}, "drop_rate must be in [0, 1), got 1.0"),
        ({"drop_rate": -0.1}, "drop_rate must be in [0, 1), got -0.1"),
        ({"lora_targets": ["q_proj", "qkv"]}, (f"lora_targets ['qkv'] are not linear modules of a Llama decoder "
                                               f"layer; choose from {LINEAR}")),
    ],
)
def test_impossible_splits_name_the_field_and_the_allowed_values(kwargs, message):
    with pytest.raises(ValueError) as info:
        ModelViews(MODEL, **kwargs)
    assert message in str(info.value)


def test_every_split_problem_is_reported_at_once():
    with pytest.raises(ValueError) as info:
        ModelViews(MODEL, adapter_layers=5, drop_rate=1.5, lora_targets=["qkv"], lora_r=0)
    message = str(info.value)
    for part in ("lora_r must be >= 1, got 0", "must be smaller than the model's 5 decoder layers",
                 "drop_rate must be in [0, 1), got 1.5", "lora_targets ['qkv']"):
        assert part in message


def test_loop_settings_are_checked_together():
    with pytest.raises(ValueError) as info:
        FederatedLoop(algorithm="fedsgd", local_steps=0, min_clients=0, on_too_few="later", max_round_retries=-1,
                      client_time_limit=0, max_update_norm=-1.0)
    message = str(info.value)
    for part in (
        ("algorithm: unknown algorithm 'fedsgd'; choose one of ['fed_kd', 'fedavg_lora', 'fedbiot', 'fedmkt', "
         "'fedot', 'fedprox', 'hierfedlora', 'offsite_tuning', 'splitfed_lora', 'splitfed_lora_u']"),
        "local_steps must be an integer >= 1, got 0",
        "min_clients must be an integer >= 1, got 0",
        "on_too_few must be one of ['retry', 'stop'], got 'later'",
        "max_round_retries must be an integer >= 0, got -1",
        "client_time_limit must be null (no limit) or a number > 0, got 0",
        "max_update_norm must be null (no limit) or a number > 0, got -1.0",
    ):
        assert part in message


def test_zero_clients_are_refused_by_the_datamodule_and_the_loop(tmp_path):
    with pytest.raises(ValueError, match=r"num_clients=0: must be an int >= 1"):
        FederatedInstructionDataModule(num_clients=0)
    with pytest.raises(ValueError, match="the datamodule has 0 clients; data.num_clients must be >= 1"):
        server_trainer(tmp_path, FederatedLoop(rounds=1)).fit(make_module(), datamodule=ToyFederatedData(num_clients=0))


def test_min_clients_above_the_clients_per_round_is_refused(tmp_path):
    loop = FederatedLoop(rounds=1, clients_per_round=2, min_clients=3)
    with pytest.raises(ValueError, match="min_clients=3 exceeds the 2 clients sampled per round; lower min_clients"):
        server_trainer(tmp_path, loop).fit(make_module(), datamodule=ToyFederatedData(vocab=512))


def test_the_cli_fails_before_training(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(DEFAULT_CONFIG), "--federated.algorithm", "fedsgd"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown algorithm 'fedsgd'; choose one of ['fed_kd', 'fedavg_lora', 'fedbiot', 'fedmkt', 'fedot'," in err
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(DEFAULT_CONFIG), "--model.split.init_args.lora_targets", "[q_proj, qkv]",
              "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "lora_targets ['qkv'] are not linear modules" in capsys.readouterr().err
    assert not (tmp_path / "fedbiot").exists()  # nothing was trained or written


def test_fault_specs_are_checked():
    with pytest.raises(ValueError) as info:
        parse_faults('[{"point": "align", "action": "explode", "round": 1, "when": 2}]')
    message = str(info.value)
    assert "point 'align' is not one of ['client_fit', 'client_step', 'upload', 'align_step', 'file_write']" in message
    assert "action 'explode' is not one of ['kill', 'crash', 'raise', 'sleep'," in message
    assert "unknown keys ['when']" in message
    # an action or context key the point does not have, or a wrongly typed value, would never fire as meant
    with pytest.raises(ValueError) as info:
        parse_faults([{"point": "align_step", "action": "nan", "client": 1},
                      {"point": "file_write", "action": "sleep", "name": 3, "seconds": "long"},
                      {"point": "upload", "action": "raise", "factor": 2}, "kill"])
    message = str(info.value)
    assert "fault 0: action 'nan' does not apply at align_step; choose one of ['kill', 'crash', 'raise', 'sleep']" \
        in message
    assert "fault 0: align_step has no context keys ['client'] (it would never fire); its keys: ['epoch', 'step']" \
        in message
    assert "fault 1: name 3 is not a string" in message and "fault 1: seconds 'long' is not a non-negative number" \
        in message
    assert "fault 2: 'factor' only applies to action 'scale'" in message
    assert "fault 3: 'kill' is not an object" in message
    with pytest.raises(ValueError, match="faults: not JSON"):
        parse_faults("[{point: upload}]")
    assert parse_faults('{"point": "upload", "client": 0, "action": "scale", "factor": 10}') == (
        {"point": "upload", "client": 0, "action": "scale", "factor": 10},)
