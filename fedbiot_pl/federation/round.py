"""One federated round as a plain object.

Sampling, broadcast, client fits, uploads, their checks, aggregation, and the server's steps. No
Trainer: tests and benchmarks call it directly, and the :class:`~fedbiot_pl.callbacks.FederatedLoop`
callback calls it from Lightning's hooks.

One round ``t`` (attempt ``a``; a retry samples again with ``attempt=a``)::

    sample_clients(seed, t, a) -> clients
    algorithm.broadcast_message(views, t) -> Message -> bytes    ledger: tensor bytes x clients
    transport.exchange(clients, bytes, client_fn) -> replies     ledger: wire bytes down and up
        client_fn: algorithm.client_receive, fit algorithm.client_fits, algorithm.upload_message -> bytes
    per reply: dropped? | algorithm.receive: decode + Message.problem (LoRA: keys, shapes, finite,
        norm; logits: slice, shapes, finite, indices)? -> accept
    fewer than min_clients accepted -> algorithm.restore the global state, retry or stop
    algorithm.aggregate(accepted, weights) [-> server_optimizer.step] -> algorithm.apply(views, .)
    algorithm.server_steps(t) alignment steps (the loop's server epoch, or ``server_step`` here)

A hierarchical algorithm (HierFedLoRA) returns the round's groups from ``algorithm.groups``; the
attempt then runs every group's intra-group rounds (:func:`~fedbiot_pl.federation.grouped_round.run_groups`)
and the accepted "uploads" are the groups' states. With a simulated fleet (``fleet``) every round also
advances its clock by the simulated seconds of the round's exchanges (``sim/*`` metrics).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fedbiot_pl.federation.attempts import RoundAttempt, TooFewClientsError, round_record, too_few_message
from fedbiot_pl.federation.client import ClientData, LocalClients
from fedbiot_pl.federation.grouped_round import run_groups
from fedbiot_pl.federation.ledger import CommLedger
from fedbiot_pl.federation.messages import payload_bytes
from fedbiot_pl.federation.sampling import sample_clients
from fedbiot_pl.federation.transport import ClientCall, InProcessTransport, Transport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundSettings:
    """How a round samples, weighs and checks its clients (see :class:`~fedbiot_pl.callbacks.FederatedLoop`)."""

    clients_per_round: int | float | None = None
    seed: int = 42
    weighting: str = "examples"
    min_clients: int = 1
    on_too_few: str = "stop"
    max_round_retries: int = 2
    max_update_norm: float | None = None


@dataclass
class RoundResult:
    """A finished round: its attempts, its metrics row and its history entry."""

    round_idx: int
    attempts: list[RoundAttempt]
    metrics: dict[str, float] = field(default_factory=dict)
    entry: dict[str, Any] = field(default_factory=dict)


class RoundRunner:
    """Runs rounds of ``algorithm`` on ``views`` with the clients of ``data``.

    Args:
        algorithm: the federated algorithm (:class:`~fedbiot_pl.algorithms.Algorithm`).
        views: the server's model views (built).
        data: the clients' data.
        clients: the client side (:class:`~fedbiot_pl.federation.client.LocalClients`).
        settings: sampling, weighting and fault handling.
        ledger: the traffic totals (a new one if not given).
        transport: how messages reach the clients (in-process if not given).
        server_optimizer: a FedOpt server optimizer applied to the aggregate (``None``: FedAvg).
        fleet: the simulated devices and their clock
            (:class:`~fedbiot_pl.hierarchy.simulation.SimulatedFleet`; ``None``: no simulated time).
    """

    def __init__(self, algorithm: Any, views: Any, data: ClientData, clients: LocalClients,
                 settings: RoundSettings, ledger: CommLedger | None = None, transport: Transport | None = None,
                 server_optimizer: Any = None, fleet: Any = None) -> None:
        self.algorithm, self.views, self.data, self.clients = algorithm, views, data, clients
        self.settings = settings
        self.ledger = ledger if ledger is not None else CommLedger()
        self.transport = transport if transport is not None else InProcessTransport(self.ledger)
        self.server_optimizer = server_optimizer
        self.fleet = fleet
        self._groups: list[Any] | None = None  # the current round's groups (hierarchical rounds)
        self._seconds: list[float] = []  # the current round's attempts' simulated seconds
        algorithm.attach(views, data, clients)
        algorithm.connect(self.transport)
        # A hierarchical algorithm groups the devices and checks its schedule now, before any training.
        algorithm.groups(0, list(range(data.num_clients)), fleet)

    def run_round(self, round_idx: int, server_step: Callable[[int], Any] | None = None,
                  align_steps: int = 0) -> RoundResult:
        """Run round ``round_idx`` and make its aggregate the global state.

        Args:
            round_idx: the round (0-based).
            server_step: called once with the number of server steps the algorithm takes after this
                round (skipped when 0); the Lightning loop leaves it ``None``: its server epoch takes them.
            align_steps: the run's alignment steps per round (what :meth:`server_step` is told).

        Raises:
            TooFewClientsError: fewer than ``min_clients`` accepted updates in every attempt.
        """
        started = time.perf_counter()
        ledger = self.ledger
        before = (ledger.bytes_down, ledger.bytes_up, ledger.cloud_bytes_down, ledger.cloud_bytes_up)
        self._seconds = []
        attempts = self._attempts(round_idx)
        final = attempts[-1]
        aggregate = self.algorithm.aggregate(final.uploads, final.weights)
        if self.server_optimizer is not None:
            aggregate = self.server_optimizer.step(final.reference, aggregate)
        self.algorithm.apply(self.views, aggregate)
        if self._groups is not None:
            self.algorithm.round_done(round_idx, self._groups)
        metrics, entry = round_record(round_idx, attempts)
        metrics.update({
            "round/client_seconds": time.perf_counter() - started,
            "comm/bytes_down": float(ledger.bytes_down - before[0]),
            "comm/bytes_up": float(ledger.bytes_up - before[1]),
            "comm/total_bytes": float(ledger.bytes_down + ledger.bytes_up),
        })
        if self._groups is not None:
            metrics.update({"comm/cloud_bytes_down": float(ledger.cloud_bytes_down - before[2]),
                            "comm/cloud_bytes_up": float(ledger.cloud_bytes_up - before[3]),
                            "comm/cloud_total_bytes": float(ledger.cloud_bytes_down + ledger.cloud_bytes_up)})
            entry["groups"] = final.groups
            for group in final.groups:
                metrics[f"group/{group['group']}/depth"] = float(group["depth"])
                metrics[f"group/{group['group']}/intra_rounds"] = float(group["intra_rounds"])
        if self.fleet is not None:
            metrics.update(self._advance_clock(final))
        steps = self.algorithm.server_steps(round_idx, align_steps)
        if server_step is not None and steps > 0:
            server_step(steps)
        return RoundResult(round_idx, attempts, metrics, {**entry, **metrics})

    def _attempts(self, round_idx: int) -> list[RoundAttempt]:
        settings = self.settings
        attempts: list[RoundAttempt] = []
        for attempt in range(1 + (settings.max_round_retries if settings.on_too_few == "retry" else 0)):
            clients = sample_clients(self.data.num_clients, settings.clients_per_round, settings.seed, round_idx,
                                     attempt)
            self._groups = self.algorithm.groups(round_idx, clients, self.fleet)
            if self._groups is not None:
                result = run_groups(self, round_idx, attempt, clients, self._groups, self._receive)
                self._seconds.append(max((g["seconds"] for g in result.groups), default=0.0))
            else:
                result = self._flat_attempt(round_idx, attempt, clients)
            attempts.append(result)
            if len(result.losses) >= settings.min_clients:
                return attempts
            self.algorithm.restore(self.views, result.reference)  # the clients' fits left their LoRA in the views
            log.warning("round %d, attempt %d: %d accepted updates, fewer than min_clients=%d.",
                        round_idx, attempt + 1, len(result.losses), settings.min_clients)
        message = too_few_message(round_idx, attempts, settings.min_clients, settings.on_too_few)
        raise TooFewClientsError(message) from self.clients.last_error

    def _flat_attempt(self, round_idx: int, attempt: int, clients: list[int]) -> RoundAttempt:
        """Broadcast, every sampled client's fit and upload, and their checks (one flat attempt)."""
        message = self.algorithm.broadcast_message(self.views, round_idx)
        self.ledger.record_down(message.tensors, len(clients))
        # The upload's reference (LoRA: what the clients received of the part they train).
        result = RoundAttempt(attempt, clients,
                              reference=self.algorithm.upload_reference(self.views, message, round_idx))
        client_fn = ClientCall(self.clients.run, round_idx, attempt)
        if getattr(self.transport, "aggregates", False):  # secure aggregation: only the uploads' weighted mean
            self._receive_mean(result, self.transport.secure_exchange(clients, message.encode(), client_fn),
                               round_idx)
        else:
            for reply in self.transport.exchange(clients, message.encode(), client_fn):
                self._receive(result, reply, round_idx)
        if self.fleet is not None:  # each client: the broadcast down, its fit at full depth, its upload up
            self._seconds.append(self.fleet.exchange_seconds(
                clients, round_idx, down_bytes=payload_bytes(message.tensors),
                up_bytes=payload_bytes(result.reference), depth=len(self.views.layout.adapter_positions)))
        return result

    def _advance_clock(self, final: RoundAttempt) -> dict[str, float]:
        """Advance the simulated clock by the round's attempts; the ``sim/*`` metrics."""
        round_seconds = float(sum(self._seconds))
        total = self.fleet.clock.advance(round_seconds)
        metrics = {"sim/round_seconds": round_seconds, "sim/seconds": total}
        if final.groups and self._seconds[-1] > 0:  # groups waiting for the slowest one
            busy = [g["seconds"] for g in final.groups]
            metrics["sim/idle_fraction"] = 1.0 - sum(busy) / len(busy) / self._seconds[-1]
        return metrics

    def _receive_mean(self, result: RoundAttempt, outcome: Any, round_idx: int) -> None:
        """Drops, then the check of the secure mean (the only upload the server sees): all its clients or none."""
        for client_id, reason in outcome.dropped.items():
            log.warning("round %d: client %d dropped: %s", round_idx, client_id, reason)
            result.drop(client_id, reason)
        if not outcome.losses:
            return
        update, problem = self.algorithm.receive(outcome.payload, result.reference, self.settings.max_update_norm)
        if problem is not None:
            self.ledger.uploads_rejected += 1
            log.warning("round %d: the secure mean of clients %s rejected: %s", round_idx, sorted(outcome.losses),
                        problem)
            for client_id in outcome.losses:
                result.reject(client_id, f"secure mean rejected: {problem}")
            return
        for _ in outcome.losses:  # each client sent an update of the adapter's size (masked, on the wire)
            self.ledger.record_up(update)
        result.uploads.append(update)
        result.weights.append(outcome.weight)
        result.losses.update(outcome.losses)

    def _receive(self, result: RoundAttempt, reply: Any, round_idx: int) -> None:
        """Drop, reject or accept one client's reply (every rank does this for every client, in order)."""
        client_id = reply.client
        if reply.dropped is not None:
            log.warning("round %d: client %d dropped: %s", round_idx, client_id, reply.dropped)
            result.drop(client_id, reply.dropped)
            return
        update, problem = self.algorithm.receive(reply.payload, result.reference, self.settings.max_update_norm)
        if update is None:
            self.ledger.record_up_bytes(len(reply.payload))  # it travelled, but could not be read
        else:
            self.ledger.record_up(update)
        if problem is not None:
            self.ledger.uploads_rejected += 1
            log.warning("round %d: update of client %d rejected: %s", round_idx, client_id, problem)
            result.reject(client_id, problem)
            return
        result.uploads.append(update)
        weight = self.data.client_num_examples(client_id) if self.settings.weighting == "examples" else 1.0
        result.weights.append(weight)
        result.losses[client_id] = reply.loss
