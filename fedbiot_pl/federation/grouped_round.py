"""One attempt at a hierarchical round: groups of devices, each with its own depth and intra-group rounds.

The algorithm (HierFedLoRA) says which groups a round has (:meth:`~fedbiot_pl.algorithms.Algorithm.groups`);
the :class:`~fedbiot_pl.federation.round.RoundRunner` calls :func:`run_groups` for such a round::

    theta <- the global LoRA (every layer)
    for each group g (depth d_g, K_g intra-group rounds):
        theta_g <- theta
        for k in 0..K_g-1:                         the clients' data order and seeds: round t * K_max + k
            send top(d_g) of theta_g (k = 0: every layer changed since the members last synced) to the members
            each member trains the LoRA of its top d_g layers for local_steps steps and uploads them
            theta_g[top(d_g)] <- FedAvg of the accepted uploads          (edge: device <-> edge traffic)
        upload theta_g[top(d_g)] to the cloud                            (edge <-> cloud traffic)
    theta[l] <- the groups that trained layer l, averaged by their examples (aggregation.layerwise_fedavg)

Every byte is counted in the ledger (device <-> edge as the usual ``bytes_down``/``bytes_up``, edge <-> cloud
in ``cloud_bytes_down``/``cloud_bytes_up``). With a simulated fleet each intra-group round costs the
slowest member's time, a group its rounds plus its edge <-> cloud transfers, the round its slowest group.
The clock charges the real downloads (every layer in round 0, more after another group trained deeper);
the schedule (:func:`~fedbiot_pl.hierarchy.schedule.configure`) plans with the steady state, a download of
the group's own depth per intra-group round.

Fault injection and every client hook see the clients' round number ``t x K_max + k`` as ``round``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from fedbiot_pl.federation.aggregation import fedavg
from fedbiot_pl.federation.attempts import RoundAttempt
from fedbiot_pl.federation.messages import LoRAState, payload_bytes
from fedbiot_pl.federation.transport import ClientCall

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupRound:
    """One group's part of a round.

    Attributes:
        index: the group's number (0-based, fixed for the run).
        members: the group's devices that take part in this round (sampled).
        depth: LoRA layers trained, counted from the output.
        intra_rounds: intra-group aggregations this round (``K_g``).
        download_depth: layers the members fetch at the round's start (those changed since they last synced).
        first_client_round: the clients' round number of intra-group round 0 (``t x K_max``; round ``k`` adds
            ``k``): it seeds their data order and random numbers.
    """

    index: int
    members: tuple[int, ...]
    depth: int
    intra_rounds: int
    download_depth: int
    first_client_round: int


@dataclass
class GroupOutcome:
    """What a group's rounds left: its state (top ``depth`` layers), its weight and its simulated seconds.

    The weight (examples) and the losses are those of the group's devices accepted in its last intra-group
    round that accepted any: the devices whose training the group's state ends with.
    """

    group: GroupRound
    state: dict[str, Tensor] = field(default_factory=dict)
    weight: float = 0.0
    seconds: float = 0.0
    losses: dict[int, float] = field(default_factory=dict)


def top_keys(views: Any, depth: int) -> list[str]:
    """The LoRA keys of the model's top ``depth`` layers (the adapter's, inside ``trained_depth``)."""
    with views.trained_depth(depth):
        return list(views.lora_parameters("adapter"))


def run_groups(runner: Any, round_idx: int, attempt: int, clients: list[int], groups: Sequence[GroupRound],
               receive: Callable[[RoundAttempt, Any, int], None]) -> RoundAttempt:
    """Run every group's intra-group rounds; the attempt's uploads are the group states, weighted by examples.

    Args:
        runner: the round runner (its views, algorithm, clients, transport, ledger, data, settings, fleet).
        round_idx: the global round ``t``.
        attempt: the attempt at it (a retry runs every group again).
        clients: the round's sampled clients.
        groups: the round's groups (members already restricted to ``clients``).
        receive: the runner's check of one reply (drops, rejects or accepts it into an attempt).
    """
    views, ledger, fleet = runner.views, runner.ledger, runner.fleet
    global_state = views.lora_state("all")
    result = RoundAttempt(attempt, clients, reference=global_state)
    outcomes = []
    for group in groups:
        if not group.members:
            continue
        outcome = _run_group(runner, round_idx, attempt, group, global_state, receive, result)
        outcomes.append(outcome)
        # The cloud sends the group's edge the layers it needs and gets back the layers it trained.
        down = payload_bytes({k: global_state[k] for k in top_keys(views, group.download_depth)})
        up = payload_bytes(outcome.state) if outcome.state else 0
        ledger.record_cloud(down=down, up=up)
        if fleet is not None:
            outcome.seconds += fleet.edge_cloud_seconds(down, up)
    views.load_lora_state(global_state)  # the groups' fits left their LoRA in the shared views
    for outcome in outcomes:
        if outcome.state and outcome.weight > 0:
            result.uploads.append(outcome.state)
            result.weights.append(outcome.weight)
    result.groups = [{"group": o.group.index, "members": list(o.group.members), "depth": o.group.depth,
                      "intra_rounds": o.group.intra_rounds, "examples": o.weight, "seconds": o.seconds}
                     for o in outcomes]
    return result


def _run_group(runner: Any, round_idx: int, attempt: int, group: GroupRound, global_state: dict[str, Tensor],
               receive: Callable[[RoundAttempt, Any, int], None], result: RoundAttempt) -> GroupOutcome:
    views, ledger, fleet = runner.views, runner.ledger, runner.fleet
    outcome = GroupOutcome(group)
    trained = top_keys(views, group.depth)
    state = {key: global_state[key] for key in trained}  # theta_g: the group's top layers
    views.load_lora_state(global_state)
    with views.trained_depth(group.depth):
        for k in range(group.intra_rounds):
            client_round = group.first_client_round + k
            sent = top_keys(views, group.download_depth) if k == 0 else trained
            message = LoRAState({key: state.get(key, global_state[key]) for key in sent})
            ledger.record_down(message.tensors, len(group.members))
            intra = RoundAttempt(attempt, list(group.members), reference={key: state[key].cpu() for key in trained})
            client_fn = ClientCall(runner.clients.run, client_round, attempt)
            for reply in runner.transport.exchange(list(group.members), message.encode(), client_fn):
                receive(intra, reply, round_idx)
            result.events.extend(intra.events)
            if intra.uploads:  # the group's devices and weight: those of its last round with accepted uploads
                state = fedavg(intra.uploads, intra.weights)
                outcome.losses, outcome.weight = dict(intra.losses), float(sum(intra.weights))
            else:
                log.warning("round %d: group %d, intra-group round %d: no accepted update; the group keeps its "
                            "LoRA.", round_idx, group.index, k)
            if fleet is not None:
                outcome.seconds += fleet.exchange_seconds(
                    group.members, round_idx, down_bytes=payload_bytes(message.tensors),
                    up_bytes=payload_bytes(intra.reference), depth=group.depth)
    outcome.state = state if outcome.weight > 0 else {}
    result.losses.update(outcome.losses)
    return outcome

