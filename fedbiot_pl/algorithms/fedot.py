"""Offsite-tuning (Xiao et al., 2023) and its federated form FedOT: a fixed emulator between two adapters."""

from __future__ import annotations

from typing import ClassVar

from fedbiot_pl.algorithms.base import Algorithm, LayoutRequest, RunSettings, compressed_layout, register_algorithm
from fedbiot_pl.model.layer_drop import LayerLayout


@register_algorithm
class FedOT(Algorithm):
    """Bottom 2 + emulator + top 2 layers on the clients, both adapters trained.

    The emulator is fixed after the optional one-shot distillation (``pre_alignment_rounds``); no
    proximal term.
    """

    name: ClassVar[str] = "fedot"

    def layout(self, num_layers: int, request: LayoutRequest) -> LayerLayout:
        """Two adapter layers at the input side unless ``bottom_adapter_layers`` says otherwise."""
        return compressed_layout(num_layers, request, bottom_default=2)

    def check(self, run: RunSettings) -> list[str]:
        """No proximal term."""
        if run.proximal_weight:
            return [f"algorithm {self.name!r} has no proximal term; set proximal_weight to 0 "
                    f"(got {run.proximal_weight})."]
        return []


@register_algorithm
class OffsiteTuning(FedOT):
    """FedOT with one client that holds all the data."""

    name: ClassVar[str] = "offsite_tuning"

    def check(self, run: RunSettings) -> list[str]:
        """One client, no proximal term."""
        issues = []
        if run.num_clients is not None and run.num_clients != 1:
            issues.append(f"algorithm {self.name!r} trains one client on all the data; set data.num_clients to 1 "
                          f"(got {run.num_clients}), or use 'fedot' for several clients.")
        return issues + super().check(run)
