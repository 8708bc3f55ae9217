"""What a Flower message holds: our safetensors messages as Flower records, and back.

The wire contract of a train message (the shape Flower's DP and clipping mods expect)::

    down  ArrayRecord  "arrays"   the LoRA the client trains and uploads (float32, peft keys)
          ConfigRecord "config"   server-round, attempt, client-id, model-sha256, settings (JSON),
                                  held (safetensors bytes: the rest of the LoRA the client holds)
    up    ArrayRecord  "arrays"   the trained LoRA (the same keys)
          MetricRecord "metrics"  train-loss, client-id, seconds
          ConfigRecord "config"   kind (the upload's message kind), or dropped (why the fit failed)

Records are rebuilt into the toolkit's own message bytes on each side, so the client runs the same
function as the in-process simulation and the server checks every upload with the same validation.
Only float32 tensors travel as arrays: they cross ``numpy`` losslessly (bf16 cannot).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from fedbiot_pl.errors import ConfigError
from fedbiot_pl.federation.messages import KIND_KEY, decode_update, encode_update, payload_metadata
from fedbiot_pl.federation.transport import ClientReply

TRAIN = "train"
DESCRIBE = "query.describe"


def to_array_record(tensors: Mapping[str, Tensor]) -> Any:
    """``tensors`` as a Flower ``ArrayRecord`` (keys and order kept).

    Raises:
        ConfigError: a tensor is not float32 (LoRA travels in float32: numpy has no bfloat16).
    """
    from flwr.app import ArrayRecord

    wrong = {key: str(value.dtype) for key, value in tensors.items() if value.dtype != torch.float32}
    if wrong:
        key = next(iter(wrong))
        raise ConfigError(f"Flower messages carry float32 LoRA; {len(wrong)} tensors are not, e.g. {key} "
                          f"({wrong[key]}): keep the LoRA weights in float32 (they are by default).")
    return ArrayRecord({key: value.detach().cpu().contiguous() for key, value in tensors.items()})


def from_array_record(record: Any) -> dict[str, Tensor]:
    """The tensors of an ``ArrayRecord`` (``ValueError`` if one cannot be read)."""
    try:
        return dict(record.to_torch_state_dict())
    except Exception as error:  # a corrupted array fails inside numpy's loader
        raise ValueError(f"unreadable arrays ({type(error).__name__}: {error})") from error


def train_content(held: Mapping[str, Tensor], metadata: Mapping[str, str], trained: Iterable[str],
                  config: Mapping[str, Any]) -> Any:
    """The content of a train message: the trained keys of ``held`` as arrays, the rest as bytes in the config.

    Args:
        held: every LoRA tensor the client should hold this round (the broadcast, and what it still holds).
        metadata: the broadcast message's string metadata (its kind included).
        trained: the keys the client trains and uploads.
        config: the round's settings (ints, floats, strings, bytes).
    """
    from flwr.app import ConfigRecord, RecordDict

    arrays, rest = split_held(held, metadata, trained)
    return RecordDict({"arrays": to_array_record(arrays), "config": ConfigRecord({**config, "held": rest})})


def split_held(held: Mapping[str, Tensor], metadata: Mapping[str, str],
               trained: Iterable[str]) -> tuple[dict[str, Tensor], bytes]:
    """The trained keys of ``held`` (they travel as arrays), and the rest as safetensors bytes with ``metadata``."""
    trained = set(trained)
    arrays = {key: value for key, value in held.items() if key in trained}
    return arrays, encode_update({key: value for key, value in held.items() if key not in trained}, metadata)


def join_held(held: bytes, arrays: Mapping[str, Tensor]) -> bytes:
    """The broadcast message bytes again: the ``held`` bytes' tensors and metadata with the ``arrays``."""
    held = bytes(held)
    return encode_update({**decode_update(held), **arrays}, payload_metadata(held))


def broadcast_from_content(content: Any) -> bytes:
    """The broadcast message bytes a train message's content carries (what the in-process client gets)."""
    return join_held(content["config"]["held"], from_array_record(content["arrays"]))


def reply_content(reply: ClientReply, seconds: float) -> Any:
    """A client's reply as records: its upload as arrays and its loss as metrics, or why it was dropped."""
    from flwr.app import ConfigRecord, MetricRecord, RecordDict

    metrics = {"client-id": reply.client, "seconds": float(seconds)}
    if reply.dropped is not None:
        return RecordDict({"config": ConfigRecord({"dropped": reply.dropped}), "metrics": MetricRecord(metrics)})
    metrics["train-loss"] = float(reply.loss)
    kind = payload_metadata(reply.payload).get(KIND_KEY, "")
    return RecordDict({"arrays": to_array_record(decode_update(reply.payload)),
                       "metrics": MetricRecord(metrics), "config": ConfigRecord({"kind": kind})})


def reply_from_content(client: int, content: Any) -> ClientReply:
    """The :class:`ClientReply` a reply's records stand for.

    An upload whose arrays cannot be read comes back as undecodable bytes, so that the server's check
    rejects it (and counts it) like any other bad upload.
    """
    config = content.get("config")
    metrics = content.get("metrics")
    loss = float(metrics["train-loss"]) if metrics is not None and "train-loss" in metrics else math.nan
    if config is not None and "dropped" in config:
        return ClientReply(client, math.nan, b"", str(config["dropped"]))
    if "arrays" not in content:
        return ClientReply(client, loss, b"unreadable: the reply has no arrays")
    try:
        tensors = from_array_record(content["arrays"])
    except ValueError as error:
        return ClientReply(client, loss, f"unreadable: {error}".encode())
    kind = str(config["kind"]) if config is not None and "kind" in config else ""
    return ClientReply(client, loss, encode_update(tensors, {KIND_KEY: kind}))


def content_bytes(content: Any) -> int:
    """Bytes of a message's records (Flower's own count: arrays, config values and metrics)."""
    return sum(_record_bytes(record) for record in content.values())


def match_replies(messages: Iterable[Any], replies: Iterable[Any]) -> tuple[list[tuple[int, Any]], list[Any]]:
    """Each reply with the node its message went to, matched by message id, and the replies to none of ``messages``.

    By message id, not by the reply's source: a node that died answers through the SuperLink ("Node
    Unavailable"), not as itself.
    """
    node_of = {message.metadata.message_id: message.metadata.dst_node_id for message in messages}
    matched, stray = [], []
    for reply in replies:
        node = node_of.get(reply.metadata.reply_to_message_id)
        if node is None:
            stray.append(reply)
        else:
            matched.append((node, reply))
    return matched, stray


class CountingGrid:
    """Passes ``send_and_receive`` through to a ``Grid``; counts the messages and their records' bytes both ways."""

    def __init__(self, grid: Any) -> None:
        self.grid, self.sent, self.received, self.down, self.up = grid, 0, 0, 0, 0

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Any]:
        """Send ``messages``, return the replies (the error replies count as replies, not as bytes)."""
        messages = list(messages)
        self.sent += len(messages)
        self.down += sum(content_bytes(m.content) for m in messages if m.has_content())
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        self.received += len(replies)
        self.up += sum(content_bytes(r.content) for r in replies if not r.has_error())
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)


def _record_bytes(record: Any) -> int:
    try:
        return int(record.count_bytes())
    except (ValueError, IndexError):  # Flower's own count refuses some values of its legacy (SecAgg+) records
        return sum(len(str(key)) + _value_bytes(value) for key, value in record.items())


def _value_bytes(value: Any) -> int:
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, list | tuple):
        return sum(_value_bytes(item) for item in value)
    return 8
