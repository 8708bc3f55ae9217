"""The server's check of a client's uploaded update before it may enter the average (pure functions)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from fedbiot_pl.federation.messages import LoRAState, Message, decode_message

_SHOWN = 3  # keys named per problem; the rest are counted


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else "")


def _flat(state: Mapping[str, Tensor], keys: list[str]) -> Tensor:
    return torch.cat([state[key].reshape(-1) for key in keys]) if keys else torch.zeros(0)


def l2_norm(tensors: Mapping[str, Tensor]) -> float:
    """L2 norm of all ``tensors`` together, accumulated in float64 (the client's clip and the server's check)."""
    return float(torch.linalg.vector_norm(_flat(tensors, sorted(tensors)).double()))


def update_norm(update: Mapping[str, Tensor], reference: Mapping[str, Tensor]) -> float:
    """L2 norm of ``update - reference`` over all tensors together (accumulated in float64)."""
    return l2_norm({key: update[key].double() - reference[key].double() for key in update})


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


def receive_message(payload: bytes, kind: type[Message], reference: Any,
                    **limits: Any) -> tuple[dict[str, Tensor] | None, str | None]:
    """Decode an upload of message ``kind`` and check it against ``reference`` (:meth:`Message.problem`).

    Safetensors only: nothing is unpickled.

    Returns:
        ``(tensors, None)`` for an acceptable upload; ``(tensors, reason)`` for a decoded but invalid
        one; ``(None, reason)`` for a payload that is not a ``kind`` message.
    """
    try:
        message = decode_message(payload, kind)
    except ValueError as error:
        return None, f"unreadable upload: {error}"
    return message.tensors, message.problem(reference, **limits)


def receive_update(
    payload: bytes, reference: Mapping[str, Tensor], max_norm: float | None = None
) -> tuple[dict[str, Tensor] | None, str | None]:
    """Decode a :class:`~fedbiot_pl.federation.messages.LoRAState` upload and validate it (:func:`update_problem`)."""
    return receive_message(payload, LoRAState, reference, max_norm=max_norm)


def logits_problem(tensors: Mapping[str, Tensor], reference: Any) -> str | None:
    """Why a top-k logits upload must not be used, or ``None`` when it may.

    ``reference`` is the round's :class:`~fedbiot_pl.distillation.public.PublicSlice`. The upload must
    hold exactly ``values``, ``indices``, ``offsets``, ``metric`` and ``rows``; ``values`` fp16 and
    ``indices`` (uint16 up to 65,536 entries, else int32) of shape ``(N_tok, k)``; ``rows`` the slice's
    rows; ``offsets`` int32 from 0 with each example's kept tokens; finite values; a metric (a
    cross-entropy) that is not NaN and not negative (+Inf: an example without label tokens); every
    index inside the vocabulary. Every problem is listed, separated by ``"; "``.
    """
    from fedbiot_pl.distillation.topk import TopK, index_dtype

    keys = set(TopK.KEYS)
    missing, extra = sorted(keys - set(tensors)), sorted(set(tensors) - keys)
    if missing or extra:
        return "; ".join([f"missing tensors {missing}"] * bool(missing) + [f"unexpected tensors {extra}"] * bool(extra))
    values, indices, offsets, metric, rows = (tensors[key] for key in TopK.KEYS)
    examples, tokens, k = len(reference.rows), reference.tokens, reference.top_k
    expected = {
        "values": ((tokens, k), torch.float16), "indices": ((tokens, k), index_dtype(reference.vocab_size)),
        "offsets": ((examples + 1,), torch.int32), "metric": ((examples,), torch.float32),
        "rows": ((examples,), torch.int32),
    }
    problems = [
        f"{key} {tuple(tensors[key].shape)} {tensors[key].dtype} instead of {shape} {dtype}"
        for key, (shape, dtype) in expected.items()
        if tuple(tensors[key].shape) != shape or tensors[key].dtype != dtype
    ]
    if problems:
        return "; ".join(problems)
    if rows.tolist() != list(reference.rows):
        problems.append("rows are not the round's public slice")
    lengths = (offsets[1:].long() - offsets[:-1].long()).tolist()
    if int(offsets[0]) != 0 or lengths != list(reference.lengths):
        problems.append("offsets do not match the public examples' token counts")
    if not bool(torch.isfinite(values).all()):
        problems.append(f"NaN/Inf in {int((~torch.isfinite(values)).sum())} logit values")
    if not bool((metric >= 0).all()):  # a cross-entropy: >= 0, +inf for an example without label tokens
        problems.append("the per-example metric (a cross-entropy) has NaN or negative values")
    if indices.numel() and (int(indices.long().min()) < 0 or int(indices.long().max()) >= reference.vocab_size):
        problems.append(f"indices outside the vocabulary [0, {reference.vocab_size})")
    return "; ".join(problems) or None

