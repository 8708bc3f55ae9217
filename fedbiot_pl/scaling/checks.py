"""The start-up check that a config's engine and precision can run on this machine (pure functions).

:func:`check_scaling` runs in the CLI before anything is instantiated or loaded, and reports every
problem at once, each naming the setting and the fix (DeepSpeed or a GPU accelerator without CUDA,
DeepSpeed not installed, a precision that would cast the float32 LoRA to half precision).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, Strategy
from lightning.pytorch.utilities.imports import RequirementCache

from fedbiot_pl.errors import ConfigError

INSTALL_HINT = "pip install 'fedbiot-pl[deepspeed]'"
HALF_PRECISIONS = ("bf16-true", "16-true")  # cast the whole module, LoRA included
FP16_PRECISIONS = ("16-mixed", "16-true", "16")


def deepspeed_available() -> bool:
    """Whether the ``deepspeed`` package can be imported here."""
    return bool(RequirementCache("deepspeed"))


def normalized_precision(precision: Any) -> str:
    """A ``trainer.precision`` value as a string, with ``32`` and ``"32"`` read as ``"32-true"``."""
    text = str(precision if precision is not None else "32-true")
    return "32-true" if text in ("32", "32-true") else text


def precision_message(precision: str, deepspeed: bool) -> str:
    """Why ``precision`` is refused, and the fix."""
    if deepspeed:
        return (f"trainer.precision {precision!r} with DeepSpeed: DeepSpeed would cast every trainable weight "
                "(the LoRA) to half precision. Set trainer.precision: 32-true; the base weights are bf16 through "
                "model.split.dtype: bfloat16, LoRA and the losses stay float32.")
    return (f"trainer.precision {precision!r} casts the float32 LoRA weights to half precision. Set "
            "trainer.precision: 32-true (no autocast, as the paper) or bf16-mixed (autocast, GPU), with the "
            "base weights in bf16 through model.split.dtype: bfloat16.")


def _class_path(value: Any) -> str | None:
    if isinstance(value, Mapping):
        return value.get("class_path")
    if isinstance(value, Strategy):
        return f"{type(value).__module__}.{type(value).__qualname__}"
    return None


def uses_deepspeed(strategy: Any) -> bool:
    """Whether a ``trainer.strategy`` value (name, ``class_path`` dict or instance) is DeepSpeed."""
    if isinstance(strategy, DeepSpeedStrategy):
        return True
    if isinstance(strategy, str):
        return "deepspeed" in strategy.lower()
    path = _class_path(strategy)
    if not path:
        return False
    module_name, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name or "builtins"), name)
    except (ImportError, AttributeError):
        return "deepspeed" in path.lower()
    return isinstance(cls, type) and issubclass(cls, DeepSpeedStrategy)


def uses_ddp(strategy: Any) -> bool:
    """Whether a ``trainer.strategy`` value (name, ``class_path`` dict or instance) is DDP."""
    from lightning.pytorch.strategies import DDPStrategy

    if isinstance(strategy, DDPStrategy):
        return True
    if isinstance(strategy, str):
        return strategy.lower().startswith("ddp")
    path = _class_path(strategy) or ""
    return path.rpartition(".")[2].lower().startswith("ddp")


def _get(config: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = config
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or node.get(key) is None:
            return default
        node = node[key]
    return node


def scaling_issues(config: Mapping[str, Any], *, cuda: bool, deepspeed_installed: bool) -> list[str]:
    """Every engine/precision setting of a parsed ``fit`` config (a nested dict) this machine cannot run.

    Each names the setting and the fix; empty when the config can start.

    Args:
        config: the parsed config (``trainer``, ``model``, ``federated`` sections).
        cuda: whether a CUDA GPU is visible here.
        deepspeed_installed: whether ``deepspeed`` can be imported.
    """
    from fedbiot_pl.algorithms import resolve_algorithm

    issues = []
    strategy = _get(config, "trainer.strategy", "auto")
    accelerator = str(_get(config, "trainer.accelerator", "auto")).lower()
    precision = normalized_precision(_get(config, "trainer.precision", "32-true"))
    dtype = _get(config, "model.split.init_args.dtype", _get(config, "model.split.dtype", "float32"))
    algorithm = _get(config, "federated.algorithm", "fedbiot")
    deepspeed = uses_deepspeed(strategy)
    if deepspeed:
        if not cuda:
            issues.append(
                "trainer.strategy asks for DeepSpeed, which runs only on CUDA GPUs, and this machine has none "
                "(torch.cuda.is_available() is False). Run it on a GPU machine, or set trainer.strategy: auto "
                "and trainer.accelerator: cpu."
            )
        if not deepspeed_installed:
            issues.append(f"trainer.strategy asks for DeepSpeed, which is not installed: {INSTALL_HINT}")
        if precision != "32-true":
            issues.append(precision_message(precision, deepspeed=True))
        try:
            resolved = resolve_algorithm(algorithm.as_dict() if hasattr(algorithm, "as_dict") else algorithm)
        except ValueError:
            resolved = None  # the loop reports it, with its other settings
        name = getattr(resolved, "name", "") or algorithm
        if resolved is not None and resolved.server_steps(None, 1) == resolved.server_steps(0, 1) == 0:
            issues.append(
                f"federated.algorithm {name!r} trains nothing on the server, so DeepSpeed has no optimizer "
                "state to shard; set trainer.strategy: auto and trainer.devices: 1."
            )
        elif resolved is not None and resolved.server_steps(0, 1) == 0 \
                and _get(config, "trainer.devices", 1) not in (1, "1", [0]):
            issues.append(
                f"federated.algorithm {name!r} has server epochs without an alignment step, which Lightning "
                "refuses on several ranks; set trainer.devices: 1."
            )
    elif uses_ddp(strategy) and _get(config, "trainer.devices", 1) not in (1, "1", [0]):
        issues.append(
            "trainer.strategy DDP over several devices is not supported for the server: DDP's gradient hooks "
            "fire during the client fits that share the server's model. Use trainer.strategy: "
            "fedbiot_pl.scaling.FedBiOTDeepSpeed for several GPUs, or trainer.devices: 1."
        )
    if not deepspeed and precision in HALF_PRECISIONS:
        issues.append(precision_message(precision, deepspeed=False))
    if accelerator in ("gpu", "cuda") and not cuda:
        issues.append(
            f"trainer.accelerator: {accelerator} but this machine has no CUDA GPU; set trainer.accelerator: cpu "
            "(or auto) to run here."
        )
    if not cuda and (precision in FP16_PRECISIONS or dtype == "float16"):
        setting = f"trainer.precision {precision!r}" if precision in FP16_PRECISIONS else "model.split.dtype float16"
        issues.append(f"{setting} is a CUDA-only path and this machine has no CUDA GPU; use trainer.precision: "
                      "32-true and model.split.dtype: float32 or bfloat16 here.")
    return issues


def check_scaling(config: Any, *, cuda: bool | None = None, deepspeed_installed: bool | None = None) -> None:
    """Raise one ``ValueError`` listing every :func:`scaling_issues` of ``config``.

    ``config`` is a dict or a jsonargparse ``Namespace``; it is checked before anything is instantiated
    or loaded.
    """
    as_dict = config.as_dict() if hasattr(config, "as_dict") else dict(config)
    issues = scaling_issues(
        as_dict,
        cuda=torch.cuda.is_available() if cuda is None else cuda,
        deepspeed_installed=deepspeed_available() if deepspeed_installed is None else deepspeed_installed,
    )
    if issues:
        raise ConfigError("This config cannot run on this machine:\n  " + "\n  ".join(issues))

