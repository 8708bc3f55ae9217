"""Client fits on several GPUs: which rank fits which client, and the exchange of the uploads.

A round's clients are independent parties, so on a node with N GPUs (one process per GPU, the
server's DDP or DeepSpeed ranks) each rank fits its share of the sampled clients alone on its own GPU,
with the usual lean single-device Trainer, and the ranks then swap the small LoRA uploads. Every rank
ends the round with every upload in the sampled order and computes the same FedAvg, so the global
adapter is identical on every rank without a broadcast, and equal to the one-GPU loop's.

Why not DDP inside a client fit: a client's batch (5 sequences in the paper) split over N GPUs leaves
each GPU a sliver of work, and its gradients would be all-reduced every step; spreading whole clients
keeps every GPU's batch at the client's size and needs one exchange of ~1 MB per client per round.
With fewer sampled clients than GPUs, the ranks without a client wait at the exchange.

:class:`~fedbiot_pl.federation.transport.InProcessTransport` deals the clients with
:func:`clients_of_rank` and swaps the replies with :func:`gather_by_client`; the round runner then
aggregates them (:func:`fedbiot_pl.federation.aggregation.fedavg` for the LoRA algorithms).

Under ZeRO-3 the fits run inside :func:`fedbiot_pl.scaling.deepspeed.client_phase`, where every rank holds the
whole compressed model, so the ranks need not move in lockstep during the fits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import torch.distributed as dist
from torch import Tensor

T = TypeVar("T")


def assign_clients(clients: Sequence[int], world_size: int) -> list[list[int]]:
    """Deal the sampled ``clients`` to ``world_size`` ranks round-robin, in the sampled order.

    Ranks get ``ceil`` or ``floor`` of ``len(clients) / world_size`` clients each (equal local steps, so
    equal work per client), and the result is the same on every rank.

    Raises:
        ValueError: ``world_size < 1`` or a client sampled twice.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}.")
    if len(set(clients)) != len(clients):
        raise ValueError(f"each client can be fitted once per round, got {list(clients)}.")
    return [list(clients[rank::world_size]) for rank in range(world_size)]


def clients_of_rank(clients: Sequence[int], rank: int, world_size: int) -> list[int]:
    """The clients rank ``rank`` fits this round (see :func:`assign_clients`)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}.")
    return assign_clients(clients, world_size)[rank]


def client_seed(seed: int, round_idx: int, client_id: int) -> int:
    """A seed for one client's fit that depends only on (seed, round, client).

    Not on the rank that runs it nor on the order of the fits, so LoRA dropout draws the same masks
    wherever and whenever the client is fitted.
    """
    digest = hashlib.sha256(f"{seed}/{round_idx}/{client_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _to_cpu(value: Any) -> Any:
    """``value`` with every tensor in it (also inside dicts, lists and tuples) detached on the CPU."""
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        return type(value)(*(_to_cpu(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def gather_by_client(local: Mapping[int, T], clients: Sequence[int], group: object = None) -> list[T]:
    """Every rank's per-client results, on every rank, in the order of ``clients``.

    ``local`` maps the clients this rank handled to any picklable result (an upload, or the outcome
    of a dropped or rejected client); tensors in it travel as CPU tensors. Without an initialised
    process group (one process) it only orders ``local``. A collective: every rank of ``group`` must
    call it, also a rank that had no client.

    Raises:
        RuntimeError: a client of ``clients`` was handled by no rank or by two, or a rank reported a
            client that was not sampled.
    """
    mine = {client: _to_cpu(result) for client, result in local.items()}
    if dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
        parts: list[dict[int, T] | None] = [None] * dist.get_world_size(group)
        dist.all_gather_object(parts, mine, group=group)
    else:
        parts = [mine]
    merged: dict[int, T] = {}
    for part in parts:
        for client, result in (part or {}).items():
            if client in merged:
                raise RuntimeError(f"client {client} was handled by two ranks this round.")
            merged[client] = result
    missing = [c for c in clients if c not in merged]
    unknown = sorted(set(merged) - set(clients))
    if missing or unknown:
        raise RuntimeError(f"every sampled client must be handled by exactly one rank; no rank reported {missing}, "
                           f"and {unknown} were not sampled.")
    return [merged[c] for c in clients]

