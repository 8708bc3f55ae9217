"""Combining top-k payloads into targets, and laying targets onto a batch (pure functions).

* :func:`aggregate_topk` (``fed_kd``): per token, the union of the payloads' indices, the weighted
  mean of their distributions (0 where a payload lacks an index), then the k largest, renormalised.
* :func:`select_targets` (``fedmkt``): per example, one teacher among the candidates by reward
  ``exp(-CE)``: ``greater`` takes the highest reward (FedMKT's default; ties go to the first
  candidate, the model's own), ``weighted_mean`` mixes them with weights ``softmax_d(exp(-CE_d))``,
  ``mean`` with equal weights.
* :func:`batch_targets`: an example's ragged targets padded onto a ``(B, T, k)`` batch.

A payload's distribution is ``softmax(values / tau)`` over its k entries. A mixed payload stores
``values = tau * log q``, so that reading it back with the same ``tau`` gives ``q``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from fedbiot_pl.distillation.topk import TopK

Strategy = Literal["greater", "weighted_mean", "mean"]
STRATEGIES = ("greater", "weighted_mean", "mean")


def topk_probs(values: Tensor, temperature: float = 1.0) -> Tensor:
    """``softmax(values / tau)`` over the k kept entries, in float32."""
    return torch.softmax(values.float() / temperature, dim=-1)


def mix_topk(probs: Sequence[Tensor], indices: Sequence[Tensor], weights: Tensor, top_k: int) -> tuple[Tensor, Tensor]:
    """Per row, ``sum_d w_d q_d`` over the union of indices, then its ``top_k`` entries renormalised.

    Args:
        probs: per source, ``(N, k_d)`` probabilities.
        indices: per source, ``(N, k_d)`` their vocabulary indices.
        weights: ``(D, N)`` or ``(D,)`` weights (normalised here to sum to 1 over the sources).
        top_k: entries kept per row; a row with fewer distinct indices is padded with probability 0
            at the smallest indices it does not hold (so a row never repeats an index).

    Returns:
        ``(probs, indices)``, each ``(N, top_k)``, probabilities in decreasing order.
    """
    weights = weights.float()
    if weights.dim() == 1:
        weights = weights[:, None].expand(-1, probs[0].shape[0])
    weights = weights / weights.sum(dim=0, keepdim=True)
    index = torch.cat([i.long() for i in indices], dim=1)
    mass = torch.cat([p.float() * w[:, None] for p, w in zip(probs, weights, strict=True)], dim=1)
    index, order = index.sort(dim=1)
    mass = mass.gather(1, order)
    group = torch.zeros_like(index)
    group[:, 1:] = (index[:, 1:] != index[:, :-1]).long().cumsum(dim=1)  # one group per distinct index
    summed = torch.zeros_like(mass).scatter_add_(1, group, mass)
    distinct = torch.zeros_like(index).scatter_(1, group, index)
    summed[torch.arange(summed.shape[1], device=summed.device)[None, :] > group[:, -1:]] = -1.0  # unused slots lose
    top, where = summed.topk(min(top_k, summed.shape[1]), dim=1)
    top, chosen = top.clamp(min=0), distinct.gather(1, where)
    padded = where > group[:, -1:]
    for row in padded.any(dim=1).nonzero().flatten().tolist():  # rare: top_k above the row's distinct indices
        held = set(chosen[row][~padded[row]].tolist())
        free = (index for index in range(top_k + len(held)) if index not in held)
        chosen[row][padded[row]] = torch.tensor([next(free) for _ in range(int(padded[row].sum()))],
                                                dtype=chosen.dtype, device=chosen.device)
    return top / top.sum(dim=1, keepdim=True), chosen


def _check_same_slice(payloads: Sequence[TopK]) -> None:
    if not payloads:
        raise ValueError("no payloads to combine.")
    first = payloads[0]
    for other in payloads[1:]:
        if not (torch.equal(other.rows, first.rows) and torch.equal(other.offsets, first.offsets)):
            raise ValueError("payloads cover different public rows or token counts; they cannot be combined.")


def _from_mix(like: TopK, probs: Tensor, indices: Tensor, metric: Tensor, temperature: float) -> TopK:
    values = (temperature * probs.clamp(min=torch.finfo(torch.float32).tiny).log()).to(torch.float16)
    return TopK(values, indices.to(like.indices.dtype), like.offsets.clone(), metric.float(), like.rows.clone())


def aggregate_topk(payloads: Sequence[TopK], weights: Sequence[float], top_k: int, temperature: float = 1.0) -> TopK:
    """The weighted mean of the payloads' distributions per token, top-k, renormalised (``fed_kd``'s aggregate).

    The metric is the weighted mean of the payloads' metrics.
    """
    _check_same_slice(payloads)
    w = torch.tensor(list(weights), dtype=torch.float32)
    probs, indices = mix_topk([topk_probs(p.values, temperature) for p in payloads], [p.indices for p in payloads],
                              w, top_k)
    metric = (torch.stack([p.metric.float() for p in payloads]) * (w / w.sum())[:, None]).sum(dim=0)
    return _from_mix(payloads[0], probs, indices, metric, temperature)


def teacher_weights(metrics: Tensor, strategy: Strategy) -> Tensor:
    """``(D, P)`` weights of D candidates per example from their ``(D, P)`` cross-entropies (reward ``exp(-CE)``)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"distill_strategy must be one of {STRATEGIES}, got {strategy!r}.")
    if strategy == "greater":  # the highest reward is the lowest CE (compared directly: exp(-CE) underflows)
        best = (-metrics.float()).argmax(dim=0)  # the first of equal rewards
        return torch.nn.functional.one_hot(best, metrics.shape[0]).T.float()
    reward = torch.exp(-metrics.float())
    if strategy == "weighted_mean":
        return torch.softmax(reward, dim=0)
    return torch.full_like(reward, 1.0 / metrics.shape[0])


def select_targets(candidates: Sequence[TopK], strategy: Strategy = "greater", temperature: float = 1.0,
                   top_k: int | None = None) -> TopK:
    """Per example, the teacher distribution among ``candidates`` (the model's own first) by ``strategy``."""
    _check_same_slice(candidates)
    first = candidates[0]
    metrics = torch.stack([c.metric.float() for c in candidates])
    weights = teacher_weights(metrics, strategy)  # (D, P)
    if strategy == "greater":
        chosen = weights.argmax(dim=0)
        metric = metrics.gather(0, chosen[None])[0]  # not a weighted sum: 0 x inf would be NaN
        values = first.values.clone()
        indices = first.indices.clone()
        for example, source in enumerate(chosen.tolist()):
            start, end = int(first.offsets[example]), int(first.offsets[example + 1])
            values[start:end] = candidates[source].values[start:end]
            indices[start:end] = candidates[source].indices[start:end]
        return TopK(values, indices, first.offsets.clone(), metric, first.rows.clone())
    metric = (weights * metrics).sum(dim=0)
    per_token = weights.repeat_interleave(first.lengths(), dim=1)  # (D, N_tok)
    probs, indices = mix_topk([topk_probs(c.values, temperature) for c in candidates],
                              [c.indices for c in candidates], per_token, top_k or first.k)
    return _from_mix(first, probs, indices, metric, temperature)


def batch_targets(targets: TopK, examples: Sequence[int], length: int, temperature: float = 1.0,
                  device: torch.device | str | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Targets of payload examples ``examples`` padded onto a batch of ``length`` positions.

    Returns:
        ``probs`` ``(B, length, k)`` float32, ``indices`` ``(B, length, k)`` int64 and ``mask``
        ``(B, length)`` (True where example ``b`` has a target for position ``t``).
    """
    k = targets.k
    probs = torch.zeros(len(examples), length, k)
    indices = torch.zeros(len(examples), length, k, dtype=torch.long)
    mask = torch.zeros(len(examples), length, dtype=torch.bool)
    for row, example in enumerate(examples):
        values, index = targets.example(example)
        if values.shape[0] >= length:
            raise ValueError(f"public example {example} has {values.shape[0]} target tokens; the batch holds "
                             f"only {length} positions (its inputs and the targets disagree).")
        probs[row, :values.shape[0]] = topk_probs(values, temperature)
        indices[row, :values.shape[0]] = index.long()
        mask[row, :values.shape[0]] = True
    return probs.to(device), indices.to(device), mask.to(device)
