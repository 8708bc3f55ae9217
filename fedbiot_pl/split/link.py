"""The client's side of the cut: an autograd function whose forward and backward go over a channel.

``SplitLink.exchange(h_k, mask, labels)`` sends the cut activations up and returns what the server
answers (vanilla: the loss; U-shaped: the activations at the client's top layers) as a tensor of the
client's graph. Its backward sends the incoming gradient up (vanilla: the loss's scale, e.g. ``1 /
accumulate_grad_batches``; U-shaped: the gradient at the top activations) and hands the server's
gradient at the cut to the client's bottom layers. Lightning's loss scaling, accumulation,
precision and gradient clipping therefore work (clipping: of the client's LoRA only, the server does
not clip); :meth:`SplitLink.step` tells the server that an accumulation window ended.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fedbiot_pl.federation.messages import decode_message
from fedbiot_pl.split.messages import BackwardUp, ForwardUp, Reply, StepUp


class SplitServerError(RuntimeError):
    """The server refused a request (the client's fit fails and the client is dropped from the round)."""


class SplitLink:
    """A client's connection to the split-learning server.

    Args:
        channel: carries a request's bytes to the server and its reply back
            (:class:`~fedbiot_pl.federation.transport.SplitChannel`).
        wire_dtype: dtype of activations and gradients on the wire (``None``: the model's).

    ``client`` and ``round`` (set before each fit) go with every request; ``optimizer_state`` is the
    client's AdamW state handed in before a fit and read back after it (``None``: a fresh AdamW).
    """

    def __init__(self, channel: Any, wire_dtype: torch.dtype | None = None) -> None:
        self.channel, self.wire_dtype = channel, wire_dtype
        self.client, self.round = 0, 0
        self.optimizer_state: dict | None = None

    def _request(self, message: Any, expect: tuple[str, ...] = ()) -> dict[str, Tensor]:
        message.metadata.update({"client": str(self.client), "round": str(self.round)})
        try:
            reply = decode_message(self.channel.request(message.encode()), Reply)
        except ValueError as error:
            raise SplitServerError(f"the split server's reply cannot be read: {error}") from error
        if "error" in reply.metadata:
            raise SplitServerError(f"the split server refused: {reply.metadata['error']}")
        if expect and not set(expect) & set(reply.tensors):
            raise SplitServerError(f"the split server replied with {sorted(reply.tensors)}, expected one of "
                                   f"{list(expect)}")
        return reply.tensors

    def _wire(self, tensor: Tensor) -> Tensor:
        return tensor.detach().to(self.wire_dtype or tensor.dtype)

    def exchange(self, hidden: Tensor, mask: Tensor, labels: Tensor | None = None) -> Tensor:
        """The server's answer to the cut activations ``hidden`` (differentiable back to ``hidden``).

        Where ``hidden`` has no graph (a cut at the embeddings), the answer still takes the backward
        through the server's layers (the gradient that comes down is not used).
        """
        if not hidden.requires_grad:
            hidden = hidden.detach().requires_grad_()
        return _Exchange.apply(hidden, self, mask, labels)

    def step(self) -> None:
        """Both sides end an accumulation window: the server steps its optimizer."""
        self._request(StepUp({}))

    def _forward(self, hidden: Tensor, mask: Tensor, labels: Tensor | None) -> Tensor:
        tensors = {"activations": self._wire(hidden), "mask": mask.detach().to(torch.uint8)}
        if labels is not None:
            tensors["labels"] = labels.detach().to(torch.int32)
        answer = self._request(ForwardUp(tensors), ("loss", "activations"))
        if "loss" in answer:
            return answer["loss"].to(hidden.device)
        return answer["activations"].to(device=hidden.device, dtype=hidden.dtype)

    def _backward(self, grad: Tensor, like: Tensor) -> Tensor:
        name = "loss_grad" if grad.dim() == 0 else "gradients"
        value = grad.detach().float() if name == "loss_grad" else self._wire(grad)
        answer = self._request(BackwardUp({name: value}), ("gradients",))
        return answer["gradients"].to(device=like.device, dtype=like.dtype)


class _Exchange(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: Tensor, link: SplitLink, mask: Tensor, labels: Tensor | None) -> Tensor:
        ctx.link = link
        ctx.like = torch.empty(0, dtype=hidden.dtype, device=hidden.device)
        return link._forward(hidden, mask, labels)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        return ctx.link._backward(grad, ctx.like), None, None, None
