"""fedbiot-pl: federated fine-tuning of LLMs without the full model (FedBiOT), on PyTorch Lightning."""

from typing import Any

from fedbiot_pl.federation.aggregation import fedavg
from fedbiot_pl.federation.ledger import CommLedger
from fedbiot_pl.federation.messages import payload_bytes
from fedbiot_pl.federation.sampling import sample_clients
from fedbiot_pl.model.layer_drop import LayerLayout, layer_layout, uniform_keep
from fedbiot_pl.model.views import ModelViews

__all__ = [
    "CommLedger", "LayerLayout", "ModelViews", "fedavg", "layer_layout", "payload_bytes",
    "sample_clients", "uniform_keep",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``fedbiot_pl.SplitModel``: the old name of :class:`ModelViews` (with a ``DeprecationWarning``)."""
    if name == "SplitModel":
        from fedbiot_pl import split

        return split.SplitModel
    raise AttributeError(f"module 'fedbiot_pl' has no attribute {name!r}")
