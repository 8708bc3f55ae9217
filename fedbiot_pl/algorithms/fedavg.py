"""FedAvg-LoRA and FedProx: clients hold the full model with LoRA on every layer; the server only averages."""

from __future__ import annotations

from typing import ClassVar

from fedbiot_pl.algorithms.base import Algorithm, LayoutRequest, ProximalKind, RunSettings, register_algorithm
from fedbiot_pl.errors import ConfigError
from fedbiot_pl.model.layer_drop import LayerLayout


@register_algorithm
class FedAvgLoRA(Algorithm):
    """LoRA on every layer of the full model, averaged each round; no emulator, nothing trained on the server."""

    name: ClassVar[str] = "fedavg_lora"

    def layout(self, num_layers: int, request: LayoutRequest) -> LayerLayout:
        """Every layer is an adapter layer (``adapter_layers`` and ``drop_rate`` are not used)."""
        if num_layers < 1:
            raise ConfigError(f"Invalid split: the model has {num_layers} decoder layers.")
        return LayerLayout(num_layers, (), (), tuple(range(num_layers)))

    def compresses(self) -> bool:
        """The clients hold the full model."""
        return False

    def server_steps(self, round_idx: int | None, align_steps: int) -> int:
        """No emulator: the server never trains."""
        return 0

    def check(self, run: RunSettings) -> list[str]:
        """No emulator to align, no proximal term."""
        issues = []
        if run.pre_alignment_rounds:
            issues.append(f"algorithm {self.name!r} has no emulator to align; set pre_alignment_rounds to 0 "
                          f"(got {run.pre_alignment_rounds}).")
        issues += self._proximal_issues(run.proximal_weight)
        return issues

    def _proximal_issues(self, weight: float) -> list[str]:
        if weight:
            return [f"algorithm {self.name!r} has no proximal term; set proximal_weight to 0 (got {weight}) "
                    "or use algorithm 'fedprox'."]
        return []


@register_algorithm
class FedProx(FedAvgLoRA):
    """FedAvg-LoRA with the proximal term ``mu/2 ||theta - theta_t||^2`` on the LoRA factors."""

    name: ClassVar[str] = "fedprox"

    def proximal(self) -> ProximalKind:
        """FedProx's term on the parameters themselves."""
        return "params"

    def _proximal_issues(self, weight: float) -> list[str]:
        if weight <= 0:
            return [f"algorithm {self.name!r} needs proximal_weight > 0 (got {weight}); with 0 it is 'fedavg_lora'."]
        return []
