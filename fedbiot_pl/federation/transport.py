"""How a round's messages reach the clients and come back: the seam where a remote transport plugs in.

A transport takes the round's broadcast (bytes) and its clients, gets each client's reply (its mean
loss and upload bytes, or why it was dropped) and records every byte it moved in the ledger. The
in-process transport runs the client function here, on this process's share of the clients (one
rank of several GPUs fits every ``world_size``-th client), and swaps the replies between ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from fedbiot_pl.federation.ledger import CommLedger
from fedbiot_pl.federation.messages import tensor_sizes
from fedbiot_pl.federation.placement import clients_of_rank, gather_by_client


@dataclass(frozen=True)
class ClientReply:
    """What came back from one client: its mean training loss and upload, or the reason it was dropped."""

    client: int
    loss: float
    payload: bytes = b""
    dropped: str | None = None


ClientFn = Callable[[int, bytes], ClientReply]
"""The client side of a round: ``(client id, broadcast bytes) -> reply``."""


@dataclass(frozen=True)
class ClientCall:
    """The client side of one attempt at a round: ``call(client id, broadcast bytes) -> reply``.

    A remote transport reads :attr:`round_idx` and :attr:`attempt` to tell the clients which fit to run
    (their data order and random numbers depend on them).
    """

    run: Callable[..., ClientReply]
    round_idx: int
    attempt: int = 0

    def __call__(self, client: int, broadcast: bytes) -> ClientReply:
        """Client ``client``'s fit on ``broadcast`` in this round and attempt."""
        return self.run(client, broadcast, round_idx=self.round_idx, attempt=self.attempt)


ServeFn = Callable[[bytes], bytes]
"""The server side of split learning: a client's request (bytes) -> the server's reply (bytes)."""


class Transport(Protocol):
    """Moves one attempt at a round: the broadcast down to ``clients``, their replies up."""

    def exchange(self, clients: Sequence[int], broadcast: bytes, client_fn: ClientFn) -> list[ClientReply]:
        """Every sampled client's reply, in the order of ``clients``."""
        ...


class SplitChannel(Protocol):
    """A client's line to the server in split learning: one request, one reply (every micro-batch)."""

    def request(self, payload: bytes) -> bytes:
        """Send ``payload`` to the server and return its reply."""
        ...


class InProcessChannel:
    """The server runs in this process: a request is a call of ``serve``; every byte is counted.

    Args:
        ledger: where each request's and reply's tensors are counted by name (``split_bytes``).
        serve: the server's handler (:meth:`~fedbiot_pl.split.server.SplitServer.serve`).
    """

    def __init__(self, ledger: CommLedger, serve: ServeFn) -> None:
        self.ledger, self.serve = ledger, serve

    def request(self, payload: bytes) -> bytes:
        """Call the server with ``payload`` and record both messages."""
        reply = self.serve(payload)
        self.ledger.record_split(tensor_sizes(payload), tensor_sizes(reply), len(payload), len(reply))
        return reply


class InProcessTransport:
    """Clients run in this process (this rank's share of them); the replies are swapped between ranks.

    Args:
        ledger: where the bytes on the wire are counted (the broadcast once per client, each upload).
        rank: this process's rank among ``world_size`` processes that share the round's clients.
        world_size: processes (GPUs) fitting clients; 1 = all clients here.
    """

    def __init__(self, ledger: CommLedger, rank: int = 0, world_size: int = 1) -> None:
        self.ledger, self.rank, self.world_size = ledger, rank, world_size

    def exchange(self, clients: Sequence[int], broadcast: bytes, client_fn: ClientFn) -> list[ClientReply]:
        """Run ``client_fn`` for this rank's clients, gather every rank's replies (a collective)."""
        local = {
            client: client_fn(client, broadcast) for client in clients_of_rank(clients, self.rank, self.world_size)
        }
        replies = gather_by_client(local, clients)
        self.ledger.record_wire(down=len(broadcast) * len(clients), up=sum(len(reply.payload) for reply in replies))
        return replies

    def split_channel(self, serve: ServeFn) -> InProcessChannel:
        """The clients' line to an in-process split-learning server (counted in this transport's ledger)."""
        return InProcessChannel(self.ledger, serve)
