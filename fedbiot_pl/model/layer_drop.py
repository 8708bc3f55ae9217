"""Which decoder layers form the emulator and which form the adapter (pure index arithmetic).

FedBiOT keeps the top ``adapter_layers`` decoder layers as the *adapter* and compresses the
remaining lower layers into the *emulator* by uniform layer drop with rate ``drop_rate`` (beta):
of the ``n`` lower layers it keeps ``k = round(n * (1 - beta))`` at floor-uniform positions
``floor(i * (n - 1) / (k - 1))`` for ``i = 0..k-1`` (the first and last lower layer are always
kept). The FedOT/offsite-tuning baselines also put ``bottom_adapter_layers`` at the input side.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedbiot_pl.errors import ConfigError


def uniform_keep(num_layers: int, drop_rate: float) -> list[int]:
    """Indices (0-based, within ``num_layers``) kept by floor-uniform layer drop.

    ``k = round(num_layers * (1 - drop_rate))`` with Python's rounding, as in the FedBiOT code;
    the floor is computed in exact integer arithmetic, so no float error can shift an index.

    Example: 30 layers, ``drop_rate=0.2`` keeps 24: 0,1,2,3,5,6,7,8,10,...,27,29.

    Raises:
        ValueError: ``drop_rate`` is outside [0, 1) or would keep no layer.
    """
    if not 0.0 <= drop_rate < 1.0:
        raise ConfigError(f"drop_rate must be in [0, 1), got {drop_rate}.")
    if num_layers < 1:
        raise ConfigError(f"num_layers must be >= 1 to drop layers from, got {num_layers}.")
    keep = round(num_layers * (1.0 - drop_rate))
    if keep < 1:
        raise ConfigError(
            f"drop_rate={drop_rate} keeps round({num_layers} * (1 - {drop_rate})) = 0 of {num_layers} "
            "emulator layers; lower drop_rate or use fewer adapter layers."
        )
    if keep == 1:
        return [0]
    return [(i * (num_layers - 1)) // (keep - 1) for i in range(keep)]


@dataclass(frozen=True)
class LayerLayout:
    """Where every layer of the compressed model comes from in the full model.

    Attributes:
        num_full_layers: decoder layers of the full model.
        bottom_adapter: full-model indices of the adapter layers at the input side (FedOT: 2).
        emulator: full-model indices of the kept emulator layers (the teacher span, compressed).
        top_adapter: full-model indices of the adapter layers at the output side.
    """

    num_full_layers: int
    bottom_adapter: tuple[int, ...]
    emulator: tuple[int, ...]
    top_adapter: tuple[int, ...]

    @property
    def compressed(self) -> tuple[int, ...]:
        """Full-model index of each compressed-model layer, in order."""
        return self.bottom_adapter + self.emulator + self.top_adapter

    @property
    def teacher_span(self) -> range:
        """Full-model layers that the emulator stands in for."""
        return range(len(self.bottom_adapter), self.num_full_layers - len(self.top_adapter))

    @property
    def emulator_positions(self) -> range:
        """Positions of the emulator layers inside the compressed model."""
        start = len(self.bottom_adapter)
        return range(start, start + len(self.emulator))

    @property
    def adapter_positions(self) -> tuple[int, ...]:
        """Positions of the adapter layers inside the compressed model."""
        n_bottom, n_emu = len(self.bottom_adapter), len(self.emulator)
        return tuple(range(n_bottom)) + tuple(
            range(n_bottom + n_emu, n_bottom + n_emu + len(self.top_adapter))
        )


def layer_layout(
    num_layers: int, adapter_layers: int, drop_rate: float, bottom_adapter_layers: int = 0, full_model: bool = False
) -> LayerLayout:
    """Split ``num_layers`` decoder layers into adapter and (compressed) emulator layers.

    With ``full_model=True`` (FedAvg-LoRA, FedProx) every layer is an adapter layer and there is no
    emulator; ``adapter_layers``, ``drop_rate`` and ``bottom_adapter_layers`` are then not used.

    Raises:
        ValueError: listing every impossible setting at once.
    """
    if full_model:
        if num_layers < 1:
            raise ConfigError(f"Invalid split: the model has {num_layers} decoder layers.")
        return LayerLayout(num_layers, (), (), tuple(range(num_layers)))
    issues = []
    if adapter_layers < 1:
        issues.append(f"adapter_layers must be >= 1, got {adapter_layers}.")
    if bottom_adapter_layers < 0:
        issues.append(f"bottom_adapter_layers must be >= 0, got {bottom_adapter_layers}.")
    if adapter_layers + bottom_adapter_layers >= num_layers:
        issues.append(
            f"adapter_layers + bottom_adapter_layers = {adapter_layers + bottom_adapter_layers} must be "
            f"smaller than the model's {num_layers} decoder layers, so that an emulator remains."
        )
    if not 0.0 <= drop_rate < 1.0:
        issues.append(f"drop_rate must be in [0, 1), got {drop_rate}.")
    if issues:
        raise ConfigError("Invalid split: " + " ".join(issues))
    top_start = num_layers - adapter_layers
    span = range(bottom_adapter_layers, top_start)
    emulator = tuple(span[i] for i in uniform_keep(len(span), drop_rate))
    return LayerLayout(
        num_full_layers=num_layers,
        bottom_adapter=tuple(range(bottom_adapter_layers)),
        emulator=emulator,
        top_adapter=tuple(range(top_start, num_layers)),
    )
