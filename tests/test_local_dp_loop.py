"""Local DP in the federated loop: every upload is clipped at the client before it leaves, and the spend is kept."""

import json

import pytest

from fedbiot_pl.callbacks import FederatedLoop
from fedbiot_pl.cli import DEFAULT_CONFIG, main
from fedbiot_pl.errors import ConfigError
from fedbiot_pl.privacy import LocalDP, compose

SAVE = "--trainer.logger.init_args.save_dir"
ARGS = ["--federated.algorithm", "fedavg_lora", "--federated.pre_alignment_rounds", "0",
        "--federated.proximal_weight", "0", "--federated.rounds", "2", "--federated.local_steps", "2",
        "--data.max_task_examples", "30", "--data.max_public_examples", "10", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--federated.plot_training", "false",
        "--federated.max_update_norm", "1.1e-4"]  # the server rejects any update that moved further
DP = ["--federated.local_dp", json.dumps({"clip_norm": 1e-4, "epsilon": 1e8, "delta": 1e-5})]


def test_bad_local_dp_values_are_all_named_at_once():
    with pytest.raises(ConfigError) as error:
        FederatedLoop(local_dp={"clip_norm": 0, "epsilon": -1, "delta": 2})
    message = str(error.value)
    assert "clip_norm" in message and "epsilon" in message and "delta" in message
    with pytest.raises(ConfigError, match="local_dp takes clip_norm, epsilon, delta and calibration"):
        FederatedLoop(local_dp={"clip": 1})
    with pytest.raises(ConfigError, match="algorithm 'fed_kd' shares kd updates: set local_dp to null"):
        FederatedLoop(algorithm="fed_kd", proximal_weight=0, local_dp={"clip_norm": 1, "epsilon": 1, "delta": 1e-5})


@pytest.mark.slow
def test_clipped_uploads_pass_a_norm_bound_that_plain_uploads_fail(tmp_path, capsys):
    with pytest.raises(SystemExit) as plain:  # without local DP every update moves further than 1.1e-4
        main(["fit", "--config", str(DEFAULT_CONFIG), *ARGS, SAVE, str(tmp_path / "a")])
    assert plain.value.code == 2 and "max_update_norm" in capsys.readouterr().err
    main(["fit", "--config", str(DEFAULT_CONFIG), *ARGS, *DP, SAVE, str(tmp_path / "b")])
    summary = json.loads((tmp_path / "b" / "fedbiot" / "version_0" / "final_adapter" /
                          "federated_summary.json").read_text())
    assert summary["ledger"]["uploads_rejected"] == 0
    dp = LocalDP(clip_norm=1e-4, epsilon=1e8, delta=1e-5)
    assert summary["privacy"]["mechanism"]["sigma"] == pytest.approx(dp.sigma)
    assert summary["privacy"]["mechanism"]["sensitivity"] == pytest.approx(2e-4)  # replace-one: 2 x clip_norm
    assert set(summary["privacy"]["per_client"]) == {"0", "1", "2"}
    spent = summary["privacy"]["per_client"]["0"]
    assert spent["rounds"] == 2 and spent["epsilon"] == pytest.approx(compose(dp, 2).epsilon)
