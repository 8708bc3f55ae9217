"""Callbacks: the federated loop that runs FedBiOT's rounds on the server's Trainer, and its round checkpoints."""

from fedbiot_pl.callbacks.client_validation import ClientValidation
from fedbiot_pl.callbacks.emulator_gap import EmulatorGap
from fedbiot_pl.callbacks.federated_loop import FederatedLoop
from fedbiot_pl.callbacks.periodic_evaluation import PeriodicEvaluation
from fedbiot_pl.callbacks.round_checkpoint import RoundCheckpoint
from fedbiot_pl.callbacks.time_to_target import TimeToTarget

__all__ = ["ClientValidation", "EmulatorGap", "FederatedLoop", "PeriodicEvaluation", "RoundCheckpoint", "TimeToTarget"]
