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


class Transport(Protocol):
    """Moves one attempt at a round: the broadcast down to ``clients``, their replies up."""

    def exchange(self, clients: Sequence[int], broadcast: bytes, client_fn: ClientFn) -> list[ClientReply]:
        """Every sampled client's reply, in the order of ``clients``."""
        ...


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
