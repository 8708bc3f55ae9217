"""Client fits spread over ranks: assignment, seeds, and the exchange of the replies (2 gloo processes).

The exchange is the production one: each client's :class:`~fedbiot_pl.federation.transport.ClientReply`
(its mean loss and its upload as :class:`~fedbiot_pl.federation.messages.LoRAState` bytes) goes through
:func:`~fedbiot_pl.federation.placement.gather_by_client`, and the uploads are averaged with
:func:`~fedbiot_pl.federation.aggregation.fedavg`, as the round runner does.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import pytest
import torch
from torch import Tensor

from fedbiot_pl.federation.aggregation import fedavg
from fedbiot_pl.federation.attempts import RoundAttempt, round_record
from fedbiot_pl.federation.messages import LoRAState, decode_message
from fedbiot_pl.federation.placement import assign_clients, client_seed, clients_of_rank, gather_by_client
from fedbiot_pl.federation.transport import ClientReply
from tests.helpers import free_port


def test_clients_are_dealt_round_robin_in_the_sampled_order():
    assert assign_clients([5, 2, 9, 1, 7], 2) == [[5, 9, 7], [2, 1]]
    assert assign_clients([5, 2, 9], 1) == [[5, 2, 9]]
    assert assign_clients([5, 2, 9], 4) == [[5], [2], [9], []]
    assert clients_of_rank([5, 2, 9, 1, 7], 1, 2) == [2, 1]
    sizes = [len(part) for part in assign_clients(list(range(10)), 4)]
    assert sizes == [3, 3, 2, 2]  # at most one more client on a rank than on another


def test_bad_placements_are_refused():
    with pytest.raises(ValueError, match="world_size must be >= 1"):
        assign_clients([0], 0)
    with pytest.raises(ValueError, match="fitted once per round"):
        assign_clients([0, 3, 0], 2)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\)"):
        clients_of_rank([0], 2, 2)


def test_client_seed_depends_on_seed_round_and_client_only():
    assert client_seed(42, 3, 7) == client_seed(42, 3, 7)
    seeds = {client_seed(42, r, c) for r in range(5) for c in range(5)} | {client_seed(0, 0, 0)}
    assert len(seeds) == 26 and all(0 <= s < 2**32 for s in seeds)


def state(client: int) -> dict[str, Tensor]:
    """Client ``client``'s upload (seeded)."""
    g = torch.Generator().manual_seed(client)
    return {"a": torch.randn(4, 3, generator=g), "b": torch.randn(2, generator=g)}


def reply(client: int) -> ClientReply:
    """What client ``client`` sends back: mean loss ``0.5 * client``, its state as LoRA message bytes."""
    return ClientReply(client, 0.5 * client, LoRAState(state(client)).encode())


def weight(client: int) -> float:
    """Client ``client``'s FedAvg weight."""
    return float(client + 1)


def average(replies: list[ClientReply]) -> dict[str, Tensor]:
    """The FedAvg of the replies' uploads, as the round runner computes it (decode, then fedavg)."""
    uploads = [decode_message(r.payload, LoRAState).tensors for r in replies]
    return fedavg(uploads, [weight(r.client) for r in replies])


def test_one_process_orders_the_replies_by_the_sampled_clients():
    clients = [3, 0, 2]
    replies = gather_by_client({c: reply(c) for c in (0, 2, 3)}, clients)
    assert [r.client for r in replies] == clients and [r.loss for r in replies] == [1.5, 0.0, 1.0]
    expected = fedavg([state(c) for c in clients], [4.0, 1.0, 3.0])
    for key, value in average(replies).items():
        torch.testing.assert_close(value, expected[key], atol=0, rtol=0)
    # The round's client loss: the plain mean over the accepted clients.
    attempt = RoundAttempt(0, clients, losses={r.client: r.loss for r in replies})
    metrics, _ = round_record(0, [attempt])
    assert metrics["round/client_loss"] == pytest.approx(2.5 / 3)
    with pytest.raises(RuntimeError, match=r"no rank reported \[2\]"):
        gather_by_client({0: reply(0), 3: reply(3)}, clients)
    with pytest.raises(RuntimeError, match=r"\[5\] were not sampled"):
        gather_by_client({c: reply(c) for c in (0, 2, 3, 5)}, clients)


class Outcome(NamedTuple):
    kind: str
    value: Tensor


def test_outcomes_of_dropped_clients_travel_too():
    outcomes = {1: ClientReply(1, float("nan"), b"", "timeout"), 0: ("ok", torch.ones(2, device="cpu"))}
    ordered = gather_by_client(outcomes, [1, 0])
    assert ordered[0].dropped == "timeout" and ordered[0].payload == b""
    assert ordered[1][0] == "ok" and torch.equal(ordered[1][1], torch.ones(2))
    # Tensors travel detached, also inside a named tuple, which keeps its type.
    (named,) = gather_by_client({4: Outcome("ok", torch.ones(2, requires_grad=True))}, [4])
    assert isinstance(named, Outcome) and not named.value.requires_grad and torch.equal(named.value, torch.ones(2))


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    clients = [4, 1, 0, 3, 2]
    mine = clients_of_rank(clients, rank, 2)  # rank 0: 4, 0, 2; rank 1: 1, 3
    replies = gather_by_client({c: reply(c) for c in mine}, clients)
    torch.save({"clients": [r.client for r in replies], "losses": [r.loss for r in replies],
                "average": average(replies)}, f"{out}.{rank}")
    torch.distributed.destroy_process_group()


def test_two_ranks_end_with_the_same_replies_and_the_one_process_average(tmp_path):
    port = free_port()
    out = str(tmp_path / "result")
    torch.multiprocessing.spawn(_worker, args=(port, out), nprocs=2, join=True)
    results = [torch.load(f"{out}.{rank}") for rank in range(2)]
    clients = [4, 1, 0, 3, 2]
    expected = fedavg([state(c) for c in clients], [weight(c) for c in clients])
    for result in results:
        assert result["clients"] == clients and result["losses"] == [0.5 * c for c in clients]
        for key, value in expected.items():
            torch.testing.assert_close(result["average"][key], value, atol=0, rtol=0)  # bit-identical on every rank
