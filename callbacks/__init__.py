"""Callbacks: the federated loop that runs FedBiOT's rounds on the server's Trainer."""

from fedbiot_pl.callbacks.client_validation import ClientValidation
from fedbiot_pl.callbacks.federated_loop import FederatedLoop
from fedbiot_pl.callbacks.periodic_evaluation import PeriodicEvaluation

__all__ = ["ClientValidation", "FederatedLoop", "PeriodicEvaluation"]
