"""The server's check of a client's uploaded update before it may enter the average (pure functions)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from fedbiot_pl.federation.messages import LoRAState, decode_message

_SHOWN = 3  # keys named per problem; the rest are counted


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else "")


def _flat(state: Mapping[str, Tensor], keys: list[str]) -> Tensor:
    return torch.cat([state[key].reshape(-1) for key in keys]) if keys else torch.zeros(0)


def update_norm(update: Mapping[str, Tensor], reference: Mapping[str, Tensor]) -> float:
    """L2 norm of ``update - reference`` over all tensors together (accumulated in float64)."""
    keys = sorted(update)
    change = _flat(update, keys).double() - _flat(reference, keys).double()
    return float(torch.linalg.vector_norm(change))


def update_problem(
    update: Mapping[str, Tensor], reference: Mapping[str, Tensor], max_norm: float | None = None
) -> str | None:
    """Why ``update`` must not be averaged in, or ``None`` when it may.

    ``reference`` is what the server broadcast (the global adapter LoRA): the update must have
    exactly its keys, and every tensor its shape and dtype, hold only finite values, and (with
    ``max_norm``) change the reference by an L2 norm of at most ``max_norm`` (see
    :func:`update_norm`). Every problem is listed, separated by ``"; "``.
    """
    problems = []
    missing = sorted(set(reference) - set(update))
    extra = sorted(set(update) - set(reference))
    if missing:
        problems.append(f"{len(missing)} missing keys ({_names(missing)})")
    if extra:
        problems.append(f"{len(extra)} unexpected keys ({_names(extra)})")
    shapes, dtypes, fitting = [], [], []
    for key in sorted(set(update) & set(reference)):
        value, expected = update[key], reference[key]
        if value.shape != expected.shape:
            shapes.append(f"{key} {tuple(value.shape)} instead of {tuple(expected.shape)}")
        elif value.dtype != expected.dtype:
            dtypes.append(f"{key} {value.dtype} instead of {expected.dtype}")
        else:
            fitting.append(key)
    non_finite = []  # one check over all tensors; the per-tensor search only when it fails
    if fitting and not bool(torch.isfinite(_flat(update, fitting)).all()):
        non_finite = [key for key in fitting if not bool(torch.isfinite(update[key]).all())]
    if shapes:
        problems.append(f"wrong shape: {_names(shapes)}")
    if dtypes:
        problems.append(f"wrong dtype: {_names(dtypes)}")
    if non_finite:
        problems.append(f"NaN/Inf values in {len(non_finite)} tensors ({_names(non_finite)})")
    if not problems and max_norm is not None:
        norm = update_norm(update, reference)
        if not norm <= max_norm:
            problems.append(f"update norm {norm:.4g} exceeds max_update_norm={max_norm:g}")
    return "; ".join(problems) or None


def receive_update(
    payload: bytes, reference: Mapping[str, Tensor], max_norm: float | None = None
) -> tuple[dict[str, Tensor] | None, str | None]:
    """Decode an upload and validate it.

    The upload is a :class:`~fedbiot_pl.federation.messages.LoRAState` message (safetensors only:
    nothing is unpickled).

    Returns:
        ``(update, None)`` for an acceptable update; ``(update, reason)`` for a decoded but invalid
        one (see :func:`update_problem`); ``(None, reason)`` for a payload that is not a LoRA message.
    """
    try:
        message = decode_message(payload, LoRAState)
    except ValueError as error:
        return None, f"unreadable upload: {error}"
    return message.tensors, message.problem(reference, max_norm)
