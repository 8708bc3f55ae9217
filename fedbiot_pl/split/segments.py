"""The model cut in two (vanilla) or three (U-shaped) segments that share the views' tensors.

Each segment is a shell of the model's own Hugging Face class (:func:`~fedbiot_pl.model.assembly.assemble`)
over a run of decoder layers, so the causal mask and the rotary positions are rebuilt by the model's
own code from the 2-D padding mask, exactly as in the unsplit forward::

    bottom  embeddings + layers [0, k)                 client   -> h_k (the input of layer k)
    middle  layers [k, L - m) (+ norm, head, loss: vanilla)   server   -> loss | h_{L-m}
    top     layers [L - m, L) + norm + head + loss     client (U-shaped, m >= 1)

A segment that starts inside the stack takes its input through a pre-hook on its first layer (its
own embedding lookup runs on a zero-id placeholder and is replaced); a segment that stops inside the
stack reads the input of the final norm (a hook that only records). Nothing runs twice, so dropout
masks and random numbers are those of the unsplit forward. With gradient checkpointing (transformers
>= 5 checkpoints a layer's ``forward``, inside the hooks) a layer is recomputed from the input the
hook gave it; tested bit-identical to the unsplit model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from fedbiot_pl.model.assembly import assemble, decoder_of, share_copy


def client_layers(num_layers: int, cut_layer: int, client_top_layers: int = 0) -> tuple[int, ...]:
    """The client's decoder layers: ``[0, k)`` and ``[L - m, L)``."""
    return tuple(range(cut_layer)) + tuple(range(num_layers - client_top_layers, num_layers))


def server_layers(num_layers: int, cut_layer: int, client_top_layers: int = 0) -> tuple[int, ...]:
    """The server's decoder layers: ``[k, L - m)``."""
    return tuple(range(cut_layer, num_layers - client_top_layers))


class Segment(nn.Module):
    """A run of decoder layers ``[start, stop)`` of the views' LoRA model, as a model of its class.

    Args:
        full: the frozen full model (its embeddings, norm, rotary embedding and head are shared).
        layers: the views' LoRA decoder layers (structural copies are made; tensors are shared).
        start: the first layer of the segment.
        stop: one past its last layer.
        head: whether the segment ends with the norm, the head and the loss (else it returns the
            hidden states before the norm).
    """

    def __init__(self, full: nn.Module, layers: nn.ModuleList, start: int, stop: int, head: bool) -> None:
        super().__init__()
        copies = []
        for index in range(start, stop):
            layer = share_copy(layers[index])
            layer._fedbiot_source_index = index
            copies.append(layer)
        self.start, self.stop, self.head = start, stop, head
        shell = assemble(full, copies)
        self.model = shell if head else decoder_of(shell)  # no head where the loss is not computed
        self._inject: Tensor | None = None
        if copies:
            copies[0].register_forward_pre_hook(self._replace_input)

    def _replace_input(self, _module: nn.Module, args: tuple) -> tuple | None:
        if self._inject is None:
            return None
        return (self._inject, *args[1:])

    @property
    def layers(self) -> nn.ModuleList:
        """The segment's decoder layers (copies sharing the views' tensors)."""
        return self.decoder.layers

    @property
    def decoder(self) -> nn.Module:
        """The segment's decoder stack (embeddings, layers, norm)."""
        return decoder_of(self.model) if self.head else self.model

    def forward(self, attention_mask: Tensor, input_ids: Tensor | None = None, hidden: Tensor | None = None,
                labels: Tensor | None = None) -> Tensor:
        """The segment on ``input_ids`` (the bottom) or on ``hidden`` (the input of layer ``start``).

        Returns:
            the loss when the segment holds the head (``labels`` given), else the input of layer ``stop``.
        """
        if hidden is not None:
            input_ids = torch.zeros(attention_mask.shape, dtype=torch.long, device=attention_mask.device)
            if self.start == self.stop:
                raise ValueError("a segment without layers cannot take hidden states")
        self._inject = hidden
        try:
            if self.head:
                return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                                  use_cache=False).loss
            with norm_input(self.model.norm) as captured:
                self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            return captured[0]
        finally:
            self._inject = None


@contextmanager
def norm_input(norm: nn.Module) -> Iterator[list[Tensor]]:
    """Record the input of ``norm`` (the last layer's output) while the block runs."""
    captured: list[Tensor] = []
    handle = norm.register_forward_pre_hook(lambda _m, args: captured.append(args[0]) and None)
    try:
        yield captured
    finally:
        handle.remove()


class SplitSegments(nn.Module):
    """The client's segments (``bottom``, ``top``) and the server's (``middle``) of a model cut at ``cut_layer``.

    Args:
        full: the frozen full model.
        layers: the LoRA decoder layers (all ``L`` of them; the views' full-model layout).
        cut_layer: ``k``, layers on the client below the cut (0 = the embeddings only).
        client_top_layers: ``m``, layers on the client above the server's (0 = vanilla: the server
            holds the rest, the norm, the head and the labels).
        side: build only the ``client``'s segments or the ``server``'s (``None``: all three). Each
            party builds its own; the segments share the views' tensors, not modules.
    """

    def __init__(self, full: nn.Module, layers: nn.ModuleList, cut_layer: int, client_top_layers: int = 0,
                 side: str | None = None) -> None:
        super().__init__()
        num = len(layers)
        if not 0 <= cut_layer < num - client_top_layers or client_top_layers < 0:
            raise ValueError(f"cut_layer={cut_layer} and client_top_layers={client_top_layers} leave the server no "
                             f"layer of {num}.")
        self.cut_layer, self.client_top_layers = cut_layer, client_top_layers
        self.num_layers = num
        client, server = side in (None, "client"), side in (None, "server")
        self.bottom = Segment(full, layers, 0, cut_layer, head=False) if client else None
        self.middle = (Segment(full, layers, cut_layer, num - client_top_layers, head=client_top_layers == 0)
                       if server else None)
        self.top = (Segment(full, layers, num - client_top_layers, num, head=True)
                    if client and client_top_layers else None)

    @property
    def u_shaped(self) -> bool:
        """Whether the client also holds the top layers, the head and the labels."""
        return self.client_top_layers > 0

    def client_positions(self) -> tuple[int, ...]:
        """Decoder layers the client runs."""
        return client_layers(self.num_layers, self.cut_layer, self.client_top_layers)

    def server_positions(self) -> tuple[int, ...]:
        """Decoder layers the server runs."""
        return server_layers(self.num_layers, self.cut_layer, self.client_top_layers)
