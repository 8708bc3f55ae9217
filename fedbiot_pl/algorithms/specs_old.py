"""The algorithms the toolkit runs, as settings of one machinery (split, modules, loop).

Every algorithm is a :class:`SplitModel` of some shape, client fits of the adapter LoRA, FedAvg of the
uploads, and (for FedBiOT only) the server's alignment of the emulator every round:

==================  ===========================  =====================  ==================  ============
algorithm           client model                 trained on clients     alignment           proximal
==================  ===========================  =====================  ==================  ============
``fedbiot``         emulator + top adapter       top adapter LoRA       every round         on dW = sBA
``offsite_tuning``  bottom 2 + emulator + top 2  bottom + top LoRA      optional, one-shot  none
``fedot``           bottom 2 + emulator + top 2  bottom + top LoRA      optional, one-shot  none
``fedavg_lora``     the full model               LoRA of every layer    none                none
``fedprox``         the full model               LoRA of every layer    none                on (A, B)
==================  ===========================  =====================  ==================  ============

Offsite-tuning is FedOT with a single client that holds all the data. "One-shot" alignment means the
server's ``pre_alignment_rounds`` before round 0 (its loss weights are the alignment module's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fedbiot_pl.errors import ConfigError

Algorithm = Literal["fedbiot", "offsite_tuning", "fedot", "fedavg_lora", "fedprox"]
ProximalKind = Literal["delta_w", "params"]


@dataclass(frozen=True)
class AlgorithmSpec:
    """What an algorithm fixes about the split and the loop.

    Attributes:
        name: the config value.
        bottom_adapter_layers: adapter layers at the input side when the split does not set them.
        full_model: clients hold the full model and LoRA covers every layer (no emulator).
        aligns_each_round: the server aligns the emulator after every round's aggregation.
        single_client: one client holds all the data.
        proximal: the proximal term's kind, or ``None`` when the algorithm has none.
        proximal_required: the proximal weight must be > 0 (FedProx without it is FedAvg).
    """

    name: str
    bottom_adapter_layers: int = 0
    full_model: bool = False
    aligns_each_round: bool = False
    single_client: bool = False
    proximal: ProximalKind | None = None
    proximal_required: bool = False


ALGORITHMS: dict[str, AlgorithmSpec] = {
    "fedbiot": AlgorithmSpec("fedbiot", aligns_each_round=True, proximal="delta_w"),
    "offsite_tuning": AlgorithmSpec("offsite_tuning", bottom_adapter_layers=2, single_client=True),
    "fedot": AlgorithmSpec("fedot", bottom_adapter_layers=2),
    "fedavg_lora": AlgorithmSpec("fedavg_lora", full_model=True),
    "fedprox": AlgorithmSpec("fedprox", full_model=True, proximal="params", proximal_required=True),
}


def algorithm_spec(name: str) -> AlgorithmSpec:
    """The :class:`AlgorithmSpec` of ``name``.

    Raises:
        ValueError: ``name`` is not an algorithm, listing the allowed ones.
    """
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {name!r}; choose one of {sorted(ALGORITHMS)}.")
    return ALGORITHMS[name]


def algorithm_issues(spec: AlgorithmSpec, *, num_clients: int | None, pre_alignment_rounds: int,
                     proximal_weight: float) -> list[str]:
    """Every setting that contradicts ``spec`` (empty when the settings fit), each naming the fix."""
    issues = []
    if spec.single_client and num_clients is not None and num_clients != 1:
        issues.append(
            f"algorithm {spec.name!r} trains one client on all the data; set data.num_clients to 1 "
            f"(got {num_clients}), or use 'fedot' for several clients."
        )
    if spec.full_model and pre_alignment_rounds:
        issues.append(
            f"algorithm {spec.name!r} has no emulator to align; set pre_alignment_rounds to 0 (got {pre_alignment_rounds})."
        )
    if spec.proximal is None and proximal_weight:
        alternative = {"fedavg_lora": " or use algorithm 'fedprox'"}.get(spec.name, "")
        issues.append(
            f"algorithm {spec.name!r} has no proximal term; set proximal_weight to 0 (got {proximal_weight}){alternative}."
        )
    if spec.proximal_required and proximal_weight <= 0:
        issues.append(
            f"algorithm {spec.name!r} needs proximal_weight > 0 (got {proximal_weight}); with 0 it is 'fedavg_lora'."
        )
    return issues
