"""Client fits spread over ranks: assignment, seeds, and the exchange of uploads (2 gloo processes)."""

from __future__ import annotations

import os
import socket

import pytest
import torch

from fedbiot_pl.federation.aggregation import fedavg
from fedbiot_pl.federation.placement import (
    Upload,
    assign_clients,
    average_uploads,
    client_seed,
    clients_of_rank,
    gather_by_client,
    gather_uploads,
    mean_loss,
)


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


def upload(client: int) -> Upload:
    g = torch.Generator().manual_seed(client)
    state = {"a": torch.randn(4, 3, generator=g), "b": torch.randn(2, generator=g)}
    return Upload(state, weight=float(client + 1), loss=0.5 * client)


def test_one_process_orders_the_uploads_by_the_sampled_clients():
    clients = [3, 0, 2]
    uploads = gather_uploads({c: upload(c) for c in (0, 2, 3)}, clients)
    assert [u.loss for u in uploads] == [1.5, 0.0, 1.0]
    expected = fedavg([upload(c).state for c in clients], [4.0, 1.0, 3.0])
    for key, value in average_uploads(uploads).items():
        torch.testing.assert_close(value, expected[key], atol=0, rtol=0)
    assert mean_loss(uploads) == pytest.approx(2.5 / 3)
    with pytest.raises(RuntimeError, match=r"no rank reported \[2\]"):
        gather_uploads({0: upload(0), 3: upload(3)}, clients)
    with pytest.raises(RuntimeError, match=r"\[5\] were not sampled"):
        gather_uploads({c: upload(c) for c in (0, 2, 3, 5)}, clients)


def test_outcomes_of_dropped_clients_travel_too():
    outcomes = {1: ("dropped", "timeout"), 0: ("ok", torch.ones(2, device="cpu"))}
    ordered = gather_by_client(outcomes, [1, 0])
    assert ordered[0] == ("dropped", "timeout") and torch.equal(ordered[1][1], torch.ones(2))


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    clients = [4, 1, 0, 3, 2]
    mine = clients_of_rank(clients, rank, 2)  # rank 0: 4, 0, 2; rank 1: 1, 3
    uploads = gather_uploads({c: upload(c) for c in mine}, clients)
    torch.save({"losses": [u.loss for u in uploads], "average": average_uploads(uploads)}, f"{out}.{rank}")
    torch.distributed.destroy_process_group()


def test_two_ranks_end_with_the_same_uploads_and_the_one_process_average(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "result")
    torch.multiprocessing.spawn(_worker, args=(port, out), nprocs=2, join=True)
    results = [torch.load(f"{out}.{rank}") for rank in range(2)]
    clients = [4, 1, 0, 3, 2]
    expected = fedavg([upload(c).state for c in clients], [c + 1.0 for c in clients])
    for result in results:
        assert result["losses"] == [0.5 * c for c in clients]
        for key, value in expected.items():
            torch.testing.assert_close(result["average"][key], value, atol=0, rtol=0)  # bit-identical on every rank
