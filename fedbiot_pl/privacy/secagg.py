"""Secure aggregation of LoRA updates with Flower's SecAgg+, driven from our own ServerApp ``main`` (flwr 1.41).

Flower ships SecAgg+ only for its legacy API: :class:`flwr.server.workflow.SecAggPlusWorkflow` needs a
``LegacyContext`` holding a legacy ``Strategy``, and the client side, ``secaggplus_mod``, reads a legacy ``FitRes``.
:func:`secagg_fit_round` runs the workflow for *one* round from a Message-API ``main(grid, context)``: a one-shot
strategy hands our adapter to the chosen nodes (``configure_fit``) and captures the unmasked weighted mean
(``aggregate_fit``); nothing else of the legacy server loop (``DefaultWorkflow``, client manager, history) is used.

Protocol (per round, ``k`` nodes): four request/reply stages, each a ``train`` message to every node still active:
setup (public keys), share keys, collect masked vectors (this one carries the adapter and runs the client's fit), and
unmask. That is ``4k`` messages down and up when nobody drops out; in deployment each one starts a fresh ClientApp
process. The server learns only ``sum_i w_i * delta_i / sum_i w_i`` and, in plain text, every client's weight
(``num_examples``) and metrics; a client that fails after the setup stage is dropped and its masks are removed
from the shares of the others, as long as every node keeps ``threshold`` live neighbours.

Arithmetic (``c`` = clipping_range, ``Q`` = quantization_range, ``M`` = modulus_range, ``W`` = max_weight). Each
client uploads the change ``delta_i = upload_i - broadcast`` in float64 (float32 would limit the resolution to the
float32 spacing of ``2c``). The mod scales it by ``w_i = round(n_i / W * Q) / Q``, **clips it to [-c, c] without
telling anyone**, stochastically rounds ``(w_i delta_i + c) * Q / (2c)`` to an integer and masks it modulo ``M``.
The server unmasks, divides by ``sum_i w_i`` and :func:`secagg_fit_round` adds the broadcast back. Hence:

* the result is the ``w``-weighted mean up to ``|error| <= k * (2c/Q) / sum_i w_i`` per value (stochastic rounding,
  unbiased), see :meth:`SecAggSettings.error_bound`: ``W = max n_i`` makes the largest weight 1;
* no overflow needs ``k * Q < M`` and ``sum_i round(n_i / W * Q) < M``; Flower only warns when ``n_i > W``;
* no silent clipping needs ``max |w_i delta_i| <= c``: :func:`secagg_fit_reply` refuses (raises) otherwise, which
  turns into a dropped client on the server, with the reason in :attr:`SecAggResult.failures`.

Not covered: the quantisation draws from numpy's global RNG, so two runs differ within the bound; our per-client
update checks (NaN, shape, ``max_update_norm``) cannot run on the server, since it never sees an update (the client
checks finiteness and range itself); and Flower derives each mask from a 32-bit seed (``secaggplus_utils.
pseudo_rand_gen`` XOR-folds the 32-byte key into ``numpy.random.RandomState``), so the masks are much weaker than
the keys they come from.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from fedbiot_pl.errors import ConfigError

KEYS = "fedbiot-secagg-keys"  # FitIns config: the adapter's keys, newline separated, in upload order
CLIPPING_RANGE = "fedbiot-secagg-clipping-range"
QUANTIZATION_RANGE = "fedbiot-secagg-quantization-range"
MAX_WEIGHT = "fedbiot-secagg-max-weight"
ROUND = "fedbiot-secagg-round"
_PRIVATE = (KEYS, CLIPPING_RANGE, QUANTIZATION_RANGE, MAX_WEIGHT, ROUND)
_INT32_MAX = 2**31 - 1  # flwr quantises into int32


class SecAggHalted(RuntimeError):
    """The SecAgg+ workflow stopped before unmasking (too few nodes or shares); no aggregate exists."""


class SecAggRangeError(ValueError):
    """A client's weighted update does not fit the settings (it would be clipped or overflow silently)."""


def _levels(num_examples: float, max_weight: float, quantization_range: int) -> int:
    """A client's weight in quantisation levels, as the mod computes it: ``round(n / W * Q)``."""
    return round(num_examples / max_weight * quantization_range)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class SecAggSettings:
    """The ``SecAggPlusWorkflow`` parameters (same names and defaults, except ``num_shares`` and the threshold).

    Attributes:
        num_shares: Shares of each client's secrets; an int > 2, or a float: that fraction of the sampled nodes
            (1.0 = every node is every node's neighbour, the original SecAgg).
        reconstruction_threshold: Shares needed to rebuild a secret; an int < ``num_shares``, or a float in (0, 1]:
            that fraction of the shares (at least 2). Higher = more collusion needed, fewer dropouts tolerated.
        clipping_range: ``c``: each weighted change value must lie in [-c, c] (checked on the client).
        quantization_range: ``Q``: integer levels over [-c, c]; the step is ``2c/Q``.
        modulus_range: ``M``: masks are taken modulo this power of two (> Q, at most 2**32).
        max_weight: ``W``: a client's weight is ``num_examples / W`` (best: the largest ``num_examples``).
        timeout: Seconds to wait for the replies of each stage; None waits for all (a dead node blocks forever).
    """

    num_shares: int | float = 1.0
    reconstruction_threshold: int | float = 0.5
    clipping_range: float = 8.0
    quantization_range: int = 2**22
    modulus_range: int = 2**32
    max_weight: float = 1000.0
    timeout: float | None = None

    @property
    def step(self) -> float:
        """The quantisation step ``2c/Q`` of one weighted value."""
        return 2.0 * self.clipping_range / self.quantization_range

    @property
    def max_nodes(self) -> int:
        """Largest number of nodes without overflow: ``k * Q < M``."""
        return (self.modulus_range - 1) // self.quantization_range

    def weight(self, num_examples: int) -> float:
        """The weight the mod gives a client: ``round(num_examples / W * Q) / Q``."""
        return _levels(num_examples, self.max_weight, self.quantization_range) / self.quantization_range

    def error_bound(self, num_examples: Sequence[int]) -> float:
        """Largest per-value difference from the mean weighted by :meth:`weight`: ``k * (2c/Q) / sum(w)``.

        ``w`` are the weights rounded to ``1/Q`` (as the mod uses them), not the raw example counts; float64 uploads.
        """
        return len(num_examples) * self.step / sum(self.weight(n) for n in num_examples)

    def shares_and_threshold(self, num_nodes: int) -> tuple[int, int]:
        """``(num_shares, threshold)`` as ``SecAggPlusWorkflow.setup_stage`` derives them for ``num_nodes`` nodes."""
        shares = self.num_shares
        if isinstance(shares, float) or shares == 1:
            shares = round(float(shares) * num_nodes)
            if shares < num_nodes and shares % 2 == 0:
                shares += 1
            if shares <= 2:
                shares = num_nodes
        threshold = self.reconstruction_threshold
        if isinstance(threshold, float) or threshold == 1:
            threshold = max(round(float(threshold) * shares), 2)
        return int(shares), int(threshold)

    def issues(self, num_nodes: int | None = None, num_examples: Sequence[int] | None = None) -> list[str]:
        """Every setting that Flower would refuse or that would corrupt the sum silently, all at once.

        Args:
            num_nodes: The number of nodes in the round, when known.
            num_examples: Their weights (``num_examples``), when known.

        Returns:
            One message per problem, naming the value and the fix (empty when all is fine).
        """
        found = []
        shares, threshold = self.num_shares, self.reconstruction_threshold
        if not _is_number(shares) or shares <= 0 or (isinstance(shares, int) and shares == 2):
            found.append(f"num_shares={shares!r} must be an int > 2 or a fraction of the nodes in (0, 1] (e.g. 1.0).")
        elif isinstance(shares, float) and shares > 1:
            found.append(f"num_shares={shares!r} as a fraction must be at most 1.0 (every node).")
        if not _is_number(threshold) or threshold <= 0:
            found.append(f"reconstruction_threshold={threshold!r} must be an int >= 2 or a fraction in (0, 1].")
        elif isinstance(threshold, float) and threshold > 1:
            found.append(f"reconstruction_threshold={threshold!r} as a fraction must be at most 1.0.")
        elif isinstance(threshold, int) and isinstance(shares, int) and shares > 2 and threshold >= shares:
            found.append(f"reconstruction_threshold={threshold} must be less than num_shares={shares}.")
        if not _is_number(self.clipping_range) or self.clipping_range <= 0:
            found.append(f"clipping_range={self.clipping_range!r} must be > 0 (the bound on each weighted change).")
        q, m = self.quantization_range, self.modulus_range
        if isinstance(q, bool) or not isinstance(q, int) or not 0 < q <= _INT32_MAX:
            found.append(f"quantization_range={q!r} must be an int in (0, 2**31) (flwr quantises into int32).")
        if isinstance(m, bool) or not isinstance(m, int) or m <= 0 or m & (m - 1) or m > 2**32:
            found.append(f"modulus_range={m!r} must be a power of two, at most 2**32.")
        elif isinstance(q, int) and m <= q:
            found.append(f"modulus_range={m} must be larger than quantization_range={q}.")
        if not _is_number(self.max_weight) or self.max_weight <= 0:
            found.append(f"max_weight={self.max_weight!r} must be > 0 (best: the largest num_examples).")
        if self.timeout is not None and (not _is_number(self.timeout) or self.timeout <= 0):
            found.append(f"timeout={self.timeout!r} must be None or a number of seconds > 0.")
        if found:
            return found
        if num_nodes is not None:
            if num_nodes < 2:
                found.append(f"SecAgg+ needs at least 2 nodes in a round, got {num_nodes}.")
            elif num_nodes > self.max_nodes:
                found.append(
                    f"{num_nodes} nodes overflow the sum: quantization_range * nodes must be < modulus_range; "
                    f"use at most {self.max_nodes} nodes or a smaller quantization_range."
                )
            else:
                n_shares, n_threshold = self.shares_and_threshold(num_nodes)
                neighbours = min(2 * (n_shares // 2) + 1, num_nodes)  # the ring window around each node
                if n_shares % 2 == 0 and n_shares < num_nodes:
                    # setup_stage widens the window to n_shares + 1 after telling the clients n_shares, and a
                    # client then has one share too few for its neighbours (IndexError in share_keys)
                    found.append(f"num_shares={n_shares} is even and below the {num_nodes} nodes; use an odd number.")
                elif n_threshold > neighbours:
                    found.append(
                        f"reconstruction_threshold gives {n_threshold} shares but each node has only {neighbours} "
                        f"neighbours (itself included) among {num_nodes} nodes; lower it."
                    )
        if num_examples is not None:
            bad = [n for n in num_examples if isinstance(n, bool) or not isinstance(n, int) or n <= 0]
            if bad:
                found.append(f"num_examples {bad[:3]} must be ints > 0 (a zero weight cannot be unmasked).")
            else:
                heavy = [n for n in num_examples if n > self.max_weight]
                if heavy:
                    found.append(
                        f"num_examples {heavy[:3]} exceed max_weight={self.max_weight:g}: weights above 1 risk "
                        f"clipping and overflow; set max_weight={max(num_examples)}."
                    )
                total = sum(_levels(n, self.max_weight, self.quantization_range) for n in num_examples)
                if total >= self.modulus_range:
                    found.append(f"The summed weights ({total} levels) overflow modulus_range={self.modulus_range}.")
        return found

    def check(self, num_nodes: int | None = None, num_examples: Sequence[int] | None = None) -> None:
        """Raise :class:`~fedbiot_pl.errors.ConfigError` listing every issue, if there is any."""
        found = self.issues(num_nodes, num_examples)
        if found:
            raise ConfigError("SecAgg+ settings: " + " ".join(found))

    def workflow(self) -> Any:
        """A ``flwr.server.workflow.SecAggPlusWorkflow`` with these settings."""
        from flwr.server.workflow import SecAggPlusWorkflow

        self.check()
        return SecAggPlusWorkflow(
            num_shares=self.num_shares,
            reconstruction_threshold=self.reconstruction_threshold,
            max_weight=float(self.max_weight),
            clipping_range=float(self.clipping_range),
            quantization_range=self.quantization_range,
            modulus_range=self.modulus_range,
            timeout=self.timeout,
        )


@dataclass
class SecAggResult:
    """One secure-aggregation round as the server saw it.

    Attributes:
        mean: ``broadcast + sum_i w_i delta_i / sum_i w_i``, float32 on the CPU, the broadcast's keys and shapes.
        num_examples: The weight each aggregated node reported (visible to the server), by node id.
        metrics: The metrics each aggregated node reported (visible to the server), by node id.
        dropped: Sampled nodes not in the aggregate (no reply, an error, or refused by the range check).
        failures: The error messages the workflow collected (one per failing reply).
        messages_sent: Messages the server sent (``4k`` without dropouts).
        replies: Replies it received.
        seconds: Wall-clock time of the four stages.
    """

    mean: dict[str, Tensor]
    num_examples: dict[int, int]
    metrics: dict[int, dict[str, Any]]
    dropped: list[int]
    failures: list[str] = field(default_factory=list)
    messages_sent: int = 0
    replies: int = 0
    seconds: float = 0.0


def _one_round_strategy(proxies: list[Any], parameters: Any, config: dict[str, Any]) -> Any:
    from flwr.common import FitIns
    from flwr.server.strategy import Strategy

    class OneRound(Strategy):
        """Sends our adapter to the given proxies and keeps what SecAgg+ hands to ``aggregate_fit``."""

        def __init__(self) -> None:
            self.aggregate: Any = None
            self.results: dict[int, tuple[int, dict[str, Any]]] = {}
            self.failures: list[str] = []

        def initialize_parameters(self, client_manager: Any) -> None:
            return None

        def configure_fit(self, server_round: int, parameters_: Any, client_manager: Any) -> list[Any]:
            return [(proxy, FitIns(parameters, dict(config))) for proxy in proxies]

        def aggregate_fit(self, server_round: int, results: list[Any], failures: list[Any]) -> tuple[None, dict]:
            # flwr 1.41 appends each stage-2 error twice (collect_masked_vectors_stage loops over replies twice)
            # (two Exception objects around the same Error object): keep one per Error
            unique = {id(f.args[0]) if isinstance(f, Exception) and f.args else id(f): f for f in failures}
            self.failures = [str(f) for f in unique.values()]
            if results:  # SecAgg+ has put the unmasked mean into every FitRes
                self.aggregate = results[0][1].parameters
            self.results = {proxy.node_id: (res.num_examples, dict(res.metrics)) for proxy, res in results}
            return None, {}

        def configure_evaluate(self, server_round: int, parameters_: Any, client_manager: Any) -> list[Any]:
            return []

        def aggregate_evaluate(self, server_round: int, results: list[Any], failures: list[Any]) -> tuple[None, dict]:
            return None, {}

        def evaluate(self, server_round: int, parameters_: Any) -> None:
            return None

    return OneRound()


def secagg_fit_round(
    grid: Any,
    context: Any,
    node_ids: Sequence[int],
    arrays: Mapping[str, Tensor],
    config: Mapping[str, Any],
    server_round: int,
    settings: SecAggSettings,
) -> SecAggResult:
    """Run one SecAgg+ fit round over ``node_ids`` from a Message-API ServerApp ``main`` and return the mean.

    The nodes' ClientApp must register :func:`secagg_mod` on its ``train`` handler and answer with
    :func:`secagg_fit_reply` (see :func:`is_secagg_message`).

    Args:
        grid: The ``Grid`` given to ``main``, or a :class:`~fedbiot_pl.flower.wire.CountingGrid` over it (which
            then counts this round's messages and bytes too).
        context: The ``Context`` given to ``main`` (only its run id and configs are used; its state is untouched).
        node_ids: The sampled nodes (at least 2).
        arrays: The adapter LoRA to broadcast, by peft key (sent as float32; also the reference of the changes).
        config: Scalars (and bytes) for the clients' fit, delivered as the legacy ``FitIns.config``.
        server_round: The round number (the messages' ``group_id``).
        settings: The protocol settings; bad ones raise :class:`~fedbiot_pl.errors.ConfigError`.

    Returns:
        The :class:`SecAggResult`.

    Raises:
        SecAggHalted: The workflow stopped (too few replies or shares); the reasons are in the message.
    """
    import numpy as np
    from flwr.app import ConfigRecord, Context, RecordDict
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
    from flwr.server.workflow.constant import Key as WorkflowKey

    nodes = list(dict.fromkeys(int(n) for n in node_ids))
    settings.check(len(nodes))
    clash = sorted(set(config) & set(_PRIVATE))
    if clash:
        raise ValueError(f"config keys {clash} are reserved for secure aggregation.")
    keys = list(arrays)
    reference = {k: arrays[k].detach().to("cpu", torch.float32) for k in keys}
    parameters = ndarrays_to_parameters([reference[k].numpy() for k in keys])
    fit_config = {
        **config,
        KEYS: "\n".join(keys),
        CLIPPING_RANGE: float(settings.clipping_range),
        QUANTIZATION_RANGE: int(settings.quantization_range),
        MAX_WEIGHT: float(settings.max_weight),
        ROUND: int(server_round),
    }
    from fedbiot_pl.flower.wire import CountingGrid

    counting = grid if isinstance(grid, CountingGrid) else CountingGrid(grid)  # the caller's keeps counting
    sent, received = counting.sent, counting.received
    proxies = [GridClientProxy(node, grid, context.run_id) for node in nodes]
    strategy = _one_round_strategy(proxies, parameters, fit_config)
    own = Context(context.run_id, context.node_id, dict(context.node_config), RecordDict(), dict(context.run_config))
    legacy = LegacyContext(own, strategy=strategy)  # a state of its own: the workflow writes into it
    legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: int(server_round)})
    legacy.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(parameters, keep_input=True)
    start = time.monotonic()
    settings.workflow()(counting, legacy)
    seconds = time.monotonic() - start
    if strategy.aggregate is None:
        raise SecAggHalted(
            f"SecAgg+ round {server_round} over {len(nodes)} nodes halted after {counting.sent - sent} messages and "
            f"{counting.received - received} replies (too few live nodes or shares for reconstruction_threshold; "
            "see the ServerApp log)."
        )
    mean_delta = parameters_to_ndarrays(strategy.aggregate)
    mean = {
        k: (
            reference[k].double() + torch.from_numpy(np.asarray(d, dtype=np.float64)).reshape(reference[k].shape)
        ).float()
        for k, d in zip(keys, mean_delta, strict=True)
    }
    return SecAggResult(
        mean=mean,
        num_examples={n: r[0] for n, r in strategy.results.items()},
        metrics={n: r[1] for n, r in strategy.results.items()},
        dropped=[n for n in nodes if n not in strategy.results],
        failures=strategy.failures,
        messages_sent=counting.sent - sent,
        replies=counting.received - received,
        seconds=seconds,
    )


# --- client side ----------------------------------------------------------------------------------------------------


def secagg_mod(message: Any, context: Any, call_next: Any) -> Any:
    """Flower's ``secaggplus_mod`` for SecAgg+ messages only; other messages pass straight through.

    Register it on the train handler, ``@app.train(mods=[secagg_mod])``: the workflow sends all four stages as
    plain ``train`` messages, so the plain (non-secure) train messages of the same app must bypass the mod, which
    otherwise fails on them. The stages other than "collect masked vectors" never reach the handler.
    """
    from flwr.client.mod import secaggplus_mod
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if message.metadata.message_type == "train" and RECORD_KEY_CONFIGS in message.content.config_records:
        return secaggplus_mod(message, context, call_next)
    return call_next(message, context)


def is_secagg_message(message: Any) -> bool:
    """Whether a message reaching the train handler is a SecAgg+ fit (legacy ``FitIns`` records from our server)."""
    return "fitins.parameters" in message.content.array_records and "fitins.config" in message.content.config_records


@dataclass
class SecAggFitRequest:
    """What the server sent for a SecAgg+ fit.

    Attributes:
        arrays: The broadcast adapter (float32 CPU tensors), by key in upload order.
        config: The caller's fit config (without the secure-aggregation keys).
        server_round: The round number.
        clipping_range: ``c`` of the settings.
        quantization_range: ``Q`` of the settings.
        max_weight: ``W`` of the settings.
    """

    arrays: dict[str, Tensor]
    config: dict[str, Any]
    server_round: int
    clipping_range: float
    quantization_range: int
    max_weight: float


def secagg_fit_request(message: Any) -> SecAggFitRequest:
    """Decode a SecAgg+ fit message (see :func:`is_secagg_message`)."""
    from flwr.common import parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    ins = compat.recorddict_to_fitins(message.content, keep_input=True)
    config = dict(ins.config)
    keys = str(config[KEYS]).split("\n")
    values = parameters_to_ndarrays(ins.parameters)
    if len(values) != len(keys):
        raise ValueError(f"SecAgg+ fit: {len(values)} arrays for {len(keys)} keys.")
    return SecAggFitRequest(
        arrays={k: torch.from_numpy(v.copy()).float() for k, v in zip(keys, values, strict=True)},
        config={k: v for k, v in config.items() if k not in _PRIVATE},
        server_round=int(config[ROUND]),
        clipping_range=float(config[CLIPPING_RANGE]),
        quantization_range=int(config[QUANTIZATION_RANGE]),
        max_weight=float(config[MAX_WEIGHT]),
    )


def secagg_fit_reply(
    message: Any,
    request: SecAggFitRequest,
    upload: Mapping[str, Tensor],
    num_examples: int,
    metrics: Mapping[str, Any] | None = None,
) -> Any:
    """The reply to a SecAgg+ fit: the change ``upload - broadcast`` (float64) as a legacy ``FitRes``.

    ``secaggplus_mod`` then weights, quantises and masks it; the server never sees it in the clear.

    Args:
        message: The incoming fit message.
        request: Its decoded form (:func:`secagg_fit_request`).
        upload: The trained adapter, same keys and shapes as ``request.arrays``.
        num_examples: The client's weight in the mean (an int in ``[1, max_weight]``; visible to the server).
        metrics: Scalars for the server (visible to it).

    Returns:
        The reply ``Message``.

    Raises:
        SecAggRangeError: A weighted change value exceeds ``clipping_range`` (the mod would clip it silently), the
            weight is out of range, or a value is not finite. The server then counts the client as dropped.
    """
    import numpy as np
    from flwr.app import Message
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat as compat

    if set(upload) != set(request.arrays):
        differ = sorted(set(upload) ^ set(request.arrays))[:3]
        raise ValueError(f"SecAgg+ upload keys differ from the broadcast: {differ}")
    integer = isinstance(num_examples, int) and not isinstance(num_examples, bool)
    if not integer or not 0 < num_examples <= request.max_weight:
        raise SecAggRangeError(
            f"num_examples={num_examples!r} must be an int in [1, max_weight={request.max_weight:g}]; raise the "
            "server's max_weight."
        )
    q = request.quantization_range
    weight = _levels(num_examples, request.max_weight, q) / q  # what the mod multiplies by
    deltas, worst, worst_key = [], 0.0, ""
    for key, reference in request.arrays.items():
        if upload[key].shape != reference.shape:  # before subtracting: a (32,) upload would broadcast to (4, 32)
            raise ValueError(f"SecAgg+ upload {key}: shape {tuple(upload[key].shape)}, broadcast "
                             f"{tuple(reference.shape)}.")
        delta = upload[key].detach().to("cpu", torch.float64) - reference.double()
        if not bool(torch.isfinite(delta).all()):
            raise SecAggRangeError(f"SecAgg+ upload {key} holds NaN or inf.")
        array = delta.numpy()
        largest = float(np.abs(array * weight).max()) if array.size else 0.0
        if largest > worst:
            worst, worst_key = largest, key
        deltas.append(array)
    if worst > request.clipping_range:
        raise SecAggRangeError(
            f"SecAgg+ would clip the update silently: |weight * change| reaches {worst:.4g} at {worst_key}, above "
            f"clipping_range={request.clipping_range:g}; raise clipping_range to at least {worst:.3g}."
        )
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(deltas), num_examples, dict(metrics or {}))
    return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=message)
