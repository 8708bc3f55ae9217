"""Choosing each group's fine-tuning depth ``d_g`` and intra-group rounds ``K_g`` under a round-time budget.

One intra-group round of group ``g`` at depth ``d`` takes as long as its slowest member::

    u_g(d) = max_i [latency + beta(d) / down_i + tau * step_flops(d) / speed_i + beta(d) / up_i]
    e_g(d) = 2 (edge_latency + beta(d) / edge_Bps)                  (the group's edge <-> cloud exchange)
    T_g(d, K) = K u_g(d) + e_g(d)

with ``beta(d)`` the bytes of ``d`` layers' LoRA. A depth is feasible for a group if every member's memory holds
its estimated peak (``D_g``). The budget ``T*`` is ``budget_seconds``, or ``budget_factor`` times the time the
slowest group needs at its shallowest feasible depth with ``base_intra_rounds``. :func:`choose` then picks, by
default, the deepest depth that fits with ``base_intra_rounds`` and fills the slack with more intra-group
rounds (see its docstring for ``priority="frequency"`` and ``objective="product"``). All times are simulated
(:mod:`fedbiot_pl.hierarchy.clock`), never measured.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from fedbiot_pl.errors import ConfigError
from fedbiot_pl.hierarchy.clock import device_seconds, edge_cloud_seconds
from fedbiot_pl.hierarchy.costs import DepthCosts
from fedbiot_pl.hierarchy.fleet import DeviceProfile

PRIORITIES = ("depth", "frequency")
"""``depth``: the deepest depth first, then more intra-group rounds; ``frequency``: the other way round."""

OBJECTIVES = ("lexicographic", "product")
"""``lexicographic``: follow ``priority``; ``product``: maximise ``K * d``."""

GIB = 2**30


class ScheduleError(ConfigError):
    """No depth and intra-group round count meets the memory and time constraints; the message names the fix."""


@dataclass(frozen=True)
class GroupConfig:
    """One group's schedule for a global round."""

    depth: int
    """``d_g``: the group trains the LoRA of its top ``depth`` decoder layers."""
    intra_rounds: int
    """``K_g``: intra-group aggregations per global round."""
    seconds: float
    """``T_g(d_g, K_g)``: the group's simulated seconds per global round."""

    def to_dict(self) -> dict[str, Any]:
        """The config as plain values (JSON-able)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any]) -> GroupConfig:
        """The config :meth:`to_dict` wrote."""
        return cls(depth=int(mapping["depth"]), intra_rounds=int(mapping["intra_rounds"]),
                   seconds=float(mapping["seconds"]))


def intra_round_seconds(profiles: Sequence[DeviceProfile], costs: DepthCosts, depth: int, local_steps: int,
                        latency_s: float, download_depth: int | None = None) -> float:
    """``u_g(d)``: simulated seconds of one intra-group round, the slowest member's download, steps and upload.

    Args:
        profiles: The group's members' profiles.
        costs: The model's per-depth costs.
        depth: ``d``, the depth trained and uploaded.
        local_steps: ``tau``, optimiser steps per intra-group round.
        latency_s: The latency of one device<->edge exchange.
        download_depth: The depth downloaded (default ``depth``), e.g. more layers at a global round's start.

    Returns:
        ``max_i [latency_s + beta(download_depth) / down_i + tau * step_flops(d) / speed_i + beta(d) / up_i]``.

    Raises:
        ValueError: The group is empty, or a depth is out of range.
    """
    if not profiles:
        raise ValueError("A group needs at least one device to time an intra-group round.")
    down = costs.message_bytes(depth if download_depth is None else download_depth)
    up, flops = costs.message_bytes(depth), local_steps * costs.step_flops(depth)
    return max(device_seconds(p, down, up, flops, latency_s) for p in profiles)


def edge_seconds(costs: DepthCosts, depth: int, edge_Bps: float, edge_latency_s: float) -> float:
    """``e_g(d) = 2 (edge_latency_s + beta(d) / edge_Bps)``: the group's LoRA up to the cloud and back."""
    size = costs.message_bytes(depth)
    return edge_cloud_seconds(size, size, edge_Bps, edge_latency_s)


def feasible_depths(profiles: Sequence[DeviceProfile], costs: DepthCosts, min_depth: int = 1) -> list[int]:
    """``D_g``: the depths in ``[min_depth, L]`` whose estimated peak memory every member can hold.

    Raises:
        ScheduleError: ``min_depth`` is not in ``[1, L]``.
    """
    if not 1 <= min_depth <= costs.num_layers:
        raise ScheduleError(f"min_depth must be in [1, {costs.num_layers}] (the model's decoder layers), "
                            f"got {min_depth}.")
    cap = min(p.memory_bytes for p in profiles)
    return [d for d in range(min_depth, costs.num_layers + 1) if costs.memory(d) <= cap]


def _round_time(u: Callable[[int], float], e: Callable[[int], float], depth: int, rounds: int) -> float:
    return rounds * u(depth) + e(depth)


def _most_rounds(u: Callable[[int], float], e: Callable[[int], float], depth: int, budget: float, base: int,
                 most: int) -> int:
    """The largest ``K`` in ``[base, most]`` with ``T(depth, K) <= budget``; ``base`` if even that does not fit."""
    rounds = base
    while rounds < most and _round_time(u, e, depth, rounds + 1) <= budget:
        rounds += 1
    return rounds


def _deepest(u: Callable[[int], float], e: Callable[[int], float], depths: Sequence[int], budget: float,
             rounds: int) -> int | None:
    """The deepest ``d`` in ``depths`` with ``T(d, rounds) <= budget``, None if none fits."""
    return max((d for d in depths if _round_time(u, e, d, rounds) <= budget), default=None)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _solver_issues(base_intra_rounds: Any, max_intra_rounds: Any, priority: Any, objective: Any) -> list[str]:
    issues = []
    if not _is_int(base_intra_rounds) or base_intra_rounds < 1:
        issues.append(f"base_intra_rounds must be an int >= 1, got {base_intra_rounds!r}.")
    elif not _is_int(max_intra_rounds) or max_intra_rounds < base_intra_rounds:
        issues.append(f"max_intra_rounds must be an int >= base_intra_rounds ({base_intra_rounds}), "
                      f"got {max_intra_rounds!r}.")
    if priority not in PRIORITIES:
        issues.append(f"priority must be one of {', '.join(PRIORITIES)}, got {priority!r}.")
    if objective not in OBJECTIVES:
        issues.append(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}.")
    return issues


def _raise(issues: list[str], what: str) -> None:
    if issues:
        raise ScheduleError(f"{what}:\n  " + "\n  ".join(issues))


def _span(depths: Sequence[int]) -> str:
    values = sorted(depths)
    if len(values) == 1:
        return f"[{values[0]}]"
    if values == list(range(values[0], values[-1] + 1)):
        return f"[{values[0]}, {values[-1]}]"
    return "{" + ", ".join(map(str, values)) + "}"


def _too_tight(u: Callable[[int], float], e: Callable[[int], float], depths: Sequence[int], budget: float,
               base: int) -> str:
    shortest, depth = min((_round_time(u, e, d, base), d) for d in depths)
    return (f"no depth in {_span(depths)} fits the round budget of {budget:.6g} s with {base} intra-group round(s): "
            f"the group's shortest round takes {shortest:.6g} s (depth {depth}); raise budget_seconds or "
            f"budget_factor, or lower min_depth or base_intra_rounds.")


def choose(u: Callable[[int], float], e: Callable[[int], float], depths: Sequence[int], budget: float,
           base_intra_rounds: int = 1, max_intra_rounds: int = 4, priority: str = "depth",
           objective: str = "lexicographic") -> tuple[int, int]:
    """One group's ``(d, K)`` with ``T(d, K) = K u(d) + e(d) <= budget``.

    * ``priority="depth"`` (default): ``K = base``; ``d`` = the deepest depth that fits; then raise ``K`` while
      ``K < max`` and ``T(d, K + 1)`` fits.
    * ``priority="frequency"``: raise ``K`` from ``base`` as far as the budget allows at the shallowest depth,
      then take the deepest ``d`` that fits with that ``K``.
    * ``objective="product"`` (``priority`` is then unused): the ``d`` maximising ``K(d) * d``, with ``K(d)`` the
      largest ``K`` in ``[base, max]`` that fits (``min(max, floor((budget - e(d)) / u(d)))``); only depths with
      ``K(d) >= base`` count; ties go to the larger ``K``, then the larger ``d``.

    Args:
        u: Seconds of one intra-group round at depth ``d`` (non-decreasing in ``d`` for the lexicographic rules).
        e: Seconds of the edge<->cloud exchange at depth ``d``.
        depths: The feasible depths ``D_g`` (not empty).
        budget: ``T*`` in seconds.
        base_intra_rounds: ``K_base`` (>= 1).
        max_intra_rounds: ``K_max`` (>= ``K_base``).
        priority: ``depth`` or ``frequency``.
        objective: ``lexicographic`` or ``product``.

    Returns:
        ``(d, K)``.

    Raises:
        ScheduleError: A setting is invalid, or no depth fits the budget even with ``base_intra_rounds`` (naming
            the group's shortest round and the fix).
    """
    issues = _solver_issues(base_intra_rounds, max_intra_rounds, priority, objective)
    if not depths:
        issues.append("depths must not be empty (no depth is feasible).")
    _raise(issues, "Invalid schedule settings")
    base, most, options = base_intra_rounds, max_intra_rounds, sorted(set(depths))
    if objective == "product":
        scored = [(k * d, k, d) for d in options if _round_time(u, e, d, base) <= budget
                  for k in (_most_rounds(u, e, d, budget, base, most),)]
        if scored:
            _, rounds, depth = max(scored)
            return depth, rounds
    elif priority == "depth":
        depth = _deepest(u, e, options, budget, base)
        if depth is not None:
            return depth, _most_rounds(u, e, depth, budget, base, most)
    elif _round_time(u, e, options[0], base) <= budget:
        rounds = _most_rounds(u, e, options[0], budget, base, most)
        depth = _deepest(u, e, options, budget, rounds)
        assert depth is not None  # options[0] fits with `rounds`
        return depth, rounds
    raise ScheduleError(f"Cannot schedule the group: {_too_tight(u, e, options, budget, base)}")


def _per_group(name: str, values: Sequence[Any] | None, groups: int, low: int, high: int | None) -> list[str]:
    if values is None:
        return []
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != groups:
        return [f"{name} must list one value per group ({groups}), each an int or None (choose it), got {values!r}."]
    bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
    return [f"{name}[{g}] (group {g}) must be an int {bound} or None, got {v!r}." for g, v in enumerate(values)
            if v is not None and (not _is_int(v) or v < low or (high is not None and v > high))]


def _settings_issues(groups: list[list[DeviceProfile]], costs: DepthCosts, settings: dict[str, Any]) -> list[str]:
    issues = [] if groups else ["group_profiles must list at least one group."]
    issues += [f"group {g} has no devices." for g, members in enumerate(groups) if not members]
    if not _is_int(settings["local_steps"]) or settings["local_steps"] < 1:
        issues.append(f"local_steps must be an int >= 1, got {settings['local_steps']!r}.")
    for name in ("latency_s", "edge_latency_s"):
        if not _is_real(settings[name]) or settings[name] < 0:
            issues.append(f"{name} must be a finite number >= 0, got {settings[name]!r}.")
    for name in ("edge_Bps", "budget_factor") + (("budget_seconds",) if settings["budget_seconds"] is not None else ()):
        if not _is_real(settings[name]) or settings[name] <= 0:
            issues.append(f"{name} must be a finite number > 0, got {settings[name]!r}.")
    min_depth, layers = settings["min_depth"], costs.num_layers
    if not _is_int(min_depth) or not 1 <= min_depth <= layers:
        issues.append(f"min_depth must be an int in [1, {layers}] (the model's decoder layers), got {min_depth!r}.")
    issues += _solver_issues(settings["base_intra_rounds"], settings["max_intra_rounds"], settings["priority"],
                             settings["objective"])
    issues += _per_group("depths", settings["depths"], len(groups), 1, layers)
    issues += _per_group("intra_rounds", settings["intra_rounds"], len(groups), 1, None)
    return issues


def _memory_issue(members: Sequence[DeviceProfile], costs: DepthCosts, depth: int) -> str:
    weakest = min(members, key=lambda p: p.memory_bytes)
    tier = f" ({weakest.tier})" if weakest.tier else ""
    return (f"its smallest member{tier} has {_size(weakest.memory_bytes)} but depth {depth} needs an estimated "
            f"{_size(costs.memory(depth))}; devices whose memory cannot hold a depth never get it")


def _size(num_bytes: float) -> str:
    """``25.00 GiB``, or ``10.68 MiB`` below a GiB (the small models' fleets)."""
    return f"{num_bytes / GIB:.2f} GiB" if num_bytes >= GIB else f"{num_bytes / 2**20:.2f} MiB"


def _depth_issues(groups: list[list[DeviceProfile]], costs: DepthCosts, feasible: list[list[int]], min_depth: int,
                  fixed: list[int | None]) -> list[str]:
    issues = []
    for g, (members, depths) in enumerate(zip(groups, feasible, strict=True)):
        if not depths:
            issues.append(f"group {g}: no depth in [{min_depth}, {costs.num_layers}] fits in memory: "
                          f"{_memory_issue(members, costs, min_depth)}. Lower min_depth, regroup the device, or "
                          "shrink the micro-batch or model.")
        elif fixed[g] is not None and fixed[g] not in depths:
            why = (f"it is below min_depth {min_depth}" if fixed[g] < min_depth
                   else _memory_issue(members, costs, fixed[g]))
            issues.append(f"group {g}: the fixed depth {fixed[g]} is not feasible: {why}. Feasible depths: "
                          f"{_span(depths)}.")
    return issues


def _memo(function: Callable[[int], float]) -> Callable[[int], float]:
    cache: dict[int, float] = {}

    def cached(depth: int) -> float:
        if depth not in cache:
            cache[depth] = function(depth)
        return cache[depth]

    return cached


def configure(group_profiles: Sequence[Sequence[DeviceProfile]], costs: DepthCosts, *, local_steps: int,
              latency_s: float, edge_Bps: float, edge_latency_s: float, min_depth: int = 1,
              base_intra_rounds: int = 1, max_intra_rounds: int = 4, budget_seconds: float | None = None,
              budget_factor: float = 1.0, depths: Sequence[int | None] | None = None,
              intra_rounds: Sequence[int | None] | None = None, priority: str = "depth",
              objective: str = "lexicographic") -> list[GroupConfig]:
    """Every group's :class:`GroupConfig` for one global round.

    ``D_g`` = :func:`feasible_depths`. The budget ``T* = budget_seconds``, or ``budget_factor * max_g T_g(min D_g,
    base_intra_rounds)``. A group with neither a fixed depth nor fixed intra rounds gets :func:`choose`'s pair. A
    fixed depth (``depths[g]``, which must be in ``D_g``) gets the most intra rounds in ``[base, max]`` that fit,
    at least ``base``; fixed intra rounds (``intra_rounds[g]``) get the deepest depth in ``D_g`` that fits, at
    least ``min D_g``; both fixed are taken as they are, with no budget check.

    Args:
        group_profiles: Each group's members' profiles (this round's, possibly jittered).
        costs: The model's per-depth costs.
        local_steps: ``tau``, optimiser steps per intra-group round.
        latency_s: The latency of one device<->edge exchange.
        edge_Bps: The edge<->cloud bandwidth in bytes per second.
        edge_latency_s: The latency of one edge<->cloud transfer.
        min_depth: ``d_min``, the shallowest depth allowed.
        base_intra_rounds: ``K_base``.
        max_intra_rounds: ``K_max``.
        budget_seconds: A fixed ``T*`` (None: from ``budget_factor``).
        budget_factor: ``rho`` in ``T* = rho * max_g T_g(min D_g, K_base)``.
        depths: Fixed depths per group (None entries, or None: choose).
        intra_rounds: Fixed intra-group rounds per group (None entries, or None: choose).
        priority: See :func:`choose`.
        objective: See :func:`choose`.

    Returns:
        One :class:`GroupConfig` per group, in order; ``seconds = T_g(d_g, K_g)``.

    Raises:
        ScheduleError: Listing every invalid setting; or every group that no depth fits in memory and every
            infeasible fixed depth; or every choosing group that the budget does not fit at its shallowest depth
            with ``base_intra_rounds``.
    """
    groups = [list(members) for members in group_profiles]
    settings = {"local_steps": local_steps, "latency_s": latency_s, "edge_Bps": edge_Bps,
                "edge_latency_s": edge_latency_s, "min_depth": min_depth, "base_intra_rounds": base_intra_rounds,
                "max_intra_rounds": max_intra_rounds, "budget_seconds": budget_seconds,
                "budget_factor": budget_factor, "depths": depths, "intra_rounds": intra_rounds, "priority": priority,
                "objective": objective}
    _raise(_settings_issues(groups, costs, settings), "Invalid schedule settings")
    fixed_depths = list(depths) if depths is not None else [None] * len(groups)
    fixed_rounds = list(intra_rounds) if intra_rounds is not None else [None] * len(groups)
    feasible = [feasible_depths(members, costs, min_depth) for members in groups]
    _raise(_depth_issues(groups, costs, feasible, min_depth, fixed_depths), "No feasible depth")

    u = [_memo(lambda d, m=members: intra_round_seconds(m, costs, d, local_steps, latency_s)) for members in groups]
    e = _memo(lambda d: edge_seconds(costs, d, edge_Bps, edge_latency_s))
    base, most = base_intra_rounds, max_intra_rounds
    needed = [_round_time(u[g], e, feasible[g][0], base) for g in range(len(groups))]
    budget = budget_seconds if budget_seconds is not None else budget_factor * max(needed)
    source = ("budget_seconds" if budget_seconds is not None
              else f"budget_factor {budget_factor} x {max(needed):.6g} s, the slowest group's shortest round")
    choosing = [g for g in range(len(groups)) if fixed_depths[g] is None and fixed_rounds[g] is None]
    _raise([f"group {g} needs {needed[g]:.6g} s at its shallowest feasible depth {feasible[g][0]} with "
            f"base_intra_rounds={base}; raise budget_seconds (every group fits from {max(needed):.6g} s) or "
            "budget_factor, or lower min_depth or base_intra_rounds." for g in choosing if needed[g] > budget],
           f"The round budget of {budget:.6g} s ({source}) is too short")

    configs = []
    for g in range(len(groups)):
        depth, rounds = fixed_depths[g], fixed_rounds[g]
        if depth is None and rounds is None:
            depth, rounds = choose(u[g], e, feasible[g], budget, base, most, priority, objective)
        elif rounds is None:
            rounds = _most_rounds(u[g], e, depth, budget, base, most)
        elif depth is None:
            depth = _deepest(u[g], e, feasible[g], budget, rounds) or feasible[g][0]
        configs.append(GroupConfig(depth=depth, intra_rounds=rounds, seconds=_round_time(u[g], e, depth, rounds)))
    return configs


def round_seconds(configs: Sequence[GroupConfig]) -> float:
    """A synchronous global round's simulated seconds: the slowest group's ``T_g``."""
    return max(c.seconds for c in configs)
