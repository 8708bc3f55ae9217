"""The communication ledger: what went down (server to clients) and up, as tensors and as bytes on the wire."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import Tensor

from fedbiot_pl.federation.messages import payload_bytes


@dataclass
class CommLedger:
    """Running totals of the traffic.

    ``bytes_down``/``bytes_up`` count the tensors' bytes (the figures papers report);
    ``wire_bytes_down``/``wire_bytes_up`` count every byte the transport moved (the tensors plus each
    message's safetensors header). Rejected uploads count in both: they did travel.

    Split learning's per-step messages (activations, gradients, labels, ...) count in the totals too,
    and by direction and tensor in ``split_bytes`` (``"up/activations"``, ``"down/gradients"``, ...);
    ``split_requests`` counts the requests (each answered by one reply).

    In a hierarchical round (HierFedLoRA) the totals are the device <-> edge traffic, and
    ``cloud_bytes_down``/``cloud_bytes_up`` count the tensors between the groups' edges and the cloud.
    """

    bytes_down: int = 0
    bytes_up: int = 0
    messages_down: int = 0
    messages_up: int = 0
    uploads_rejected: int = 0
    wire_bytes_down: int = 0
    wire_bytes_up: int = 0
    split_requests: int = 0
    split_bytes: dict[str, int] = field(default_factory=dict)
    cloud_bytes_down: int = 0
    cloud_bytes_up: int = 0

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

    def record_split(self, up: Mapping[str, int], down: Mapping[str, int], wire_up: int, wire_down: int) -> None:
        """Count one split-learning request (``up``: its tensors' bytes by name) and the server's reply (``down``)."""
        for direction, sizes in (("up", up), ("down", down)):
            for name, size in sizes.items():
                key = f"{direction}/{name}"
                self.split_bytes[key] = self.split_bytes.get(key, 0) + size
        self.bytes_up += sum(up.values())
        self.bytes_down += sum(down.values())
        self.split_requests += 1
        self.record_wire(down=wire_down, up=wire_up)

    def record_cloud(self, down: int = 0, up: int = 0) -> None:
        """Count tensor bytes between a group's edge and the cloud (down: to the edge)."""
        self.cloud_bytes_down += down
        self.cloud_bytes_up += up

    def state_dict(self) -> dict[str, Any]:
        """The totals (a checkpoint's copy)."""
        return asdict(self)

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Continue from a checkpoint's totals (older checkpoints lack the wire fields: they stay 0)."""
        for key, value in state.items():
            setattr(self, key, {k: int(v) for k, v in value.items()} if isinstance(value, Mapping) else int(value))
