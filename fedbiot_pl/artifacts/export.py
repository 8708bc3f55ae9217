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

import glob
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from safetensors.torch import save_file

from fedbiot_pl import hooks
from fedbiot_pl.assets import resolve
from fedbiot_pl.model.views import ModelViews


def _file_mode() -> int:
    """The mode a plainly created file gets (0o666 less the umask); mkstemp's own is 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


def _fsync(path: str | Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[str], object], context: dict | None = None) -> None:
    """Call ``write(tmp_path)``, flush it to disk, then rename it onto ``path`` (same folder).

    A reader sees the old file or the complete new one, never a part: a crash leaves at most a
    ``.<name>.*.tmp`` file next to ``path``, which nothing loads and the next successful write of
    ``path`` removes. The ``file_write`` hook point (:mod:`fedbiot_pl.hooks`) fires between the write
    and the rename, with ``name`` (``path``'s file name) and ``context``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, _FILE_MODE)
        write(tmp)
        _fsync(tmp)
        hooks.fire("file_write", name=path.name, **(context or {}))
        os.replace(tmp, path)
        _fsync(path.parent, directory=True)
        for stale in path.parent.glob(glob.escape(f".{path.name}.") + "*.tmp"):  # left by a killed writer
            stale.unlink(missing_ok=True)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through :func:`atomic_write`."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def adapfu_state(split: ModelViews) -> dict:
    """The adapter's LoRA keyed by full-model layer index (contiguous CPU tensors)."""
    mapping = {position: split.layout.compressed[position] for position in split.layout.adapter_positions}

    def rename(key: str) -> str:
        return re.sub(r"\.layers\.(\d+)\.", lambda m: f".layers.{mapping[int(m.group(1))]}.", key, count=1)

    return {rename(key): value.contiguous().cpu() for key, value in split.lora_state("adapter").items()}


def export_adapters(split: ModelViews, out_dir: str | Path) -> Path:
    """Write the AdapFu peft adapter and the compressed LoRA of ``split`` into ``out_dir``."""
    out = Path(out_dir)
    layout = split.layout
    adapter_layers = sorted(layout.bottom_adapter + layout.top_adapter)
    config = split.lora_config.to_dict()
    config.update(
        # transformers must resolve it (peft's AutoPeftModelForCausalLM): an embedded model's folder;
        # hub ids and the user's own paths as given.
        base_model_name_or_path=resolve(split.model_name),
        layers_to_transform=adapter_layers,
        target_modules=sorted(split.lora_config.target_modules),
        peft_type="LORA",
        task_type="CAUSAL_LM",
    )
    adapfu = out / "adapfu"
    atomic_write(adapfu / "adapter_model.safetensors", lambda tmp: save_file(adapfu_state(split), tmp))
    write_text_atomic(adapfu / "adapter_config.json", json.dumps(config, indent=2, default=list))
    compressed = {key: value.contiguous().cpu() for key, value in split.lora_state("all").items()}
    atomic_write(out / "compressed_lora.safetensors", lambda tmp: save_file(compressed, tmp))
    description = {
        "model": split.model_name,
        "algorithm": split.algorithm_name,
        "full_layers": layout.num_full_layers,
        "bottom_adapter": list(layout.bottom_adapter),
        "emulator": list(layout.emulator),
        "top_adapter": list(layout.top_adapter),
        "lora": {"r": split.lora_r, "alpha": split.lora_alpha, "dropout": split.lora_dropout,
                 "targets": sorted(split.lora_targets)},
    }
    write_text_atomic(out / "split.json", json.dumps(description, indent=2))
    return out


def export_personal_adapters(split: ModelViews, states: dict[int, dict], out_dir: str | Path) -> list[Path]:
    """Each client's own LoRA (KD keeps one per client) as ``out_dir/client_NNN``, like :func:`export_adapters`.

    The views' LoRA is put back afterwards. Nothing is written when ``states`` is empty.
    """
    if not states:
        return []
    current = split.lora_state("all")
    written = []
    try:
        for client_id, state in sorted(states.items()):
            split.load_lora_state(state)
            written.append(export_adapters(split, Path(out_dir) / f"client_{client_id:03d}"))
    finally:
        split.load_lora_state(current)
    return written
