"""What travels between server and clients: typed messages with a safetensors codec and a check per kind.

Every message crosses the client/server boundary as ``safetensors`` bytes: tensors plus a string
header whose ``kind`` names the message type, so the receiver never unpickles anything. A kind is a
:class:`Message` subclass registered with :func:`register_message`; its :meth:`Message.problem` is
the server's check before the content may be used (LoRA state today; logits and activations next).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import Tensor

KIND_KEY = "kind"


def encode_update(state: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """``state`` as safetensors bytes (contiguous CPU copies of the tensors), with string ``metadata``."""
    tensors = {key: value.detach().contiguous().cpu() for key, value in state.items()}
    return safetensors_save(tensors, metadata=dict(metadata) if metadata else None)


def decode_update(payload: bytes) -> dict[str, Tensor]:
    """The tensors of a safetensors ``payload``.

    Raises:
        ValueError: the payload is not a valid safetensors buffer.
    """
    try:
        return safetensors_load(bytes(payload))
    except Exception as error:  # safetensors raises its own error types for malformed buffers
        raise ValueError(f"not a safetensors payload ({type(error).__name__}: {error})") from error


def _header(payload: bytes) -> dict[str, Any]:
    (length,) = struct.unpack("<Q", payload[:8])
    return json.loads(payload[8:8 + length])


def payload_metadata(payload: bytes) -> dict[str, str]:
    """The string metadata in a safetensors ``payload``'s header (``{}`` if it has none).

    Raises:
        ValueError: the header cannot be read.
    """
    try:
        return dict(_header(payload).get("__metadata__") or {})
    except Exception as error:
        raise ValueError(f"not a safetensors payload ({type(error).__name__}: {error})") from error


def tensor_sizes(payload: bytes) -> dict[str, int]:
    """Bytes of each tensor in a safetensors ``payload``, by name, read from its header alone.

    Raises:
        ValueError: the header cannot be read.
    """
    try:
        header = _header(payload)
        return {name: int(entry["data_offsets"][1]) - int(entry["data_offsets"][0])
                for name, entry in header.items() if name != "__metadata__"}
    except Exception as error:
        raise ValueError(f"not a safetensors payload ({type(error).__name__}: {error})") from error


def payload_bytes(state: Mapping[str, Tensor]) -> int:
    """Bytes of the tensors in ``state`` as sent (element count x element size)."""
    return sum(t.numel() * t.element_size() for t in state.values())


@dataclass
class Message:
    """A typed message: named tensors and string metadata. Subclasses set :attr:`kind` and the check."""

    kind: ClassVar[str] = ""
    tensors: dict[str, Tensor]
    metadata: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        """The message as safetensors bytes, its kind in the header."""
        return encode_update(self.tensors, {**self.metadata, KIND_KEY: self.kind})

    @property
    def tensor_bytes(self) -> int:
        """Bytes of the tensors alone (what the paper's communication figures count)."""
        return payload_bytes(self.tensors)

    def problem(self, reference: Any = None, **limits: Any) -> str | None:
        """Why the receiver must not use this message (``None``: it may)."""
        return None


MESSAGE_KINDS: dict[str, type[Message]] = {}
"""Registered message kinds by their header name."""


def register_message(cls: type[Message]) -> type[Message]:
    """Class decorator: make ``cls`` decodable from bytes whose header names its :attr:`~Message.kind`."""
    MESSAGE_KINDS[cls.kind] = cls
    return cls


def decode_message(payload: bytes, expected: type[Message] | None = None) -> Message:
    """The message in ``payload``.

    Raises:
        ValueError: not safetensors, an unknown kind, or not the ``expected`` kind.
    """
    metadata = payload_metadata(payload)
    kind = metadata.pop(KIND_KEY, None)
    cls = MESSAGE_KINDS.get(kind or "")
    if cls is None:
        raise ValueError(f"unknown message kind {kind!r}; known: {sorted(MESSAGE_KINDS)}")
    if expected is not None and cls is not expected:
        raise ValueError(f"a {kind!r} message where a {expected.kind!r} message was expected")
    return cls(decode_update(payload), metadata)


@register_message
@dataclass
class LoRAState(Message):
    """LoRA weights by peft state-dict key: the broadcast, and a client's upload."""

    kind: ClassVar[str] = "lora"

    def problem(self, reference: Mapping[str, Tensor] | None = None, max_norm: float | None = None,
                **limits: Any) -> str | None:
        """An upload must match the broadcast ``reference`` (keys, shapes, dtypes) and be finite.

        With ``max_norm``, it must also change it by at most that L2 norm
        (:func:`~fedbiot_pl.federation.validation.update_problem`).
        """
        from fedbiot_pl.federation.validation import update_problem

        return None if reference is None else update_problem(self.tensors, reference, max_norm)


@register_message
@dataclass
class LogitsMessage(Message):
    """Top-k logits on public examples (:class:`~fedbiot_pl.distillation.topk.TopK`): a KD upload or broadcast."""

    kind: ClassVar[str] = "topk_logits"

    def problem(self, reference: Any = None, **limits: Any) -> str | None:
        """An upload must cover the round's public slice ``reference`` exactly, with finite values in range.

        (:func:`~fedbiot_pl.federation.validation.logits_problem`.)
        """
        from fedbiot_pl.federation.validation import logits_problem

        return None if reference is None else logits_problem(self.tensors, reference)
