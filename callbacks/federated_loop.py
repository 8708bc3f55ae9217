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

from fedbiot_pl.testing import faults as fault_injection
from fedbiot_pl.federation.aggregation import fedavg
from fedbiot_pl.algorithms import Algorithm, algorithm_issues, algorithm_spec
from fedbiot_pl.federation.attempts import (
    RoundAttempt,
    TooFewClientsError,
    fault_setting_issues,
    fault_totals,
    round_record,
    too_few_message,
)
from fedbiot_pl.federation.messages import CommLedger
from fedbiot_pl.errors import ConfigError
from fedbiot_pl.artifacts.export import export_adapters, write_text_atomic
from fedbiot_pl.artifacts.logger_resume import purge_events_from
from fedbiot_pl.modules.adapter_module import AdapterFinetuneModule
from fedbiot_pl.artifacts.resume_settings import DATA_KEY, SETTINGS_KEY, data_settings, run_settings
from fedbiot_pl.federation.rng_state import capture_rng, restore_rng
from fedbiot_pl.federation.sampling import clients_per_round, sample_clients
from fedbiot_pl.scaling.deepspeed import client_phase, lora_gathered
from fedbiot_pl.artifacts.training_plot import plot_fit

from .client_rounds import ClientRounds

log = logging.getLogger(__name__)
CLIENT_API = ("num_clients", "client_dataloader", "client_num_examples")


def round_due(trainer: pl.Trainer, every_n_rounds: int) -> tuple[FederatedLoop | None, int | None]:
    """The trainer's :class:`FederatedLoop` (``None`` if it has none) and the round its current epoch
    ends, if that round is due for a periodic callback: rounds ``n, 2n, ...`` and the last epoch;
    else ``None`` (also for pre-alignment epochs). Without a loop, epochs count as rounds."""
    loop = next((cb for cb in trainer.callbacks if isinstance(cb, FederatedLoop)), None)
    round_idx = loop.round_index(trainer.current_epoch) if loop else trainer.current_epoch
    last = trainer.current_epoch + 1 >= (trainer.max_epochs or 0)
    if round_idx is None or ((round_idx + 1) % every_n_rounds and not last):
        return loop, None
    return loop, round_idx


class FederatedLoop(ClientRounds, Callback):
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
    4. receives each client's adapter LoRA as safetensors bytes and validates it
       (:func:`~fedbiot_pl.federation.validation.update_problem`),
    5. sets the adapter LoRA to the sample-weighted FedAvg of the accepted uploads,

    and the epoch itself then runs the server's alignment against the new adapter. The client
    module shares the server's model: no reload, no re-wrapping, no copy per client.

    **Faults.** A client whose fit raises, whose mean loss is NaN/Inf, or that runs past
    ``client_time_limit`` is dropped from the round; an upload that is not safetensors, has missing
    or extra keys, a wrong shape or dtype, NaN/Inf values, or an update norm above
    ``max_update_norm`` is rejected. Both are logged (warning), counted (``round/dropped``,
    ``round/rejected``, ``ledger.uploads_rejected``) and listed with their reason in
    :attr:`history`; the round goes on with the rest. With fewer than ``min_clients`` accepted
    updates the round is retried (``on_too_few: retry``: up to ``max_round_retries`` more
    attempts, attempt ``a`` sampling with :func:`~fedbiot_pl.federation.sampling.sample_clients`'s
    ``attempt=a``, so retries stay deterministic) or the run stops with :class:`TooFewClientsError`.

    **Resume.** :meth:`state_dict` holds the ledger, the history, the last finished epoch, the
    sampling settings and the global random states (Python, NumPy, torch; LoRA dropout draws from
    torch's); Lightning's checkpoint adds the LoRA weights, the optimizer and the loops. On resume
    the random states are restored at the start of the next epoch, and loggers that can
    (:class:`~fedbiot_pl.artifacts.csv_logger.AtomicCSVLogger`) keep the rows up to the checkpoint's epoch,
    so a resumed run ends with the adapter and metrics of an uninterrupted one. Each checkpoint also
    records the split and loop settings a resume must share (:mod:`fedbiot_pl.artifacts.resume_settings`).
    Round checkpoints are written when their epoch ends, after the epoch's validation (if the
    datamodule has a ``val_dataloader``), whatever ``check_val_every_n_epoch`` is.

    Metrics (logged at the end of each round, before the round checkpoint is written):
    ``client/<id>/loss`` (mean CE of each accepted client's fit), ``round/client_loss``,
    ``round/clients`` (accepted), ``round/dropped``, ``round/rejected``, ``round/attempts``,
    ``comm/bytes_down``, ``comm/bytes_up`` (this round) and ``comm/total_bytes``; alignment
    metrics come from the module (``align/l2``, ``align/kl``). At the end of fit the final adapters
    are exported to ``<log_dir>/final_adapter`` and, with a CSV logger, ``training.png`` is drawn
    next to its ``metrics.csv`` (:mod:`fedbiot_pl.artifacts.training_plot`). A resumed TensorBoard logger
    drops the events logged after the checkpoint (:func:`~fedbiot_pl.artifacts.logger_resume.purge_events_from`).

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
        plot_training: draw ``training.png`` from the CSV logger's ``metrics.csv`` at the end of fit.
        min_clients: fewest accepted client updates a round needs (at most the clients per round).
        on_too_few: ``stop`` = raise TooFewClientsError when a round has fewer than ``min_clients``
            accepted updates; ``retry`` = run the round again with a fresh sample first.
        max_round_retries: extra attempts per round with ``on_too_few: retry``.
        client_time_limit: seconds a client fit may take (checked after every client batch);
            ``null`` = no limit.
        max_update_norm: largest L2 norm of an upload's change to the broadcast adapter LoRA;
            ``null`` = no bound.
    """

    def __init__(
        self,
        algorithm: Algorithm = "fedbiot",
        rounds: int = 3,
        pre_alignment_rounds: int = 0,
        align_steps: int = 5,
        local_steps: int = 30,
        client_accumulate_grad_batches: int = 2,
        clients_per_round: int | float | None = None,  # noqa: PYI041 - int first: the CLI keeps 10 a count
        proximal_weight: float = 0.0,
        client_lr: float = 1e-4,
        client_betas: tuple[float, float] = (0.9, 0.95),
        client_weight_decay: float = 0.01,
        weighting: Literal["examples", "uniform"] = "examples",
        seed: int = 42,
        export_final_adapter: bool = True,
        plot_training: bool = True,
        min_clients: int = 1,
        on_too_few: Literal["retry", "stop"] = "stop",
        max_round_retries: int = 2,
        client_time_limit: float | None = None,
        max_update_norm: float | None = None,
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
        issues += fault_setting_issues(min_clients, on_too_few, max_round_retries, client_time_limit, max_update_norm)
        try:
            self.spec = algorithm_spec(algorithm)
            issues += algorithm_issues(self.spec, num_clients=None, pre_alignment_rounds=pre_alignment_rounds,
                                       proximal_weight=proximal_weight)
        except ValueError as error:
            issues.append(f"algorithm: {error}")
        if issues:
            raise ConfigError("Invalid FederatedLoop settings:\n  " + "\n  ".join(issues))
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
        self.export_final_adapter, self.plot_training = export_final_adapter, plot_training
        self.min_clients, self.on_too_few, self.max_round_retries = min_clients, on_too_few, max_round_retries
        self.client_time_limit, self.max_update_norm = client_time_limit, max_update_norm
        self.ledger = CommLedger()
        self.history: list[dict[str, Any]] = []
        self._round_metrics: dict[str, float] = {}
        self._client_module: AdapterFinetuneModule | None = None
        self._attempt = 0  # the attempt at the current round (fault points and retries)
        self._completed_epoch: int | None = None  # last finished epoch (what a checkpoint holds)
        self._resumed_epoch: int | None = None  # the checkpoint's epoch, when resumed
        self._pending_rng: dict[str, Any] | None = None  # random states to restore at the next epoch
        self._last_client_error: BaseException | None = None

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
        elif datamodule.num_clients < 1:
            issues.append(f"the datamodule has {datamodule.num_clients} clients; data.num_clients must be >= 1.")
        else:
            try:
                per_round = clients_per_round(datamodule.num_clients, self.clients_per_round)
                if self.min_clients > per_round:
                    issues.append(
                        f"min_clients={self.min_clients} exceeds the {per_round} clients sampled per round; "
                        f"lower min_clients or raise clients_per_round."
                    )
            except ValueError as error:
                issues.append(str(error))
            issues += algorithm_issues(self.spec, num_clients=datamodule.num_clients, pre_alignment_rounds=0,
                                       proximal_weight=self.client_hparams["proximal_weight"])
        if trainer.max_steps != -1:
            issues.append(f"set trainer.max_steps to -1 (got {trainer.max_steps}); FederatedLoop.rounds sets the length.")
        # A round checkpoint is written when its epoch ends, after the round's validation and metrics
        # (Lightning would write it at validation end, without the loop's state, when validation
        # does not run every epoch): unset `save_on_train_epoch_end` becomes True, False is refused.
        for callback in trainer.checkpoint_callbacks:
            if getattr(callback, "_save_on_train_epoch_end", True) is None:
                callback._save_on_train_epoch_end = True
            elif getattr(callback, "_save_on_train_epoch_end", True) is False:
                issues.append("a ModelCheckpoint has save_on_train_epoch_end=False; round checkpoints must be written "
                              "when the round ends: leave it unset (or true).")
        if issues:
            raise ConfigError("FederatedLoop cannot run:\n  " + "\n  ".join(issues))
        if getattr(datamodule, "num_val_rows", None) == 0:  # no validation split: nothing to validate
            trainer.limit_val_batches = 0
        # One epoch per round, `align_steps` optimizer steps each (one no-op batch if nothing aligns).
        trainer.fit_loop.max_epochs = self.pre_alignment_rounds + self.rounds
        trainer.limit_train_batches = self._server_batches(trainer)

    def _server_batches(self, trainer: pl.Trainer) -> int:
        aligns = self.pre_alignment_rounds > 0 or self.spec.aligns_each_round
        return (self.align_steps if aligns else 1) * trainer.accumulate_grad_batches

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._client_module = AdapterFinetuneModule(pl_module.split, log_steps=False, **self.client_hparams)
        if self._resumed_epoch is not None:
            for logger in trainer.loggers:
                if callable(getattr(logger, "resume_rows", None)):
                    logger.resume_rows(self._resumed_epoch)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        wanted = self._server_batches(trainer)
        if trainer.num_training_batches < wanted:
            raise ConfigError(
                f"the public data has {trainer.num_training_batches} batches, fewer than align_steps x "
                f"accumulate_grad_batches = {wanted}; add public examples or lower align_steps."
            )
        if self._resumed_epoch is not None and trainer.is_global_zero:
            # The loops are restored now: the next epoch logs from this step on.
            for logger in trainer.loggers:
                purge_events_from(logger, trainer.fit_loop.epoch_loop._batches_that_stepped)

    # ------------------------------------------------------------------ the round
    def round_index(self, epoch: int) -> int | None:
        """Round of server epoch ``epoch``; ``None`` during pre-alignment."""
        return None if epoch < self.pre_alignment_rounds else epoch - self.pre_alignment_rounds

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending_rng is not None:  # resumed: continue from the checkpoint's random states
            restore_rng(self._pending_rng)
            self._pending_rng = None
        self._round_metrics = {}
        round_idx = self.round_index(trainer.current_epoch)
        # The server aligns in pre-alignment epochs, and after each round only if the algorithm does.
        pl_module.alignment_enabled = round_idx is None or self.spec.aligns_each_round
        if round_idx is None:
            return
        started = time.perf_counter()
        datamodule, split = trainer.datamodule, pl_module.split
        down_before, up_before = self.ledger.bytes_down, self.ledger.bytes_up
        with client_phase(trainer.strategy, split):  # ZeRO-3: every rank holds the whole compressed model
            attempts = self._run_round(trainer, split, datamodule, round_idx)
        metrics, entry = round_record(round_idx, attempts)
        metrics.update({
            "round/client_seconds": time.perf_counter() - started,
            "comm/bytes_down": float(self.ledger.bytes_down - down_before),
            "comm/bytes_up": float(self.ledger.bytes_up - up_before),
            "comm/total_bytes": float(self.ledger.bytes_down + self.ledger.bytes_up),
        })
        self._round_metrics = metrics
        self.history.append({**entry, **metrics})

    def _run_round(self, trainer: pl.Trainer, split: Any, datamodule: Any, round_idx: int) -> list[RoundAttempt]:
        """The round's attempts (retries when too few clients succeed); loads the FedAvg of the last."""
        attempts: list[RoundAttempt] = []
        for attempt in range(1 + (self.max_round_retries if self.on_too_few == "retry" else 0)):
            self._attempt = attempt
            clients = sample_clients(datamodule.num_clients, self.clients_per_round, self.seed, round_idx, attempt)
            # Emulator LoRA + adapter LoRA; an emulator that no longer changes goes out in round 0 only.
            broadcast = split.lora_state("all" if self.spec.aligns_each_round or round_idx == 0 else "adapter")
            self.ledger.record_down(broadcast, len(clients))
            global_adapter = {key: broadcast[key] for key in split.lora_parameters("adapter")}
            attempts.append(self.run_attempt(trainer, split, RoundAttempt(attempt, clients), global_adapter, round_idx))
            split.load_lora_state(global_adapter)
            if len(attempts[-1].uploads) >= self.min_clients:
                break
            log.warning("round %d, attempt %d: %d accepted updates, fewer than min_clients=%d.",
                        round_idx, attempt + 1, len(attempts[-1].uploads), self.min_clients)
        else:
            message = too_few_message(round_idx, attempts, self.min_clients, self.on_too_few)
            raise TooFewClientsError(message) from self._last_client_error
        self._attempt = 0
        split.load_lora_state(fedavg(attempts[-1].uploads, attempts[-1].weights))
        return attempts

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        fault_injection.trigger("align_step", epoch=trainer.current_epoch, step=batch_idx)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._completed_epoch = trainer.current_epoch
        if not self._round_metrics:
            return
        metrics = dict(self._round_metrics)
        pl_module.log("round/client_loss", metrics["round/client_loss"], on_epoch=True, prog_bar=True, logger=False)
        pl_module.log_dict({k: v for k, v in metrics.items() if k != "round/client_loss"}, on_step=False,
                           on_epoch=True, logger=False)
        # Straight to the loggers, so that the row is on disk before the round checkpoint is written
        # (Lightning logs epoch metrics after the checkpoint callbacks). Lightning's epoch-end step:
        step = max(getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step) - 1, 0)
        for logger in trainer.loggers:
            logger.log_metrics({**metrics, "epoch": trainer.current_epoch}, step=step)
            logger.save()

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # At fit end, not train end: a run resumed from its final checkpoint skips training but
        # still writes the adapters that a kill during the first export may have left unwritten.
        if self.export_final_adapter:
            self._export_final_adapter(trainer, pl_module)
        if self.plot_training and trainer.is_global_zero:  # the loggers' last save came before on_fit_end
            plot_fit(trainer.loggers, self.pre_alignment_rounds)

    def _export_final_adapter(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        with lora_gathered(pl_module.split):  # ZeRO-3: a collective, whole LoRA on every rank
            if not trainer.is_global_zero:
                return
            out = Path(trainer.log_dir or trainer.default_root_dir) / "final_adapter"
            export_adapters(pl_module.split, out)
        summary = {"ledger": self.ledger.state_dict(), "faults": fault_totals(self.history), "rounds": self.history}
        write_text_atomic(out / "federated_summary.json", json.dumps(summary, indent=2))
        log.info("final adapters written to %s", out)

    # ------------------------------------------------------------------ resume
    @override
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        # The settings a resume must share (compared by the CLI before any weight loads).
        checkpoint[SETTINGS_KEY] = run_settings(pl_module.split, self)
        checkpoint[DATA_KEY] = data_settings(trainer.datamodule)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "ledger": self.ledger.state_dict(), "history": self.history, "epoch": self._completed_epoch,
            "sampling": {"seed": self.seed, "clients_per_round": self.clients_per_round},
            "rng": capture_rng(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.ledger.load_state_dict(state_dict["ledger"])
        self.history = list(state_dict["history"])
        self._resumed_epoch = self._completed_epoch = state_dict.get("epoch")
        self._pending_rng = state_dict.get("rng")
        sampling = state_dict.get("sampling", {})
        if sampling and sampling != {"seed": self.seed, "clients_per_round": self.clients_per_round}:
            log.warning("resuming with client sampling %s, but the checkpoint's run used %s: later rounds will "
                        "sample other clients than the interrupted run would have.",
                        {"seed": self.seed, "clients_per_round": self.clients_per_round}, sampling)
