"""Federated algorithms as objects: one small class each, registered by name.

==================  ===========================  =====================  ==================  ============
algorithm           client model                 trained on clients     server alignment    proximal
==================  ===========================  =====================  ==================  ============
``fedbiot``         emulator + top adapter       top adapter LoRA       every round         on dW = sBA
``offsite_tuning``  bottom 2 + emulator + top 2  bottom + top LoRA      optional, one-shot  none
``fedot``           bottom 2 + emulator + top 2  bottom + top LoRA      optional, one-shot  none
``fedavg_lora``     the full model               LoRA of every layer    none                none
``fedprox``         the full model               LoRA of every layer    none                on (A, B)
==================  ===========================  =====================  ==================  ============

"One-shot" alignment is the server's ``pre_alignment_rounds`` before round 0.
"""

from fedbiot_pl.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    ClientOptim,
    LayoutRequest,
    ProximalKind,
    RunSettings,
    register_algorithm,
    resolve_algorithm,
)

from fedbiot_pl.algorithms.fedbiot import FedBiOT  # isort: skip  (registration order = the order of `plan --compare`)
from fedbiot_pl.algorithms.fedot import FedOT, OffsiteTuning  # isort: skip
from fedbiot_pl.algorithms.fedavg import FedAvgLoRA, FedProx  # isort: skip

__all__ = [
    "ALGORITHMS", "Algorithm", "ClientOptim", "FedAvgLoRA", "FedBiOT", "FedOT", "FedProx", "LayoutRequest",
    "OffsiteTuning", "ProximalKind", "RunSettings", "register_algorithm", "resolve_algorithm",
]
