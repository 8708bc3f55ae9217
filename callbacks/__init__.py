"""Callbacks: the federated loop that runs FedBiOT's rounds on the server's Trainer."""

from fedbiot_pl.callbacks.federated_loop import FederatedLoop

__all__ = ["FederatedLoop"]
