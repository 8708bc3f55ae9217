"""Lightning data modules of fedbiot-pl (installed as ``fedbiot_pl.datamodules``)."""

from .instruction_datamodule import FederatedInstructionDataModule

__all__ = ["FederatedInstructionDataModule"]
