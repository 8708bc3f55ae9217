"""The communication ledger: what went down (server to clients) and up, as tensors and as bytes on the wire."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from torch import Tensor

from fedbiot_pl.federation.messages import payload_bytes


@dataclass
class CommLedger:
    """Running totals of the traffic.

    ``bytes_down``/``bytes_up`` count the tensors' bytes (the figures papers report);
    ``wire_bytes_down``/``wire_bytes_up`` count every byte the transport moved (the tensors plus each
    message's safetensors header). Rejected uploads count in both: they did travel.
    """

    bytes_down: int = 0
    bytes_up: int = 0
    messages_down: int = 0
    messages_up: int = 0
    uploads_rejected: int = 0
    wire_bytes_down: int = 0
    wire_bytes_up: int = 0

    def record_down(self, state: Mapping[str, Tensor], clients: int) -> int:
        """Count one broadcast of ``state`` to ``clients`` clients; returns the bytes added."""
        size = payload_bytes(state) * clients
        self.bytes_down += size
        self.messages_down += clients
        return size

    def record_up(self, state: Mapping[str, Tensor]) -> int:
        """Count one client upload; returns its bytes."""
        size = payload_bytes(state)
        self.bytes_up += size
        self.messages_up += 1
        return size

    def record_up_bytes(self, size: int) -> int:
        """Count one client upload of ``size`` raw bytes (one that could not be decoded)."""
        self.bytes_up += size
        self.messages_up += 1
        return size

    def record_wire(self, down: int = 0, up: int = 0) -> None:
        """Count bytes the transport moved down and up."""
        self.wire_bytes_down += down
        self.wire_bytes_up += up

    def state_dict(self) -> dict[str, int]:
        """The totals (a checkpoint's copy)."""
        return asdict(self)

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Continue from a checkpoint's totals (older checkpoints lack the wire fields: they stay 0)."""
        for key, value in state.items():
            setattr(self, key, int(value))
