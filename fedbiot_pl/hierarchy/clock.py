"""A deterministic simulated clock: seconds from FLOPs, bytes and device profiles, never measured wall time.

The learning is real but runs serially on one machine; the time axis is computed. A device's share of an
intra-group round is ``latency + download / down_Bps + FLOPs / flops_per_s + upload / up_Bps``; an edge's
exchange with the cloud is ``2 latency + (up + down) / edge_Bps``. Rounds are synchronous, so a round takes
as long as its slowest participant (the caller takes the maximum), and :class:`SimClock` adds the rounds up.
:func:`time_to_target` reads the time at which an evaluated metric first reaches a target.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedbiot_pl.hierarchy.fleet import DeviceProfile

TARGET_MODES = ("max", "min")
"""``max``: higher is better (accuracy), the target is reached at ``value >= target``; ``min``: lower is better."""


def device_seconds(profile: DeviceProfile, down_bytes: float, up_bytes: float, flops: float,
                   latency_s: float) -> float:
    """Simulated seconds one device needs to download, compute and upload, one after the other.

    Args:
        profile: The device's speed and bandwidths (possibly jittered for this round).
        down_bytes: Bytes it downloads.
        up_bytes: Bytes it uploads.
        flops: Model FLOPs it computes.
        latency_s: A fixed per-exchange latency in seconds.

    Returns:
        ``latency_s + down_bytes / down_Bps + flops / flops_per_s + up_bytes / up_Bps``.
    """
    return latency_s + down_bytes / profile.down_Bps + flops / profile.flops_per_s + up_bytes / profile.up_Bps


def edge_cloud_seconds(up_bytes: float, down_bytes: float, edge_Bps: float, edge_latency_s: float) -> float:
    """Simulated seconds of one edge's exchange with the cloud: an upload and a download over one link.

    Args:
        up_bytes: Bytes the edge sends to the cloud.
        down_bytes: Bytes the cloud sends back.
        edge_Bps: The edge<->cloud bandwidth in bytes per second (both directions).
        edge_latency_s: The latency of one transfer in seconds (charged once each way).

    Returns:
        ``2 edge_latency_s + (up_bytes + down_bytes) / edge_Bps``.
    """
    return 2 * edge_latency_s + (up_bytes + down_bytes) / edge_Bps


class SimClock:
    """Cumulative simulated seconds over global rounds.

    Attributes:
        seconds: The simulated seconds at the end of the last round (0 before any).
        rounds: Each round's simulated seconds, in order.
    """

    def __init__(self) -> None:
        self.seconds: float = 0.0
        self.rounds: list[float] = []

    def advance(self, round_seconds: float) -> float:
        """Add one round that took ``round_seconds`` simulated seconds.

        Args:
            round_seconds: The round's simulated duration (finite, >= 0).

        Returns:
            The new cumulative :attr:`seconds`.

        Raises:
            ValueError: ``round_seconds`` is negative, infinite or not a number.
        """
        value = float(round_seconds)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"round_seconds must be a finite number >= 0, got {round_seconds!r}.")
        self.rounds.append(value)
        self.seconds += value
        return self.seconds

    def state_dict(self) -> dict[str, Any]:
        """The clock as plain floats (JSON-able): ``{"seconds": float, "rounds": [float, ...]}``."""
        return {"seconds": float(self.seconds), "rounds": [float(r) for r in self.rounds]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the clock from :meth:`state_dict`'s output.

        Args:
            state: A mapping with ``seconds`` and ``rounds``.
        """
        self.seconds = float(state["seconds"])
        self.rounds = [float(r) for r in state["rounds"]]

    def __repr__(self) -> str:
        return f"SimClock(seconds={self.seconds!r}, rounds={len(self.rounds)})"


def time_to_target(times: Sequence[float], values: Sequence[float], target: float,
                   mode: str = "max") -> float | None:
    """The first time at which a metric reaches ``target``, at the evaluated points (no interpolation).

    Args:
        times: Simulated seconds of each evaluation, in order.
        values: The metric at each of ``times``; NaN never reaches a target.
        target: The value to reach.
        mode: ``"max"`` (higher is better: ``value >= target``) or ``"min"`` (lower is better, e.g. a loss:
            ``value <= target``).

    Returns:
        The first such time, or None if the metric never reaches the target.

    Raises:
        ValueError: ``times`` and ``values`` differ in length, or ``mode`` is unknown.
    """
    if mode not in TARGET_MODES:
        raise ValueError(f"mode must be one of {', '.join(TARGET_MODES)}, got {mode!r}.")
    if len(times) != len(values):
        raise ValueError(f"times and values must have the same length, got {len(times)} and {len(values)}.")
    for time, value in zip(times, values, strict=True):
        if (value >= target) if mode == "max" else (value <= target):
            return float(time)
    return None
