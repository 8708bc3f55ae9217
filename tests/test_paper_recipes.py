"""The paper's LLaMA-2-7B recipes and its whole run grid: each instantiates, with the reference's settings."""

from collections import defaultdict
from pathlib import Path

import pytest

from fedbiot_pl.algorithms import resolve_algorithm
from fedbiot_pl.algorithms.base import LayoutRequest
from fedbiot_pl.callbacks import FederatedLoop
from fedbiot_pl.cli import read_config
from fedbiot_pl.datamodules import FederatedInstructionDataModule
from fedbiot_pl.evaluation.presets import GSM8K_GENERATION, HUMANEVALX_GENERATION, HUMANEVALX_K
from fedbiot_pl.evaluation.settings import EvaluationSettings
from fedbiot_pl.paper_runs import main, paper_runs

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "configs" / "llama2-7b").glob("*.yaml"))
RUNS = paper_runs()
GROUPS = defaultdict(list)  # the runs of each list of YAML files
for _run in RUNS:
    GROUPS[_run.configs].append(_run)


def test_every_task_adapter_and_beta_has_a_recipe():
    assert [r.name for r in RECIPES] == [f"{task}-adpt{k}-beta{b}.yaml" for task in ("code", "dolly", "gsm8k")
                                         for k in (2, 4) for b in (0.2, 0.5)]


def test_the_grid_counts_and_names():
    # FedBiOT: 3 tasks x 2 adapters x 2 betas x 2 lr x {0,1}^2 x 3 seeds; baselines: 3 tasks x 3 x 2 betas x 2 lr x 3
    assert len(RUNS) == 288 + 108
    assert len({run.name for run in RUNS}) == len(RUNS)
    assert {run.algorithm for run in RUNS} == {"fedbiot", "offsite_tuning", "fedot", "fedot_one_shot"}
    one_shot = [run for run in RUNS if run.algorithm == "fedot_one_shot" and "dp0.5" in run.name]
    assert all("--federated.pre_alignment_rounds=600" in run.overrides for run in one_shot)  # 100 + 500 rounds


@pytest.mark.parametrize("configs", list(GROUPS), ids=lambda configs: "+".join(Path(c).stem for c in configs))
def test_every_recipe_of_the_grid_instantiates(configs):
    runs = GROUPS[configs]
    keys = {override.split("=")[0] for run in runs for override in run.overrides}
    richest = max(runs, key=lambda run: len(run.overrides))
    assert keys == {override.split("=")[0] for override in richest.overrides}  # one parse covers every key
    config = read_config([ROOT / c for c in configs], richest.overrides)  # the CLI's own parser and checks
    data = FederatedInstructionDataModule(**config.data.as_dict())  # checks its arguments; reads no file yet
    loop = FederatedLoop(**config.federated.as_dict())  # checks the round settings and the algorithm
    evaluation = EvaluationSettings.of(config.data.evaluation.as_dict())
    split = config.model.split.init_args
    layout = resolve_algorithm(config.federated.algorithm).layout(
        32, LayoutRequest(split.adapter_layers, split.drop_rate, split.bottom_adapter_layers))
    assert config.federated.weighting == "uniform" and config.model.include_padding is True  # the reference's
    assert config.federated.rounds == 500 and loop.local_steps == 30 and config.federated.align_steps == 5
    # validation at every round checkpoint, for `evaluate --ckpt best`, and no validation pass every epoch
    assert config.checkpoint.every_n_rounds == 100 and data.val_fraction > 0 and config.trainer.limit_val_batches == 0
    (validation,) = config.trainer.callbacks
    assert validation.class_path.endswith("ClientValidation") and validation.init_args.every_n_rounds == 100
    task = runs[0].task
    assert evaluation.task == {"gsm8k": "gsm8k", "code": "humanevalx", "dolly": "helm"}[task]
    clients = {"gsm8k": 3, "code": 9, "dolly": 8}[task]
    assert data.num_clients == (1 if runs[0].algorithm == "offsite_tuning" else clients)
    if task == "code":
        assert data.exclude_keys == ["X86-64 Assembly"] and data.partition_key == "input"
    if runs[0].algorithm == "fedbiot":
        assert len(layout.top_adapter) == split.adapter_layers and not layout.bottom_adapter
        assert config.federated.pre_alignment_rounds == {0.2: 50, 0.5: 100}[split.drop_rate]
    else:  # the baselines' adapter: the bottom 2 and top 2 layers
        assert layout.bottom_adapter == (0, 1) and layout.top_adapter == (30, 31)


@pytest.mark.parametrize("task", ["gsm8k", "code"])
def test_recipes_evaluate_with_the_authors_decoding(task):
    config = read_config([ROOT / "configs" / "llama2-7b" / f"{task}-adpt2-beta0.2.yaml"])
    evaluation = EvaluationSettings.of(config.data.evaluation.as_dict())
    if task == "gsm8k":  # T 0.8, top-p 0.95, 256 tokens, 8 demonstrations
        assert evaluation.generation == GSM8K_GENERATION and evaluation.shots == 8
        overlay = read_config([ROOT / "configs" / "gsm8k.yaml", ROOT / "configs" / "eval" / "gsm8k.yaml"])
        assert EvaluationSettings.of(overlay.data.evaluation.as_dict()).generation == GSM8K_GENERATION
    else:  # T 0.1, top-p 0.75, top-k 40, 128 tokens, 20 samples, pass@1 and pass@10
        assert evaluation.generation == HUMANEVALX_GENERATION and evaluation.k == HUMANEVALX_K
    assert read_config([ROOT / "configs" / "gsm8k.yaml"]).federated.weighting == "examples"  # the toolkit default


def test_the_command_lists_runs(capsys):
    assert main(["--task", "dolly", "--algorithm", "fedot"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 * 2 * 3  # betas x lr x seeds
    assert lines[0] == ("python train.py fit --config configs/llama2-7b/dolly-adpt2-beta0.2.yaml --config "
                        "configs/algorithms/fedot.yaml --model.lr=0.0001 --federated.client_lr=0.0001 "
                        "--seed_everything=0 --trainer.logger.init_args.name=dolly.adpt2+2_dp0.2.lr0.0001.seed0.fedot")
