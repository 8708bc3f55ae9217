"""Scaling out: DeepSpeed ZeRO for the server and the client phase, start-up checks, FLOPs and memory estimates."""

from fedbiot_pl.scaling.deepspeed import FedBiOTDeepSpeed

__all__ = ["FedBiOTDeepSpeed"]
