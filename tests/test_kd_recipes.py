"""The KD recipes end to end through train.py on stories260K: the ledger equals the byte formula."""

import json
from pathlib import Path

import pytest
from peft import PeftConfig

from fedbiot_pl.cli import FedBiOTCLI, main
from fedbiot_pl.datamodules import FederatedInstructionDataModule
from fedbiot_pl.distillation.public import public_rows
from fedbiot_pl.modules import EmulatorAlignmentModule

ROOT = Path(__file__).resolve().parents[1]
K, P = 16, 4
SMALL = ["--federated.rounds=2", "--federated.local_steps=1", "--federated.client_accumulate_grad_batches=1",
         "--data.batch_size=2", "--data.val_fraction=0.2", "--data.max_task_examples=30",
         "--data.max_public_examples=12", f"--federated.algorithm.init_args.top_k={K}",
         f"--federated.algorithm.init_args.public_examples={P}", "--federated.algorithm.init_args.kd_steps=1"]


def configs(algorithm: str) -> list[str]:
    return ["--config", str(ROOT / "configs" / "gsm8k.yaml"), "--config", str(ROOT / "configs" / "algorithms" /
                                                                             f"{algorithm}.yaml")]


@pytest.mark.parametrize("algorithm", ["fed_kd", "fedmkt"])
def test_kd_recipe_runs_and_the_ledger_equals_the_formula(tmp_path, algorithm):
    main(["fit", *configs(algorithm), *SMALL, "--trainer.default_root_dir", str(tmp_path),
          "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.enable_progress_bar=false",
          "--trainer.callbacks+=fedbiot_pl.callbacks.ClientValidation"])
    run = tmp_path / "fedbiot" / "version_0"
    # The same data the run had: its public rows and their token counts.
    made = FedBiOTCLI(EmulatorAlignmentModule, FederatedInstructionDataModule, run=False,
                      args=[*configs(algorithm), *SMALL])
    data = made.datamodule
    data.setup("fit")
    clients = data.num_clients
    assert clients == 3

    def payload(round_idx: int) -> int:  # fp16 value + uint16 index per kept logit (vocabulary 512) + 12 P + 4
        rows = public_rows(data.num_public_examples, P, 42, round_idx)
        tokens = sum(length - 1 for length in data.public_lengths(rows))
        return tokens * K * (2 + 2) + 12 * P + 4

    ledger = json.loads((run / "final_adapter" / "federated_summary.json").read_text())["ledger"]
    assert ledger["bytes_up"] == clients * (payload(0) + payload(1))
    assert ledger["bytes_down"] == clients * (4 + payload(0))  # round 0: no targets yet (offsets [0] only)
    assert ledger["uploads_rejected"] == 0
    for client in range(clients):  # each client's own adapter, loadable with peft
        config = PeftConfig.from_pretrained(str(run / "final_adapter" / "clients" / f"client_{client:03d}" / "adapfu"))
        assert config.layers_to_transform == [0, 1, 2, 3, 4]
    history = json.loads((run / "client_validation.json").read_text())
    assert [h["round"] for h in history] == [0.0, 1.0]
    assert history[-1]["total_bytes"] == ledger["bytes_up"] + ledger["bytes_down"]


def test_a_bad_kd_setting_on_the_command_line_is_a_message_not_a_traceback(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *configs("fedmkt"), "--federated.algorithm.init_args.top_k=0",
              "--federated.algorithm.init_args.kd_alpha=2"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "federated.algorithm.init_args: top_k must be an integer >= 1, got 0." in err
    assert "federated.algorithm.init_args: kd_alpha must be in [0, 1] (the weight of the label CE), got 2.0." in err
