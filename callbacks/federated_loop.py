"""The federated loop as a callback on the server's Trainer: one server epoch = one round.

The round itself is a :class:`~fedbiot_pl.federation.round.RoundRunner` (no Trainer); this callback
maps Lightning's hooks onto it, logs the round's metrics, exports the final adapters and keeps the
loop's state in the checkpoint.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch import Callback
from typing_extensions import override

from fedbiot_pl import hooks
from fedbiot_pl.algorithms import Algorithm, ClientOptim, RunSettings, resolve_algorithm
from fedbiot_pl.artifacts.export import export_adapters, export_personal_adapters, write_text_atomic
from fedbiot_pl.artifacts.logger_resume import purge_events_from
from fedbiot_pl.artifacts.resume_settings import DATA_KEY, SETTINGS_KEY, data_settings, run_settings
from fedbiot_pl.artifacts.training_plot import plot_fit
from fedbiot_pl.errors import ConfigError
from fedbiot_pl.federation.attempts import fault_setting_issues, fault_totals
from fedbiot_pl.federation.client import ClientFitSettings, LocalClients
from fedbiot_pl.federation.ledger import CommLedger
from fedbiot_pl.federation.rng_state import capture_rng, restore_rng
from fedbiot_pl.federation.round import RoundRunner, RoundSettings
from fedbiot_pl.federation.sampling import clients_per_round
from fedbiot_pl.federation.server_optimizers import ServerOptimizer
from fedbiot_pl.federation.server_optimizers import server_optimizer as make_server_optimizer
from fedbiot_pl.federation.transport import InProcessTransport
from fedbiot_pl.hierarchy.simulation import fleet_data_issues, fleet_setting, simulated_fleet
from fedbiot_pl.scaling.deepspeed import client_phase, lora_gathered

log = logging.getLogger(__name__)
CLIENT_API = ("num_clients", "client_dataloader", "client_num_examples")


def privacy_spent(dp: Any, releases: dict[int, int]) -> dict[str, Any]:
    """Local DP spent per client over its ``releases`` (uploads it sent, every attempt of every round counted).

    The total delta is ``releases x delta`` while that is below 1, else the per-release delta (zCDP then).
    """
    from dataclasses import asdict

    from fedbiot_pl.privacy import compose

    def spent(count: int) -> dict[str, Any]:
        target = count * dp.delta if count * dp.delta < 1 else dp.delta
        return asdict(compose(dp, count, delta_total=target))

    return {"mechanism": {**asdict(dp), "sigma": dp.sigma, "sensitivity": dp.sensitivity},
            "per_client": {str(client): spent(count) for client, count in sorted(releases.items())}}


def released_uploads(attempts: list[Any]) -> dict[int, int]:
    """Uploads each client sent in a round's ``attempts``: every sampled client that was not dropped."""
    counts: dict[int, int] = {}
    for attempt in attempts:
        dropped = {event["client"] for event in attempt.events if event["outcome"] == "dropped"}
        for client in attempt.clients:
            if client not in dropped:
                counts[client] = counts.get(client, 0) + 1
    return counts


def round_due(trainer: pl.Trainer, every_n_rounds: int) -> tuple[FederatedLoop | None, int | None]:
    """The trainer's :class:`FederatedLoop` and the round that ends with this epoch, if it is due.

    The loop is ``None`` if the trainer has none (epochs then count as rounds). The round is due for
    a periodic callback at rounds ``n, 2n, ...`` and the last epoch; else it is ``None`` (also for
    pre-alignment epochs).
    """
    loop = next((cb for cb in trainer.callbacks if isinstance(cb, FederatedLoop)), None)
    round_idx = loop.round_index(trainer.current_epoch) if loop else trainer.current_epoch
    last = trainer.current_epoch + 1 >= (trainer.max_epochs or 0)
    if round_idx is None or ((round_idx + 1) % every_n_rounds and not last):
        return loop, None
    return loop, round_idx


class FederatedLoop(Callback):
    """Runs the rounds of FedBiOT (or another algorithm) inside the server's ``Trainer.fit``.

    The server's module is an EmulatorAlignmentModule.

    ``algorithm`` (:mod:`fedbiot_pl.algorithms`) lays out the model views at set-up and decides what
    is broadcast, trained, uploaded and aggregated, and how many alignment steps the server takes
    after each round. The server fit has ``pre_alignment_rounds + rounds`` epochs; the first
    ``pre_alignment_rounds`` only align the emulator. At the start of every later epoch (round
    ``t``) the :class:`~fedbiot_pl.federation.round.RoundRunner` samples the round's clients,
    broadcasts, fits each client's module for ``local_steps`` optimizer steps with a fresh lean
    Trainer (the module shares the server's model: no copy per client), receives and checks the
    uploads, and makes their aggregate the global state; the epoch then runs the server's alignment.

    **Faults.** A client whose fit raises, whose mean loss is not finite, or that runs past
    ``client_time_limit`` is dropped; an upload that is not a LoRA message, has missing or extra
    keys, a wrong shape or dtype, NaN/Inf values, or an update norm above ``max_update_norm`` is
    rejected. Both are logged, counted and listed in :attr:`history`. With fewer than
    ``min_clients`` accepted updates the round is retried (``on_too_few: retry``) or the run stops
    with :class:`~fedbiot_pl.federation.attempts.TooFewClientsError`.

    **Resume.** :meth:`state_dict` holds the ledger, the history, the last finished epoch, the
    sampling settings, the server optimizer's state and the global random states; a resumed run
    ends with the adapter and metrics of an uninterrupted one.

    Metrics per round: ``client/<id>/loss``, ``round/client_loss``, ``round/clients``,
    ``round/dropped``, ``round/rejected``, ``round/attempts``, ``comm/bytes_down``,
    ``comm/bytes_up`` and ``comm/total_bytes``. At the end of fit the final adapters are exported
    to ``<log_dir>/final_adapter`` and ``training.png`` is drawn next to ``metrics.csv``.

    Args:
        algorithm: ``fedbiot``, ``offsite_tuning``, ``fedot``, ``fedavg_lora`` or ``fedprox``, or
            ``{class_path: ..., init_args: ...}`` of a :class:`~fedbiot_pl.algorithms.Algorithm` subclass.
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
        server_optimizer: ``null`` = FedAvg (the aggregate becomes the global state); ``fedadam``,
            ``fedyogi``, ``fedadagrad`` or ``sgd`` (FedOpt, Reddi et al. 2021) with their defaults, or
            ``{class_path: fedbiot_pl.federation.server_optimizers.FedAdam, init_args: {lr: ...}}``.
        devices: a simulated device fleet, one device per client, that gives every round a simulated
            time (``sim/round_seconds``, ``sim/seconds``): ``default`` (80 devices in three assumed tiers,
            ``fedbiot_pl/assets/fleets/default-80.yaml``), a fleet YAML, or the fleet inline; ``null`` =
            no simulated time. For the algorithms whose clients hold the full model and share LoRA
            (``fedavg_lora``, ``fedprox``, ``hierfedlora``).
        local_dp: local differential privacy on every LoRA upload, ``{clip_norm: C, epsilon: e, delta: d}``
            (optionally ``calibration: analytic|classic``): the client clips its update to L2 norm ``C`` and adds
            Gaussian noise calibrated so that each upload is ``(e, d)``-DP (:mod:`fedbiot_pl.privacy.local_dp`);
            ``null`` = none. The privacy spent per client over the run is in ``federated_summary.json``.
    """

    def __init__(
        self,
        algorithm: str | Algorithm = "fedbiot",
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
        server_optimizer: str | ServerOptimizer | None = None,
        devices: str | dict | None = None,
        local_dp: dict | None = None,
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
        self.algorithm: Algorithm | None = None
        self.devices, self.fleet = devices, None
        try:
            self.algorithm = resolve_algorithm(algorithm)
            self.fleet, fleet_issues = fleet_setting(devices, self.algorithm)
            issues += fleet_issues + self.algorithm.check(
                RunSettings(None, pre_alignment_rounds, proximal_weight, simulated=devices is not None))
        except ValueError as error:
            issues.append(f"algorithm: {error}")
        self.server_optimizer = None
        try:
            self.server_optimizer = make_server_optimizer(server_optimizer)
        except ValueError as error:
            issues.append(f"server_optimizer: {error}")
        if max_update_norm is not None and self.algorithm is not None and self.algorithm.family == "kd":
            issues.append(f"max_update_norm bounds a LoRA update's change; algorithm {self.algorithm.label!r} shares "
                          f"{self.algorithm.family} updates: set max_update_norm to null.")
        if self.server_optimizer is not None and self.algorithm is not None and self.algorithm.family != "params":
            issues.append(f"server_optimizer {server_optimizer!r} steps on averaged weights; algorithm "
                          f"{self.algorithm.label!r} shares {self.algorithm.family} updates: set server_optimizer "
                          "to null.")
        privacy = None
        if local_dp is not None:
            from fedbiot_pl.privacy import LocalDP

            try:
                privacy = LocalDP(**dict(local_dp))
                issues += [f"local_dp: {issue}" for issue in privacy.issues()]
            except TypeError as error:
                issues.append(f"local_dp takes clip_norm, epsilon, delta and calibration; got {local_dp!r} ({error}).")
            if self.algorithm is not None and self.algorithm.family != "params":
                issues.append(f"local_dp noises LoRA uploads; algorithm {self.algorithm.label!r} shares "
                              f"{self.algorithm.family} updates: set local_dp to null.")
            elif self.algorithm is not None and type(self.algorithm).groups is not Algorithm.groups:
                issues.append(f"local_dp counts one upload per client and attempt; algorithm "
                              f"{self.algorithm.label!r} uploads once per intra-group round: set local_dp to null.")
        if issues:
            raise ConfigError("Invalid FederatedLoop settings:\n  " + "\n  ".join(issues))
        self.rounds, self.pre_alignment_rounds, self.align_steps = rounds, pre_alignment_rounds, align_steps
        self.client_optim = ClientOptim(client_lr, tuple(client_betas), client_weight_decay, proximal_weight)
        self.client_fit = ClientFitSettings(local_steps, client_accumulate_grad_batches, client_time_limit, privacy)
        self.round_settings = RoundSettings(clients_per_round, seed, weighting, min_clients, on_too_few,
                                            max_round_retries, max_update_norm)
        self.export_final_adapter, self.plot_training = export_final_adapter, plot_training
        self.ledger = CommLedger()
        self.history: list[dict[str, Any]] = []
        self.runner: RoundRunner | None = None
        self._round_metrics: dict[str, float] = {}
        self._completed_epoch: int | None = None  # last finished epoch (what a checkpoint holds)
        self._resumed_epoch: int | None = None  # the checkpoint's epoch, when resumed
        self._pending_rng: dict[str, Any] | None = None  # random states to restore at the next epoch
        self._fleet_state: dict[str, Any] | None = None  # the simulated clock of a checkpoint
        # How the rounds reach the clients: ``None`` = in this process; a deployment (Flower's ServerApp)
        # sets ``factory(loop, trainer, pl_module) -> (transport, client data)`` before the fit.
        self.transport_factory: Callable[..., tuple[Any, Any]] | None = None
        self._releases: dict[int, int] = {}  # uploads each client sent (local DP's accounting)

    @property
    def algorithm_name(self) -> str:
        """The algorithm's config name (its class path if unregistered)."""
        return self.algorithm.label

    @property
    def seed(self) -> int:
        """Seed of client sampling and of the clients' random numbers (:attr:`round_settings`)."""
        return self.round_settings.seed

    @property
    def clients_per_round(self) -> int | float | None:
        """Clients sampled per round: ``None`` (all), a count or a fraction (:attr:`round_settings`)."""
        return self.round_settings.clients_per_round

    @property
    def local_steps(self) -> int:
        """Client optimizer steps per round (:attr:`client_fit`)."""
        return self.client_fit.local_steps

    @property
    def completed_rounds(self) -> int:
        """Rounds whose epoch has ended, counted from 1 (0 until the first round ends; pre-alignment not counted)."""
        done = self._completed_epoch
        return 0 if done is None else max(done + 1 - self.pre_alignment_rounds, 0)

    # ------------------------------------------------------------------ set-up and validation
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        issues = []
        views = getattr(pl_module, "split", None)
        if views is None:
            issues.append(
                f"the model must be an EmulatorAlignmentModule (with .split), got {type(pl_module).__name__}.")
        else:
            try:  # the algorithm lays out the views (before any weight loads)
                views.use_algorithm(self.algorithm)
            except ValueError as error:
                issues.append(str(error))
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
                min_clients = self.round_settings.min_clients
                if min_clients > per_round:
                    issues.append(
                        f"min_clients={min_clients} exceeds the {per_round} clients sampled per round; "
                        f"lower min_clients or raise clients_per_round."
                    )
            except ValueError as error:
                issues.append(str(error))
            issues += self.algorithm.check(RunSettings(datamodule.num_clients, 0, self.client_optim.proximal_weight,
                                                       getattr(views, "num_layers", None), self.fleet is not None))
            issues += fleet_data_issues(self.fleet, datamodule) + self.algorithm.data_issues(datamodule)
        if trainer.max_steps != -1:
            issues.append(
                f"set trainer.max_steps to -1 (got {trainer.max_steps}); FederatedLoop.rounds sets the length.")
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
        aligns = self.algorithm.trains_on_server(self.pre_alignment_rounds)
        return (self.align_steps if aligns else 1) * trainer.accumulate_grad_batches

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        views = pl_module.split
        clients = LocalClients(
            self.algorithm, views, self.algorithm.client_module(views, self.client_optim), trainer.datamodule,
            self.client_fit, trainer.strategy.root_device, trainer.precision, self.seed, trainer.world_size,
        )
        data = trainer.datamodule
        if self.transport_factory is None:
            transport = InProcessTransport(self.ledger, trainer.global_rank, trainer.world_size)
        else:  # remote clients: the transport, and their data as the server knows it (their sizes)
            transport, data = self.transport_factory(self, trainer, pl_module)
        fleet = None
        if self.fleet is not None:  # its clock continues a checkpoint's at the first epoch (_pending_state)
            fleet = simulated_fleet(self.fleet, views, trainer.datamodule, self.local_steps,
                                    self.client_fit.accumulate_grad_batches)
        self.runner = RoundRunner(self.algorithm, views, data, clients, self.round_settings,
                                  self.ledger, transport, self.server_optimizer, fleet)
        report = self.algorithm.report()
        if report and trainer.is_global_zero and trainer.log_dir:
            write_text_atomic(Path(trainer.log_dir) / "algorithm.txt", report + "\n")
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
        # Resumed: the clock continues. Here, not in on_fit_start: strategies that restore the checkpoint
        # after their set-up (DeepSpeed) load the callbacks' state after on_fit_start.
        if self._fleet_state is not None and self.runner.fleet is not None:
            self.runner.fleet.load_state_dict(self._fleet_state)
            self._fleet_state = None
        self._round_metrics = {}
        round_idx = self.round_index(trainer.current_epoch)
        # The epoch's training steps are the server steps the algorithm takes after this round.
        pl_module.alignment_enabled = self.algorithm.server_steps(round_idx, self.align_steps) > 0
        if round_idx is None:
            return
        with client_phase(trainer.strategy, pl_module.split):  # ZeRO-3: every rank holds the whole compressed model
            result = self.runner.run_round(round_idx)
        self._round_metrics = result.metrics
        self.history.append(result.entry)
        for client, count in released_uploads(result.attempts).items():
            self._releases[client] = self._releases.get(client, 0) + count

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        hooks.fire("align_step", epoch=trainer.current_epoch, step=batch_idx)

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
            export_personal_adapters(pl_module.split, self.algorithm.personal_states(), out / "clients")
        summary = {"ledger": self.ledger.state_dict(), "faults": fault_totals(self.history), "rounds": self.history}
        if self.client_fit.local_dp is not None:
            summary["privacy"] = privacy_spent(self.client_fit.local_dp, self._releases)
        write_text_atomic(out / "federated_summary.json", json.dumps(summary, indent=2))
        log.info("final adapters written to %s", out)

    # ------------------------------------------------------------------ resume
    @override
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        # The settings a resume must share (compared by the CLI before any weight loads).
        checkpoint[SETTINGS_KEY] = run_settings(pl_module.split, self)
        checkpoint[DATA_KEY] = data_settings(trainer.datamodule)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "ledger": self.ledger.state_dict(), "history": self.history, "epoch": self._completed_epoch,
            "sampling": {"seed": self.seed, "clients_per_round": self.clients_per_round},
            "rng": capture_rng(),
            **({"algorithm": state} if (state := self.algorithm.state_dict()) else {}),
            **({"server_optimizer": self.server_optimizer.state_dict()} if self.server_optimizer is not None else {}),
            **({"fleet": self.runner.fleet.state_dict()} if self.runner is not None and self.runner.fleet else {}),
            **({"releases": dict(self._releases)} if self._releases else {}),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.ledger.load_state_dict(state_dict["ledger"])
        self.history = list(state_dict["history"])
        self._resumed_epoch = self._completed_epoch = state_dict.get("epoch")
        self._pending_rng = state_dict.get("rng")
        if "algorithm" in state_dict:
            self.algorithm.load_state_dict(state_dict["algorithm"])
        self._fleet_state = state_dict.get("fleet")
        self._releases = {int(client): int(count) for client, count in state_dict.get("releases", {}).items()}
        if (self._fleet_state is None) != (self.fleet is None) and self._completed_epoch is not None:
            log.warning("resuming %s a simulated fleet, but the checkpoint's run was %s one: sim/seconds %s.",
                        "with" if self.fleet is not None else "without", "without" if self.fleet else "with",
                        "starts from 0 at this round" if self.fleet is not None else "is no longer logged")
        if self.server_optimizer is not None and "server_optimizer" in state_dict:
            self.server_optimizer.load_state_dict(state_dict["server_optimizer"])
        sampling = state_dict.get("sampling", {})
        if sampling and sampling != {"seed": self.seed, "clients_per_round": self.clients_per_round}:
            log.warning("resuming with client sampling %s, but the checkpoint's run used %s: later rounds will "
                        "sample other clients than the interrupted run would have.",
                        {"seed": self.seed, "clients_per_round": self.clients_per_round}, sampling)
