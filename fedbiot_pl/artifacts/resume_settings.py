"""Resuming with other settings than the checkpoint's: refused before any weight loads, naming each one.

A round checkpoint holds LoRA weights, an optimizer state and the loop's round count that only make
sense under the settings that wrote them. :class:`~fedbiot_pl.callbacks.FederatedLoop` records
those settings in every checkpoint (``checkpoint["fedbiot_settings"]``, from :func:`run_settings`)
and the CLI compares them with the resumed run's before ``fit`` (:func:`check_resume_settings`).

Settings that must match (by their CLI names):

* ``model.split.model``, ``adapter_layers``, ``drop_rate``, ``bottom_adapter_layers``: which layers
  the LoRA belongs to (the three layout settings only where the algorithm compresses the model);
* ``model.split.lora_r``, ``lora_alpha``, ``lora_targets``: the LoRA's shapes and scaling;
* ``federated.algorithm`` (the split's too, linked): what is trained where;
* ``federated.pre_alignment_rounds``: which epoch is which round in the loop's state and history;
* ``federated.devices`` (when set): the simulated fleet whose clock the checkpoint continues;
* the algorithm's own (its ``resume_settings``: e.g. HierFedLoRA's grouping and ``max_intra_rounds``).

The data settings that decide each client's rows (``data.num_clients``, ``partition``,
``partition_key``, ``dirichlet_alpha``, ``min_client_size``, ``val_fraction``, ``max_task_examples``,
``seed``) are recorded too (``checkpoint["fedbiot_data"]``); a change only warns, naming each one.

Everything else may change on resume: ``federated.rounds`` (to extend a run), steps, learning rates,
client sampling (the loop warns), fault handling, ``lora_dropout``, the base weights' ``dtype``, the
attention kernel, gradient checkpointing, and the trainer's engine settings. A checkpoint written
before settings were recorded cannot be checked; resuming from it logs a warning and goes on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedbiot_pl.assets import EMBEDDED_PREFIX
from fedbiot_pl.errors import ConfigError

log = logging.getLogger(__name__)
SETTINGS_KEY = "fedbiot_settings"
DATA_KEY = "fedbiot_data"
DATA_SETTINGS = ("num_clients", "partition", "partition_key", "exclude_keys", "dirichlet_alpha", "min_client_size",
                 "val_fraction", "max_task_examples", "seed")
"""The datamodule attributes (``data.<name>``) that decide the clients' rows (a change only warns)."""
NOT_USED = "(not used)"


class SettingsMismatchError(ConfigError):
    """The resumed run's settings differ from the checkpoint's; the message lists every difference."""


def run_settings(split: Any, loop: Any) -> dict[str, Any]:
    """The settings, by CLI name, that a checkpoint of ``split`` trained by ``loop`` must be resumed with.

    ``split`` is a :class:`~fedbiot_pl.model.views.ModelViews` (built or not), ``loop`` a
    :class:`~fedbiot_pl.callbacks.FederatedLoop`; the layout settings are left out where the algorithm
    does not use them.
    """
    request = split.layout_request
    layout = loop.algorithm.layout(split.num_layers, request)  # the loop's algorithm lays the views out
    settings: dict[str, Any] = {
        "federated.algorithm": loop.algorithm_name,
        "federated.pre_alignment_rounds": loop.pre_alignment_rounds,
        "model.split.model": model_identity(split.model_name),
    }
    if loop.algorithm.compresses():
        settings.update({
            "model.split.adapter_layers": request.adapter_layers,
            "model.split.drop_rate": request.drop_rate,
            "model.split.bottom_adapter_layers": len(layout.bottom_adapter),
        })
    settings.update({
        "model.split.lora_r": split.lora_r,
        "model.split.lora_alpha": split.lora_alpha,
        "model.split.lora_targets": sorted(split.lora_targets),
    })
    settings.update(loop.algorithm.resume_settings())
    if getattr(loop, "fleet", None) is not None:  # the simulated clock's profiles (a run without one records none)
        settings["federated.devices"] = loop.devices
    return settings


def model_identity(model: str) -> str:
    """``model`` as a checkpoint records it.

    A local folder by its real path (``./m``, ``~/m`` and ``/abs/m`` are one model); hub ids and
    ``embedded:`` names as given.
    """
    path = os.path.expanduser(model)
    return os.path.realpath(path) if not model.startswith(EMBEDDED_PREFIX) and os.path.exists(path) else model


def data_settings(datamodule: Any) -> dict[str, Any]:
    """The data settings that decide each client's rows (``data.<name>``), for those the datamodule has."""
    values = {name: getattr(datamodule, name) for name in DATA_SETTINGS if hasattr(datamodule, name)}
    if isinstance(values.get("exclude_keys"), (list, tuple)):  # compared as one string: a list would be left out
        values["exclude_keys"] = ", ".join(map(str, values["exclude_keys"]))
    return {
        f"data.{name}": value for name, value in values.items() if value is None or isinstance(value, (int, float, str))
    }


def warn_data_differences(checkpoint: Mapping[str, Any], current: Mapping[str, Any], path: str | Path) -> None:
    """Warn, naming each one, when the clients' data is partitioned otherwise than in the checkpoint's run.

    The resume loads, but the run no longer ends as the interrupted one would have.
    """
    differences = settings_differences(checkpoint.get(DATA_KEY) or {}, current) if DATA_KEY in checkpoint else []
    if differences:
        rows = "".join(f"\n  {name}: checkpoint {before!r}, this run {now!r}" for name, before, now in differences)
        log.warning("resuming from %s with other data settings than its run's: the clients' rows differ from "
                    "those the interrupted run trained on.%s", path, rows)


def settings_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(name, checkpoint's value, this run's value)`` for every setting that differs.

    In the checkpoint's order; a setting only one side uses shows :data:`NOT_USED` on the other.
    """
    names = list(saved) + [name for name in current if name not in saved]
    differences = []
    for name in names:
        before, now = saved.get(name, NOT_USED), current.get(name, NOT_USED)
        if before != now:
            differences.append((name, before, now))
    return differences


def _cli_value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "[" + ",".join(str(item) for item in value) + "]"
    return str(value)


def mismatch_message(path: str | Path, differences: list[tuple[str, Any, Any]]) -> str:
    """One message naming every differing setting with both values, and the arguments that resume."""
    rows = "".join(f"\n  {name}: checkpoint {before!r}, this run {now!r}" for name, before, now in differences)
    fix = " ".join(f"--{name} {_cli_value(before)}" for name, before, _ in differences if before != NOT_USED)
    return (
        f"Cannot resume from {path}: it was written with other settings than this run's "
        f"({len(differences)} differ):{rows}\n"
        f"Resume with the checkpoint's settings ({fix}), or start a new run without --ckpt_path."
    )


def check_resume_settings(checkpoint: Mapping[str, Any], current: Mapping[str, Any], path: str | Path) -> None:
    """Raise :class:`SettingsMismatchError` when ``checkpoint`` was written under other settings than ``current``.

    ``current`` is :func:`run_settings` of the resumed run; warn when the checkpoint recorded none.
    """
    saved = checkpoint.get(SETTINGS_KEY)
    if saved is None:
        log.warning("%s records no settings (written before they were recorded): resuming without checking "
                    "that the split and algorithm are the checkpoint's.", path)
        return
    differences = settings_differences(saved, current)
    if differences:
        raise SettingsMismatchError(mismatch_message(path, differences))
