"""Capture a layer's output during a forward pass, optionally stopping the pass right there."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn


class StopForward(Exception):
    """Raised by a capturing hook to end a forward pass whose remaining layers are not needed."""


class Captured:
    """Holder of the captured tensor (``value`` is ``None`` until the layer has run)."""

    value: Tensor | None = None


@contextmanager
def capture_output(layer: nn.Module, stop: bool = False) -> Iterator[Captured]:
    """Record ``layer``'s output hidden states; with ``stop=True`` skip every later layer.

    Use ``with capture_output(layer, stop=True) as out: run_until_stopped(model, ...)``.
    """
    captured = Captured()

    def hook(_module: nn.Module, _args: tuple, output: Tensor | tuple) -> None:
        captured.value = output[0] if isinstance(output, tuple) else output
        if stop:
            raise StopForward

    handle = layer.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def run_until_stopped(model: nn.Module, **inputs) -> object | None:
    """Call ``model(**inputs)``; return its output, or ``None`` if a hook stopped it early."""
    try:
        return model(**inputs)
    except StopForward:
        return None
