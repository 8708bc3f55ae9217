"""Read the LoRA weights of a run back: from a round checkpoint or from an exported adapter folder.

Both give the compressed model's LoRA keyed like ``peft.get_peft_model_state_dict`` (emulator and
adapter layers), ready for :meth:`ModelViews.load_lora_state`; AdapFu and AdapEmu then come from
the same :class:`ModelViews` (its ``full_with_adapter`` and ``compressed`` share every frozen
weight, so the two variants never hold two full models).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from fedbiot_pl.modules.lora_part_module import CHECKPOINT_PREFIX

_ADAPTER_NAME = re.compile(r"\.(lora_[AB])\.[^.]+\.weight$")


def lora_from_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The LoRA state of a Lightning round checkpoint (loaded with ``weights_only=True``)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", {})
    lora = {
        _ADAPTER_NAME.sub(r".\1.weight", key[len(CHECKPOINT_PREFIX) :]): value
        for key, value in state.items()
        if key.startswith(CHECKPOINT_PREFIX) and "lora_" in key
    }
    if not lora:
        raise ValueError(f"{path} holds no LoRA weights of a FedBiOT run (keys under {CHECKPOINT_PREFIX!r}).")
    return lora


def load_run_lora(path: str | Path) -> dict[str, Tensor]:
    """LoRA state from a ``.ckpt`` file, a ``compressed_lora.safetensors`` file, or a ``final_adapter`` folder.

    The ``final_adapter`` folder is an exported one, which holds that file.

    Raises:
        FileNotFoundError: naming the path and what was looked for.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "compressed_lora.safetensors"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; pass a round checkpoint (.ckpt), a compressed_lora.safetensors file "
            "or a final_adapter folder of a run."
        )
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return lora_from_checkpoint(path)
