"""Assembling a model of the same class from a subset of its decoder layers, sharing every tensor.

A shell of the full model's Hugging Face class is built on the meta device; every module except the
decoder layers *is* the full model's, and the given layers are structural copies that point at the
full model's parameters (:func:`share_copy`). Nothing is copied.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn

from fedbiot_pl.errors import ConfigError


def share_copy(module: nn.Module) -> nn.Module:
    """A structural copy of ``module`` whose parameters and buffers are the original tensors."""
    memo = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}
    return copy.deepcopy(module, memo)


def decoder_of(model: nn.Module) -> nn.Module:
    """The decoder stack (``model.model`` for LLaMA, Mistral, Qwen2) holding ``layers``."""
    decoder = getattr(model, "model", None)
    if decoder is None or not isinstance(getattr(decoder, "layers", None), nn.ModuleList):
        raise ConfigError(
            f"{type(model).__name__} is not supported: FedBiOT needs a decoder-only causal LM whose "
            "decoder layers are one nn.ModuleList at `model.model.layers` (LLaMA, Mistral, Qwen2, ...)."
        )
    return decoder


def _set_layer_index(layer: nn.Module, index: int) -> None:
    # transformers keys its KV cache by `layer_idx`; renumber every module that carries one.
    for module in layer.modules():
        if hasattr(module, "layer_idx"):
            module.layer_idx = index


def assemble(full: nn.Module, layers: list[nn.Module]) -> nn.Module:
    """A model of ``full``'s class running ``layers``, sharing everything else with ``full``.

    The shell is created on the meta device (no memory, no init), then every module except the
    decoder layers is replaced by ``full``'s own module. ``config.num_hidden_layers`` (and the
    per-layer ``layer_types`` of sliding-window models) match the new depth and ``layer_idx`` is
    renumbered so that the KV cache and ``generate`` work.
    """
    indices = [getattr(layer, "_fedbiot_source_index", i) for i, layer in enumerate(layers)]
    config = copy.deepcopy(full.config)
    config.num_hidden_layers = len(layers)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [full.config.layer_types[i] for i in indices]
    with torch.device("meta"):
        shell = type(full)(config)
    decoder, full_decoder = decoder_of(shell), decoder_of(full)
    for name, child in full.named_children():
        if child is not full_decoder:
            setattr(shell, name, child)
    for name, child in full_decoder.named_children():
        if name != "layers":
            setattr(decoder, name, child)
    decoder.layers = nn.ModuleList(layers)
    for position, layer in enumerate(layers):
        _set_layer_index(layer, position)
    shell.generation_config = copy.deepcopy(full.generation_config)
    # Every tensor must be full's or the given layers' (identity, so meta-device models work too).
    shared = {id(t) for m in (full, *layers) for t in itertools.chain(m.parameters(), m.buffers())}
    leftover = [
        n for n, t in itertools.chain(shell.named_parameters(), shell.named_buffers()) if id(t) not in shared
    ]
    if leftover:
        raise RuntimeError(f"{type(full).__name__} has modules the split does not share: {leftover[:5]}")
    return shell
