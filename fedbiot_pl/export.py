"""Write a run's adapters to disk: a standard peft adapter for AdapFu plus the compressed LoRA.

Layout of the output folder:

* ``adapfu/`` -- ``adapter_config.json`` + ``adapter_model.safetensors``: the adapter's LoRA renamed
  to the full model's layer indices (``layers_to_transform`` = the adapter layers). Since the
  adapter's base weights are the full model's own (frozen) weights, ``PeftModel.from_pretrained(
  full_model, "adapfu")`` *is* AdapFu, in any peft-aware tool.
* ``compressed_lora.safetensors`` -- emulator + adapter LoRA keyed by compressed-layer position
  (AdapEmu), with ``split.json`` describing the layout needed to rebuild the compressed model.

Every file is written to a temporary name and renamed, so a crash never leaves a truncated file.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from safetensors.torch import save_file

from fedbiot_pl.split import SplitModel


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` onto ``path`` (same folder, atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def adapfu_state(split: SplitModel) -> dict:
    """The adapter's LoRA keyed by full-model layer index (contiguous CPU tensors)."""
    mapping = {position: split.layout.compressed[position] for position in split.layout.adapter_positions}

    def rename(key: str) -> str:
        return re.sub(r"\.layers\.(\d+)\.", lambda m: f".layers.{mapping[int(m.group(1))]}.", key, count=1)

    return {rename(key): value.contiguous().cpu() for key, value in split.lora_state("adapter").items()}


def export_adapters(split: SplitModel, out_dir: str | Path) -> Path:
    """Write the AdapFu peft adapter and the compressed LoRA of ``split`` into ``out_dir``."""
    out = Path(out_dir)
    layout = split.layout
    adapter_layers = sorted(layout.bottom_adapter + layout.top_adapter)
    config = split.lora_config.to_dict()
    config.update(
        base_model_name_or_path=split.model_name,
        layers_to_transform=adapter_layers,
        target_modules=sorted(split.lora_config.target_modules),
        peft_type="LORA",
        task_type="CAUSAL_LM",
    )
    adapfu = out / "adapfu"
    atomic_write(adapfu / "adapter_model.safetensors", lambda tmp: save_file(adapfu_state(split), tmp))
    _write_text(adapfu / "adapter_config.json", json.dumps(config, indent=2, default=list))
    compressed = {key: value.contiguous().cpu() for key, value in split.lora_state("all").items()}
    atomic_write(out / "compressed_lora.safetensors", lambda tmp: save_file(compressed, tmp))
    description = {
        "model": split.model_name,
        "algorithm": split.algorithm,
        "full_layers": layout.num_full_layers,
        "bottom_adapter": list(layout.bottom_adapter),
        "emulator": list(layout.emulator),
        "top_adapter": list(layout.top_adapter),
        "lora": {"r": split.lora_r, "alpha": split.lora_alpha, "dropout": split.lora_dropout,
                 "targets": sorted(split.lora_targets)},
    }
    _write_text(out / "split.json", json.dumps(description, indent=2))
    return out
