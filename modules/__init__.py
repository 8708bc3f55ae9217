"""LightningModules: server-side emulator alignment and client-side adapter fine-tuning."""

from fedbiot_pl.modules.adapter_module import AdapterFinetuneModule
from fedbiot_pl.modules.alignment_module import EmulatorAlignmentModule
from fedbiot_pl.modules.distill_module import DistillFinetuneModule
from fedbiot_pl.modules.generation_module import GenerationModule, GenerationSettings
from fedbiot_pl.modules.split_module import SplitClientModule

__all__ = [
    "AdapterFinetuneModule", "DistillFinetuneModule", "EmulatorAlignmentModule", "GenerationModule",
    "GenerationSettings", "SplitClientModule",
]
