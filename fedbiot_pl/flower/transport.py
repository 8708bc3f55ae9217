"""The Flower transport: a round's broadcast and replies over Flower's ``Grid`` (Message API).

It plugs into the round where :class:`~fedbiot_pl.federation.transport.InProcessTransport` does:
one train message per sampled client, to the node that serves it, and its reply back as the
:class:`~fedbiot_pl.federation.transport.ClientReply` the in-process client function would return.
The remote node runs that same function (:mod:`fedbiot_pl.flower.client_app`). A node that answers
with an error, or not before ``timeout``, drops its client with the reason; what comes back goes
through the server's own checks in the round. The ledger counts the bytes of Flower's records.

The transport keeps every LoRA tensor broadcast so far and sends it all to each client, so that a
client sampled for the first time in a later round holds what the in-process clients (who share the
server's views) hold: FedOT's emulator LoRA goes down once in round 0 and stays there.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from fedbiot_pl.errors import ConfigError
from fedbiot_pl.federation.ledger import CommLedger
from fedbiot_pl.federation.messages import decode_update, payload_metadata
from fedbiot_pl.federation.transport import ClientFn, ClientReply
from fedbiot_pl.flower.wire import TRAIN, content_bytes, reply_from_content, train_content

log = logging.getLogger(__name__)


def flower_issues(algorithm: Any) -> list[str]:
    """Why ``algorithm`` cannot run over Flower (empty: it can).

    The Flower transport carries one broadcast and one upload of LoRA weights per client and round:
    the parameter-averaging algorithms. Split learning exchanges activations every step, knowledge
    distillation ships logits over public data the sites would need, and HierFedLoRA's groups run
    their own intra-group rounds at per-group depths; these run in the in-process simulation.
    """
    from fedbiot_pl.algorithms.base import Algorithm

    if algorithm.family != "params" or type(algorithm).groups is not Algorithm.groups:
        return [f"algorithm {algorithm.label!r} does not run over Flower yet: the Flower transport carries LoRA "
                "broadcasts and uploads (fedbiot, fedot, offsite_tuning, fedavg_lora, fedprox); run it in the "
                "in-process simulation (`python train.py fit`)."]
    return []


class FlowerTransport:
    """Moves a round's messages over Flower's ``Grid`` to the nodes that serve the sampled clients.

    Args:
        grid: the ServerApp's ``Grid``.
        node_of: the node id serving each client id (from the handshake).
        ledger: where the bytes of the records are counted.
        trained_keys: the LoRA keys the clients train and upload (sent as the message's arrays).
        config: the round-independent settings every train message carries (client settings, model sha256).
        timeout: seconds to wait for the replies of one attempt (``None``: Flower's message lifetime).
    """

    def __init__(self, grid: Any, node_of: Mapping[int, int], ledger: CommLedger, trained_keys: Sequence[str],
                 config: Mapping[str, Any], timeout: float | None = None) -> None:
        self.grid, self.node_of, self.ledger = grid, dict(node_of), ledger
        self.trained_keys, self.config, self.timeout = list(trained_keys), dict(config), timeout
        self._held: dict[str, Tensor] = {}
        self.timings: list[dict[str, float]] = []  # per reply: round, attempt, client, startup and fit seconds

    def exchange(self, clients: Sequence[int], broadcast: bytes, client_fn: ClientFn) -> list[ClientReply]:
        """Every sampled client's reply, in the order of ``clients`` (``client_fn`` names the round and attempt)."""
        from flwr.app import Message

        round_idx, attempt = getattr(client_fn, "round_idx", None), getattr(client_fn, "attempt", 0)
        if round_idx is None:
            raise ConfigError("the Flower transport needs the round of a client call (a ClientCall).")
        self._held.update(decode_update(broadcast))
        metadata = payload_metadata(broadcast)
        replies: dict[int, ClientReply] = {}
        messages, client_of, down = [], {}, 0
        for client in clients:
            node = self.node_of.get(client)
            if node is None:
                replies[client] = ClientReply(client, math.nan, b"", f"no Flower node serves client {client}")
                continue
            content = train_content(self._held, metadata, self.trained_keys, {
                **self.config, "server-round": int(round_idx), "attempt": int(attempt), "client-id": int(client)})
            down += content_bytes(content)
            messages.append(Message(content=content, dst_node_id=node, message_type=TRAIN))
            client_of[node] = client
        up = 0
        for reply in self.grid.send_and_receive(messages, timeout=self.timeout) if messages else ():
            client = client_of.get(reply.metadata.src_node_id)
            if client is None or client in replies:
                log.warning("ignoring a reply from node %s (no client of this attempt)", reply.metadata.src_node_id)
                continue
            if reply.has_error():
                replies[client] = ClientReply(client, math.nan, b"", f"the node answered with an error: "
                                                                     f"{reply.error.reason}")
                continue
            up += content_bytes(reply.content)
            replies[client] = reply_from_content(client, reply.content)
            timings = reply.content.get("timings")
            if timings is not None:
                self.timings.append({"round": round_idx, "attempt": attempt, "client": client,
                                     **{key: float(value) for key, value in timings.items()}})
        for client in clients:
            if client not in replies:
                replies[client] = ClientReply(client, math.nan, b"", f"no reply within {self.timeout} s")
        self.ledger.record_wire(down=down, up=up)
        return [replies[client] for client in clients]
