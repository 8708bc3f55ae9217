"""A run's simulated devices: their profiles, what a step and a message cost them, and the clock.

Training runs for real, one device after another on this machine; time does not. Every exchange is
charged ``latency + download / down bandwidth + local_steps x step FLOPs / speed + upload / up bandwidth``
per device (:func:`~fedbiot_pl.hierarchy.clock.device_seconds`) with the device's jittered profile of that
round, the slowest device gates the exchange, and a round's seconds advance the :class:`SimClock`. The
bytes are the real messages' tensor bytes; the FLOPs are :mod:`fedbiot_pl.scaling.flops`' count at the
trained depth. Wall time is never read.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from fedbiot_pl.hierarchy.clock import SimClock, device_seconds, edge_cloud_seconds
from fedbiot_pl.hierarchy.costs import DepthCosts, depth_costs
from fedbiot_pl.hierarchy.fleet import DeviceProfile, Fleet


class SimulatedFleet:
    """The devices of a run (one per client) with their depth costs and the run's simulated clock.

    Args:
        fleet: the device profiles (``num_devices`` = the run's clients).
        costs: what training at each depth costs (FLOPs per step, message bytes, memory).
        local_steps: optimizer steps per device and exchange (``tau``).
    """

    def __init__(self, fleet: Fleet, costs: DepthCosts, local_steps: int) -> None:
        self.fleet, self.costs, self.local_steps = fleet, costs, local_steps
        self.clock = SimClock()

    @property
    def num_devices(self) -> int:
        """Devices in the fleet."""
        return int(self.fleet.num_devices)

    def profile(self, device: int, round_idx: int) -> DeviceProfile:
        """Device ``device``'s profile in round ``round_idx`` (jittered, a pure function of both)."""
        return self.fleet.profile_at(device, round_idx)

    def profiles(self, devices: Iterable[int], round_idx: int | None = None) -> list[DeviceProfile]:
        """The profiles of ``devices`` in round ``round_idx`` (``None``: without jitter)."""
        base = self.fleet.profiles()
        return [base[d] if round_idx is None else self.profile(d, round_idx) for d in devices]

    def exchange_seconds(self, devices: Iterable[int], round_idx: int, down_bytes: int, up_bytes: int,
                         depth: int) -> float:
        """Seconds of one exchange: every device downloads, trains ``local_steps`` steps at ``depth``, uploads.

        The slowest device sets it (synchronous aggregation).
        """
        flops = self.local_steps * self.costs.step_flops(depth)
        return max((device_seconds(self.profile(d, round_idx), down_bytes, up_bytes, flops, self.fleet.latency_s)
                    for d in devices), default=0.0)

    def edge_cloud_seconds(self, down_bytes: int, up_bytes: int) -> float:
        """Seconds of a group's edge <-> cloud transfers in one round."""
        return edge_cloud_seconds(up_bytes, down_bytes, self.fleet.edge_Bps, self.fleet.edge_latency_s)

    def short_of_memory(self, depth: int) -> list[int]:
        """Devices whose memory cannot hold training at ``depth`` (un-jittered; memory does not vary)."""
        need = self.costs.memory(depth)
        return [d for d, p in enumerate(self.fleet.profiles()) if p.memory_bytes < need]

    def state_dict(self) -> dict[str, Any]:
        """The clock (profiles and costs follow from the settings)."""
        return {"clock": self.clock.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the clock of a checkpoint."""
        self.clock.load_state_dict(state["clock"])


def simulated_fleet(fleet: Fleet, views: Any, data: Any, local_steps: int, accumulate: int) -> SimulatedFleet:
    """The fleet of a run on ``views`` (built) and ``data`` (set up): one device per client.

    A step's tokens are ``batch_size x max_length x accumulate`` (every micro-batch padded to
    ``max_length``: an upper bound, the same for every method compared); the memory estimate takes one
    micro-batch of ``batch_size x max_length`` tokens.
    """
    from fedbiot_pl.model.views import DTYPES
    from fedbiot_pl.scaling.flops import decoder_shape

    config = views.full.config
    micro_batch = int(data.batch_size) * int(data.max_length)
    base = sum(p.numel() for n, p in views.compressed.named_parameters() if "lora_" not in n)
    costs = depth_costs(decoder_shape(config), views.num_layers, int(data.max_length), micro_batch * accumulate,
                        micro_batch, views.lora_r, views.lora_targets, base, DTYPES[views.dtype_name].itemsize)
    return SimulatedFleet(fleet.with_devices(data.num_clients), costs, local_steps)


def fleet_setting(devices: Any, algorithm: Any) -> tuple[Fleet | None, list[str]]:
    """``federated.devices`` read: the fleet (``None`` if unset) and every problem with it, each naming the fix.

    ``default`` is the shipped fleet's tiers with one device per client (80 clients: the shipped 80-device
    fleet itself); a string is a YAML path; a dict is the fleet inline.
    """
    from fedbiot_pl.errors import ConfigError
    from fedbiot_pl.hierarchy.fleet import load_fleet

    if devices is None:
        return None, []
    issues = []
    if getattr(algorithm, "family", "params") != "params" or algorithm.compresses():
        issues.append(f"devices simulates time for algorithms whose clients hold the full model and share LoRA "
                      f"(fedavg_lora, fedprox, hierfedlora); algorithm {algorithm.label!r} does not: set devices "
                      "to null.")
    try:
        fleet = load_fleet(None) if devices == "default" else load_fleet(devices)
        if devices == "default":
            fleet = replace(fleet, num_devices=None)
    except ConfigError as error:
        return None, issues + [f"federated.devices: {error}"]
    return fleet, issues


def fleet_data_issues(fleet: Fleet | None, data: Any) -> list[str]:
    """The fleet against the data: one device per client, and the batch shape the clock needs."""
    if fleet is None:
        return []
    issues = []
    if fleet.num_devices is not None and fleet.num_devices != data.num_clients:
        issues.append(f"the device fleet has num_devices={fleet.num_devices} but the data has "
                      f"{data.num_clients} clients (one device each): set the fleet's num_devices to "
                      f"{data.num_clients} or null, or data.num_clients to {fleet.num_devices}.")
    missing = [name for name in ("batch_size", "max_length") if not isinstance(getattr(data, name, None), int)]
    if missing:
        issues.append(f"the simulated clock counts a step's tokens as batch_size x max_length; "
                      f"{type(data).__name__} lacks {missing}: set devices to null or use a datamodule with them.")
    return issues
