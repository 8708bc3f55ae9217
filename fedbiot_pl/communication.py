"""Communication accounting: the bytes that a round moves between server and clients."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from torch import Tensor


def payload_bytes(state: Mapping[str, Tensor]) -> int:
    """Bytes of the tensors in ``state`` as sent (element count x element size)."""
    return sum(t.numel() * t.element_size() for t in state.values())


def payload_params(state: Mapping[str, Tensor]) -> int:
    """Number of parameters in ``state``."""
    return sum(t.numel() for t in state.values())


@dataclass
class CommLedger:
    """Running totals of what went down (server to clients) and up (clients to server)."""

    bytes_down: int = 0
    bytes_up: int = 0
    messages_down: int = 0
    messages_up: int = 0

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

    def state_dict(self) -> dict[str, int]:
        return asdict(self)

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        for key, value in state.items():
            setattr(self, key, int(value))
