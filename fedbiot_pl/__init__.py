"""fedbiot-pl: federated fine-tuning of LLMs without the full model (FedBiOT), on PyTorch Lightning."""

from fedbiot_pl.federation.aggregation import fedavg
from fedbiot_pl.federation.messages import CommLedger, payload_bytes
from fedbiot_pl.model.layer_drop import LayerLayout, layer_layout, uniform_keep
from fedbiot_pl.federation.sampling import sample_clients
from fedbiot_pl.model.views import SplitModel

__all__ = [
    "CommLedger", "LayerLayout", "SplitModel", "fedavg", "layer_layout", "payload_bytes",
    "sample_clients", "uniform_keep",
]
__version__ = "0.1.0"
