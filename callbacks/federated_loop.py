"""The federated loop of FedBiOT as a callback on the server's Trainer: one epoch = one round."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch import Callback
from typing_extensions import override

from fedbiot_pl.aggregation import fedavg
from fedbiot_pl.algorithms import Algorithm, algorithm_issues, algorithm_spec
from fedbiot_pl.communication import CommLedger
from fedbiot_pl.export import export_adapters
from fedbiot_pl.modules.adapter_module import AdapterFinetuneModule
from fedbiot_pl.sampling import clients_per_round, sample_clients
from fedbiot_pl.client_trainer import build_client_trainer, client_fit_context

log = logging.getLogger(__name__)
CLIENT_API = ("num_clients", "client_dataloader", "client_num_examples")


class FederatedLoop(Callback):
    """Runs the rounds of FedBiOT (or a baseline) inside the server's ``Trainer.fit`` of an
    EmulatorAlignmentModule.

    ``algorithm`` picks FedBiOT or a baseline (:mod:`fedbiot_pl.algorithms`): the same loop, with
    alignment only where the algorithm has it (FedBiOT every round; offsite-tuning and FedOT only
    in the optional ``pre_alignment_rounds``; FedAvg-LoRA and FedProx never) and the algorithm's
    proximal term on the clients. The split must have been made for the same algorithm (the CLI
    links ``federated.algorithm`` into ``model.split.algorithm``).

    The server fit has ``pre_alignment_rounds + rounds`` epochs of ``align_steps`` optimizer steps
    on the public data (this callback sets ``max_epochs`` and ``limit_train_batches``). The first
    ``pre_alignment_rounds`` epochs only align the emulator. At the start of every later epoch
    (round ``t``) the callback:

    1. samples the round's clients (all, a number, or a fraction; a pure function of seed and round),
    2. broadcasts the global emulator LoRA + adapter LoRA (counted in the ledger; algorithms that do
       not align during the rounds send the fixed emulator LoRA in round 0 only),
    3. fits an :class:`AdapterFinetuneModule` per client for ``local_steps`` optimizer steps with a
       fresh lean Trainer (fresh optimizer, no logger, no checkpointing) on the client's data,
    4. sets the adapter LoRA to the sample-weighted FedAvg of the uploads,

    and the epoch itself then runs the server's alignment against the new adapter. The client
    module shares the server's model: no reload, no re-wrapping, no copy per client.

    Metrics (logged at the end of each round): ``client/<id>/loss`` (mean CE of that client's fit),
    ``round/client_loss``, ``comm/bytes_down``, ``comm/bytes_up`` (this round) and
    ``comm/total_bytes``; alignment metrics come from the module (``align/l2``, ``align/kl``). At
    the end of fit the final adapters are exported to ``<log_dir>/final_adapter``.

    Args:
        algorithm: ``fedbiot``, ``offsite_tuning``, ``fedot``, ``fedavg_lora`` or ``fedprox``.
        rounds: federated rounds.
        pre_alignment_rounds: alignment-only epochs before the first round (paper: 50 or 100).
        align_steps: server alignment optimizer steps per epoch (paper: 5).
        local_steps: client optimizer steps per round (paper: 30).
        client_accumulate_grad_batches: micro-batches per client optimizer step (paper: 2).
        clients_per_round: ``null`` = all clients, an int = that many, a float = that fraction.
        proximal_weight: epsilon (FedBiOT) or mu (FedProx) of the client's proximal term; must be 0
            for the algorithms without one.
        client_lr: client AdamW learning rate.
        client_betas: client AdamW betas.
        client_weight_decay: client AdamW weight decay.
        weighting: ``examples`` = FedAvg weights by client training-set size, ``uniform`` = equal.
        seed: seed of client sampling and client data order.
        export_final_adapter: write the final adapters into the run folder at the end of fit.
    """

    def __init__(
        self,
        algorithm: Algorithm = "fedbiot",
        rounds: int = 3,
        pre_alignment_rounds: int = 0,
        align_steps: int = 5,
        local_steps: int = 30,
        client_accumulate_grad_batches: int = 2,
        clients_per_round: int | float | None = None,
        proximal_weight: float = 0.0,
        client_lr: float = 1e-4,
        client_betas: tuple[float, float] = (0.9, 0.95),
        client_weight_decay: float = 0.01,
        weighting: Literal["examples", "uniform"] = "examples",
        seed: int = 42,
        export_final_adapter: bool = True,
    ) -> None:
        issues = []
        for name, value, low in (
            ("rounds", rounds, 1), ("pre_alignment_rounds", pre_alignment_rounds, 0),
            ("align_steps", align_steps, 1), ("local_steps", local_steps, 1),
            ("client_accumulate_grad_batches", client_accumulate_grad_batches, 1),
        ):
            if not isinstance(value, int) or value < low:
                issues.append(f"{name} must be an integer >= {low}, got {value!r}.")
        if weighting not in ("examples", "uniform"):
            issues.append(f"weighting must be 'examples' or 'uniform', got {weighting!r}.")
        if proximal_weight < 0 or client_lr <= 0:
            issues.append(f"proximal_weight must be >= 0 and client_lr > 0, got {proximal_weight}, {client_lr}.")
        try:
            self.spec = algorithm_spec(algorithm)
            issues += algorithm_issues(self.spec, num_clients=None, pre_alignment_rounds=pre_alignment_rounds,
                                       proximal_weight=proximal_weight)
        except ValueError as error:
            issues.append(f"algorithm: {error}")
        if issues:
            raise ValueError("Invalid FederatedLoop settings:\n  " + "\n  ".join(issues))
        self.algorithm = algorithm
        self.rounds, self.pre_alignment_rounds = rounds, pre_alignment_rounds
        self.align_steps, self.local_steps = align_steps, local_steps
        self.client_accumulate_grad_batches = client_accumulate_grad_batches
        self.clients_per_round = clients_per_round
        self.client_hparams = {
            "proximal_weight": proximal_weight, "lr": client_lr, "betas": tuple(client_betas),
            "weight_decay": client_weight_decay, "proximal": self.spec.proximal or "delta_w",
        }
        self.weighting, self.seed = weighting, seed
        self.export_final_adapter = export_final_adapter
        self.ledger = CommLedger()
        self.history: list[dict[str, Any]] = []
        self._round_metrics: dict[str, float] = {}
        self._client_module: AdapterFinetuneModule | None = None

    # ------------------------------------------------------------------ set-up and validation
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        issues = []
        split = getattr(pl_module, "split", None)
        if split is None:
            issues.append(f"the model must be an EmulatorAlignmentModule (with .split), got {type(pl_module).__name__}.")
        elif getattr(split, "algorithm", "fedbiot") != self.algorithm:
            issues.append(
                f"the split was made for algorithm {split.algorithm!r} but the loop runs {self.algorithm!r}; "
                f"build SplitModel(algorithm={self.algorithm!r}, ...)."
            )
        datamodule = trainer.datamodule
        missing = [name for name in CLIENT_API if not hasattr(datamodule, name)]
        if datamodule is None or missing:
            issues.append(
                f"the datamodule must provide the client data ({', '.join(CLIENT_API)}); "
                f"{type(datamodule).__name__} lacks {missing or list(CLIENT_API)}."
            )
        else:
            try:
                clients_per_round(datamodule.num_clients, self.clients_per_round)
            except ValueError as error:
                issues.append(str(error))
            issues += algorithm_issues(self.spec, num_clients=datamodule.num_clients, pre_alignment_rounds=0,
                                       proximal_weight=self.client_hparams["proximal_weight"])
        if trainer.max_steps != -1:
            issues.append(f"set trainer.max_steps to -1 (got {trainer.max_steps}); FederatedLoop.rounds sets the length.")
        if issues:
            raise ValueError("FederatedLoop cannot run:\n  " + "\n  ".join(issues))
        # One epoch per round, `align_steps` optimizer steps each (one no-op batch if nothing aligns).
        trainer.fit_loop.max_epochs = self.pre_alignment_rounds + self.rounds
        trainer.limit_train_batches = self._server_batches(trainer)

    def _server_batches(self, trainer: pl.Trainer) -> int:
        aligns = self.pre_alignment_rounds > 0 or self.spec.aligns_each_round
        return (self.align_steps if aligns else 1) * trainer.accumulate_grad_batches

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._client_module = AdapterFinetuneModule(pl_module.split, log_steps=False, **self.client_hparams)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        wanted = self._server_batches(trainer)
        if trainer.num_training_batches < wanted:
            raise ValueError(
                f"the public data has {trainer.num_training_batches} batches, fewer than align_steps x "
                f"accumulate_grad_batches = {wanted}; add public examples or lower align_steps."
            )

    # ------------------------------------------------------------------ the round
    def round_index(self, epoch: int) -> int | None:
        """Round of server epoch ``epoch``; ``None`` during pre-alignment."""
        return None if epoch < self.pre_alignment_rounds else epoch - self.pre_alignment_rounds

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._round_metrics = {}
        round_idx = self.round_index(trainer.current_epoch)
        # The server aligns in pre-alignment epochs, and after each round only if the algorithm does.
        pl_module.alignment_enabled = round_idx is None or self.spec.aligns_each_round
        if round_idx is None:
            return
        started = time.perf_counter()
        datamodule, split = trainer.datamodule, pl_module.split
        clients = sample_clients(datamodule.num_clients, self.clients_per_round, self.seed, round_idx)
        # Emulator LoRA + adapter LoRA; an emulator that no longer changes goes out in round 0 only.
        broadcast = split.lora_state("all" if self.spec.aligns_each_round or round_idx == 0 else "adapter")
        down = self.ledger.record_down(broadcast, len(clients))
        global_adapter = {key: broadcast[key] for key in split.lora_parameters("adapter")}
        uploads, weights, metrics, up = [], [], {}, 0
        for client_id in clients:
            split.load_lora_state(global_adapter)
            loss = self.fit_client(trainer, client_id, round_idx, datamodule)
            update = split.lora_state("adapter")
            up += self.ledger.record_up(update)
            uploads.append(update)
            weights.append(datamodule.client_num_examples(client_id) if self.weighting == "examples" else 1.0)
            metrics[f"client/{client_id}/loss"] = loss
        split.load_lora_state(fedavg(uploads, weights))
        metrics["round/client_loss"] = sum(metrics.values()) / len(clients)
        metrics.update({
            "round/index": float(round_idx), "round/clients": float(len(clients)),
            "round/client_seconds": time.perf_counter() - started,
            "comm/bytes_down": float(down), "comm/bytes_up": float(up),
            "comm/total_bytes": float(self.ledger.bytes_down + self.ledger.bytes_up),
        })
        self._round_metrics = metrics
        self.history.append({"round": round_idx, "clients": clients, **metrics})

    def fit_client(self, trainer: pl.Trainer, client_id: int, round_idx: int, datamodule: Any) -> float:
        """One client's local training: a fresh lean Trainer on the server's device; returns the
        client's mean cross-entropy over the fit."""
        with client_fit_context():
            client_trainer = build_client_trainer(
                trainer.strategy.root_device, trainer.precision, self.local_steps, self.client_accumulate_grad_batches
            )
            client_trainer.fit(self._client_module, train_dataloaders=datamodule.client_dataloader(client_id, round_idx))
        if client_trainer.global_step != self.local_steps:
            raise RuntimeError(
                f"client {client_id} ran {client_trainer.global_step} optimizer steps, expected {self.local_steps}."
            )
        return self._client_module.mean_loss

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._round_metrics:
            metrics = dict(self._round_metrics)
            pl_module.log("round/client_loss", metrics.pop("round/client_loss"), on_epoch=True, prog_bar=True)
            pl_module.log_dict(metrics, on_step=False, on_epoch=True)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.export_final_adapter or not trainer.is_global_zero:
            return
        out = Path(trainer.log_dir or trainer.default_root_dir) / "final_adapter"
        export_adapters(pl_module.split, out)
        summary = {"ledger": self.ledger.state_dict(), "rounds": self.history}
        (out / "federated_summary.json").write_text(json.dumps(summary, indent=2))
        log.info("final adapters written to %s", out)

    # ------------------------------------------------------------------ resume
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"ledger": self.ledger.state_dict(), "history": self.history}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.ledger.load_state_dict(state_dict["ledger"])
        self.history = list(state_dict["history"])
