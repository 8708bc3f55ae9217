"""One switch (an algorithm file on top of a task recipe) selects the algorithm end to end."""

import csv
import json
from pathlib import Path

import pytest
import torch
from peft import PeftConfig

from fedbiot_pl.algorithms import ALGORITHMS, RunSettings
from fedbiot_pl.callbacks import ClientValidation
from fedbiot_pl.cli import FedBiOTCLI, main
from fedbiot_pl.datamodules import FederatedInstructionDataModule
from fedbiot_pl.evaluate import run_views
from fedbiot_pl.modules import EmulatorAlignmentModule

ROOT = Path(__file__).resolve().parents[1]
TASKS = {"gsm8k": 3, "code": 9, "dolly": 8}  # the paper's client counts


def cli(*configs: str, **overrides: str) -> FedBiOTCLI:
    args = [arg for c in configs for arg in ("--config", str(ROOT / "configs" / c))]
    args += [f"--{k}={v}" for k, v in overrides.items()]
    return FedBiOTCLI(EmulatorAlignmentModule, FederatedInstructionDataModule, run=False, args=args)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_on_every_task_recipe(task, algorithm):
    made = cli(f"{task}.yaml", f"algorithms/{algorithm}.yaml")
    loop = next(cb for cb in made.trainer.callbacks if hasattr(cb, "round_index"))
    split = made.model.split.use_algorithm(loop.algorithm)  # as the loop's set-up does
    assert loop.algorithm_name == split.algorithm_name == algorithm and split.algorithm is loop.algorithm
    clients = 1 if algorithm == "offsite_tuning" else TASKS[task]
    assert made.datamodule.num_clients == clients
    settings = RunSettings(clients, loop.pre_alignment_rounds, loop.client_optim.proximal_weight)
    assert loop.algorithm.check(settings) == []
    layout = split.layout  # stories260K: 5 layers
    expected = {"fedbiot": ((), (0, 2), (3, 4)), "offsite_tuning": ((0, 1), (2,), (3, 4)),
                "fedot": ((0, 1), (2,), (3, 4)), "fedavg_lora": ((), (), (0, 1, 2, 3, 4)),
                "fedprox": ((), (), (0, 1, 2, 3, 4)), "fed_kd": ((), (), (0, 1, 2, 3, 4)),
                "fedmkt": ((), (), (0, 1, 2, 3, 4)), "splitfed_lora": ((), (), (0, 1, 2, 3, 4)),
                "splitfed_lora_u": ((), (), (0, 1, 2, 3, 4)), "hierfedlora": ((), (), (0, 1, 2, 3, 4))}[algorithm]
    assert (layout.bottom_adapter, layout.emulator, layout.top_adapter) == expected


def test_one_shot_distillation_overlay_sets_the_distillation_weights():
    made = cli("gsm8k.yaml", "algorithms/fedot.yaml", "algorithms/one_shot_distillation.yaml")
    hp = made.model.hparams
    assert (hp.l2_weight, hp.ce_weight, hp.kl_weight) == (0.9, 0.1, 0.0)
    loop = next(cb for cb in made.trainer.callbacks if hasattr(cb, "round_index"))
    assert loop.algorithm_name == "fedot" and (loop.pre_alignment_rounds, loop.align_steps) == (100, 5)  # 500 steps


@pytest.mark.slow
def test_fedavg_lora_run_through_the_cli_exports_a_full_model_adapter(tmp_path):
    main([
        "fit", "--config", str(ROOT / "configs" / "gsm8k.yaml"),
        "--config", str(ROOT / "configs/algorithms/fedavg_lora.yaml"),
        "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false", "--trainer.callbacks+=fedbiot_pl.callbacks.ClientValidation",
        "--federated.rounds", "2", "--federated.local_steps", "1", "--federated.client_accumulate_grad_batches", "1",
        "--trainer.accumulate_grad_batches", "1", "--data.batch_size", "2", "--data.val_fraction", "0.2",
        "--data.max_task_examples", "30", "--data.max_public_examples", "10",
    ])
    run = tmp_path / "fedbiot" / "version_0"
    adapter = PeftConfig.from_pretrained(str(run / "final_adapter" / "adapfu"))
    assert adapter.layers_to_transform == [0, 1, 2, 3, 4]
    split = json.loads((run / "final_adapter" / "split.json").read_text())
    assert split["algorithm"] == "fedavg_lora" and split["emulator"] == []
    summary = json.loads((run / "final_adapter" / "federated_summary.json").read_text())
    assert summary["ledger"]["bytes_up"] == 2 * 3 * 5 * 1792 * 4  # 2 rounds, 3 clients, LoRA of 5 layers
    history = json.loads((run / "client_validation.json").read_text())
    assert [h["round"] for h in history] == [0.0, 1.0]
    assert history[1]["total_bytes"] == 2 * 2 * 3 * 5 * 1792 * 4
    # The module's validation loop and ClientValidation measure the same rows: one row per epoch, same value
    with open(run / "metrics.csv", newline="") as file:
        val_rows = [row for row in csv.DictReader(file) if row.get("val/adapfu_loss")]
    epochs = [int(row["epoch"]) for row in val_rows]
    assert sorted(epochs) == sorted(set(epochs)) and {0, 1} <= set(epochs)
    by_epoch = {int(row["epoch"]): float(row["val/adapfu_loss"]) for row in val_rows}
    assert history[1]["adapfu_loss"] == pytest.approx(by_epoch[1], rel=1e-6)
    # AdapFu and AdapEmu are the same model when clients hold the full model
    assert history[1]["adapemu_loss"] == pytest.approx(history[1]["adapfu_loss"], rel=1e-6)
    # evaluation rebuilds the same split from the run folder
    views = run_views(run)[0]
    assert views.algorithm_name == "fedavg_lora" and views.layout.emulator == ()


def test_client_validation_loss_is_the_token_weighted_mean(tmp_path):
    from fedbiot_pl.callbacks.client_validation import token_mean_loss

    class Fixed(torch.nn.Module):
        def forward(self, input_ids, attention_mask, labels, use_cache):
            return type("Out", (), {"loss": torch.tensor(float(input_ids[0, 0]))})()

    def batch(first: int, label_tokens: int):
        labels = torch.full((1, 6), -100)
        labels[0, 6 - label_tokens :] = 1
        return {"input_ids": torch.full((1, 6), first), "attention_mask": torch.ones(1, 6), "labels": labels}

    # losses 1.0 over 2 label tokens and 4.0 over 4: (2 + 16) / 6 = 3
    assert token_mean_loss(Fixed(), [[batch(1, 2)], [batch(4, 4)]], torch.device("cpu")) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="val_fraction"):
        token_mean_loss(Fixed(), [[batch(1, 0)]], torch.device("cpu"))
    with pytest.raises(ValueError, match="variants"):
        ClientValidation(variants=["adapter"])
