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
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from fedbiot_pl.errors import ConfigError
from fedbiot_pl.federation.ledger import CommLedger
from fedbiot_pl.federation.messages import decode_update, payload_metadata
from fedbiot_pl.federation.transport import ClientFn, ClientReply
from fedbiot_pl.flower.wire import TRAIN, CountingGrid, match_replies, reply_from_content, split_held, train_content

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SecureOutcome:
    """A secure round as the server sees it: the weighted mean (message bytes), its total weight, losses, drops."""

    payload: bytes
    weight: float
    losses: dict[int, float]
    dropped: dict[int, str]


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
        secagg: Flower's SecAgg+ (:class:`~fedbiot_pl.privacy.secagg.SecAggSettings`): the server receives only the
            weighted mean of the uploads (:meth:`secure_exchange`); ``None``: plain uploads.
        context: the ServerApp's ``Context`` (SecAgg+ needs its run id).
        held: the LoRA the clients hold before the first broadcast (the server's: a resumed FedOT run's emulator
            LoRA went down in round 0, before the checkpoint).
    """

    def __init__(self, grid: Any, node_of: Mapping[int, int], ledger: CommLedger, trained_keys: Sequence[str],
                 config: Mapping[str, Any], timeout: float | None = None, secagg: Any = None,
                 context: Any = None, held: Mapping[str, Tensor] | None = None) -> None:
        self.secagg, self.context = secagg, context
        self.grid, self.node_of, self.ledger = grid, dict(node_of), ledger
        self.trained_keys, self.config, self.timeout = list(trained_keys), dict(config), timeout
        self._held: dict[str, Tensor] = dict(held or {})
        self.timings: list[dict[str, float]] = []  # per reply: round, attempt, client, startup and fit seconds

    @property
    def aggregates(self) -> bool:
        """Whether the clients' uploads arrive only as their secure sum (:meth:`secure_exchange`)."""
        return self.secagg is not None

    def _begin(self, broadcast: bytes, client_fn: ClientFn) -> tuple[int, int, dict[str, str]]:
        """The attempt's round and attempt number; the broadcast joins the held LoRA; its metadata."""
        round_idx, attempt = getattr(client_fn, "round_idx", None), getattr(client_fn, "attempt", 0)
        if round_idx is None:
            raise ConfigError("the Flower transport needs the round of a client call (a ClientCall).")
        self._held.update(decode_update(broadcast))
        return int(round_idx), int(attempt), payload_metadata(broadcast)

    def _nodes(self, clients: Sequence[int]) -> tuple[dict[int, int], dict[int, str]]:
        """``{node: client}`` of the sampled clients a node serves, and why the others are dropped."""
        client_of = {self.node_of[client]: client for client in clients if client in self.node_of}
        return client_of, {client: f"no Flower node serves client {client}" for client in clients
                           if client not in self.node_of}

    def secure_exchange(self, clients: Sequence[int], broadcast: bytes, client_fn: ClientFn) -> SecureOutcome:
        """One SecAgg+ round over the sampled clients: the weighted mean of their uploads, their losses, the drops."""
        from fedbiot_pl.federation.messages import KIND_KEY, encode_update
        from fedbiot_pl.privacy.secagg import SecAggHalted, secagg_fit_round

        round_idx, attempt, metadata = self._begin(broadcast, client_fn)
        trained, rest = split_held(self._held, metadata, self.trained_keys)
        config = {**self.config, "server-round": round_idx, "attempt": attempt, "held": rest}
        client_of, dropped = self._nodes(clients)
        counting = CountingGrid(self.grid)
        try:
            result = secagg_fit_round(counting, self.context, list(client_of), trained, config, round_idx,
                                      self.secagg)
        except SecAggHalted as error:
            return SecureOutcome(b"", 0.0, {}, {**dropped, **{c: str(error) for c in client_of.values()}})
        finally:
            self.ledger.record_wire(down=counting.down, up=counting.up)
        reason = "; ".join(dict.fromkeys(result.failures)) or "no reply"
        dropped.update({client_of[node]: f"SecAgg+: {reason}" for node in result.dropped})
        losses = {client_of[node]: float(metrics.get("train-loss", math.nan))
                  for node, metrics in result.metrics.items()}
        weight = float(sum(result.num_examples.values()))
        for node, metrics in result.metrics.items():
            self.timings.append({"round": round_idx, "attempt": attempt, "client": client_of[node],
                                 **{k: float(v) for k, v in metrics.items() if k.endswith("-seconds")}})
        return SecureOutcome(encode_update(result.mean, {KIND_KEY: metadata.get(KIND_KEY, "lora")}), weight, losses,
                             dropped)

    def exchange(self, clients: Sequence[int], broadcast: bytes, client_fn: ClientFn) -> list[ClientReply]:
        """Every sampled client's reply, in the order of ``clients`` (``client_fn`` names the round and attempt)."""
        from flwr.app import Message

        round_idx, attempt, metadata = self._begin(broadcast, client_fn)
        client_of, dropped = self._nodes(clients)
        replies = {client: ClientReply(client, math.nan, b"", reason) for client, reason in dropped.items()}
        messages = [Message(content=train_content(self._held, metadata, self.trained_keys, {
            **self.config, "server-round": round_idx, "attempt": attempt, "client-id": client}),
            dst_node_id=node, message_type=TRAIN) for node, client in client_of.items()]
        counting = CountingGrid(self.grid)
        received = counting.send_and_receive(messages, timeout=self.timeout) if messages else []
        matched, stray = match_replies(messages, received)
        for node, reply in matched:
            client = client_of[node]
            if client in replies:  # a second reply for this client
                stray.append(reply)
                continue
            if reply.has_error():
                replies[client] = ClientReply(client, math.nan, b"", f"the node answered with an error: "
                                                                     f"{reply.error.reason}")
                continue
            replies[client] = reply_from_content(client, reply.content)
            timings = reply.content.get("timings")
            if timings is not None:
                self.timings.append({"round": round_idx, "attempt": attempt, "client": client,
                                     **{key: float(value) for key, value in timings.items()}})
        for reply in stray:
            log.warning("ignoring a reply to message %s (no client of this attempt)",
                        reply.metadata.reply_to_message_id)
        for client in clients:
            if client not in replies:
                wait = f"within {self.timeout:g} s" if self.timeout else "before Flower gave up on the message"
                replies[client] = ClientReply(client, math.nan, b"", f"no reply {wait}")
        self.ledger.record_wire(down=counting.down, up=counting.up)
        return [replies[client] for client in clients]
