"""The client side of a federated round: fit, upload and validate each sampled client, dropping
the clients that fail and rejecting the updates that are bad (mixed into :class:`FederatedLoop`).

On several devices (one process per GPU) each rank fits its share of the sampled clients
(:mod:`fedbiot_pl.federation.placement`), the ranks exchange the outcomes, and every rank validates and
averages the same uploads in the sampled order, so the global adapter is the same on every rank.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch import Callback
from torch import Tensor

from fedbiot_pl.testing import faults as fault_injection
from fedbiot_pl.federation.attempts import RoundAttempt
from fedbiot_pl.federation.placement import client_seed, clients_of_rank, gather_by_client
from fedbiot_pl.federation.client_trainer import ClientDeadline, ClientTimeout, build_client_trainer, client_fit_context
from fedbiot_pl.federation.messages import CommLedger, encode_update
from fedbiot_pl.modules.adapter_module import AdapterFinetuneModule
from fedbiot_pl.model.views import SplitModel
from fedbiot_pl.federation.validation import receive_update

log = logging.getLogger(__name__)


class ClientRounds:
    """Runs the clients of one attempt at a round; :class:`FederatedLoop` sets the attributes below.

    Subclasses may override :meth:`fit_client` (one client's local training) and
    :meth:`client_upload` (what a client sends back).
    """

    local_steps: int
    client_accumulate_grad_batches: int
    client_time_limit: float | None
    max_update_norm: float | None
    weighting: str
    seed: int
    ledger: CommLedger
    _client_module: AdapterFinetuneModule | None
    _attempt: int
    _last_client_error: BaseException | None

    def run_attempt(self, trainer: pl.Trainer, split: SplitModel, result: RoundAttempt,
                    global_adapter: dict[str, Tensor], round_idx: int) -> RoundAttempt:
        """Fit, upload and validate every client of ``result.clients``, each from ``global_adapter``.

        A collective on several ranks: every rank must call it with the same clients."""
        datamodule = trainer.datamodule
        reference = {key: value.cpu() for key, value in global_adapter.items()}
        world = trainer.world_size
        local = {}
        for client_id in clients_of_rank(result.clients, trainer.global_rank, world):
            split.load_lora_state(global_adapter)
            if world > 1:  # LoRA dropout masks must not depend on the rank a client lands on
                torch.manual_seed(client_seed(self.seed, round_idx, client_id))
            local[client_id] = self._fit_and_upload(trainer, split, client_id, round_idx)
        for client_id, (loss, payload, reason) in zip(result.clients, gather_by_client(local, result.clients)):
            if reason is not None:
                log.warning("round %d: client %d dropped: %s", round_idx, client_id, reason)
                result.drop(client_id, reason)
                continue
            update, problem = receive_update(payload, reference, self.max_update_norm)
            if update is None:
                self.ledger.record_up_bytes(len(payload))  # it travelled, but could not be read
            else:
                self.ledger.record_up(update)
            if problem is not None:
                self.ledger.uploads_rejected += 1
                log.warning("round %d: update of client %d rejected: %s", round_idx, client_id, problem)
                result.reject(client_id, problem)
                continue
            result.uploads.append(update)
            result.weights.append(datamodule.client_num_examples(client_id) if self.weighting == "examples" else 1.0)
            result.losses[client_id] = loss
        return result

    def _fit_and_upload(self, trainer: pl.Trainer, split: SplitModel, client_id: int,
                        round_idx: int) -> tuple[float, bytes, str | None]:
        """``(mean loss, upload, None)`` for a client whose fit went well, else ``(loss, b"", reason)``."""
        try:
            loss = self.fit_client(trainer, client_id, round_idx, trainer.datamodule)
            if not math.isfinite(loss):
                return loss, b"", f"non-finite mean loss {loss}"
            return loss, self.client_upload(split, client_id, round_idx), None
        except ClientTimeout as error:
            return math.nan, b"", str(error)
        except Exception as error:  # any failure of a client drops that client, never the round
            log.debug("round %d: client %d failed", round_idx, client_id, exc_info=True)
            self._last_client_error = error  # the cause shown if the round then stops
            return math.nan, b"", f"fit raised {type(error).__name__}: {error}"
        finally:
            for param in split.lora_parameters("adapter").values():
                param.grad = None

    def fit_client(self, trainer: pl.Trainer, client_id: int, round_idx: int, datamodule: Any) -> float:
        """One client's local training: a fresh lean Trainer on the server's device; returns the
        client's mean cross-entropy over the fit."""
        fault_injection.trigger("client_fit", round=round_idx, client=client_id, attempt=self._attempt)
        callbacks: list[Callback] = []
        if self.client_time_limit is not None:
            callbacks.append(ClientDeadline(self.client_time_limit))
        if fault_injection.active():
            callbacks.append(fault_injection.ClientStepFaults(round_idx, client_id, self._attempt))
        with client_fit_context():
            client_trainer = build_client_trainer(
                trainer.strategy.root_device, trainer.precision, self.local_steps, self.client_accumulate_grad_batches,
                callbacks,
            )
            client_trainer.fit(self._client_module, train_dataloaders=datamodule.client_dataloader(client_id, round_idx))
        if client_trainer.global_step != self.local_steps:
            raise RuntimeError(
                f"client {client_id} ran {client_trainer.global_step} optimizer steps, expected {self.local_steps}."
            )
        return self._client_module.mean_loss

    def client_upload(self, split: SplitModel, client_id: int, round_idx: int) -> bytes:
        """What a client sends back: its adapter LoRA as safetensors bytes."""
        update = split.lora_state("adapter")
        fault = fault_injection.trigger("upload", round=round_idx, client=client_id, attempt=self._attempt)
        if fault is not None and fault["action"] in fault_injection.CORRUPTIONS:
            damaged = fault_injection.corrupt_update(update, fault)
            if isinstance(damaged, bytes):
                return damaged
            update = damaged
        return encode_update(update)
