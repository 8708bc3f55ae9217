"""FedBiOT (Wu et al., KDD 2024): clients tune the top adapter, the server re-aligns the emulator every round."""

from __future__ import annotations

from typing import ClassVar

from fedbiot_pl.algorithms.base import Algorithm, LayoutRequest, Part, compressed_layout, register_algorithm
from fedbiot_pl.model.layer_drop import LayerLayout


@register_algorithm
class FedBiOT(Algorithm):
    """Emulator (uniform layer drop of the lower layers) + top adapter.

    The clients' proximal term is on dW = s B A; after each round's FedAvg the server aligns the emulator
    for ``align_steps`` steps, so both LoRA (emulator and adapter) go down every round.
    """

    name: ClassVar[str] = "fedbiot"

    def layout(self, num_layers: int, request: LayoutRequest) -> LayerLayout:
        """Bottom adapter layers only when asked for (paper: none)."""
        return compressed_layout(num_layers, request, bottom_default=0)

    def broadcast_part(self, round_idx: int) -> Part:
        """The emulator changes every round: both LoRA go down every round."""
        return "all"

    def server_steps(self, round_idx: int | None, align_steps: int) -> int:
        """Alignment in pre-alignment epochs and after every round."""
        return align_steps
