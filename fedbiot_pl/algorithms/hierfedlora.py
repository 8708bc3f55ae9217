"""HierFedLoRA (arXiv 2503.21213): near-IID device groups, each with its own fine-tuning depth and frequency.

From the paper's abstract: devices are partitioned into near-IID groups; each group gets an
intra-group aggregation frequency and a fine-tuning depth (the LoRA layers trained, counted from the
output), chosen jointly. The rest is this toolkit's design (the paper's method sections could not be
read; see docs/hierfedlora.md):

* **grouping** (:func:`~fedbiot_pl.hierarchy.grouping.greedy_kl_groups`): equal-size groups whose
  category mix is close to the global one (size-weighted KL), a greedy pass and pairwise swaps, seeded
  by the run's seed; ``random`` and ``by_speed`` are the ablations;
* **depth and frequency** (:func:`~fedbiot_pl.hierarchy.schedule.configure`): per group, the deepest
  depth its members' memory holds and the round-time budget allows, then as many intra-group rounds as
  the slack allows (``priority``/``objective`` switch the order); fixed by hand with ``depth`` and
  ``intra_rounds``; recomputed every ``reconfigure_every`` rounds on that round's jittered profiles;
* **rounds** (:mod:`fedbiot_pl.federation.grouped_round`): intra-group FedAvg, then the cloud averages
  each layer over the groups that trained it.

The clients hold the full model with LoRA on every layer, as in FedAvg-LoRA; with one group, one
intra-group round, full depth and ``max_intra_rounds: 1`` (so that the clients' data order and seeds are
those of round ``t``) a round is FedAvg-LoRA's, bit for bit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

from fedbiot_pl.algorithms.base import RunSettings, register_algorithm
from fedbiot_pl.algorithms.fedavg import FedAvgLoRA
from fedbiot_pl.data.partition_report import format_group_table
from fedbiot_pl.federation.aggregation import layerwise_fedavg
from fedbiot_pl.federation.grouped_round import GroupRound

log = logging.getLogger(__name__)

GROUPINGS = ("greedy_kl", "random", "by_speed")
PRIORITIES = ("depth", "frequency")
OBJECTIVES = ("lexicographic", "product")
AUTO = "auto"


def _per_group(value: Any, num_groups: int) -> list[int] | None:
    """``auto`` -> ``None``; an int -> the same for every group; a list as given."""
    if value == AUTO or value is None:
        return None
    return [int(value)] * num_groups if isinstance(value, int) else [int(v) for v in value]


def _is_count(value: Any, low: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


@register_algorithm
class HierFedLoRA(FedAvgLoRA):
    """Groups of devices, each training the LoRA of its top ``depth`` layers for ``intra_rounds`` rounds a round.

    Args:
        num_groups: device groups (at most the clients).
        grouping: ``greedy_kl`` (near-IID by category counts: needs ``data.partition_key``), ``random``
            (seeded balanced shuffle) or ``by_speed`` (similar speeds together; needs ``federated.devices``).
        group_sizes: devices per group (default balanced: sizes differ by at most one).
        speed_weight: with ``greedy_kl``, how much similar speeds also pull devices together (0: labels only).
        swaps: refine the greedy grouping with pairwise swaps while the divergence drops.
        depth: ``auto`` (chosen per group under the budget), one depth for every group, or one per group.
        intra_rounds: ``auto``, one count for every group, or one per group (``K_g``).
        min_depth: the shallowest depth ``auto`` may choose.
        base_intra_rounds: the intra-group rounds ``auto`` starts from.
        max_intra_rounds: the most intra-group rounds ``auto`` may choose (also numbers the clients'
            data order: intra-group round ``k`` of round ``t`` is the clients' round ``t x max + k``).
        budget_seconds: a round's simulated time budget; ``null`` = ``budget_factor`` x the slowest group's
            time at its shallowest feasible depth and ``base_intra_rounds``.
        budget_factor: see ``budget_seconds``.
        priority: ``depth`` (deepest fitting depth first, then the most rounds) or ``frequency`` (the reverse).
        objective: ``lexicographic`` (as ``priority`` says) or ``product`` (the depth maximising depth x rounds).
        reconfigure_every: choose depths and rounds again every this many rounds (on that round's profiles).
    """

    name: ClassVar[str] = "hierfedlora"

    def __init__(self, num_groups: int = 4, grouping: str = "greedy_kl", group_sizes: list[int] | None = None,
                 speed_weight: float = 0.0, swaps: bool = True, depth: int | list[int] | str = AUTO,
                 intra_rounds: int | list[int] | str = AUTO, min_depth: int = 1, base_intra_rounds: int = 1,
                 max_intra_rounds: int = 4, budget_seconds: float | None = None, budget_factor: float = 1.0,
                 priority: str = "depth", objective: str = "lexicographic", reconfigure_every: int = 1) -> None:
        self.num_groups, self.grouping, self.group_sizes = num_groups, grouping, group_sizes
        self.speed_weight, self.swaps = speed_weight, swaps
        self.depth, self.intra_rounds, self.min_depth = depth, intra_rounds, min_depth
        self.base_intra_rounds, self.max_intra_rounds = base_intra_rounds, max_intra_rounds
        self.budget_seconds, self.budget_factor = budget_seconds, budget_factor
        self.priority, self.objective, self.reconfigure_every = priority, objective, reconfigure_every
        self.groups_: list[list[int]] | None = None  # the device groups, fixed at the first round
        self.divergence: dict[str, Any] = {}
        self._group_table = ""
        self._data: Any = None
        self._views: Any = None
        self._seed = 0
        self._num_layers: int | None = None
        self._configs: dict[int, list[Any]] = {}  # window start -> per-group GroupConfig
        self._startup: list[Any] | None = None
        self._last_round: dict[int, int] = {}  # device -> the last round it took part in
        self._changed: dict[int, int] = {}  # round -> the deepest layer count any group changed

    # ------------------------------------------------------------------ settings
    def setting_issues(self) -> list[str]:
        """Every bad setting of the algorithm itself, each naming the field and the fix."""
        issues = []
        for field in ("num_groups", "min_depth", "base_intra_rounds", "max_intra_rounds", "reconfigure_every"):
            if not _is_count(getattr(self, field)):
                issues.append(f"hierfedlora {field} must be an integer >= 1, got {getattr(self, field)!r}.")
        if self.grouping not in GROUPINGS:
            issues.append(f"hierfedlora grouping must be one of {list(GROUPINGS)}, got {self.grouping!r}.")
        if self.priority not in PRIORITIES:
            issues.append(f"hierfedlora priority must be one of {list(PRIORITIES)}, got {self.priority!r}.")
        if self.objective not in OBJECTIVES:
            issues.append(f"hierfedlora objective must be one of {list(OBJECTIVES)}, got {self.objective!r}.")
        for field in ("depth", "intra_rounds"):
            value = getattr(self, field)
            if value == AUTO or _is_count(value):
                continue
            if not (isinstance(value, list | tuple) and value and all(_is_count(v) for v in value)):
                issues.append(f"hierfedlora {field} must be 'auto', an integer >= 1 or a list of them (one per "
                              f"group), got {value!r}.")
            elif _is_count(self.num_groups) and len(value) != self.num_groups:
                issues.append(f"hierfedlora {field} lists {len(value)} values for num_groups={self.num_groups}; "
                              "give one per group.")
        if _is_count(self.base_intra_rounds) and _is_count(self.max_intra_rounds) and (
                self.base_intra_rounds > self.max_intra_rounds):
            issues.append(f"hierfedlora base_intra_rounds={self.base_intra_rounds} exceeds max_intra_rounds="
                          f"{self.max_intra_rounds}; lower it or raise max_intra_rounds.")
        fixed = _per_group(self.intra_rounds, 1) if _is_count(self.intra_rounds) else (
            self.intra_rounds if isinstance(self.intra_rounds, list | tuple) else [])
        if _is_count(self.max_intra_rounds) and any(_is_count(k) and k > self.max_intra_rounds for k in fixed):
            issues.append(f"hierfedlora intra_rounds {self.intra_rounds!r} exceeds max_intra_rounds="
                          f"{self.max_intra_rounds}; raise max_intra_rounds (it numbers the clients' data order).")
        if self.budget_seconds is not None and (isinstance(self.budget_seconds, bool) or not (
                isinstance(self.budget_seconds, int | float) and self.budget_seconds > 0)):
            issues.append(f"hierfedlora budget_seconds must be null or > 0, got {self.budget_seconds!r}.")
        if isinstance(self.budget_factor, bool) or not (isinstance(self.budget_factor, int | float)
                                                        and self.budget_factor > 0):
            issues.append(f"hierfedlora budget_factor must be > 0, got {self.budget_factor!r}.")
        if isinstance(self.speed_weight, bool) or not (isinstance(self.speed_weight, int | float)
                                                       and self.speed_weight >= 0):
            issues.append(f"hierfedlora speed_weight must be >= 0, got {self.speed_weight!r}.")
        fixed_depths = [self.depth] if _is_count(self.depth) else (
            list(self.depth) if isinstance(self.depth, list | tuple) else [])
        shallow = [d for d in fixed_depths if _is_count(d) and _is_count(self.min_depth) and d < self.min_depth]
        if shallow:
            issues.append(f"hierfedlora depth {self.depth!r} is below min_depth={self.min_depth}; raise the depth "
                          "or lower min_depth.")
        return issues

    def needs_fleet(self) -> bool:
        """Whether the settings choose something from device profiles (depth or rounds ``auto``, speed grouping)."""
        by_speed = self.grouping == "by_speed" or (self.grouping == "greedy_kl" and bool(self.speed_weight))
        return AUTO in (self.depth, self.intra_rounds) or by_speed

    def check(self, run: RunSettings) -> list[str]:
        """FedAvg-LoRA's checks, the settings, and those that need the clients, the layers or the fleet."""
        issues = super().check(run) + self.setting_issues()
        if run.num_clients is not None and _is_count(self.num_groups):
            from fedbiot_pl.hierarchy.grouping import grouping_issues

            issues += [f"hierfedlora: {issue}" for issue in grouping_issues(run.num_clients, self.num_groups,
                                                                           self.group_sizes)]
        if run.num_layers is not None:
            for field in ("depth", "min_depth"):
                value = getattr(self, field)
                values = [value] if _is_count(value) else list(value) if isinstance(value, list | tuple) else []
                too_deep = [v for v in values if _is_count(v) and v > run.num_layers]
                if too_deep:
                    issues.append(f"hierfedlora {field} {value!r} exceeds the model's {run.num_layers} decoder "
                                  f"layers; use at most {run.num_layers}.")
        if run.simulated is False and self.needs_fleet():
            issues.append("hierfedlora chooses depth and intra_rounds ('auto') and groups by speed from device "
                          "profiles: set federated.devices (e.g. default, a fleet YAML) or fix depth and "
                          "intra_rounds and use grouping greedy_kl or random with speed_weight 0.")
        return issues

    def resume_settings(self) -> dict[str, Any]:
        """What a resumed run must share: the groups (kept in the checkpoint) and the clients' data order.

        The schedule's other settings (budget, priority, ...) may change on a resume: they act from the next round.
        """
        prefix = "federated.algorithm.init_args."
        return {f"{prefix}{name}": getattr(self, name) for name in (
            "num_groups", "grouping", "group_sizes", "max_intra_rounds")}

    def data_issues(self, data: Any) -> list[str]:
        """``greedy_kl`` groups by the clients' category counts: the data's partition report must have them."""
        if self.grouping != "greedy_kl":
            return []
        table = getattr(data, "partition_report", None)
        if table is None or getattr(table, "key", None) is None:
            return ["hierfedlora grouping greedy_kl groups the clients by their category counts, but "
                    f"{type(data).__name__} has no partition report with a key: set data.partition_key (e.g. "
                    "category) or use grouping: random."]
        return []

    # ------------------------------------------------------------------ the round
    def attach(self, views: Any, data: Any, clients: Any) -> None:
        """Keep the views (the cloud's global LoRA), the data (its category counts) and the run's seed."""
        self._views, self._data, self._num_layers = views, data, views.num_layers
        self._seed = int(getattr(clients, "seed", 0))

    def groups(self, round_idx: int, clients: Sequence[int], fleet: Any) -> list[GroupRound]:
        """The round's groups: their sampled members, depth, intra-group rounds and first download."""
        self._ensure_groups(fleet)
        configs = self._configs_for(round_idx, fleet)
        sampled = set(clients)
        result = []
        for index, (members, config) in enumerate(zip(self.groups_, configs, strict=True)):
            taking_part = tuple(d for d in members if d in sampled)
            download = max([config.depth] + [self._changed_since(d, round_idx) for d in taking_part])
            result.append(GroupRound(index, taking_part, config.depth, config.intra_rounds, download,
                                     round_idx * self.max_intra_rounds))
        return result

    def round_done(self, round_idx: int, groups: Sequence[GroupRound]) -> None:
        """Remember which layers changed and who synced (the next round's downloads)."""
        self._changed[round_idx] = max((g.depth for g in groups if g.members), default=0)
        for group in groups:
            for device in group.members:
                self._last_round[device] = round_idx

    def aggregate(self, uploads: Sequence[dict[str, Any]], weights: Sequence[float]) -> dict[str, Any]:
        """The cloud's layer-wise FedAvg of the groups' states: each layer over the groups that trained it.

        A layer no group trained keeps its global value (the views hold the global LoRA here).
        """
        return layerwise_fedavg(self._views.lora_state("all"), uploads, weights)

    # ------------------------------------------------------------------ grouping and schedule
    def _ensure_groups(self, fleet: Any) -> None:
        if self.groups_ is not None:  # a checkpoint's groups (resumed): describe them again
            if not self._group_table:
                self._describe()
            return
        from fedbiot_pl.hierarchy import grouping

        n = int(self._data.num_clients)
        speeds = [p.flops_per_s for p in fleet.profiles(range(n))] if fleet is not None else None
        if self.grouping == "greedy_kl":
            counts = grouping.counts_from_table(getattr(self._data, "partition_report", None))
            self.groups_ = grouping.greedy_kl_groups(counts, self.num_groups, sizes=self.group_sizes, seed=self._seed,
                                                     swaps=self.swaps, speeds=speeds, speed_weight=self.speed_weight)
        elif self.grouping == "random":
            self.groups_ = grouping.random_groups(n, self.num_groups, self._seed, sizes=self.group_sizes)
        else:
            self.groups_ = grouping.by_speed_groups(speeds, self.num_groups, sizes=self.group_sizes)
        self._describe()

    def _describe(self) -> None:
        """The groups' divergence next to random grouping's (when the data has category counts)."""
        from fedbiot_pl.hierarchy import grouping

        table = getattr(self._data, "partition_report", None)
        if table is not None and getattr(table, "key", None) is not None:
            counts = grouping.counts_from_table(table)
            self.divergence = {**grouping.group_divergence(counts, self.groups_),
                               "random": grouping.random_baseline(counts, self.num_groups, seed=self._seed,
                                                                  sizes=self.group_sizes)}
            self._group_table = format_group_table(table, self.groups_, seed=self._seed)
            log.info("hierfedlora groups (%s):\n%s", self.grouping, self._group_table)

    def schedules(self) -> dict[str, Any]:
        """The choices made so far: ``startup`` (un-jittered profiles) and per window start its configs."""
        return {"startup": list(self._startup or []), "rounds": {start: list(c) for start, c in self._configs.items()}}

    @property
    def group_table(self) -> str:
        """The groups' text table (divergence next to random grouping's; empty without category counts)."""
        return self._group_table

    def report(self) -> str:
        """The groups (their divergence next to random grouping's) and the start-up depths and rounds."""
        lines = [f"hierfedlora: {len(self.groups_ or [])} groups ({self.grouping})"]
        if self._group_table:
            lines.append(self._group_table)
        for index, config in enumerate(self._startup or []):
            lines.append(f"group {index}: depth {config.depth}, intra-group rounds {config.intra_rounds}, "
                         f"{config.seconds:.6g} simulated s per round (start-up profiles, no jitter)")
        return "\n".join(lines)

    def _configs_for(self, round_idx: int, fleet: Any) -> list[Any]:
        from fedbiot_pl.hierarchy.schedule import GroupConfig, ScheduleError

        depths, rounds = _per_group(self.depth, len(self.groups_)), _per_group(self.intra_rounds, len(self.groups_))
        if fleet is None:  # both fixed (check() refused auto without a fleet)
            return [GroupConfig(d, k, 0.0) for d, k in zip(depths, rounds, strict=True)]
        if self._startup is None:  # on the profiles without jitter: an impossible setting fails before training
            try:
                self._startup = self._configure(fleet, None, depths, rounds)
            except ScheduleError as error:
                raise ScheduleError(f"hierfedlora (federated.algorithm.init_args, on federated.devices): "
                                    f"{error}") from None
        start = round_idx - round_idx % self.reconfigure_every
        if start not in self._configs:
            try:
                self._configs = {start: self._configure(fleet, start, depths, rounds)}
            except ScheduleError as error:
                log.warning("round %d: %s; the groups keep the start-up depths and rounds.", start, error)
                self._configs = {start: self._startup}
        return self._configs[start]

    def _configure(self, fleet: Any, round_idx: int | None, depths: list[int] | None,
                   rounds: list[int] | None) -> list[Any]:
        from fedbiot_pl.hierarchy.schedule import configure

        return configure(
            [fleet.profiles(members, round_idx) for members in self.groups_], fleet.costs,
            local_steps=fleet.local_steps, latency_s=fleet.fleet.latency_s, edge_Bps=fleet.fleet.edge_Bps,
            edge_latency_s=fleet.fleet.edge_latency_s, min_depth=self.min_depth,
            base_intra_rounds=self.base_intra_rounds, max_intra_rounds=self.max_intra_rounds,
            budget_seconds=self.budget_seconds, budget_factor=self.budget_factor, depths=depths, intra_rounds=rounds,
            priority=self.priority, objective=self.objective)

    def _changed_since(self, device: int, round_idx: int) -> int:
        """Layers (from the top) the cloud changed since ``device`` last synced: all of them if it never did.

        A device that took part in round ``r`` holds the global LoRA from before round ``r``'s aggregation,
        so the layers changed in rounds ``r .. t-1`` are new to it.
        """
        last = self._last_round.get(device)
        if last is None:
            return int(self._num_layers)
        return max((self._changed.get(r, 0) for r in range(last, round_idx)), default=0)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The groups and who synced when (the configs follow from the settings, the fleet and the round)."""
        return {"groups": self.groups_, "last_round": {str(k): v for k, v in self._last_round.items()},
                "changed": {str(k): v for k, v in self._changed.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (the checkpoint's groups are kept, not recomputed)."""
        self.groups_ = [list(g) for g in state["groups"]] if state.get("groups") is not None else None
        self._last_round = {int(k): int(v) for k, v in state.get("last_round", {}).items()}
        self._changed = {int(k): int(v) for k, v in state.get("changed", {}).items()}

    def __repr__(self) -> str:
        return (f"HierFedLoRA(num_groups={self.num_groups}, grouping={self.grouping!r}, depth={self.depth!r}, "
                f"intra_rounds={self.intra_rounds!r})")

