"""What travels between server and clients: updates as safetensors bytes, and the byte ledger.

Uploads cross the client/server boundary as ``safetensors`` bytes (:func:`encode_update`,
:func:`decode_update`): the server never unpickles anything a client sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import Tensor


def encode_update(state: Mapping[str, Tensor]) -> bytes:
    """``state`` as safetensors bytes (contiguous CPU copies of the tensors)."""
    return safetensors_save({key: value.detach().contiguous().cpu() for key, value in state.items()})


def decode_update(payload: bytes) -> dict[str, Tensor]:
    """The tensors of a safetensors ``payload``.

    Raises:
        ValueError: the payload is not a valid safetensors buffer.
    """
    try:
        return safetensors_load(bytes(payload))
    except Exception as error:  # safetensors raises its own error types for malformed buffers
        raise ValueError(f"not a safetensors payload ({type(error).__name__}: {error})") from error


def payload_bytes(state: Mapping[str, Tensor]) -> int:
    """Bytes of the tensors in ``state`` as sent (element count x element size)."""
    return sum(t.numel() * t.element_size() for t in state.values())


def payload_params(state: Mapping[str, Tensor]) -> int:
    """Number of parameters in ``state``."""
    return sum(t.numel() for t in state.values())


@dataclass
class CommLedger:
    """Running totals of what went down (server to clients) and up (clients to server), and how
    many uploads the server rejected (they count in ``bytes_up``: they did travel)."""

    bytes_down: int = 0
    bytes_up: int = 0
    messages_down: int = 0
    messages_up: int = 0
    uploads_rejected: int = 0

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

    def state_dict(self) -> dict[str, int]:
        return asdict(self)

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        for key, value in state.items():
            setattr(self, key, int(value))
