"""The client side of a round in this process: from the broadcast bytes to the reply.

:class:`LocalClients` is the function a transport calls per client: it loads the broadcast into the
shared model views, fits the algorithm's client module for ``local_steps`` optimizer steps with a
fresh lean Trainer on the client's data, and answers with its mean loss and its encoded upload. A
client whose fit raises, runs past its time limit or ends with a non-finite loss is dropped (the
reply says why); the round goes on without it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Protocol

import lightning.pytorch as pl
import torch
from lightning.pytorch import Callback
from typing_extensions import override

from fedbiot_pl import hooks
from fedbiot_pl.federation.client_trainer import ClientDeadline, ClientTimeout, build_client_trainer, client_fit_context
from fedbiot_pl.federation.placement import client_seed
from fedbiot_pl.federation.transport import ClientReply

log = logging.getLogger(__name__)


class ClientData(Protocol):
    """What the round needs of the data: the clients, each one's loader per round, and its size."""

    num_clients: int

    def client_dataloader(self, client_id: int, round_idx: int) -> Any:
        """The client's training batches in round ``round_idx``."""
        ...

    def client_num_examples(self, client_id: int) -> int:
        """The client's number of training examples (its FedAvg weight)."""
        ...


@dataclass(frozen=True)
class ClientFitSettings:
    """One client fit: optimizer steps, micro-batches per step, time limit (seconds, ``None``: none).

    ``local_dp`` (:class:`~fedbiot_pl.privacy.LocalDP`, or its fields as a dict): the upload is clipped and
    noised at the client (local differential privacy) before it leaves.
    """

    local_steps: int = 30
    accumulate_grad_batches: int = 2
    time_limit: float | None = None
    local_dp: Any = None

    def __post_init__(self) -> None:
        if isinstance(self.local_dp, dict):
            from fedbiot_pl.privacy import LocalDP

            object.__setattr__(self, "local_dp", LocalDP(**self.local_dp))


class StepHookPoint(Callback):
    """Fires the ``client_step`` hook point at every client batch (added only while a handler listens)."""

    def __init__(self, **context: Any) -> None:
        self.context = context

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        hooks.fire("client_step", step=batch_idx, module=pl_module, **self.context)


class LocalClients:
    """Fits clients in this process on the model views they share with the server.

    Args:
        algorithm: what a client uploads (:meth:`~fedbiot_pl.algorithms.Algorithm.upload`).
        views: the model views (the server's: clients share its frozen weights).
        module: the client LightningModule (:meth:`~fedbiot_pl.algorithms.Algorithm.client_module`).
        data: the clients' data.
        fit: steps, accumulation and time limit of each fit.
        device: where the fits run.
        precision: Lightning precision of the fits.
        seed: the run's seed (a client's random numbers depend on it, the round and the client only).
        world_size: processes sharing the clients.
    """

    def __init__(self, algorithm: Any, views: Any, module: pl.LightningModule, data: ClientData,
                 fit: ClientFitSettings, device: torch.device | str = "cpu", precision: Any = "32-true",
                 seed: int = 42, world_size: int = 1) -> None:
        self.algorithm, self.views, self.module, self.data = algorithm, views, module, data
        self.fit, self.device, self.precision = fit, torch.device(device), precision
        self.seed, self.world_size = seed, world_size
        self.last_error: BaseException | None = None

    def run(self, client_id: int, broadcast: bytes, round_idx: int, attempt: int = 0) -> ClientReply:
        """One client's part of a round: load ``broadcast``, fit, encode the upload.

        The fit runs in its own random-number context seeded from (seed, round, client): its LoRA
        dropout masks do not depend on the process, rank or order it runs in, and the server's random
        stream is left as it was.
        """
        self.algorithm.client_receive(self.views, broadcast, client_id, round_idx)
        # local DP: the change is clipped and noised against what the client received
        received = self.algorithm.upload(self.views) if self.fit.local_dp is not None else None
        with torch.random.fork_rng(devices=self._rng_devices()):
            torch.manual_seed(client_seed(self.seed, round_idx, client_id))
            return self._run(client_id, round_idx, attempt, received)

    def _rng_devices(self) -> list[int]:
        if self.device.type != "cuda":
            return []
        return [self.device.index if self.device.index is not None else torch.cuda.current_device()]

    def _run(self, client_id: int, round_idx: int, attempt: int, received: dict[str, Any] | None) -> ClientReply:
        context = {"round": round_idx, "client": client_id, "attempt": attempt}
        try:
            hooks.fire("client_fit", **context)
            loss = self._fit(client_id, round_idx, context)
            if not math.isfinite(loss):
                return ClientReply(client_id, loss, b"", f"non-finite mean loss {loss}")
            message = self.algorithm.upload_message(self.views, client_id, round_idx)
            if received is not None:
                message = self._privatize(message, received)
            payload = message.encode()
            return ClientReply(client_id, loss, hooks.transform("upload", payload, **context))
        except ClientTimeout as error:
            return ClientReply(client_id, math.nan, b"", str(error))
        except Exception as error:  # any failure of a client drops that client, never the round
            log.debug("round %d: client %d failed", round_idx, client_id, exc_info=True)
            self.last_error = error  # the cause shown if the round then stops
            return ClientReply(client_id, math.nan, b"", f"fit raised {type(error).__name__}: {error}")
        finally:  # also after a failed fit, where no module hook ran, and for any algorithm's client module
            for param in self.views.lora_parameters(self.algorithm.upload_part()).values():
                param.grad = None

    def _privatize(self, message: Any, received: dict[str, Any]) -> Any:
        """The upload clipped and noised (:func:`~fedbiot_pl.privacy.privatize`) with noise the server cannot know."""
        import secrets

        from fedbiot_pl.privacy import privatize

        generator = torch.Generator().manual_seed(secrets.randbits(63))  # never the run's seed: the server knows it
        released, report = privatize(message.tensors, received, self.fit.local_dp, generator)
        log.debug("local DP: update norm %.4g, clip factor %.3g, sigma %.4g", report.pre_clip_norm,
                  report.clip_factor, report.sigma)
        return type(message)(released, message.metadata)

    def _fit(self, client_id: int, round_idx: int, context: dict[str, int]) -> float:
        deadline = [ClientDeadline(self.fit.time_limit)] if self.fit.time_limit is not None else []
        fits = self.algorithm.client_fits(self.data, client_id, round_idx, self.fit.local_steps)
        for number, (batches, steps) in enumerate(fits, start=1):
            # the client_step hook point counts the steps of the last fit (the private data)
            hook = [StepHookPoint(**context)] if number == len(fits) and hooks.attached("client_step") else []
            self.fit_module(self.module, batches, steps, deadline + hook, f"client {client_id}")
        return self.module.mean_loss

    def fit_module(self, module: pl.LightningModule, batches: Any, steps: int, callbacks: list[Callback] | None = None,
                   who: str = "the server") -> None:
        """Fit ``module`` for ``steps`` optimizer steps on ``batches`` with a fresh lean Trainer (and optimizer).

        Raises:
            RuntimeError: the fit took another number of steps (too few batches).
        """
        with client_fit_context():
            trainer = build_client_trainer(self.device, self.precision, steps, self.fit.accumulate_grad_batches,
                                           list(callbacks or []))
            trainer.fit(module, train_dataloaders=batches)
        if trainer.global_step != steps:
            raise RuntimeError(f"{who} ran {trainer.global_step} optimizer steps, expected {steps}.")
