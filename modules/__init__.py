"""LightningModules: server-side emulator alignment and client-side adapter fine-tuning."""

from fedbiot_pl.modules.adapter_module import AdapterFinetuneModule
from fedbiot_pl.modules.alignment_module import EmulatorAlignmentModule
from fedbiot_pl.modules.distill_module import DistillFinetuneModule
from fedbiot_pl.modules.generation_module import GenerationModule, GenerationSettings

__all__ = [
    "AdapterFinetuneModule", "DistillFinetuneModule", "EmulatorAlignmentModule", "GenerationModule",
    "GenerationSettings",
]
