"""Scaling FedBiOT up: the server's engine (DeepSpeed ZeRO or DDP) and the precision rules.

Also the start-up check that a config can run on this machine.

The server holds the full model (the frozen teacher of the alignment and the AdapFu model); it is the
part that needs sharding. :class:`FedBiOTDeepSpeed` is Lightning's ``DeepSpeedStrategy`` set up for it,
selectable from YAML::

    trainer:
      strategy:
        class_path: fedbiot_pl.scaling.FedBiOTDeepSpeed
        init_args: {stage: 3, offload_optimizer: false}
      precision: 32-true          # base weights bf16 through model.split.dtype; LoRA and losses fp32

What it does beyond Lightning's strategy:

* **LoRA-only optimizer state.** The DeepSpeed config has no ``optimizer`` section, so Lightning hands
  DeepSpeed the module's ``configure_optimizers`` optimizer, an AdamW over the emulator's LoRA only;
  ZeRO shards that state and those gradients. The frozen base has neither.
* **ZeRO-3 without materialising the full model.** While the module's ``configure_model`` loads the
  weights, a ``transformers`` ``HfDeepSpeedConfig`` is alive, so ``from_pretrained`` builds the model
  partitioned (rank 0 reads the checkpoint, every rank keeps 1/N of each tensor) in the split's dtype.
  Lightning's own ``zero.Init`` around ``configure_model`` is not opened: it would also partition the
  meta-device shells of the split and peft's fresh LoRA weights. The LoRA weights become ZeRO
  parameters when the engine starts and stay float32.
* **Client fits inside the server's run.** :func:`client_phase` gathers the *compressed* model's
  weights on every rank (never the dropped layers) and lifts ZeRO-3's hooks for the duration of the
  clients' fits, so each rank fits its clients alone on its own GPU, as a real client holding only the
  compressed model would. The LoRA written in the phase goes back into the ZeRO partitions on exit.
* **LoRA in checkpoints.** DeepSpeed checkpoints leave out Lightning's ``state_dict``; the LoRA-only
  state dict travels as ``fedbiot_lora`` in DeepSpeed's client state and is restored on resume.

Precision (the paper's regime, kept at every scale): base weights in ``model.split.dtype``
(``bfloat16`` for 7B and up), LoRA weights float32, losses (CE, KL, L2) float32, no autocast:
``trainer.precision: 32-true``. ``bf16-mixed`` (autocast) is allowed without DeepSpeed on GPUs;
``bf16-true``/``16-true`` are rejected because they cast the LoRA weights to half precision, and so is
any precision other than ``32-true`` under DeepSpeed, which then casts every trainable weight itself.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any, Literal

import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, Strategy
from typing_extensions import override

from fedbiot_pl.scaling.checks import INSTALL_HINT, deepspeed_available, normalized_precision, precision_message

LORA_CHECKPOINT_KEY = "fedbiot_lora"


def deepspeed_config(
    stage: int = 3,
    *,
    offload_optimizer: bool = False,
    offload_parameters: bool = False,
    reduce_bucket_size: int = 50_000_000,
    allgather_bucket_size: int = 200_000_000,
    prefetch_bucket_size: int = 50_000_000,
    param_persistence_threshold: int = 100_000,
    pin_memory: bool = True,
) -> dict[str, Any]:
    """The DeepSpeed config of the server's engine (a plain dict).

    Lightning adds the batch size, gradient accumulation and clipping from the Trainer.

    No ``optimizer`` section (DeepSpeed takes the module's LoRA-only AdamW) and no ``bf16``/``fp16``
    section (the engine runs in float32 mode: it casts nothing, so bf16 base weights and float32 LoRA
    keep their dtypes). See :func:`deepspeed_config_issues` for the allowed values.
    """
    issues = deepspeed_config_issues(stage, offload_parameters, reduce_bucket_size, allgather_bucket_size,
                                     prefetch_bucket_size, param_persistence_threshold)
    if issues:
        raise ValueError("Invalid DeepSpeed settings:\n  " + "\n  ".join(issues))
    zero: dict[str, Any] = {
        "stage": stage,
        "contiguous_gradients": True,
        "overlap_comm": True,
        "reduce_scatter": True,
        "reduce_bucket_size": int(reduce_bucket_size),
    }
    if stage == 2:
        zero.update({"allgather_partitions": True, "allgather_bucket_size": int(allgather_bucket_size)})
    else:
        zero.update({
            "stage3_prefetch_bucket_size": int(prefetch_bucket_size),
            "stage3_param_persistence_threshold": int(param_persistence_threshold),
            # Checkpoints hold LoRA only; never gather the 16-bit base for a save.
            "stage3_gather_16bit_weights_on_model_save": False,
        })
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin_memory}
    if offload_parameters:
        zero["offload_param"] = {"device": "cpu", "pin_memory": pin_memory}
    config: dict[str, Any] = {"zero_optimization": zero, "zero_allow_untested_optimizer": True}
    if offload_optimizer:
        # The LoRA optimizer state is a few MB: torch's AdamW on the CPU is fine, DeepSpeed's CPU Adam
        # (a compiled extension) is not needed.
        config["zero_force_ds_cpu_optimizer"] = False
    return config


def deepspeed_config_issues(stage: int, offload_parameters: bool, *sizes: int) -> list[str]:
    """Every bad value among the DeepSpeed settings, each naming the field and the fix."""
    issues = []
    if stage not in (2, 3):
        issues.append(f"stage must be 2 (shards LoRA gradients and optimizer state) or 3 (also shards the "
                      f"frozen base weights), got {stage!r}.")
    if offload_parameters and stage != 3:
        issues.append("offload_parameters needs stage 3 (ZeRO-2 does not partition the weights); set stage: 3 "
                      "or offload_parameters: false.")
    names = ("reduce_bucket_size", "allgather_bucket_size", "prefetch_bucket_size", "param_persistence_threshold")
    for name, value in zip(names, sizes, strict=False):  # a caller may check fewer sizes
        if not isinstance(value, int) or value < (0 if name == "param_persistence_threshold" else 1):
            issues.append(f"{name} must be a positive integer (elements), got {value!r}.")
    return issues


def zero3_loading_config(config: Mapping[str, Any], weights_dtype: torch.dtype) -> dict[str, Any]:
    """The config ``transformers`` loads the model with under ZeRO-3.

    ``zero.Init`` creates every partition in the dtype named by the config (bf16, fp16, else float32);
    the engine's config names none, so this copy names the base weights' dtype, and the model is
    loaded partitioned in bf16 rather than upcast to float32.
    """
    loading = copy.deepcopy(dict(config))
    loading.pop("bf16", None)
    loading.pop("fp16", None)
    if weights_dtype == torch.bfloat16:
        loading["bf16"] = {"enabled": True}
    elif weights_dtype == torch.float16:
        loading["fp16"] = {"enabled": True}
    return loading


# ---------------------------------------------------------------- ZeRO-3 parameter helpers
def is_zero3_param(param: torch.Tensor) -> bool:
    """Whether ``param`` is managed by ZeRO-3 (partitioned across ranks)."""
    return hasattr(param, "ds_id")


def _zero3_offload(engine: Any) -> Any:
    optimizer = getattr(engine, "optimizer", None)
    offload = getattr(optimizer, "parameter_offload", None) or getattr(engine, "parameter_offload", None)
    if offload is None:
        raise RuntimeError("the DeepSpeed engine has no ZeRO-3 parameter offload; is ZeRO stage 3 on?")
    return offload


@contextmanager
def lora_gathered(split: Any, writable: bool = False) -> Iterator[None]:
    """Make every LoRA weight of ``split`` whole on this rank for the block.

    A collective under ZeRO-3: every rank must enter. With ``writable`` the values at exit (rank 0's,
    which must equal every other rank's) go back into the ZeRO partitions. Without ZeRO-3 it does
    nothing.
    """
    params = [p for p in split.lora_parameters("all").values() if is_zero3_param(p)]
    if not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=0 if writable else None):
        yield


@contextmanager
def compressed_model_gathered(engine: Any, split: Any) -> Iterator[None]:
    """The clients' view of a ZeRO-3 server: every rank holds the whole *compressed* model.

    For the block: every weight the server's passes left cached is released, the compressed model's
    base weights (embeddings, kept layers, norm, head; not the dropped layers) are gathered read-only
    on this rank, its LoRA weights gathered writable, and
    ZeRO-3's module hooks are lifted, so forward and backward passes on the compressed model involve
    no other rank (each rank can fit different clients, any number of steps). On exit the LoRA
    values go back into the partitions (they must be the same on every rank, e.g. the FedAvg result),
    the base weights are released, the hooks come back and the persistent parameters are gathered
    again, as after an optimizer step. A collective: every rank must enter and leave together.
    """
    import deepspeed

    offload = _zero3_offload(engine)
    lora_ids = {id(p) for p in split.lora_parameters("all").values()}
    zero_params = [p for p in split.compressed.parameters() if is_zero3_param(p)]
    base = [p for p in zero_params if id(p) not in lora_ids]
    lora = [p for p in zero_params if id(p) in lora_ids]
    offload.empty_partition_cache()  # release what the server's passes left cached, the dropped layers too
    for hook in [*offload.forward_hooks, *offload.backward_hooks]:
        hook.remove()
    offload.forward_hooks, offload.backward_hooks = [], []
    try:
        with deepspeed.zero.GatheredParameters(base, modifier_rank=None), \
                deepspeed.zero.GatheredParameters(lora, modifier_rank=0):
            yield
    finally:
        offload._register_deepspeed_module(offload.module)
        persistent = offload.persistent_parameters
        if persistent:
            persistent[0].all_gather(persistent)


def client_phase(strategy: Strategy, split: Any) -> Any:
    """The context the federated loop runs a round's client fits in.

    :func:`compressed_model_gathered` under a ZeRO-3 :class:`DeepSpeedStrategy`, nothing otherwise.
    """
    if isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3 and is_zero3_param(
        next(iter(split.lora_parameters("all").values()))
    ):
        return compressed_model_gathered(strategy.deepspeed_engine, split)
    return nullcontext()


# ---------------------------------------------------------------- the strategy
class FedBiOTDeepSpeed(DeepSpeedStrategy):
    """DeepSpeed ZeRO for the server's full model (see the module docstring for what it adds).

    Args:
        stage: 2 = shard the LoRA gradients and optimizer state (every GPU holds the full model);
            3 = also shard the frozen base weights (the full model never sits whole on one GPU).
        offload_optimizer: keep the (LoRA-only) optimizer state and step on the CPU.
        offload_parameters: keep the base-weight partitions in CPU memory (stage 3 only).
        reduce_bucket_size: elements per gradient reduce-scatter bucket.
        allgather_bucket_size: elements per all-gather bucket of updated weights (stage 2).
        prefetch_bucket_size: elements of base weights fetched ahead of the forward pass (stage 3).
        param_persistence_threshold: tensors with at most this many elements stay whole on every GPU
            (stage 3; the default keeps every LoRA tensor of a 7B-70B model whole).
        pin_memory: pin the CPU buffers of the offloads.
        exclude_frozen_parameters: leave the frozen base out of the DeepSpeed checkpoints.
    """

    strategy_name = "fedbiot_deepspeed"

    def __init__(
        self,
        stage: Literal[2, 3] = 3,
        offload_optimizer: bool = False,
        offload_parameters: bool = False,
        reduce_bucket_size: int = 50_000_000,
        allgather_bucket_size: int = 200_000_000,
        prefetch_bucket_size: int = 50_000_000,
        param_persistence_threshold: int = 100_000,
        pin_memory: bool = True,
        exclude_frozen_parameters: bool = True,
        accelerator: Any = None,
        parallel_devices: list[torch.device] | None = None,
        cluster_environment: Any = None,
        precision_plugin: Any = None,
        process_group_backend: str | None = None,
    ) -> None:
        if not deepspeed_available():
            raise ModuleNotFoundError(f"FedBiOTDeepSpeed needs DeepSpeed, which is not installed: {INSTALL_HINT}")
        config = deepspeed_config(
            stage, offload_optimizer=offload_optimizer, offload_parameters=offload_parameters,
            reduce_bucket_size=reduce_bucket_size, allgather_bucket_size=allgather_bucket_size,
            prefetch_bucket_size=prefetch_bucket_size, param_persistence_threshold=param_persistence_threshold,
            pin_memory=pin_memory,
        )
        super().__init__(
            accelerator=accelerator, config=config, parallel_devices=parallel_devices,
            cluster_environment=cluster_environment, precision_plugin=precision_plugin,
            process_group_backend=process_group_backend, exclude_frozen_parameters=exclude_frozen_parameters,
        )
        self._hf_zero3: Any = None  # keeps transformers' ZeRO-3 switch on while the strategy runs

    def weights_dtype(self) -> torch.dtype:
        """The dtype of the base weights: the module's ``split.dtype``, else the precision's."""
        from fedbiot_pl.model.views import DTYPES

        split = getattr(self.lightning_module, "split", None)
        name = getattr(split, "dtype_name", None)
        if name in DTYPES:
            return DTYPES[name]
        precision = str(getattr(self.precision_plugin, "precision", "32-true"))
        return torch.bfloat16 if precision.startswith("bf16") else torch.float16 if precision.startswith("16") \
            else torch.float32

    @override
    def setup_environment(self) -> None:
        precision = normalized_precision(self.precision_plugin.precision)
        if precision != "32-true":
            raise ValueError(precision_message(precision, deepspeed=True))
        super().setup_environment()

    @contextmanager
    @override
    def model_sharded_context(self) -> Iterator[None]:
        if not self.zero_stage_3:
            yield
            return
        from transformers.integrations import HfDeepSpeedConfig

        self._init_config_if_needed()
        self._hf_zero3 = HfDeepSpeedConfig(zero3_loading_config(self.config, self.weights_dtype()))
        yield

    @override
    def teardown(self) -> None:
        super().teardown()
        self._hf_zero3 = None

    # -------------------------------------------------------------- LoRA in DeepSpeed checkpoints
    @override
    def lightning_module_state_dict(self) -> dict[str, Any]:
        module = self.lightning_module
        split = getattr(module, "split", None)
        if split is None or not getattr(split, "built", False):
            return super().lightning_module_state_dict()
        with lora_gathered(split):
            return {k: v.detach().clone() for k, v in module.state_dict().items() if "lora_" in k}

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        # DeepSpeed drops Lightning's `state_dict`; carry the (LoRA-only) one under our own key.
        checkpoint = {**checkpoint, LORA_CHECKPOINT_KEY: checkpoint.get("state_dict", {})}
        super().save_checkpoint(checkpoint, filepath, storage_options)

    @override
    def load_model_state_dict(self, checkpoint: Mapping[str, Any], strict: bool = True) -> None:
        lora = checkpoint.get(LORA_CHECKPOINT_KEY)
        split = getattr(self.lightning_module, "split", None)
        if lora is None or split is None:
            super().load_model_state_dict(checkpoint, strict)
            return
        with lora_gathered(split, writable=True):
            self.lightning_module.load_state_dict(lora, strict=False)
