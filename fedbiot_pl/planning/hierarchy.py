"""HierFedLoRA's plan: the traffic of a grouped round at both levels, the per-depth costs, the groups' schedule.

A global round of HierFedLoRA (:mod:`fedbiot_pl.federation.grouped_round`) with ``M`` groups, group ``g`` of
``n_g`` devices training the LoRA of its top ``d_g`` layers for ``K_g`` intra-group rounds, ``beta`` the bytes
of one layer's LoRA (float32) and ``c`` the layers the cloud changed in the previous round (``max_g d_g`` in
the steady state; every layer, ``L``, in the first round) moves (:func:`hier_traffic`)::

    device <-> edge, per device of group g   down = beta max(c, d_g) + (K_g - 1) beta d_g     up = K_g beta d_g
    edge <-> cloud, summed over the groups     up = sum_g beta d_g         down = sum_g beta max(c, d_g)

against FedAvg-LoRA's ``beta L`` once each way per device (:func:`flat_traffic`). :func:`depth_rows` tabulates
:class:`~fedbiot_pl.hierarchy.costs.DepthCosts` (LoRA, message, FLOPs per token, peak memory per depth);
:func:`resolve_groups` reads the command's group flags; :func:`fleet_times` times explicit groups on a fleet
and :func:`planned_schedule` reproduces a run's grouping and its depth and intra-round choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from fedbiot_pl.hierarchy.clock import device_seconds
from fedbiot_pl.hierarchy.costs import DepthCosts
from fedbiot_pl.hierarchy.schedule import edge_seconds, feasible_depths, intra_round_seconds

# The command's flag of each HierFedLoRA setting, named in its errors.
HIER_FLAGS = {"group_sizes": "--group-sizes", "groups": "--groups", "depths": "--depths",
              "intra_rounds": "--intra-rounds", "fleet": "--fleet", "local_steps": "--local-steps"}
HIER_FORMULA = ("per device of group g: down = beta·max(c, d_g) + (K_g - 1)·beta·d_g, up = K_g·beta·d_g; "
                "edge -> cloud = sum_g beta·d_g, cloud -> edge = sum_g beta·max(c, d_g)")
LOCAL_STEPS = 30  # tau when no --config gives federated.local_steps (FederatedLoop's default)
FULL_TABLE = 12  # models with at most this many layers get a row for every depth


def _counts(label: str, values: Sequence[int]) -> list[int]:
    values = list(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"{label} must be integers >= 1, got {values!r}.")
    return values


def hier_traffic(layer_bytes: int, depths: Sequence[int], sizes: Sequence[int], intra_rounds: Sequence[int],
                 changed_depth: int | None = None, num_layers: int | None = None) -> dict[str, Any]:
    """Bytes one global round of HierFedLoRA moves at both levels, per group and in total (see the module).

    Args:
        layer_bytes: ``beta``, one decoder layer's LoRA on the wire (float32).
        depths: ``d_g`` per group.
        sizes: ``n_g``, the devices of each group taking part.
        intra_rounds: ``K_g`` per group.
        changed_depth: ``c``, the top layers the cloud changed in the previous round; default ``max(depths)``
            (the steady state).
        num_layers: ``L``; when given, ``first_round`` holds the same figures for the first round (``c = L``:
            every device fetches the whole initial LoRA once).

    Returns:
        ``device_edge`` and ``edge_cloud`` (``download_bytes``, ``upload_bytes``, ``total_bytes``), ``groups``
        (per group: its settings, ``download_depth = max(c, d_g)``, ``per_device`` and ``device_edge`` bytes,
        ``edge_cloud`` bytes), ``device_rounds`` (``sum_g n_g K_g``: local-step runs of ``tau`` steps) and
        ``first_round`` if ``num_layers`` is given.

    Raises:
        ValueError: lists of different lengths, or a value below 1, naming it.
    """
    depths, sizes, rounds = (_counts(n, v) for n, v in (("depths", depths), ("sizes", sizes),
                                                        ("intra_rounds", intra_rounds)))
    if not len(depths) == len(sizes) == len(rounds):
        raise ValueError(f"depths, sizes and intra_rounds need one value per group, got {len(depths)}, "
                         f"{len(sizes)} and {len(rounds)}.")
    changed = max(depths) if changed_depth is None else _counts("changed_depth", [changed_depth])[0]
    groups = []
    for g, (d, n, k) in enumerate(zip(depths, sizes, rounds, strict=True)):
        fetched = max(changed, d)
        down, up = layer_bytes * fetched + (k - 1) * layer_bytes * d, k * layer_bytes * d
        groups.append({"group": g, "size": n, "depth": d, "intra_rounds": k, "download_depth": fetched,
                       "per_device": {"download_bytes": down, "upload_bytes": up},
                       "device_edge": {"download_bytes": n * down, "upload_bytes": n * up},
                       "edge_cloud": {"upload_bytes": layer_bytes * d, "download_bytes": layer_bytes * fetched}})
    result: dict[str, Any] = {"layer_bytes": layer_bytes, "changed_depth": changed}
    for level in ("device_edge", "edge_cloud"):
        down = sum(g[level]["download_bytes"] for g in groups)
        up = sum(g[level]["upload_bytes"] for g in groups)
        result[level] = {"download_bytes": down, "upload_bytes": up, "total_bytes": down + up}
    result["groups"] = groups
    result["device_rounds"] = sum(n * k for n, k in zip(sizes, rounds, strict=True))
    if num_layers is not None:
        result["first_round"] = hier_traffic(layer_bytes, depths, sizes, rounds, changed_depth=num_layers)
    return result


def flat_traffic(layer_bytes: int, num_layers: int, clients: int) -> dict[str, int]:
    """FedAvg-LoRA's round on the same devices: every device fetches and sends all ``L`` layers once.

    Returns:
        ``clients``, per-device ``download_bytes``/``upload_bytes`` (``beta L`` each), ``total_bytes`` for all
        devices and ``device_rounds`` (``clients``: one local-step run each).
    """
    one = layer_bytes * num_layers
    return {"clients": clients, "download_bytes": one, "upload_bytes": one, "total_bytes": 2 * one * clients,
            "device_rounds": clients}


def table_depths(num_layers: int, in_use: Sequence[int] = ()) -> list[int]:
    """The depths of the per-depth table: every one, or powers of two, ``L`` and those in use for a large model.

    All of ``1..L`` up to :data:`FULL_TABLE` layers, else the powers of two below ``L``, ``L`` and ``in_use``.
    """
    if num_layers <= FULL_TABLE:
        return list(range(1, num_layers + 1))
    powers = {2**i for i in range(num_layers.bit_length()) if 2**i < num_layers}
    return sorted(powers | {num_layers} | {d for d in in_use if 1 <= d <= num_layers})


def depth_rows(costs: DepthCosts, depths: Sequence[int]) -> list[dict[str, Any]]:
    """One row per depth: LoRA parameters, message bytes, FLOPs per token (and vs full depth), peak memory."""
    full = costs.flops_per_token[-1]
    return [{"depth": d, "lora_params": costs.message_bytes(d) // 4, "message_bytes": costs.message_bytes(d),
             "flops_per_token": costs.flops_per_token[d - 1], "flops_vs_full": costs.flops_per_token[d - 1] / full,
             "peak_memory_bytes": costs.memory(d)} for d in depths]


def parse_counts(text: str | None, flag: str) -> list[int] | None:
    """A flag's comma list of integers >= 1 (``None`` if not given).

    Raises:
        ValueError: not such a list, naming the flag and the value.
    """
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ValueError(f"{flag} {text!r} must be a comma-separated list of integers >= 1, e.g. {flag} 2,2.")
    return values


def resolve_groups(group_sizes: list[int] | None, groups: int | None, depths: list[int] | None,
                   intra_rounds: list[int] | None, clients: int, clients_given: bool
                   ) -> tuple[list[int], list[int] | None, list[int] | None]:
    """The command's explicit groups: sizes, depths and intra rounds, one per group (``None``: not given).

    The group count is ``--group-sizes``'s length, ``--groups``, or the length of a ``--depths`` or
    ``--intra-rounds`` list of more than one value; one group when only single values are given. Without
    ``--group-sizes`` the ``clients`` are split into balanced groups (the first ``clients mod M`` one larger).
    A single depth or intra-round count applies to every group.

    Raises:
        ValueError: the flags disagree on the group count, more groups than clients, or sizes that do not sum
            to ``--clients``; naming the flags and their values.
    """
    if groups is not None and groups < 1:
        raise ValueError(f"--groups must be >= 1, got {groups}.")
    counts = []
    if group_sizes is not None:
        counts.append((len(group_sizes), f"--group-sizes {','.join(map(str, group_sizes))}"))
    if groups is not None:
        counts.append((groups, f"--groups {groups}"))
    for flag, values in (("--depths", depths), ("--intra-rounds", intra_rounds)):
        if values is not None and len(values) > 1:
            counts.append((len(values), f"{flag} {','.join(map(str, values))}"))
    if len({n for n, _ in counts}) > 1:
        raise ValueError(f"the group counts disagree: {' vs '.join(f'{text} ({n} groups)' for n, text in counts)}; "
                         "give one value per group (or one value for every group).")
    num_groups = counts[0][0] if counts else 1
    if group_sizes is None:
        if num_groups > clients:
            flag = counts[0][1] if counts else "--groups 1"
            raise ValueError(f"{flag} asks for {num_groups} groups but --clients is {clients}: every group needs a "
                             f"device; lower the groups or raise --clients to at least {num_groups}.")
        base, extra = divmod(clients, num_groups)
        group_sizes = [base + 1 if g < extra else base for g in range(num_groups)]
    elif clients_given and sum(group_sizes) != clients:
        raise ValueError(f"--group-sizes {','.join(map(str, group_sizes))} sum to {sum(group_sizes)} devices but "
                         f"--clients is {clients}; drop --clients or make them agree.")

    def per_group(values: list[int] | None) -> list[int] | None:
        return None if values is None else values * num_groups if len(values) == 1 else values

    return group_sizes, per_group(depths), per_group(intra_rounds)


def check_depths(depths: Sequence[int], num_layers: int, flag: str, model: str) -> None:
    """Raise ``ValueError`` naming ``flag`` when a depth is outside ``[1, L]``."""
    wrong = [d for d in depths if not 1 <= d <= num_layers]
    if wrong:
        raise ValueError(f"{flag} {','.join(map(str, depths))}: depth {wrong[0]} is outside [1, {num_layers}], "
                         f"the decoder layers of {model}; use depths from 1 to {num_layers}.")


@dataclass(frozen=True)
class HierRequest:
    """What the command asks of a HierFedLoRA plan beyond the model.

    Explicit groups (``sizes``, consecutive device ids) with their ``depths`` and ``intra_rounds``, or a run's
    partition (``table``: the clients' key counts) grouped and scheduled by the algorithm's own settings; a
    ``fleet`` (device profiles) times them; ``local_steps`` is ``tau`` and ``accumulate`` the micro-batches of
    one optimiser step.
    """

    sizes: list[int] | None = None
    depths: list[int] | None = None
    intra_rounds: list[int] | None = None
    depths_flag: str = "--depths"
    table: Any = None
    num_clients: int | None = None
    seed: int = 0
    fleet: Any = None
    fleet_source: str | None = None
    local_steps: int = LOCAL_STEPS
    accumulate: int = 1
    clients_per_round: int | None = None
    config_mode: bool = False
    overridden: tuple[str, ...] = ()
    """The flags that replaced the config's algorithm settings (named in its errors)."""


def _timing(profiles: list[Any], costs: DepthCosts, depth: int, rounds: int, fleet: Any, local_steps: int
            ) -> dict[str, Any]:
    """``u_g(d)``, ``e_g(d)``, ``T_g = K u_g + e_g``, the slowest member's tier, the smallest memory and the fit."""
    u = intra_round_seconds(profiles, costs, depth, local_steps, fleet.latency_s)
    e = edge_seconds(costs, depth, fleet.edge_Bps, fleet.edge_latency_s)
    size, flops = costs.message_bytes(depth), local_steps * costs.step_flops(depth)
    slowest = max(profiles, key=lambda p: device_seconds(p, size, size, flops, fleet.latency_s))
    memory = min(p.memory_bytes for p in profiles)
    return {"u_seconds": u, "edge_seconds": e, "seconds": rounds * u + e, "slowest_tier": slowest.tier,
            "min_memory_bytes": memory, "fits_memory": costs.memory(depth) <= memory}


def fleet_times(fleet: Any, costs: DepthCosts, members: list[list[int]], depths: list[int], rounds: list[int],
                local_steps: int) -> list[dict[str, Any]]:
    """Each group's :func:`_timing` on the fleet's un-jittered profiles (``fleet`` holds one device per client)."""
    profiles = fleet.profiles()
    return [_timing([profiles[i] for i in group], costs, d, k, fleet, local_steps)
            for group, d, k in zip(members, depths, rounds, strict=True)]


def consecutive(sizes: Sequence[int]) -> list[list[int]]:
    """Groups of consecutive device ids with these sizes: ``[2, 2]`` -> ``[[0, 1], [2, 3]]``."""
    starts = [sum(sizes[:g]) for g in range(len(sizes))]
    return [list(range(start, start + n)) for start, n in zip(starts, sizes, strict=True)]


def budget(fleet: Any, costs: DepthCosts, members: list[list[int]], algorithm: Any, local_steps: int) -> float:
    """The round budget ``T*`` as :func:`~fedbiot_pl.hierarchy.schedule.configure` sets it on un-jittered profiles.

    ``budget_seconds``, or ``budget_factor`` x the slowest group's time at its shallowest feasible depth with
    ``base_intra_rounds``.
    """
    if algorithm.budget_seconds is not None:
        return float(algorithm.budget_seconds)
    profiles = fleet.profiles()
    needed = []
    for group in members:
        mine = [profiles[i] for i in group]
        shallowest = feasible_depths(mine, costs, algorithm.min_depth)[0]
        needed.append(algorithm.base_intra_rounds * intra_round_seconds(mine, costs, shallowest, local_steps,
                                                                        fleet.latency_s)
                      + edge_seconds(costs, shallowest, fleet.edge_Bps, fleet.edge_latency_s))
    return algorithm.budget_factor * max(needed)


def planned_schedule(algorithm: Any, costs: DepthCosts, request: HierRequest) -> dict[str, Any]:
    """A run's groups and their depth and intra rounds, chosen by ``algorithm`` (HierFedLoRA) as the run does.

    The algorithm is attached to stand-ins of the run's model (its layers), data (the clients and their
    ``request.table`` counts) and clients (the seed), and asked for round 0's groups on a
    :class:`~fedbiot_pl.hierarchy.simulation.SimulatedFleet` of ``request.fleet``: the grouping (greedy KL,
    random or by speed), the start-up schedule on the un-jittered profiles (what the run's ``algorithm.txt``
    states) and round 0's on that round's jittered profiles come from the algorithm's own code.

    Returns:
        ``members`` per group, ``startup`` and ``round0`` (per group ``depth``, ``intra_rounds``, ``seconds``),
        ``divergence`` (the grouping's KL figures and the random baseline; empty without key counts),
        ``group_table`` (the run's log table of the groups) and ``budget_seconds`` (``None`` without a fleet).

    Raises:
        ValueError: the settings cannot be grouped or scheduled (the algorithm's message).
    """
    from fedbiot_pl.hierarchy.simulation import SimulatedFleet

    n = int(request.num_clients)
    sim = None if request.fleet is None else SimulatedFleet(request.fleet, costs, request.local_steps)
    algorithm.attach(SimpleNamespace(num_layers=costs.num_layers),
                     SimpleNamespace(num_clients=n, partition_report=request.table), SimpleNamespace(seed=request.seed))
    round0 = algorithm.groups(0, list(range(n)), sim)
    members = [list(g) for g in algorithm.groups_]
    configs = [{"depth": g.depth, "intra_rounds": g.intra_rounds} for g in round0]
    startup = round0_cfg = None
    if sim is not None:
        chosen = algorithm.schedules()  # the run's own start-up and round-0 choices
        startup = [c.to_dict() for c in chosen["startup"]]
        round0_cfg = [c.to_dict() for c in chosen["rounds"][0]]
    return {"members": members, "startup": startup or [{**c, "seconds": None} for c in configs],
            "round0": round0_cfg, "divergence": dict(algorithm.divergence),
            "group_table": algorithm.group_table,
            "budget_seconds": None if sim is None else budget(request.fleet, costs, members, algorithm,
                                                                  request.local_steps)}
