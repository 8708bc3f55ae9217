"""Server-side aggregation of client LoRA updates (pure functions on tensor dicts)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


def fedavg(states: Sequence[Mapping[str, Tensor]], weights: Sequence[float]) -> dict[str, Tensor]:
    """Weighted mean ``sum_i w_i x_i / sum_i w_i`` of each tensor, key by key.

    LoRA ``A`` and ``B`` are averaged separately (as FedBiOT does), not their product. The sum runs
    in float32 and the result takes each input tensor's dtype.

    Raises:
        ValueError: no states, a length mismatch, negative or all-zero weights, or states whose keys
            or shapes differ.
    """
    if not states:
        raise ValueError("fedavg needs at least one client state, got none.")
    if len(states) != len(weights):
        raise ValueError(f"fedavg got {len(states)} states but {len(weights)} weights.")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"fedavg weights must be >= 0 with a positive sum, got {list(weights)}.")
    keys = set(states[0])
    for i, state in enumerate(states[1:], start=1):
        if set(state) != keys:
            diff = sorted(keys.symmetric_difference(state))
            raise ValueError(f"client state {i} has different keys than state 0, e.g. {diff[:3]}.")
    total = float(sum(weights))
    averaged = {}
    for key, first in states[0].items():
        acc = torch.zeros(first.shape, dtype=torch.float32, device=first.device)
        for i, (state, weight) in enumerate(zip(states, weights, strict=True)):
            if state[key].shape != first.shape:
                raise ValueError(
                    f"{key}: client {i} has shape {tuple(state[key].shape)}, expected {tuple(first.shape)}."
                )
            acc.add_(state[key].float(), alpha=weight / total)
        averaged[key] = acc.to(first.dtype)
    return averaged


def layerwise_fedavg(global_state: Mapping[str, Tensor], states: Sequence[Mapping[str, Tensor]],
                     weights: Sequence[float]) -> dict[str, Tensor]:
    """Per key, the weighted mean over the ``states`` that hold it; keys none holds keep ``global_state``'s value.

    HierFedLoRA's cloud step: a group trained only its top layers, so its state holds only their
    keys, and each layer is averaged over the groups that trained it (weights renormalised per key).
    With every state holding every key this is :func:`fedavg` (bit for bit: the same float32 sums).

    Raises:
        ValueError: a length mismatch, negative or all-zero weights, a key ``global_state`` lacks,
            or a shape that differs from ``global_state``'s.
    """
    if len(states) != len(weights):
        raise ValueError(f"layerwise_fedavg got {len(states)} states but {len(weights)} weights.")
    if any(w < 0 for w in weights) or (states and sum(weights) <= 0):
        raise ValueError(f"layerwise_fedavg weights must be >= 0 with a positive sum, got {list(weights)}.")
    averaged = {}
    for key, value in global_state.items():
        holders = [(state[key], weight) for state, weight in zip(states, weights, strict=True) if key in state]
        total = float(sum(weight for _, weight in holders))
        if not holders or total <= 0:
            averaged[key] = value.clone()
            continue
        acc = torch.zeros(value.shape, dtype=torch.float32, device=value.device)
        for tensor, weight in holders:
            if tensor.shape != value.shape:
                raise ValueError(f"{key}: a state has shape {tuple(tensor.shape)}, expected {tuple(value.shape)}.")
            acc.add_(tensor.float(), alpha=weight / total)
        averaged[key] = acc.to(value.dtype)
    unknown = sorted({key for state in states for key in state} - set(global_state))
    if unknown:
        raise ValueError(f"{len(unknown)} keys are not in the global state, e.g. {unknown[:3]}.")
    return averaged
