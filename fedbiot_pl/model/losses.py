"""FedBiOT's loss terms as pure functions, all computed in float32.

* :func:`normalized_l2` -- the emulator's output against the original layers' output,
  ``mean((h_T - h_S)^2) / mean(h_T^2)``.
* :func:`kl_teacher_student` -- ``KL(p_teacher || p_student)`` summed over the vocabulary and
  averaged over positions (teacher = full model with the current adapter).
* :func:`lora_proximal` -- the client's proximal term ``sum_m ||s B A - s B_t A_t||_F^2`` over LoRA
  modules, computed from the rank-r factors without forming the d_out x d_in products.
* :func:`lora_param_proximal` -- FedProx's ``1/2 sum ||theta - theta_t||^2`` over the LoRA factors.

``mask`` (``(B, T)``, 1 = real token) restricts a term to real tokens; ``None`` uses every position,
padding included, as the reference code does (its quirk B6).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor


def _select(x: Tensor, mask: Tensor | None) -> Tensor:
    # (B, T, D) -> (N, D) with N the kept positions.
    x = x.float()
    return x.reshape(-1, x.shape[-1]) if mask is None else x[mask.bool()]


def normalized_l2(student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> Tensor:
    """``mean((teacher - student)^2) / mean(teacher^2)`` over the selected positions.

    Args:
        student: ``(B, T, D)`` hidden states of the emulator's last layer.
        teacher: ``(B, T, D)`` hidden states of the original layers on the same input.
        mask: optional ``(B, T)`` mask of positions to include.
    """
    s, t = _select(student, mask), _select(teacher, mask).detach()
    return (t - s).pow(2).mean() / t.pow(2).mean()


def kl_teacher_student(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """Forward KL, teacher to student, temperature 1: ``(1/N) sum_n sum_v p_T (log p_T - log p_S)``."""
    log_s = F.log_softmax(_select(student_logits, mask), dim=-1)
    log_t = F.log_softmax(_select(teacher_logits, mask).detach(), dim=-1)
    return F.kl_div(log_s, log_t, reduction="sum", log_target=True) / log_s.shape[0]


def lora_delta_sq(a: Tensor, b: Tensor, a0: Tensor, b0: Tensor, scaling: float) -> Tensor:
    """``||s B A - s B0 A0||_F^2`` from the factors (``A: (r, d_in)``, ``B: (d_out, r)``).

    Uses ``<B A, B0 A0>_F = sum((B^T B0) * (A A0^T))``, so the cost is O(r^2 (d_in + d_out)).
    """
    a, b, a0, b0 = a.float(), b.float(), a0.float(), b0.float()

    def inner(b1: Tensor, a1: Tensor, b2: Tensor, a2: Tensor) -> Tensor:
        return ((b1.T @ b2) * (a1 @ a2.T)).sum()

    value = inner(b, a, b, a) - 2 * inner(b, a, b0, a0) + inner(b0, a0, b0, a0)
    return scaling**2 * value


def lora_proximal(pairs: Iterable[tuple[Tensor, Tensor, Tensor, Tensor, float]]) -> Tensor:
    """Sum of :func:`lora_delta_sq` over ``(A, B, A_anchor, B_anchor, scaling)`` tuples."""
    terms = [lora_delta_sq(a, b, a0, b0, s) for a, b, a0, b0, s in pairs]
    if not terms:
        raise ValueError("lora_proximal got no LoRA modules; the adapter has no LoRA weights.")
    return torch.stack(terms).sum()


def lora_param_proximal(pairs: Iterable[tuple[Tensor, Tensor, Tensor, Tensor, float]]) -> Tensor:
    """FedProx's term ``1/2 * sum(||A - A_t||^2 + ||B - B_t||^2)`` over the same tuples (in float32).

    FedProx (Li et al., 2020) adds ``mu/2 ||w - w_t||^2`` on the trained parameters, here the LoRA
    factors; the caller multiplies by ``mu``.
    """
    terms = [((a.float() - a0.float()) ** 2).sum() + ((b.float() - b0.float()) ** 2).sum() for a, b, a0, b0, _ in pairs]
    if not terms:
        raise ValueError("lora_param_proximal got no LoRA modules; the trained part has no LoRA weights.")
    return 0.5 * torch.stack(terms).sum()


def causal_lm_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Next-token cross-entropy in float32: ``logits[:, t]`` predicts ``labels[:, t + 1]``; -100 is ignored."""
    return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
