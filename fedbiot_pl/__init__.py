"""fedbiot-pl: federated fine-tuning of LLMs without the full model (FedBiOT), on PyTorch Lightning."""

from fedbiot_pl.aggregation import fedavg
from fedbiot_pl.communication import CommLedger, payload_bytes
from fedbiot_pl.layer_drop import LayerLayout, layer_layout, uniform_keep
from fedbiot_pl.sampling import sample_clients
from fedbiot_pl.split import SplitModel

__all__ = [
    "CommLedger", "LayerLayout", "SplitModel", "fedavg", "layer_layout", "payload_bytes",
    "sample_clients", "uniform_keep",
]
__version__ = "0.1.0"
