"""The distillation loss on top-k targets, gathered: no dense ``tokens x vocabulary`` target is built.

For student logits ``z`` (one row per position), label ``y`` and a teacher's top-k target
``q_1..q_k`` at vocabulary indices ``i_1..i_k`` (``sum q = 1``)::

    CE = lse(z) - z_y                    KD = sum_j q_j (lse(z) - z_{i_j}) = lse(z) sum_j q_j - sum_j q_j z_{i_j}
    loss = alpha * mean_{label rows} CE + (1 - alpha) * mean_{target rows} KD

``KD`` is FedMKT's ``-sum_v q_v log softmax(z)_v`` with ``q`` zero off the k entries; it gathers k
entries per row, and ``lse`` is computed ``chunk_rows`` rows at a time. The backward pass writes
``coef * softmax(z) - alpha/n onehot(y) - (1-alpha)/m scatter(q)`` chunk by chunk (in float32, cast
once) into the logits' gradient, the only dense tensor besides the logits. ``alpha = 1`` gives
exactly the gradient of the cross-entropy alone (the target terms are multiplied by 0).
:func:`dense_distill_loss` is the dense reference it is tested and benchmarked against.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fedbiot_pl.distillation.topk import IGNORE_INDEX

CHUNK_ROWS = 256


def _shifted(labels: Tensor) -> Tensor:
    """Row ``(b, t)``'s target is ``labels[b, t + 1]``; the last position has none (``-100``)."""
    shifted = torch.full_like(labels, IGNORE_INDEX)
    shifted[:, :-1] = labels[:, 1:]
    return shifted.reshape(-1)


class _GatheredDistill(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, z: Tensor, y: Tensor, probs: Tensor, indices: Tensor, kd_rows: Tensor, alpha: float,
                chunk: int) -> tuple[Tensor, Tensor, Tensor]:
        ce_rows = y != IGNORE_INDEX
        n_ce, n_kd = max(int(ce_rows.sum()), 1), max(int(kd_rows.sum()), 1)
        lse = torch.empty(z.shape[0], dtype=torch.float32, device=z.device)
        for start in range(0, z.shape[0], chunk):
            lse[start:start + chunk] = torch.logsumexp(z[start:start + chunk].float(), dim=-1)
        z_y = z.gather(1, y.clamp(min=0)[:, None]).squeeze(1).float()
        ce = ((lse - z_y) * ce_rows).sum() / n_ce
        q = probs.float() * kd_rows[:, None]
        mass = q.sum(dim=-1)
        kd = (lse * mass - (q * z.gather(1, indices).float()).sum(dim=-1)).sum() / n_kd
        ctx.save_for_backward(z, lse, y, q, indices, ce_rows, mass)
        ctx.alpha, ctx.chunk, ctx.n_ce, ctx.n_kd = alpha, chunk, n_ce, n_kd
        return alpha * ce + (1 - alpha) * kd, ce, kd

    @staticmethod
    def backward(ctx: Any, g_loss: Tensor | None, g_ce: Tensor | None, g_kd: Tensor | None) -> tuple:
        z, lse, y, q, indices, ce_rows, mass = ctx.saved_tensors
        zero = torch.zeros((), device=z.device)
        g_loss, g_ce, g_kd = (zero if g is None else g.float() for g in (g_loss, g_ce, g_kd))
        a = (g_loss * ctx.alpha + g_ce) / ctx.n_ce  # weight of the CE rows
        b = (g_loss * (1 - ctx.alpha) + g_kd) / ctx.n_kd  # weight of the target rows
        coef = a * ce_rows + b * mass
        onehot, target = (-a * ce_rows)[:, None], -b * q
        labels = y.clamp(min=0)[:, None]
        grad = torch.empty_like(z)
        for start in range(0, z.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            chunk = z[rows].float() - lse[rows, None]  # one float32 chunk-sized temporary, then in place
            chunk.exp_().mul_(coef[rows, None])
            chunk.scatter_add_(1, labels[rows], onehot[rows])  # in float32: p - 1 keeps its digits in bf16
            chunk.scatter_add_(1, indices[rows], target[rows])
            grad[rows] = chunk
        return grad, None, None, None, None, None, None


def distill_loss(logits: Tensor, labels: Tensor, target_probs: Tensor | None = None,
                 target_indices: Tensor | None = None, target_mask: Tensor | None = None, alpha: float = 0.9,
                 chunk_rows: int = CHUNK_ROWS) -> tuple[Tensor, Tensor, Tensor]:
    """``(loss, ce, kd)`` of student ``logits`` against labels and top-k targets (see the module docstring).

    Args:
        logits: ``(B, T, V)`` student logits.
        labels: ``(B, T)`` Hugging Face labels (unshifted; ``-100`` = no label).
        target_probs: ``(B, T, k)`` the teacher's probabilities for position ``t`` (predicting token
            ``t + 1``), ``None`` for the cross-entropy alone.
        target_indices: ``(B, T, k)`` their vocabulary indices (any integer type).
        target_mask: ``(B, T)`` positions that have a target.
        alpha: weight of the cross-entropy (FedMKT's ``kd_alpha``); ``1 - alpha`` weighs the targets.
        chunk_rows: rows per chunk of the log-sum-exp and of the gradient.
    """
    batch, length, vocab = logits.shape
    z = logits.reshape(batch * length, vocab)
    y = _shifted(labels)
    if target_probs is None:
        k = 1
        probs = torch.zeros(batch * length, k, device=z.device)
        indices = torch.zeros(batch * length, k, dtype=torch.long, device=z.device)
        kd_rows = torch.zeros(batch * length, dtype=torch.bool, device=z.device)
    else:
        k = target_probs.shape[-1]
        probs = target_probs.reshape(-1, k)
        indices = target_indices.reshape(-1, k).long()
        kd_rows = target_mask.reshape(-1).bool()
    return _GatheredDistill.apply(z, y, probs, indices, kd_rows, float(alpha), int(chunk_rows))


def dense_distill_loss(logits: Tensor, labels: Tensor, target_probs: Tensor, target_indices: Tensor,
                       target_mask: Tensor, alpha: float = 0.9) -> tuple[Tensor, Tensor, Tensor]:
    """The same loss as FedMKT computes it: ``q`` scattered into a dense ``(B, T, V)`` tensor (the reference)."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    q = torch.zeros_like(log_p).scatter_(-1, target_indices.long(), target_probs.float())
    mask = target_mask.bool()
    kd = -(q * log_p).sum(dim=-1)[mask].sum() / max(int(mask.sum()), 1)
    vocab = logits.shape[-1]
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, vocab).float(), labels[:, 1:].reshape(-1),
                         ignore_index=IGNORE_INDEX)
    return alpha * ce + (1 - alpha) * kd, ce, kd
