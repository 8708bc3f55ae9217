"""The simulated device fleet: tiers of devices with speed, memory and bandwidths, and per-round jitter.

A fleet is a list of tiers, each a share of the devices. Tier counts come from the shares by the largest
remainder method, and a permutation seeded only by the fleet's ``seed`` gives each device id its tier, so
the speeds never depend on the data partition. Per round, each device's speed and both bandwidths get a
lognormal factor ``exp(jitter * z)`` with ``z`` drawn from ``np.random.default_rng([seed, round, device])``,
a pure function of those three numbers (so a resumed run sees the same profiles); memory is not jittered.

The profiles are ASSUMED, not measured: publish :meth:`Fleet.table` with every result, and compare
methods only on the same fleet. The shipped default is ``fedbiot_pl/assets/fleets/default-80.yaml``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fedbiot_pl.assets import resolve
from fedbiot_pl.errors import ConfigError, MissingPathError

DEFAULT_FLEET = "fleets/default-80.yaml"
"""The shipped default fleet, relative to the ``fedbiot_pl.assets`` package."""

FLEET_KEYS = ("tiers", "num_devices", "seed", "jitter", "latency_s", "edge_cloud_mbps", "edge_latency_s")
"""The keys a fleet mapping may have (only ``tiers`` is required)."""

TIER_KEYS = ("name", "share", "tflops", "mem_gib", "up_mbps", "down_mbps")
"""The keys a tier mapping may have (all but ``name`` are required)."""

SHARE_TOLERANCE = 1e-6
"""How far the tiers' shares may sum from 1."""


@dataclass(frozen=True)
class DeviceProfile:
    """One device's resources, in SI units."""

    flops_per_s: float
    """Sustained model FLOP/s while training (peak times utilisation)."""
    up_Bps: float
    """Upload bandwidth in bytes per second."""
    down_Bps: float
    """Download bandwidth in bytes per second."""
    memory_bytes: float
    """Memory available for training, in bytes."""
    tier: str = ""
    """The name of the tier the device belongs to."""

    def __post_init__(self) -> None:
        bad = [f"{name}={getattr(self, name)!r}" for name in ("flops_per_s", "up_Bps", "down_Bps")
               if not getattr(self, name) > 0]
        if not self.memory_bytes >= 0:
            bad.append(f"memory_bytes={self.memory_bytes!r}")
        if bad:
            raise ValueError(f"DeviceProfile needs speed and bandwidths > 0 and memory >= 0, got {', '.join(bad)}.")


@dataclass(frozen=True)
class Tier:
    """A class of devices and the share of the fleet it makes up."""

    name: str
    """The tier's name (for tables and logs)."""
    share: float
    """The fraction of the devices in this tier (the shares sum to 1)."""
    tflops: float
    """Sustained training speed in TFLOP/s."""
    mem_gib: float
    """Memory for training in GiB."""
    up_mbps: float
    """Upload bandwidth in megabits per second."""
    down_mbps: float
    """Download bandwidth in megabits per second."""

    def profile(self) -> DeviceProfile:
        """The tier's un-jittered :class:`DeviceProfile`: 1e12 FLOP/s per TFLOP/s, 1e6/8 B/s per Mbps, 2**30 B/GiB."""
        return DeviceProfile(flops_per_s=self.tflops * 1e12, up_Bps=mbps_to_Bps(self.up_mbps),
                             down_Bps=mbps_to_Bps(self.down_mbps), memory_bytes=self.mem_gib * 2**30, tier=self.name)


def mbps_to_Bps(mbps: float) -> float:
    """Megabits per second to bytes per second."""
    return mbps * 1e6 / 8


@dataclass(frozen=True)
class Fleet:
    """A simulated fleet of devices drawn from tiers.

    Raises:
        ConfigError: A setting is invalid (every bad one is named, see :func:`fleet_issues`).
    """

    tiers: tuple[Tier, ...]
    """The device tiers; their shares sum to 1."""
    num_devices: int | None = None
    """How many devices; None means as many as the data's clients (see :meth:`with_devices`)."""
    seed: int = 0
    """Seeds the tier assignment and the per-round jitter (independent of the data)."""
    jitter: float = 0.1
    """The sigma of the lognormal per-round factor on speed and bandwidths; 0 turns jitter off."""
    latency_s: float = 0.05
    """The latency of one device<->edge exchange in seconds."""
    edge_cloud_mbps: float = 1000.0
    """The edge<->cloud bandwidth in Mbps (both directions)."""
    edge_latency_s: float = 0.05
    """The latency of one edge<->cloud transfer in seconds."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "tiers", tuple(self.tiers))
        if issues := fleet_issues(self.to_dict()):
            raise ConfigError("Invalid device fleet settings:\n  " + "\n  ".join(issues))

    def to_dict(self) -> dict[str, Any]:
        """The fleet as a plain mapping, the same shape :func:`load_fleet` reads."""
        return {"tiers": [asdict(t) for t in self.tiers], "num_devices": self.num_devices, "seed": self.seed,
                "jitter": self.jitter, "latency_s": self.latency_s, "edge_cloud_mbps": self.edge_cloud_mbps,
                "edge_latency_s": self.edge_latency_s}

    def with_devices(self, num_devices: int) -> Fleet:
        """A copy with ``num_devices`` set (e.g. to the data's client count)."""
        return replace(self, num_devices=num_devices)

    @property
    def edge_Bps(self) -> float:
        """The edge<->cloud bandwidth in bytes per second."""
        return mbps_to_Bps(self.edge_cloud_mbps)

    def _require_devices(self) -> int:
        if self.num_devices is None:
            raise ConfigError("The device fleet's num_devices is not set; set num_devices in the fleet or call "
                              "Fleet.with_devices(n) with the data's client count.")
        return self.num_devices

    def tier_counts(self) -> tuple[int, ...]:
        """Devices per tier, in tier order (largest remainder of ``share * num_devices``)."""
        return tier_counts(tuple(t.share for t in self.tiers), self._require_devices())

    def tier_indices(self) -> tuple[int, ...]:
        """Each device id's tier index (a permutation seeded by :attr:`seed` only)."""
        return _tier_assignment(self.tier_counts(), self.seed)

    def profiles(self) -> list[DeviceProfile]:
        """Every device's un-jittered profile, by device id."""
        base = [t.profile() for t in self.tiers]
        return [base[i] for i in self.tier_indices()]

    def profile_at(self, device: int, round_idx: int) -> DeviceProfile:
        """Device ``device``'s profile in round ``round_idx``: speed and bandwidths times lognormal factors.

        The factors are ``exp(jitter * z)`` with ``z ~ N(0, 1)`` from ``np.random.default_rng([seed, round_idx,
        device])``, so the result is a pure function of those three numbers; memory keeps its tier's value.

        Args:
            device: The device id, in ``[0, num_devices)``.
            round_idx: The global round, >= 0.

        Returns:
            The jittered profile (the tier's profile itself when :attr:`jitter` is 0).

        Raises:
            ValueError: ``device`` or ``round_idx`` is out of range.
        """
        n = self._require_devices()
        if not 0 <= device < n:
            raise ValueError(f"device must be in [0, {n}), got {device}.")
        if round_idx < 0:
            raise ValueError(f"round_idx must be >= 0, got {round_idx}.")
        base = self.tiers[self.tier_indices()[device]].profile()
        if self.jitter == 0:
            return base
        speed, up, down = np.exp(self.jitter * np.random.default_rng([self.seed, round_idx, device]).standard_normal(3))
        return replace(base, flops_per_s=base.flops_per_s * float(speed), up_Bps=base.up_Bps * float(up),
                       down_Bps=base.down_Bps * float(down))

    def round_profiles(self, round_idx: int) -> list[DeviceProfile]:
        """Every device's :meth:`profile_at` ``round_idx``, by device id."""
        return [self.profile_at(i, round_idx) for i in range(self._require_devices())]

    def table(self) -> list[dict[str, Any]]:
        """One row per tier for publishing with results: tier, devices (None if unset), share, speed, memory, links."""
        counts = self.tier_counts() if self.num_devices is not None else (None,) * len(self.tiers)
        return [{"tier": t.name, "devices": c, "share": t.share, "tflops": t.tflops, "mem_gib": t.mem_gib,
                 "up_mbps": t.up_mbps, "down_mbps": t.down_mbps} for t, c in zip(self.tiers, counts, strict=True)]


@lru_cache(maxsize=32)
def tier_counts(shares: tuple[float, ...], num_devices: int) -> tuple[int, ...]:
    """Split ``num_devices`` by ``shares`` with the largest remainder method (exact rational arithmetic).

    Each tier gets ``floor(share / sum(shares) * n)``; the devices left go one each to the largest
    remainders, ties to the earlier tier. The counts sum to ``num_devices``.

    Args:
        shares: Positive tier shares (a tuple: the result is cached).
        num_devices: The number of devices, >= 0.

    Returns:
        The count per tier, in order.
    """
    exact = [Fraction(s) for s in shares]
    total = sum(exact)
    quotas = [s * num_devices / total for s in exact]
    counts = [math.floor(q) for q in quotas]
    order = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[: num_devices - sum(counts)]:
        counts[i] += 1
    return tuple(counts)


@lru_cache(maxsize=32)
def _tier_assignment(counts: tuple[int, ...], seed: int) -> tuple[int, ...]:
    labels = np.repeat(np.arange(len(counts)), counts)
    return tuple(int(x) for x in np.random.default_rng(seed).permutation(labels))


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _number_issues(name: str, value: Any, *, strict: bool) -> list[str]:
    rule = "> 0" if strict else ">= 0"
    if not _is_number(value):
        return [f"{name} must be a finite number {rule}, got {value!r}"]
    if value < 0 or (strict and value == 0):
        return [f"{name} must be {rule}, got {value!r}"]
    return []


def _unknown_issues(where: str, mapping: Mapping[str, Any], allowed: Sequence[str]) -> list[str]:
    unknown = [k for k in mapping if k not in allowed]
    if not unknown:
        return []
    return [f"{where}unknown key{'s' if len(unknown) > 1 else ''} {', '.join(repr(k) for k in unknown)} "
            f"(allowed: {', '.join(allowed)})"]


def _tier_issues(index: int, tier: Any) -> list[str]:
    where = f"tiers[{index}]"
    if not isinstance(tier, Mapping):
        return [f"{where} must be a mapping with keys {', '.join(TIER_KEYS)}, got {tier!r}"]
    issues = _unknown_issues(f"{where}: ", tier, TIER_KEYS)
    issues += [f"{where}: missing {key}" for key in TIER_KEYS[1:] if key not in tier]
    if "name" in tier and not (isinstance(tier["name"], str) and tier["name"]):
        issues.append(f"{where}.name must be a non-empty string, got {tier['name']!r}")
    for key in TIER_KEYS[1:]:
        if key in tier:
            issues += _number_issues(f"{where}.{key}", tier[key], strict=True)
    return issues


def _tiers_issues(tiers: Any) -> list[str]:
    if isinstance(tiers, (str, bytes, Mapping)) or not isinstance(tiers, Sequence) or not tiers:
        return [f"tiers must be a non-empty list of tiers (mappings with {', '.join(TIER_KEYS)}), got {tiers!r}"]
    issues = [issue for i, tier in enumerate(tiers) for issue in _tier_issues(i, tier)]
    shares = [t.get("share") if isinstance(t, Mapping) else None for t in tiers]
    if all(_is_number(s) and s > 0 for s in shares) and abs(sum(shares) - 1) > SHARE_TOLERANCE:
        issues.append(f"the tiers' shares must sum to 1, got {' + '.join(repr(s) for s in shares)} = {sum(shares):.6g}")
    names = [_tier_name(i, t) for i, t in enumerate(tiers) if isinstance(t, Mapping)]
    if duplicates := sorted({n for n in names if isinstance(n, str) and names.count(n) > 1}):
        issues.append(f"tier names must be unique; repeated: {', '.join(repr(n) for n in duplicates)}")
    return issues


def _tier_name(index: int, tier: Mapping[str, Any]) -> Any:
    return tier.get("name", f"tier{index}")


def fleet_issues(mapping: Any) -> list[str]:
    """Every problem with a fleet mapping, one message each, naming where it is and the allowed values.

    Args:
        mapping: The fleet as read from YAML or a config: ``tiers`` (required: a non-empty list of mappings with
            ``share``, ``tflops``, ``mem_gib``, ``up_mbps``, ``down_mbps`` all > 0, optional ``name``; the shares
            sum to 1), ``num_devices`` (>= 1 or null), ``seed`` (an int >= 0), ``jitter``, ``latency_s``,
            ``edge_latency_s`` (>= 0) and ``edge_cloud_mbps`` (> 0).

    Returns:
        The messages, empty if the mapping is valid.
    """
    if not isinstance(mapping, Mapping):
        return [f"the fleet must be a mapping with keys {', '.join(FLEET_KEYS)}, got {type(mapping).__name__}"]
    issues = _unknown_issues("", mapping, FLEET_KEYS)
    issues += _tiers_issues(mapping["tiers"]) if "tiers" in mapping else ["missing tiers (a non-empty list of tiers)"]
    devices = mapping.get("num_devices")
    if devices is not None and (not isinstance(devices, int) or isinstance(devices, bool) or devices < 1):
        issues.append(f"num_devices must be an int >= 1 or null (as many as the data's clients), got {devices!r}")
    seed = mapping.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        issues.append(f"seed must be an int >= 0, got {seed!r}")
    for key in ("jitter", "latency_s", "edge_latency_s"):
        if key in mapping:
            issues += _number_issues(key, mapping[key], strict=False)
    if "edge_cloud_mbps" in mapping:
        issues += _number_issues("edge_cloud_mbps", mapping["edge_cloud_mbps"], strict=True)
    return issues


def fleet_from_mapping(mapping: Mapping[str, Any], where: str = "settings") -> Fleet:
    """Build a :class:`Fleet` from a mapping (tiers without a name are called ``tier<i>``).

    Args:
        mapping: See :func:`fleet_issues`.
        where: Names the mapping's origin in the error message (a file path, "settings").

    Returns:
        The fleet.

    Raises:
        ConfigError: Listing every problem :func:`fleet_issues` finds.
    """
    if issues := fleet_issues(mapping):
        raise ConfigError(f"Invalid device fleet {where}:\n  " + "\n  ".join(issues))
    tiers = tuple(Tier(name=_tier_name(i, t), **{k: t[k] for k in TIER_KEYS[1:]})
                  for i, t in enumerate(mapping["tiers"]))
    return Fleet(tiers=tiers, **{k: mapping[k] for k in FLEET_KEYS[1:] if k in mapping})


def load_fleet(source: str | Path | Mapping[str, Any] | None = None) -> Fleet:
    """Read a device fleet from the shipped default, a YAML file, or an inline mapping.

    Args:
        source: None for the shipped default (``fedbiot_pl/assets/fleets/default-80.yaml``), a path to a YAML file
            (``embedded:fleets/...`` names a shipped one), or a mapping with the same content.

    Returns:
        The fleet.

    Raises:
        MissingPathError: The file does not exist.
        ConfigError: The YAML does not parse, or a field is missing or bad (all of them listed at once).
    """
    if isinstance(source, Mapping):
        return fleet_from_mapping(source, "settings (inline)")
    if source is None:
        resource = resources.files("fedbiot_pl.assets").joinpath(*DEFAULT_FLEET.split("/"))
        where, text = f"{resource} (the shipped default)", resource.read_text(encoding="utf-8")
    elif isinstance(source, (str, Path)):
        path = Path(resolve(str(source)))
        if not path.is_file():
            raise MissingPathError(f"Device fleet file {str(source)!r} does not exist (looked for {path}); give the "
                                   f"path of a fleet YAML, the fleet inline as a mapping, or nothing for the shipped "
                                   f"default embedded:{DEFAULT_FLEET}.")
        where, text = str(path), path.read_text(encoding="utf-8")
    else:
        raise ConfigError(f"A device fleet must be a YAML path, a mapping or None, got {type(source).__name__}.")
    try:
        mapping = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"Device fleet file {where} is not valid YAML; fix its syntax: {exc}") from exc
    return fleet_from_mapping(mapping, where)
