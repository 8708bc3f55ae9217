"""Federated algorithms as objects: one small class each, registered by name.

==================  ===========================  =====================  ==================  ============
algorithm           client model                 trained on clients     server alignment    proximal
==================  ===========================  =====================  ==================  ============
``fedbiot``         emulator + top adapter       top adapter LoRA       every round         on dW = sBA
``offsite_tuning``  bottom 2 + emulator + top 2  bottom + top LoRA      optional, one-shot  none
``fedot``           bottom 2 + emulator + top 2  bottom + top LoRA      optional, one-shot  none
``fedavg_lora``     the full model               LoRA of every layer    none                none
``fedprox``         the full model               LoRA of every layer    none                on (A, B)
``fed_kd``          its own full model or        its own LoRA (kept)    none (averages      none
                    emulator + adapter                                  top-k logits)
``fedmkt``          its own full model or        its own LoRA (kept)    KD of its LoRA on   none
                    emulator + adapter                                  public logits
``splitfed_lora``    layers [0, cut_layer)        its layers' LoRA       none (trains its    none
                                                                        segment per step)
``splitfed_lora_u``  [0, cut) and the top layers  its layers' LoRA       none (trains its    none
                     with the head                                      segment per step)
``hierfedlora``     the full model               LoRA of its group's     none (edge FedAvg,  none
                                                 top ``depth`` layers    then per layer)
==================  ===========================  =====================  ==================  ============

The split algorithms (:mod:`fedbiot_pl.algorithms.split`) exchange activations and gradients every step.
The KD algorithms (:mod:`fedbiot_pl.algorithms.kd`) share top-k logits on a public slice, not weights.

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
from fedbiot_pl.algorithms.kd import FedKD, KDAlgorithm  # isort: skip
from fedbiot_pl.algorithms.fedmkt import FedMKT  # isort: skip
from fedbiot_pl.algorithms.split import SplitFedLoRA, SplitFedLoRAU  # isort: skip
from fedbiot_pl.algorithms.hierfedlora import HierFedLoRA  # isort: skip

__all__ = [
    "ALGORITHMS", "Algorithm", "ClientOptim", "FedAvgLoRA", "FedBiOT", "FedKD", "FedMKT", "FedOT", "FedProx",
    "HierFedLoRA", "KDAlgorithm", "LayoutRequest", "OffsiteTuning", "ProximalKind", "RunSettings", "SplitFedLoRA",
    "SplitFedLoRAU", "register_algorithm", "resolve_algorithm",
]
