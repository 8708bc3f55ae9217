"""The server's engine as configured: DeepSpeed config, strategy, precision plugin, and the start-up
check that refuses what this machine cannot run (all on CPU)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from fedbiot_pl.model.views import ModelViews
from fedbiot_pl.modules import EmulatorAlignmentModule
from fedbiot_pl.scaling.checks import INSTALL_HINT, check_scaling, deepspeed_available, scaling_issues, uses_deepspeed
from fedbiot_pl.scaling.deepspeed import LORA_CHECKPOINT_KEY, client_phase, deepspeed_config, zero3_loading_config
from tests.conftest import tiny_llama

ROOT = Path(__file__).resolve().parents[1]
ZERO3 = ROOT / "configs" / "scale" / "llama2-7b-fedbiot-zero3.yaml"
needs_deepspeed = pytest.mark.skipif(not deepspeed_available(),
                                     reason="DeepSpeed is not installed (pip install 'fedbiot-pl[deepspeed]')")


# ---------------------------------------------------------------- the DeepSpeed config
def test_stage3_config_shards_the_frozen_base_and_leaves_the_optimizer_to_the_module():
    config = deepspeed_config(3, prefetch_bucket_size=1_000, param_persistence_threshold=4_096)
    zero = config["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_prefetch_bucket_size"] == 1_000
    assert zero["stage3_param_persistence_threshold"] == 4_096
    assert zero["stage3_gather_16bit_weights_on_model_save"] is False
    # LoRA-only optimizer: no DeepSpeed optimizer, Lightning passes configure_optimizers' AdamW.
    assert "optimizer" not in config and config["zero_allow_untested_optimizer"] is True
    # float32 engine: nothing is cast, so bf16 base weights and float32 LoRA keep their dtypes.
    assert "bf16" not in config and "fp16" not in config
    assert "offload_optimizer" not in zero and "offload_param" not in zero


def test_stage2_config_with_cpu_offload_of_the_lora_optimizer():
    config = deepspeed_config(2, offload_optimizer=True, reduce_bucket_size=7, allgather_bucket_size=9,
                              pin_memory=False)
    zero = config["zero_optimization"]
    assert zero == {
        "stage": 2, "contiguous_gradients": True, "overlap_comm": True, "reduce_scatter": True,
        "reduce_bucket_size": 7, "allgather_partitions": True, "allgather_bucket_size": 9,
        "offload_optimizer": {"device": "cpu", "pin_memory": False},
    }
    assert config["zero_force_ds_cpu_optimizer"] is False  # torch's AdamW on the CPU is fine for LoRA


def test_stage3_parameter_offload():
    zero = deepspeed_config(3, offload_parameters=True, offload_optimizer=True)["zero_optimization"]
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True}


def test_bad_deepspeed_settings_are_all_reported_by_name():
    with pytest.raises(ValueError) as error:
        deepspeed_config(1, offload_parameters=True, reduce_bucket_size=0)
    message = str(error.value)
    assert "stage must be 2" in message
    assert "offload_parameters needs stage 3" in message
    assert "reduce_bucket_size must be a positive integer" in message


def test_zero3_loading_config_names_the_weights_dtype_without_touching_the_engine_config():
    config = deepspeed_config(3)
    loading = zero3_loading_config(config, torch.bfloat16)
    assert loading["bf16"] == {"enabled": True} and "fp16" not in loading
    assert loading["zero_optimization"] == config["zero_optimization"]
    assert "bf16" not in config
    assert "bf16" not in zero3_loading_config(config, torch.float32)
    assert zero3_loading_config(config, torch.float16)["fp16"] == {"enabled": True}


# ---------------------------------------------------------------- the strategy and precision plugin
@needs_deepspeed
def test_strategy_and_precision_plugin_are_built_as_configured():
    from lightning.pytorch.plugins.precision import DeepSpeedPrecision

    from fedbiot_pl.scaling.deepspeed import FedBiOTDeepSpeed

    strategy = FedBiOTDeepSpeed(stage=3, offload_optimizer=True, prefetch_bucket_size=123)
    assert strategy.config == deepspeed_config(3, offload_optimizer=True, prefetch_bucket_size=123)
    assert strategy.zero_stage_3 and strategy.exclude_frozen_parameters
    trainer = L.Trainer(strategy=strategy, accelerator="cpu", devices=1, precision="32-true", logger=False)
    assert trainer.strategy is strategy
    assert isinstance(trainer.precision_plugin, DeepSpeedPrecision) and trainer.precision_plugin.precision == "32-true"


@needs_deepspeed
def test_strategy_refuses_a_precision_that_would_cast_the_lora(monkeypatch):
    from lightning.pytorch.plugins.precision import DeepSpeedPrecision

    from fedbiot_pl.scaling.deepspeed import FedBiOTDeepSpeed

    strategy = FedBiOTDeepSpeed(stage=2)
    strategy.precision_plugin = DeepSpeedPrecision("bf16-mixed")
    with pytest.raises(ValueError, match="trainer.precision 'bf16-mixed' with DeepSpeed.*32-true"):
        strategy.setup_environment()


@needs_deepspeed
def test_yaml_recipe_builds_the_strategy(monkeypatch):
    from fedbiot_pl.cli import TRAINER_DEFAULTS, FedBiOTCLI
    from fedbiot_pl.datamodules import FederatedInstructionDataModule
    from fedbiot_pl.scaling.deepspeed import FedBiOTDeepSpeed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the start-up check passes as on a GPU node
    cli = FedBiOTCLI(
        EmulatorAlignmentModule, FederatedInstructionDataModule, trainer_defaults=TRAINER_DEFAULTS, run=False,
        args=["--config", str(ZERO3), "--trainer.accelerator", "cpu", "--trainer.devices", "1",
              "--model.split.model", "embedded:models/stories260K",
              "--data.task_path", "embedded:data/gsm8k/train_sample.jsonl",
              "--data.public_path", "embedded:data/alpaca/alpaca_sample.json"],
    )
    strategy = cli.trainer.strategy
    assert isinstance(strategy, FedBiOTDeepSpeed)
    assert strategy.config == deepspeed_config(3, prefetch_bucket_size=50_000_000, param_persistence_threshold=100_000)
    assert cli.trainer.precision_plugin.precision == "32-true"
    split = cli.model.split
    assert split.dtype_name == "bfloat16" and split.gradient_checkpointing and split.attn_implementation == "sdpa"
    assert not split.built  # nothing loaded at start-up


@needs_deepspeed
def test_deepspeed_checkpoints_carry_the_lora_and_restore_it():
    from fedbiot_pl.scaling.deepspeed import FedBiOTDeepSpeed

    class Engine:  # stands in for deepspeed.DeepSpeedEngine.save_checkpoint
        def save_checkpoint(self, path, client_state, tag, exclude_frozen_parameters):
            self.saved = (path, client_state, tag, exclude_frozen_parameters)

    module = EmulatorAlignmentModule(ModelViews.from_model(tiny_llama(), adapter_layers=2, drop_rate=0.5).build())
    with torch.no_grad():
        for p in module.split.lora_parameters("all").values():
            p.normal_()
    strategy = FedBiOTDeepSpeed(stage=2)
    strategy._lightning_module = module
    strategy.model = Engine()
    state = strategy.lightning_module_state_dict()
    assert state and all("lora_" in k for k in state)
    strategy.save_checkpoint({"state_dict": state, "epoch": 3}, "ckpt")
    path, client_state, _tag, exclude = strategy.model.saved
    assert path == "ckpt" and exclude and "state_dict" not in client_state and client_state["epoch"] == 3
    assert client_state[LORA_CHECKPOINT_KEY] is state

    fresh = EmulatorAlignmentModule(ModelViews.from_model(tiny_llama(), adapter_layers=2, drop_rate=0.5).build())
    strategy._lightning_module = fresh
    strategy.load_model_state_dict(client_state)
    for key, value in module.split.lora_state("all").items():
        torch.testing.assert_close(fresh.split.lora_state("all")[key], value, atol=0, rtol=0)


def test_client_phase_is_a_no_op_without_zero3():
    split = ModelViews.from_model(tiny_llama(), adapter_layers=2, drop_rate=0.5).build()
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False)
    with client_phase(trainer.strategy, split):
        before = split.lora_state("all")
    assert before


# ---------------------------------------------------------------- the start-up check
GPU_FIT = {
    "trainer": {"accelerator": "gpu", "precision": "32-true",
                "strategy": {"class_path": "fedbiot_pl.scaling.FedBiOTDeepSpeed", "init_args": {"stage": 3}}},
    "model": {"split": {"class_path": "fedbiot_pl.ModelViews", "init_args": {"dtype": "bfloat16"}}},
    "federated": {"algorithm": "fedbiot"},
}


def with_trainer(**trainer):
    return {**GPU_FIT, "trainer": {**GPU_FIT["trainer"], **trainer}}


def test_a_gpu_recipe_passes_on_a_gpu_machine_and_a_cpu_run_passes_here():
    assert scaling_issues(GPU_FIT, cuda=True, deepspeed_installed=True) == []
    cpu = with_trainer(accelerator="cpu", strategy="auto", precision="32-true")
    assert scaling_issues(cpu, cuda=False, deepspeed_installed=False) == []
    assert scaling_issues(with_trainer(accelerator="cpu", strategy="auto", precision="bf16-mixed"),
                          cuda=False, deepspeed_installed=False) == []


def test_deepspeed_without_cuda_or_deepspeed_names_the_setting_and_the_fix():
    issues = scaling_issues(GPU_FIT, cuda=False, deepspeed_installed=False)
    assert len(issues) == 3
    assert issues[0].startswith("trainer.strategy asks for DeepSpeed, which runs only on CUDA GPUs")
    assert "trainer.strategy: auto and trainer.accelerator: cpu" in issues[0]
    assert INSTALL_HINT in issues[1] and "pip install 'fedbiot-pl[deepspeed]'" == INSTALL_HINT
    assert issues[2].startswith("trainer.accelerator: gpu but this machine has no CUDA GPU")


@pytest.mark.parametrize(
    ("trainer", "federated", "expected"),
    [
        ({"precision": "bf16-mixed"}, None, "trainer.precision 'bf16-mixed' with DeepSpeed"),
        ({"precision": "bf16-true", "strategy": "ddp"}, None, "casts the float32 LoRA weights to half precision"),
        ({"precision": "16-true", "strategy": "auto"}, None, "casts the float32 LoRA weights to half precision"),
        ({}, "fedavg_lora", "federated.algorithm 'fedavg_lora' trains nothing on the server"),
    ],
)
def test_precision_and_algorithm_conflicts(trainer, federated, expected):
    config = with_trainer(**trainer)
    if federated:
        config = {**config, "federated": {"algorithm": federated}}
    issues = scaling_issues(config, cuda=True, deepspeed_installed=True)
    assert len(issues) == 1 and expected in issues[0]


def test_fp16_is_refused_on_a_machine_without_cuda():
    config = with_trainer(accelerator="cpu", strategy="auto", precision="16-mixed")
    issues = scaling_issues(config, cuda=False, deepspeed_installed=True)
    assert issues == [("trainer.precision '16-mixed' is a CUDA-only path and this machine has no CUDA GPU; use "
                       "trainer.precision: 32-true and model.split.dtype: float32 or bfloat16 here.")]
    config["model"] = {"split": {"init_args": {"dtype": "float16"}}}
    config["trainer"]["precision"] = 32
    assert "model.split.dtype float16 is a CUDA-only path" in scaling_issues(config, cuda=False,
                                                                            deepspeed_installed=True)[0]


def test_strategy_values_that_mean_deepspeed():
    assert uses_deepspeed("deepspeed_stage_3_offload")
    assert uses_deepspeed({"class_path": "lightning.pytorch.strategies.DeepSpeedStrategy"})
    assert uses_deepspeed({"class_path": "fedbiot_pl.scaling.FedBiOTDeepSpeed", "init_args": {}})
    assert uses_deepspeed({"class_path": "my.missing.module.DeepSpeedThing"})  # unimportable: by its name
    assert not uses_deepspeed("ddp") and not uses_deepspeed("auto") and not uses_deepspeed(None)
    assert not uses_deepspeed({"class_path": "lightning.pytorch.strategies.DDPStrategy"})


def test_cli_refuses_a_deepspeed_recipe_on_this_cpu_machine_before_loading_anything(monkeypatch, capsys):
    from fedbiot_pl.cli import main

    def must_not_run(*args, **kwargs):
        raise AssertionError("the start-up check must come before any model config or weights are read")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(ModelViews, "_load_config", must_not_run)
    monkeypatch.setattr(ModelViews, "_load_full", must_not_run)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ZERO3)])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.removeprefix("error: ")
    assert message.startswith("This config cannot run on this machine:")
    assert "trainer.strategy asks for DeepSpeed, which runs only on CUDA GPUs" in message
    assert "trainer.accelerator: gpu but this machine has no CUDA GPU" in message


def test_check_scaling_reads_a_namespace():
    from jsonargparse import Namespace

    namespace = Namespace(trainer=Namespace(accelerator="cpu", strategy="auto", precision="32-true"))
    check_scaling(namespace, cuda=False, deepspeed_installed=False)
    namespace.trainer.strategy = "deepspeed"
    with pytest.raises(ValueError, match="runs only on CUDA GPUs"):
        check_scaling(namespace, cuda=False, deepspeed_installed=True)


def test_server_ddp_over_several_devices_and_rounds_without_alignment_on_several_ranks_are_refused():
    ddp = with_trainer(strategy="ddp", devices=2)
    assert any(i.startswith("trainer.strategy DDP over several devices is not supported") for i in
               scaling_issues(ddp, cuda=True, deepspeed_installed=True))
    assert not any("DDP over several" in i for i in
                   scaling_issues(with_trainer(strategy="ddp", devices=1), cuda=True, deepspeed_installed=True))
    fedot = {**with_trainer(devices=4), "federated": {"algorithm": "fedot"}}
    assert scaling_issues(fedot, cuda=True, deepspeed_installed=True) == [
        "federated.algorithm 'fedot' has server epochs without an alignment step, which Lightning refuses on "
        "several ranks; set trainer.devices: 1."
    ]
    assert scaling_issues({**with_trainer(devices=4), "federated": {"algorithm": "fedbiot"}}, cuda=True,
                          deepspeed_installed=True) == []
