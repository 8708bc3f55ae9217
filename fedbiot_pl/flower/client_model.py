"""The clients' model, shipped once: export, fingerprint, and a memory-mapped load at the sites.

A site never needs the full model. The server exports what the clients hold (FedBiOT's emulator +
adapter, FedOT's adapters + emulator, the full model for FedAvg-LoRA) once, as a Hugging Face model
folder whose decoder layers are the compressed model's; it reaches each site out of band (sftp, a
private hub repository, a disk) and is checked by sha256 before every use::

    client_model/
      config.json, generation_config.json   num_hidden_layers = the compressed model's layers
      model.safetensors                     the base weights (no LoRA), in the run's dtype
      tokenizer files
      client_model.json                     layout roles, LoRA settings, algorithm, source model
      manifest.sha256                       sha256 of every file above

The weights load memory-mapped (:func:`mapped_state_dict`): the tensors view the file's pages, so
the fresh process Flower starts for every message maps the file instead of reading and copying it,
and the pages stay in the operating system's cache between rounds.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fedbiot_pl.errors import ConfigError
from fedbiot_pl.model.layer_drop import layer_layout

MANIFEST = "manifest.sha256"
SETTINGS_FILE = "client_model.json"
WEIGHTS_FILE = "model.safetensors"
_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "I64": torch.int64,
           "I32": torch.int32, "BOOL": torch.bool, "U8": torch.uint8}


@dataclass(frozen=True)
class ClientModelSettings:
    """What a site needs to rebuild the clients' model views (``client_model.json``)."""

    algorithm: str
    source_model: str
    num_layers: int
    bottom_adapter_layers: int
    top_adapter_layers: int
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    lora_targets: list[str]
    dtype: str
    attn_implementation: str
    gradient_checkpointing: bool = False
    layers: list[int] | None = None  # the full model's index of each layer (the layout's compressed layers)


def is_exported(folder: str | Path) -> bool:
    """Whether ``folder`` holds an exported client model (its manifest is written last)."""
    return (Path(folder) / MANIFEST).is_file()


def check_new_folder(out: Path) -> None:
    """``ConfigError`` unless ``out`` is missing or an empty folder: a client model never overwrites anything."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists (a file, or a folder that is not empty); give a new folder for the client "
                          "model (nothing is overwritten).")


def export_client_model(views: Any, tokenizer: Any, out: str | Path) -> str:
    """Write the clients' model of built ``views`` (and ``tokenizer``) into ``out``; return its sha256.

    Raises:
        ConfigError: ``out`` exists and is not empty (nothing is overwritten).
    """
    from fedbiot_pl.model.assembly import assemble, decoder_of, share_copy

    out = Path(out)
    check_new_folder(out)
    layout = views.layout
    full_layers = decoder_of(views.full).layers
    layers = []
    for index in layout.compressed:  # plain copies of the full model's layers (no LoRA), sharing its tensors
        layer = share_copy(full_layers[index])
        layer._fedbiot_source_index = index
        layers.append(layer)
    shell = assemble(views.full, layers)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shell.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    settings = ClientModelSettings(
        algorithm=views.algorithm_name, source_model=str(views.model_name), num_layers=len(layout.compressed),
        bottom_adapter_layers=len(layout.bottom_adapter), top_adapter_layers=len(layout.top_adapter),
        lora_r=views.lora_r, lora_alpha=views.lora_alpha, lora_dropout=views.lora_dropout,
        lora_targets=list(views.lora_targets), dtype=views.dtype_name, attn_implementation=views.attn_implementation,
        gradient_checkpointing=views.gradient_checkpointing, layers=list(layout.compressed))
    (partial / SETTINGS_FILE).write_text(json.dumps(asdict(settings), indent=2) + "\n")
    digest = write_manifest(partial)
    if out.exists():
        out.rmdir()
    partial.rename(out)
    return digest


def _file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            sha.update(block)
    return sha.hexdigest()


def write_manifest(folder: Path) -> str:
    """Write ``manifest.sha256`` (``<sha256>  <file>`` per file) into ``folder``; return the folder's digest."""
    lines = [f"{_file_sha256(path)}  {path.relative_to(folder).as_posix()}"
             for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)]
    text = "\n".join(lines) + "\n"
    (folder / MANIFEST).write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()


def model_digest(folder: str | Path) -> str:
    """The client model's sha256: that of its manifest (cheap; :func:`verify_client_model` checks the files)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ConfigError(f"{folder} is not a client model folder (no {MANIFEST}); export one with "
                          "`fedbiot-flower-export`.")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def verify_client_model(folder: str | Path, expected: str | None = None) -> str:
    """Check every file of the client model against its manifest (and the manifest against ``expected``).

    Returns:
        The model's sha256.

    Raises:
        ConfigError: a file is missing or differs, or the model is not the one the server expects.
    """
    folder = Path(folder)
    digest = model_digest(folder)
    if expected is not None and digest != expected:
        raise ConfigError(f"the client model in {folder} has sha256 {digest[:16]}..., the server's is "
                          f"{expected[:16]}...: copy the server's exported client model to this site.")
    for line in (folder / MANIFEST).read_text().splitlines():
        sha, name = line.split("  ", 1)
        path = folder / name
        if not path.is_file():
            raise ConfigError(f"{path} is missing from the client model; copy the whole exported folder again.")
        if _file_sha256(path) != sha:
            raise ConfigError(f"{path} differs from the exported client model (sha256 mismatch); copy it again.")
    return digest


def read_settings(folder: str | Path) -> ClientModelSettings:
    """The ``client_model.json`` of a client model folder."""
    return ClientModelSettings(**json.loads((Path(folder) / SETTINGS_FILE).read_text()))


def mapped_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file as views of its memory-mapped pages (no read, no copy).

    The mapping is private (copy-on-write): the tensors are writable, a write copies only its page and
    never reaches the file.
    """
    with open(path, "rb") as handle:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
    (length,) = torch.frombuffer(mapped, dtype=torch.int64, count=1).tolist()
    header = json.loads(bytes(mapped[8:8 + length]))
    start = 8 + length
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES[entry["dtype"]]
        begin, end = entry["data_offsets"]
        count = (end - begin) // torch.empty((), dtype=dtype).element_size()
        flat = torch.frombuffer(mapped, dtype=dtype, count=count, offset=start + begin) if count else \
            torch.empty(0, dtype=dtype)
        tensors[name] = flat.view(entry["shape"])
    return tensors


def load_client_model(folder: str | Path, device: str | torch.device = "cpu") -> Any:
    """The client model (a transformers causal LM) of ``folder``, its weights memory-mapped on the CPU."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    settings = read_settings(folder)
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    config._attn_implementation = settings.attn_implementation
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=_torch_dtype(settings.dtype))
    state = mapped_state_dict(folder / WEIGHTS_FILE)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    still_meta = [name for name, p in model.named_parameters() if p.is_meta]
    if unexpected or still_meta:
        raise ConfigError(f"{folder / WEIGHTS_FILE} does not fit its config: missing {still_meta[:3]}, "
                          f"unexpected {unexpected[:3]}; export the client model again.")
    _rebuild_meta_buffers(model, config)
    if torch.device(device).type != "cpu":
        model.to(device)
    return model.eval()


def _torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _rebuild_meta_buffers(model: Any, config: Any) -> None:
    """Non-persistent buffers (rotary frequencies) are not in the file: build their modules again on the CPU."""
    for name, module in list(model.named_modules()):
        if any(buffer.is_meta for buffer in module.buffers(recurse=False)):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            try:
                rebuilt = type(module)(config=config)
            except TypeError as error:
                raise ConfigError(f"cannot rebuild {name} ({type(module).__name__}) of the client model: {error}") \
                    from error
            setattr(parent, child, rebuilt)


def client_views(folder: str | Path, algorithm: Any, device: str | torch.device = "cpu") -> Any:
    """The clients' model views on the client model of ``folder`` (LoRA keys as on the server).

    The client model's layers are the compressed model's, in order, so a layout that keeps them all
    (drop rate 0, the same adapter layers) gives every layer its server position and every LoRA
    tensor its server key.
    """
    from fedbiot_pl.model.views import ModelViews

    settings = read_settings(folder)
    model = load_client_model(folder, device)
    if algorithm.compresses():
        top, bottom = settings.top_adapter_layers, settings.bottom_adapter_layers
        layer_layout(settings.num_layers, top, 0.0, bottom)  # the roles must still make a layout
    else:
        top, bottom = 1, None  # the full model: the algorithm's layout takes every layer
    views = ModelViews.from_model(
        model, algorithm=algorithm, adapter_layers=top, drop_rate=0.0, bottom_adapter_layers=bottom,
        lora_r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
        lora_targets=settings.lora_targets, dtype=settings.dtype, attn_implementation=settings.attn_implementation,
        gradient_checkpointing=settings.gradient_checkpointing)
    return views.build()


def model_dir_size(folder: str | Path) -> int:
    """Bytes of the client model folder."""
    return sum(os.path.getsize(p) for p in Path(folder).rglob("*") if p.is_file())
