"""Split learning's per-step messages and the server's checks of what a client sends.

Every message is safetensors bytes (:class:`~fedbiot_pl.federation.messages.Message`); tensors are
named by what they are, and the ledger counts them by these names::

    up    split_forward   activations (B, T, d) wire dtype, mask (B, T) uint8, labels (B, T) int32 (vanilla)
    up    split_backward  gradients (B, T, d) (U-shaped) | loss_grad () float32 (vanilla: the loss's scale)
    up    split_step      nothing (both sides end an accumulation window)
    down  split_reply     loss () float32 | activations | gradients | nothing; ``error`` in the metadata
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from fedbiot_pl.federation.messages import Message, register_message

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Expect:
    """What the server accepts from a client: the wire dtype, the model's width and vocabulary, the variant."""

    dtype: torch.dtype
    hidden_size: int
    vocab_size: int
    labels: bool


def _finite(name: str, tensor: Tensor) -> list[str]:
    return [] if bool(torch.isfinite(tensor).all()) else [f"{name} has non-finite values"]


@register_message
@dataclass
class ForwardUp(Message):
    """A micro-batch's cut activations, its padding mask and (vanilla) its labels."""

    kind: ClassVar[str] = "split_forward"

    def problem(self, reference: Expect | None = None, **limits: Any) -> str | None:
        """Names, shapes, dtypes, finite activations, a 0/1 mask, labels in the vocabulary (every problem)."""
        if reference is None:
            return None
        wanted = {"activations", "mask"} | ({"labels"} if reference.labels else set())
        if set(self.tensors) != wanted:
            return f"expected tensors {sorted(wanted)}, got {sorted(self.tensors)}"
        hidden, mask = self.tensors["activations"], self.tensors["mask"]
        problems = []
        if hidden.dim() != 3 or hidden.shape[-1] != reference.hidden_size or hidden.dtype != reference.dtype:
            problems.append(f"activations must be (batch, tokens, {reference.hidden_size}) {reference.dtype}, got "
                            f"{tuple(hidden.shape)} {hidden.dtype}")
        else:
            problems += _finite("activations", hidden)
        if mask.dtype != torch.uint8 or tuple(mask.shape) != tuple(hidden.shape[:2]) or bool((mask > 1).any()):
            problems.append(f"mask must be 0/1 uint8 of shape {tuple(hidden.shape[:2])}, got {tuple(mask.shape)} "
                            f"{mask.dtype}")
        labels = self.tensors.get("labels")
        if labels is not None:
            bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= reference.vocab_size))
            if labels.dtype != torch.int32 or labels.shape != mask.shape or bool(bad.any()):
                problems.append(f"labels must be int32 of shape {tuple(mask.shape)} in [0, {reference.vocab_size}) "
                                f"or {IGNORE_INDEX}")
        return "; ".join(problems) or None


@register_message
@dataclass
class BackwardUp(Message):
    """The gradient at the server's output: the cut activations' (U-shaped) or the loss's scale (vanilla)."""

    kind: ClassVar[str] = "split_backward"

    def problem(self, reference: Tensor | None = None, dtype: torch.dtype | None = None, **limits: Any) -> str | None:
        """One finite tensor of the pending output's shape (``reference``), in the wire ``dtype``.

        (``loss_grad``, the vanilla loss's scale, is float32.)
        """
        if reference is None:
            return None
        name = "loss_grad" if reference.dim() == 0 else "gradients"
        wanted = torch.float32 if name == "loss_grad" else dtype or reference.dtype
        grad = self.tensors.get(name)
        if set(self.tensors) != {name} or grad.shape != reference.shape or grad.dtype != wanted:
            got = {key: (tuple(value.shape), value.dtype) for key, value in self.tensors.items()}
            return f"expected {name} of shape {tuple(reference.shape)} {wanted}, got {got}"
        return "; ".join(_finite(name, grad)) or None


@register_message
@dataclass
class StepUp(Message):
    """The client ends an accumulation window: the server steps its optimizer too."""

    kind: ClassVar[str] = "split_step"


@register_message
@dataclass
class Reply(Message):
    """The server's answer (``error`` in the metadata when it refused the request)."""

    kind: ClassVar[str] = "split_reply"
