"""Partition devices into near-IID groups by their per-label example counts (HierFedLoRA, spec section 1.4).

Device ``i`` holds ``counts[i, c]`` examples of label (key value) ``c``. A grouping is scored by the
size-weighted KL divergence of each group's smoothed label distribution from the whole fleet's:

    J = sum_g (n_g / n) * KL(p~_g || p~),    p~ = (h + eps) / (n + C * eps),  eps = 1e-3

:func:`greedy_kl_groups` fills one group at a time with the device that keeps the group closest to the
fleet (Astraea-like), then improves the result with J-reducing pairwise swaps. :func:`random_groups`
and :func:`by_speed_groups` are the baselines. Pure numpy; device ids are the row indices ``0..N-1``,
and every grouping is returned with each group sorted and the groups ordered by their lowest member (with
given sizes: in the sizes' order; by speed: the slowest group first).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fedbiot_pl.errors import ConfigError

if TYPE_CHECKING:
    from fedbiot_pl.data.partition_report import PartitionTable

__all__ = [
    "EPS",
    "by_speed_groups",
    "counts_from_table",
    "format_group_report",
    "greedy_kl_groups",
    "group_divergence",
    "group_sizes",
    "grouping_issues",
    "kl",
    "random_baseline",
    "random_groups",
    "smoothed",
]

EPS = 1e-3
"""Additive smoothing per label, so that KL stays finite when a group lacks a label."""

_TIE = 1e-12
"""Greedy scores within this of the best count as tied; a swap must lower J by more than this."""

_MAX_LISTED = 5
"""At most this many bad entries are named in one message."""


def _listed(items: Sequence[str]) -> str:
    """Join up to ``_MAX_LISTED`` items with commas, then ``and N more``."""
    shown = ", ".join(items[:_MAX_LISTED])
    return shown if len(items) <= _MAX_LISTED else f"{shown} and {len(items) - _MAX_LISTED} more"


def _is_are(items: Sequence[str]) -> str:
    """``is`` for one item, ``are`` for several."""
    return "is" if len(items) == 1 else "are"


def _is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (Python or numpy), not a bool."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _number(value: float) -> int | float:
    """A plain Python int when ``value`` is integral, else a plain float (JSON-able either way)."""
    value = float(value)
    return int(value) if value.is_integer() else value


def smoothed(counts: Any, eps: float = EPS) -> np.ndarray:
    """Additively smoothed distribution(s) ``(h + eps) / (n + C * eps)``.

    A histogram with no examples and ``eps == 0`` gives the uniform distribution, the limit of the
    smoothed one as ``eps -> 0``.

    Args:
        counts: A ``(C,)`` histogram, or ``(N, C)`` histograms (one per row).
        eps: The pseudo-count added to every label (>= 0).

    Returns:
        Float array of the same shape; each histogram (row) sums to 1.

    Raises:
        ConfigError: ``counts`` is not 1-D or 2-D with at least one label, or ``eps`` is negative.
    """
    h = np.asarray(counts, dtype=float)
    if h.ndim not in (1, 2) or h.shape[-1] == 0:
        raise ConfigError(f"counts of shape {h.shape} are not a (C,) or (N, C) histogram; pass per-label counts")
    if not eps >= 0:
        raise ConfigError(f"eps={eps} is negative; use a pseudo-count >= 0 such as {EPS}")
    num_labels = h.shape[-1]
    totals = h.sum(axis=-1, keepdims=True) + num_labels * eps
    empty = totals == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        p = (h + eps) / totals
    return np.where(empty, 1.0 / num_labels, p)


def _kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p_r || q) along the last axis; terms with ``p == 0`` are 0, ``p > 0 = q`` gives ``inf``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0) / q), 0.0)
    return terms.sum(axis=-1)


def kl(p: Any, q: Any) -> float:
    """Kullback-Leibler divergence ``sum_c p_c ln(p_c / q_c)`` in nats.

    Args:
        p: A distribution (1-D); labels with ``p_c == 0`` contribute 0.
        q: A distribution of the same length (``inf`` results where ``q_c == 0 < p_c``).

    Returns:
        The divergence as a Python float.

    Raises:
        ConfigError: ``p`` and ``q`` are not 1-D of the same length.
    """
    p_arr, q_arr = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    if p_arr.ndim != 1 or p_arr.shape != q_arr.shape:
        raise ConfigError(f"kl needs two 1-D distributions of equal length, got shapes {p_arr.shape} and {q_arr.shape}")
    return float(_kl_rows(p_arr, q_arr))


def grouping_issues(num_devices: int, num_groups: int, sizes: Sequence[int] | None = None) -> list[str]:
    """Every problem with a request to split ``num_devices`` devices into ``num_groups`` groups.

    Args:
        num_devices: The number of devices N.
        num_groups: The number of groups G.
        sizes: Optional explicit group sizes (one per group, each >= 1, summing to N).

    Returns:
        One message per problem, each naming the value and the fix; empty when the request is valid.
    """
    issues = []
    if not _is_int(num_devices) or num_devices < 1:
        issues.append(f"num_devices={num_devices!r} is not a positive integer; give at least one device")
    if not _is_int(num_groups) or num_groups < 1:
        issues.append(f"num_groups={num_groups!r} is not a positive integer; use num_groups >= 1")
    elif _is_int(num_devices) and num_groups > num_devices >= 1:
        issues.append(f"num_groups={num_groups} exceeds the {num_devices} devices; "
                      f"lower num_groups to at most {num_devices}")
    if sizes is None:
        return issues
    sizes = list(sizes)
    if _is_int(num_groups) and num_groups >= 1 and len(sizes) != num_groups:
        issues.append(f"sizes has {len(sizes)} entries but num_groups={num_groups}; give one size per group")
    bad = [f"sizes[{index}]={size!r}" for index, size in enumerate(sizes) if not _is_int(size) or size < 1]
    if bad:
        issues.append(f"{_listed(bad)} {_is_are(bad)} not a positive integer; every group needs at least one device")
    elif _is_int(num_devices) and sum(sizes) != num_devices:
        issues.append(f"sizes sum to {sum(sizes)} but there are {num_devices} devices; make them sum to {num_devices}")
    return issues


def group_sizes(num_devices: int, num_groups: int, sizes: Sequence[int] | None = None) -> list[int]:
    """The number of devices per group: balanced (the first ``N mod G`` groups get one more), or ``sizes``.

    Args:
        num_devices: The number of devices N.
        num_groups: The number of groups G.
        sizes: Optional explicit sizes, validated and returned as given.

    Returns:
        G positive ints summing to N.

    Raises:
        ConfigError: Every problem :func:`grouping_issues` finds, in one message.
    """
    issues = grouping_issues(num_devices, num_groups, sizes)
    if issues:
        raise ConfigError("; ".join(issues))
    if sizes is not None:
        return [int(size) for size in sizes]
    base, extra = divmod(int(num_devices), int(num_groups))
    return [base + 1 if group < extra else base for group in range(int(num_groups))]


def _counts_matrix(counts: Any) -> np.ndarray:
    """``counts`` as a float ``(N, C)`` array, checked: finite, non-negative, some examples in total."""
    try:
        h = np.asarray(counts, dtype=float)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"counts must be an (N, C) array of numbers, one row per device; got {error}") from error
    if h.ndim != 2 or h.shape[0] == 0 or h.shape[1] == 0:
        raise ConfigError(f"counts of shape {h.shape} are not an (N, C) array with N devices and C >= 1 labels; "
                          "pass one row of per-label counts per device")
    issues = []
    bad = [f"counts[{row}, {col}]={h[row, col]}" for row, col in np.argwhere(~np.isfinite(h) | (h < 0))]
    if bad:
        issues.append(f"{_listed(bad)} {_is_are(bad)} not a finite count >= 0; fix those entries")
    elif h.sum() <= 0:
        issues.append("counts are all zero; the devices need at least one example in total")
    if issues:
        raise ConfigError("; ".join(issues))
    return h


def _checked_groups(groups: Sequence[Sequence[int]], num_devices: int) -> list[list[int]]:
    """``groups`` as lists of ints, checked to be a partition of ``0..num_devices-1`` into non-empty groups."""
    issues = []
    flat = [member for group in groups for member in group]
    if len(groups) == 0 or any(len(group) == 0 for group in groups):
        issues.append("groups must be a non-empty list of non-empty groups; drop the empty groups")
    wrong = [repr(member) for member in flat if not _is_int(member) or not 0 <= member < num_devices]
    if wrong:
        issues.append(f"device ids {_listed(wrong)} are not in 0..{num_devices - 1}; use row indices of counts")
    valid = [int(member) for member in flat if _is_int(member) and 0 <= member < num_devices]
    seen: set[int] = set()
    twice = sorted({member for member in valid if member in seen or seen.add(member)})
    if twice:
        issues.append(f"devices {_listed([str(m) for m in twice])} are in more than one group; put each in one group")
    missing = sorted(set(range(num_devices)) - seen)
    if missing:
        issues.append(f"devices {_listed([str(m) for m in missing])} are in no group; assign every device")
    if issues:
        raise ConfigError("; ".join(issues))
    return [[int(member) for member in group] for group in groups]


def _ordered(groups: Sequence[Sequence[int]], keep: bool = False) -> list[list[int]]:
    """Each group sorted ascending; the groups sorted by their lowest member (``keep``: left in their order).

    Groups keep their order when their sizes were given (group ``g`` has ``sizes[g]`` devices, so per-group
    settings listed in the same order apply to it) and for the speed grouping (slowest group first).
    """
    inner = [sorted(int(member) for member in group) for group in groups]
    return inner if keep else sorted(inner, key=lambda group: group[0])


def group_divergence(counts: Any, groups: Sequence[Sequence[int]], eps: float = EPS) -> dict[str, Any]:
    """How far each group's label distribution is from the whole fleet's.

    Args:
        counts: ``(N, C)`` examples per device and label.
        groups: A partition of the device ids ``0..N-1`` into non-empty groups.
        eps: The smoothing pseudo-count for the KL terms (0: unsmoothed).

    Returns:
        ``{"divergence": J, "kl": [...], "tv": [...], "max_kl": ..., "sizes": [...], "examples": [...]}``:
        J = sum_g (n_g / n) KL(p~_g || p~); per group the smoothed KL, the total variation
        ``0.5 * ||p_g - p||_1`` of the unsmoothed distributions (a group without examples counts as
        uniform), the number of devices and of examples. Plain Python numbers.

    Raises:
        ConfigError: Bad counts, or groups that are not a partition of the devices.
    """
    h = _counts_matrix(counts)
    checked = _checked_groups(groups, h.shape[0])
    sums = np.stack([h[group].sum(axis=0) for group in checked])
    examples = sums.sum(axis=1)
    total = h.sum(axis=0)
    kls = _kl_rows(smoothed(sums, eps), smoothed(total, eps))
    tvs = 0.5 * np.abs(smoothed(sums, 0.0) - smoothed(total, 0.0)).sum(axis=1)
    return {
        "divergence": float(np.dot(examples / total.sum(), kls)),
        "kl": [float(value) for value in kls],
        "tv": [float(value) for value in tvs],
        "max_kl": float(kls.max()),
        "sizes": [len(group) for group in checked],
        "examples": [_number(value) for value in examples],
    }


def _log_speeds(speeds: Any, num_devices: int) -> np.ndarray:
    """``log(speeds)``, checked to be ``num_devices`` finite positive numbers."""
    s = np.asarray(speeds, dtype=float)
    if s.shape != (num_devices,):
        raise ConfigError(f"speeds have shape {s.shape} but there are {num_devices} devices; give one speed each")
    bad = [f"speeds[{index}]={s[index]}" for index in np.flatnonzero(~np.isfinite(s) | (s <= 0))]
    if bad:
        raise ConfigError(f"{_listed(bad)} {_is_are(bad)} not a finite speed > 0; fix those entries")
    return np.log(s)


def _weighted_kl(sums: np.ndarray, p: np.ndarray, total: float) -> np.ndarray:
    """``(n_g / n) * KL(smoothed(sums_g) || p)`` along the last axis: a group's term of J."""
    return sums.sum(axis=-1) / total * _kl_rows(smoothed(sums.reshape(-1, sums.shape[-1])), p).reshape(
        sums.shape[:-1])


def _best_swaps(h: np.ndarray, groups: list[list[int]], p: np.ndarray, max_passes: int,
                log_speed: np.ndarray | None = None) -> list[list[int]]:
    """Apply the single best J-reducing swap between two groups, repeatedly, for at most ``max_passes``.

    With ``log_speed`` only devices of the same speed swap, so the swaps keep the groups' speed mix.
    """
    total = float(h.sum())
    sums = [h[group].sum(axis=0) for group in groups]
    terms = [float(_weighted_kl(s, p, total)) for s in sums]
    for _ in range(max_passes):
        best: tuple[float, int, int, int, int] | None = None
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                # moved[i, j]: what group a gains (and b loses) when its i-th member swaps with b's j-th.
                moved = h[groups[b]][None, :, :] - h[groups[a]][:, None, :]
                delta = (_weighted_kl(sums[a] + moved, p, total) + _weighted_kl(sums[b] - moved, p, total)
                         - terms[a] - terms[b])
                if log_speed is not None:
                    same = np.abs(log_speed[groups[a]][:, None] - log_speed[groups[b]][None, :]) <= _TIE
                    delta = np.where(same, delta, np.inf)
                i, j = np.unravel_index(int(np.argmin(delta)), delta.shape)
                if delta[i, j] < -_TIE and (best is None or delta[i, j] < best[0]):
                    best = (float(delta[i, j]), a, b, int(i), int(j))
        if best is None:
            break
        _, a, b, i, j = best
        groups[a][i], groups[b][j] = groups[b][j], groups[a][i]
        for g in (a, b):
            sums[g] = h[groups[g]].sum(axis=0)
            terms[g] = float(_weighted_kl(sums[g], p, total))
    return groups


def greedy_kl_groups(
    counts: Any,
    num_groups: int,
    *,
    sizes: Sequence[int] | None = None,
    seed: int = 0,
    swaps: bool = True,
    speeds: Any = None,
    speed_weight: float = 0.0,
    max_passes: int = 100,
) -> list[list[int]]:
    """Near-IID groups: fill one group at a time, then improve by pairwise swaps.

    While group g is below its size, the unassigned device ``i`` minimising
    ``KL(smoothed(h_g + h_i) || p~) + speed_weight * |log s_i - mean_{j in g} log s_j|`` joins it (the
    speed term is 0 for an empty group or without speeds). Ties (within 1e-12) go to the device with
    more examples, then by a random permutation of the ids seeded by ``seed``. Then, if ``swaps``, the
    single best pairwise swap between two groups that lowers J (of :func:`group_divergence`) by more than
    1e-12 is applied, repeatedly, until none does or after ``max_passes`` swaps. With ``speed_weight > 0``
    only devices of the same speed swap, so the swaps lower J without undoing the speed grouping.

    Filling one group at a time matters: with labels A, A, B, B and two groups it yields {A, B}, {A, B},
    where "best group per device in turn" can tie-break into {A, A}, {B, B}.

    Args:
        counts: ``(N, C)`` examples per device and label; devices without examples are allowed.
        num_groups: The number of groups G.
        sizes: Optional devices per group (default balanced, see :func:`group_sizes`).
        seed: Seeds the tie-break permutation.
        swaps: Whether to run the swap improvement.
        speeds: Optional ``(N,)`` device speeds (> 0), for the speed term.
        speed_weight: The weight of the speed term (>= 0).
        max_passes: The most swaps applied (>= 0).

    Returns:
        The groups of device ids, each sorted, ordered by their lowest member (given ``sizes``: in their order).

    Raises:
        ConfigError: Bad counts, group count, sizes, speeds, speed weight or ``max_passes``.
    """
    h = _counts_matrix(counts)
    num_devices = h.shape[0]
    issues = grouping_issues(num_devices, num_groups, sizes)
    if not np.isfinite(speed_weight) or speed_weight < 0:
        issues.append(f"speed_weight={speed_weight} is not a finite number >= 0; use 0 to ignore speeds")
    if not _is_int(max_passes) or max_passes < 0:
        issues.append(f"max_passes={max_passes!r} is not an integer >= 0; use e.g. 100")
    if issues:
        raise ConfigError("; ".join(issues))
    log_speed = _log_speeds(speeds, num_devices) if speeds is not None else None
    target = group_sizes(num_devices, num_groups, sizes)
    p = smoothed(h.sum(axis=0))
    examples = h.sum(axis=1)
    rank = np.empty(num_devices, dtype=int)
    rank[np.random.default_rng(seed).permutation(num_devices)] = np.arange(num_devices)
    free = np.ones(num_devices, dtype=bool)
    groups: list[list[int]] = []
    for size in target:
        members: list[int] = []
        group_sum = np.zeros(h.shape[1])
        while len(members) < size:
            candidates = np.flatnonzero(free)
            scores = _kl_rows(smoothed(group_sum + h[candidates]), p)
            if log_speed is not None and speed_weight > 0 and members:
                scores = scores + speed_weight * np.abs(log_speed[candidates] - log_speed[members].mean())
            tied = candidates[scores <= scores.min() + _TIE]
            pick = int(min(tied, key=lambda device: (-examples[device], rank[device])))
            members.append(pick)
            group_sum += h[pick]
            free[pick] = False
        groups.append(members)
    if swaps:
        groups = _best_swaps(h, groups, p, max_passes, log_speed if speed_weight > 0 else None)
    return _ordered(groups, keep=sizes is not None)


def _split(order: Sequence[int], sizes: Sequence[int], keep: bool) -> list[list[int]]:
    """Consecutive chunks of ``order`` with the given sizes, in output order (``keep``: see :func:`_ordered`)."""
    bounds = np.cumsum([0, *sizes])
    return _ordered([list(order[start:stop]) for start, stop in zip(bounds[:-1], bounds[1:], strict=True)], keep)


def random_groups(num_devices: int, num_groups: int, seed: int, sizes: Sequence[int] | None = None) -> list[list[int]]:
    """A seeded random grouping: a shuffle of the ids cut into balanced (or the given) sizes.

    Args:
        num_devices: The number of devices N.
        num_groups: The number of groups G.
        seed: Seeds ``np.random.default_rng``.
        sizes: Optional devices per group.

    Returns:
        The groups of device ids, each sorted, ordered by their lowest member (given ``sizes``: in their order).

    Raises:
        ConfigError: Every problem :func:`grouping_issues` finds.
    """
    target = group_sizes(num_devices, num_groups, sizes)
    return _split(np.random.default_rng(seed).permutation(num_devices).tolist(), target, keep=sizes is not None)


def by_speed_groups(speeds: Any, num_groups: int, sizes: Sequence[int] | None = None) -> list[list[int]]:
    """Group devices of similar speed: sort by speed (ties: lower id first), cut into consecutive groups.

    An ablation baseline that ignores labels.

    Args:
        speeds: ``(N,)`` device speeds (> 0).
        num_groups: The number of groups G.
        sizes: Optional devices per group, slowest group first.

    Returns:
        The groups of device ids, each sorted, the slowest group first.

    Raises:
        ConfigError: Bad speeds, group count or sizes.
    """
    s = np.asarray(speeds, dtype=float)
    if s.ndim != 1 or s.size == 0:
        raise ConfigError(f"speeds of shape {s.shape} are not one speed per device; pass an (N,) array")
    _log_speeds(s, s.size)
    target = group_sizes(s.size, num_groups, sizes)
    return _split(np.argsort(s, kind="stable").tolist(), target, keep=True)


def random_baseline(
    counts: Any, num_groups: int, draws: int = 20, seed: int = 0, sizes: Sequence[int] | None = None
) -> dict[str, Any]:
    """J of ``draws`` random groupings (seeds ``seed, seed + 1, ...``): what greedy should beat.

    Args:
        counts: ``(N, C)`` examples per device and label.
        num_groups: The number of groups G.
        draws: The number of random groupings (>= 1).
        seed: The first seed.
        sizes: Optional devices per group.

    Returns:
        ``{"draws": ..., "mean": ..., "min": ..., "max": ...}`` of J.

    Raises:
        ConfigError: Bad counts, group count, sizes or ``draws``.
    """
    h = _counts_matrix(counts)
    issues = grouping_issues(h.shape[0], num_groups, sizes)
    if not _is_int(draws) or draws < 1:
        issues.append(f"draws={draws!r} is not a positive integer; use e.g. 20")
    if issues:
        raise ConfigError("; ".join(issues))
    values = np.array([group_divergence(h, random_groups(h.shape[0], num_groups, seed + k, sizes))["divergence"]
                       for k in range(draws)])
    return {"draws": int(draws), "mean": float(values.mean()), "min": float(values.min()),
            "max": float(values.max())}


def format_group_report(
    counts: Any,
    groups: Sequence[Sequence[int]],
    *,
    draws: int = 20,
    seed: int = 0,
    ids: Sequence[Any] | None = None,
    labels: Sequence[str] | None = None,
) -> str:
    """A text table of a grouping: per group its devices, examples, KL and TV, then J against random.

    Args:
        counts: ``(N, C)`` examples per device and label.
        groups: A partition of the device ids ``0..N-1``.
        draws: Random groupings to compare with (0: leave the comparison out).
        seed: Their first seed.
        ids: Optional names of the devices (row order) to print instead of row indices.
        labels: Optional names of the C labels; adds each group's top-2 labels by share.

    Returns:
        The table, without a trailing newline.

    Raises:
        ConfigError: Bad counts or groups, or ``ids``/``labels`` of the wrong length.
    """
    h = _counts_matrix(counts)
    issues = []
    if ids is not None and len(ids) != h.shape[0]:
        issues.append(f"ids has {len(ids)} entries but counts have {h.shape[0]} devices; give one id per device")
    if labels is not None and len(labels) != h.shape[1]:
        issues.append(f"labels has {len(labels)} entries but counts have {h.shape[1]} labels; give one per column")
    if issues:
        raise ConfigError("; ".join(issues))
    result = group_divergence(h, groups)
    names = [str(device) for device in ids] if ids is not None else [str(device) for device in range(h.shape[0])]
    header = ["group", "devices", "examples", "KL", "TV"] + (["top labels"] if labels is not None else [])
    rows = []
    for index, group in enumerate(groups):
        row = [str(index), ",".join(names[device] for device in group), f"{result['examples'][index]:g}",
               f"{result['kl'][index]:.4f}", f"{result['tv'][index]:.4f}"]
        if labels is not None:
            row.append(_top_labels(h[list(group)].sum(axis=0), labels))
        rows.append(row)
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
             for line in [header, *rows]]
    summary = f"size-weighted KL J = {result['divergence']:.4f}"
    if draws:
        baseline = random_baseline(h, len(groups), draws=draws, seed=seed, sizes=[len(group) for group in groups])
        summary += (f" ; random grouping ({draws} seeded draws): mean {baseline['mean']:.4f}, "
                    f"min {baseline['min']:.4f}")
    return "\n".join([*lines, summary])


def _top_labels(group_counts: np.ndarray, labels: Sequence[str], top: int = 2) -> str:
    """The ``top`` labels by share of the group's examples, e.g. ``qa 60%, math 30%`` (``-`` if none)."""
    total = group_counts.sum()
    if total <= 0:
        return "-"
    order = np.argsort(-group_counts, kind="stable")[:top]
    return ", ".join(f"{labels[c]} {100 * group_counts[c] / total:.0f}%" for c in order if group_counts[c] > 0)


def counts_from_table(table: PartitionTable | None) -> np.ndarray:
    """The ``(N, C)`` training-example counts of a partition report, columns in ``table.values`` order.

    Args:
        table: A :class:`~fedbiot_pl.data.partition_report.PartitionTable` (one row per client, client 0 first).

    Returns:
        An int array, one row per client.

    Raises:
        ConfigError: The partition has no key to count by, or there is no partition report.
    """
    if table is None:
        raise ConfigError("the data has no partition report (per-client category counts) to group by; use a "
                          "datamodule with one (FederatedInstructionDataModule with data.partition_key) or "
                          "grouping: random")
    if table.key is None:
        raise ConfigError("the partition has no key values to group by; set data.partition_key (e.g. category) "
                          "or use grouping: random")
    return np.array([[row.counts.get(value, 0) for value in table.values] for row in table.rows],
                    dtype=int).reshape(len(table.rows), len(table.values))
