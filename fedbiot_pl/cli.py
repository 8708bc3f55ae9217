"""The ``train.py`` command line: a LightningCLI over the FedBiOT modules, data and loop.

``python train.py evaluate --run <run folder> ...`` evaluates a run (see :mod:`fedbiot_pl.evaluate`).

``python train.py`` with no arguments runs ``fit`` on the embedded default (stories260K, GSM8K and
Alpaca samples shipped in the package). That default is also the base config of every subcommand
run without ``--config``: ``python train.py fit --federated.rounds 3`` overrides one setting of it.
An explicit ``--config`` replaces it (a recipe never inherits the embedded sample data unnoticed).
Every other use is the plain LightningCLI:
``python train.py fit --config configs/llama2-7b-gsm8k.yaml --federated.rounds 10``.

A setting, path or data row that cannot work (:class:`~fedbiot_pl.errors.ConfigError`) ends the
command with its message and exit code 2, without a traceback; ``FEDBIOT_TRACEBACK=1`` shows it.

Resuming: ``python train.py fit <same arguments> --ckpt_path last`` continues the newest run folder
of the logger (``<save_dir>/<name>/version_N``) from its ``checkpoints/last.ckpt`` (or starts it
afresh when it has none yet), so a preempted job can always be restarted with the same command.
Checkpoints and metric files are written atomically (:class:`AtomicCheckpointIO`,
:class:`AtomicCSVLogger`); checkpoints are read with ``weights_only=True``.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse import lazy_instance
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from typing_extensions import override

from fedbiot_pl.artifacts.checkpoint_io import AtomicCheckpointIO
from fedbiot_pl.artifacts.csv_logger import AtomicCSVLogger
from fedbiot_pl.artifacts.logger_resume import continue_run, evaluate_into_run
from fedbiot_pl.callbacks import FederatedLoop, RoundCheckpoint
from fedbiot_pl.datamodules import FederatedInstructionDataModule
from fedbiot_pl.errors import ConfigError
from fedbiot_pl.federation.attempts import TooFewClientsError
from fedbiot_pl.modules import EmulatorAlignmentModule
from fedbiot_pl.quiet import RESUME_WARNING, quiet_lightning_cli

DEFAULT_CONFIG = Path(__file__).resolve().parent / "assets" / "configs" / "default.yaml"
TRAINER_DEFAULTS = {
    "default_root_dir": "runs",
    "logger": lazy_instance(AtomicCSVLogger, save_dir="runs", name="fedbiot"),
    "plugins": lazy_instance(AtomicCheckpointIO),
    "num_sanity_val_steps": 0,
    "log_every_n_steps": 1,
    "devices": 1,
}
SUBCOMMANDS = ("fit", "validate", "test", "predict")
EVALUATE_HELP = "Evaluate a run's adapters (AdapFu, AdapEmu) on GSM8K, code or QA: `train.py evaluate --help`."
TRACEBACK_ENV = "FEDBIOT_TRACEBACK"
USER_ERRORS = (ConfigError, TooFewClientsError)


def tokenizer_of(model: str, gguf_file: str | None = None) -> str:
    """The clients' tokenizer: the model's own (a GGUF model's is inside its file)."""
    return os.path.join(model, gguf_file) if gguf_file else model


class FedBiOTCLI(LightningCLI):
    """LightningCLI with a ``federated:`` section (the :class:`FederatedLoop` callback)."""

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(FederatedLoop, "federated")
        # Round checkpoints (LoRA weights, optimizer, loop state), counted and named by federated round:
        # round-NNNN.ckpt every `every_n_rounds` rounds plus `last.ckpt` (RoundCheckpoint's defaults).
        parser.add_lightning_class_args(RoundCheckpoint, "checkpoint")
        # The clients' tokenizer is the model's.
        parser.link_arguments(("model.split.init_args.model", "model.split.init_args.gguf_file"), "data.tokenizer",
                              compute_fn=tokenizer_of)
        # The algorithm (federated.algorithm) lays out the model views when the loop sets up.
        parser.link_arguments("seed_everything", "federated.seed")
        parser.link_arguments("seed_everything", "data.seed")
        # The loop decides the length of the fit: one epoch per round (no "max_epochs was not set").
        parser.link_arguments(("federated.pre_alignment_rounds", "federated.rounds"), "trainer.max_epochs",
                              compute_fn=lambda pre_alignment, rounds: pre_alignment + rounds)

    @override
    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs) -> None:
        super()._add_subcommands(parser, **kwargs)
        # Listed in `train.py --help`; `main` hands `evaluate` to fedbiot_pl.evaluate before parsing.
        parser._subcommands_action.add_subcommand("evaluate", LightningArgumentParser(description=EVALUATE_HELP),
                                                  help=EVALUATE_HELP)

    _ckpt_checked = False

    @override
    def _parse_ckpt_path(self) -> None:
        """Name a damaged explicit ``--ckpt_path`` file before Lightning (2.5+) reads its hyper-parameters.

        See :func:`~fedbiot_pl.artifacts.checkpoint_integrity.resume_path`.
        """
        from fedbiot_pl.artifacts.checkpoint_integrity import resume_path

        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path not in (None, "last"):
            resume_path(ckpt_path, [])
            self._ckpt_checked = True
        super()._parse_ckpt_path()

    def before_fit(self) -> None:
        """With ``--ckpt_path``, log into the checkpoint's run folder and check it (:meth:`check_resume`)."""
        ckpt_path = self.config[self.subcommand].get("ckpt_path")
        for logger in self.trainer.loggers:  # CSV and TensorBoard loggers continue the run's folder
            continue_run(logger, ckpt_path)
        self.check_resume(ckpt_path)

    def after_fit(self) -> None:
        """Say where the run went: the folder and the files a user opens first."""
        folder = self.trainer.log_dir
        if not self.trainer.is_global_zero or not folder:
            return
        names = ("final_adapter/adapfu", "metrics.csv", "training.png")
        present = [name for name in names if (Path(folder) / name).exists()]
        print(f"Run folder: {folder}" + (f" ({', '.join(present)})" if present else ""), file=sys.stderr)

    def before_validate(self) -> None:
        """``validate --ckpt_path <round checkpoint>``: log into ``<run>/eval/validate-<checkpoint>``."""
        self.evaluate_into_checkpoint_run()

    def before_test(self) -> None:
        """``test --ckpt_path <round checkpoint>``: log into ``<run>/eval/test-<checkpoint>``."""
        self.evaluate_into_checkpoint_run()

    def evaluate_into_checkpoint_run(self) -> None:
        """Keep an evaluation's logs with the run that wrote the checkpoint (:func:`evaluate_into_run`)."""
        ckpt_path = self.config[self.subcommand].get("ckpt_path")
        for logger in self.trainer.loggers:
            evaluate_into_run(logger, ckpt_path, self.subcommand)
        # The round checkpoints' callback state names the run's checkpoint folder, not this one's.
        warnings.filterwarnings("ignore", message="The dirpath has changed from")

    def check_resume(self, ckpt_path: str | None) -> None:
        """Resume only from an intact checkpoint written with this run's settings.

        Checked before the model is built or anything is written: a damaged ``last.ckpt`` gives way to
        the newest intact checkpoint with a warning; a damaged explicit path, no intact checkpoint at
        all, or settings that differ from the checkpoint's stop the command, naming the file and each
        setting.
        """
        if ckpt_path is None:
            return
        warnings.filterwarnings("ignore", message=RESUME_WARNING)  # the run's own checkpoint folder, again
        from fedbiot_pl.artifacts.checkpoint_integrity import (
            checkpoint_folders,
            local_checkpoint,
            read_checkpoint,
            resume_path,
        )
        from fedbiot_pl.artifacts.resume_settings import (
            check_resume_settings,
            data_settings,
            run_settings,
            warn_data_differences,
        )

        if ckpt_path == "last":  # an explicit path was checked in _parse_ckpt_path
            path = resume_path(ckpt_path, checkpoint_folders(self.trainer))
            self.config_init[self.subcommand]["ckpt_path"] = str(path)  # what fit loads; config.yaml keeps `last`
        else:
            path = resume_path(ckpt_path, []) if not self._ckpt_checked else ckpt_path
        loop = next((cb for cb in self.trainer.callbacks if isinstance(cb, FederatedLoop)), None)
        split = getattr(self.model, "split", None)
        local = local_checkpoint(path) if path != "last" else None
        if local is not None and loop is not None and split is not None and local.is_file():
            checkpoint = read_checkpoint(local)
            check_resume_settings(checkpoint, run_settings(split, loop), path)
            warn_data_differences(checkpoint, data_settings(self.datamodule), path)

    @override
    def before_instantiate_classes(self) -> None:
        # Engine and precision settings this machine cannot run fail here, before any weights load.
        from fedbiot_pl.scaling.checks import check_scaling

        check_scaling(self.config[self.subcommand] if self.subcommand else self.config)


def with_default_config(argv: list[str]) -> list[str]:
    """``argv`` with the embedded default as the subcommand's base config when it names no ``--config``.

    ``[]`` becomes ``fit`` on the default; an explicit ``--config`` (or ``-c``) replaces the default.
    """
    if not argv:
        print(f"No arguments: running `fit --config {DEFAULT_CONFIG}` (the embedded default).", file=sys.stderr)
        argv = ["fit"]
    named = any(arg in ("-c", "--config") or arg.startswith("--config=") for arg in argv[1:])
    if argv[0] in SUBCOMMANDS and not named:
        return [argv[0], "--config", str(DEFAULT_CONFIG), *argv[1:]]
    return argv


def main(args: list[str] | None = None, cli_class: type[FedBiOTCLI] | None = None) -> FedBiOTCLI:
    """Run the CLI (``args`` default: ``sys.argv[1:]``); with no arguments, ``fit`` the embedded default.

    ``cli_class`` replaces :class:`FedBiOTCLI` (Flower's ServerApp runs the same command with its transport).

    A :class:`~fedbiot_pl.errors.ConfigError` (or too few clients) exits with its message and code 2.
    """
    argv = with_default_config(sys.argv[1:] if args is None else list(args))
    quiet_lightning_cli()
    if args is None:  # LightningCLI reads the command line itself
        sys.argv[1:] = argv
    try:
        if argv[0] == "evaluate":
            from fedbiot_pl.evaluate import main as evaluate

            sys.exit(evaluate(argv[1:]))
        return (cli_class or FedBiOTCLI)(
            EmulatorAlignmentModule,
            FederatedInstructionDataModule,
            trainer_defaults=TRAINER_DEFAULTS,
            seed_everything_default=42,
            save_config_kwargs={"overwrite": True},
            args=None if args is None else argv,
        )
    except USER_ERRORS as error:
        if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        print(f"error: {error}\n(set {TRACEBACK_ENV}=1 to see the traceback)", file=sys.stderr)
        sys.exit(2)


class _Parsed(Exception):  # noqa: N818 - a signal, not an error
    """Carries the parsed ``fit`` settings out of :class:`_ConfigReader` before anything is instantiated."""

    def __init__(self, config: Any) -> None:
        super().__init__("parsed")
        self.config = config


class _ConfigReader(FedBiOTCLI):
    """The CLI's parser, stopped after parsing: no seed is set, no class is built, nothing runs."""

    @override
    def _parse_ckpt_path(self) -> None:
        return None

    @override
    def _set_seed(self) -> None:
        return None

    @override
    def before_instantiate_classes(self) -> None:
        raise _Parsed(self.config["fit"])


def read_config(files: Sequence[str | Path], overrides: Sequence[str] = ()) -> Any:
    """The ``fit`` settings of ``train.py`` YAML ``files``, read by the CLI's own parser.

    Later files override earlier ones, then the command-line style ``overrides``; the parser applies
    its defaults, links and type checks.

    ``plan``, ``evaluate`` and the tests read a run's settings through this one reader.

    Raises:
        ConfigError: the parser refused the settings (its message names the key).
    """
    args = ["fit", *(arg for file in files for arg in ("--config", str(file))), *overrides]
    quiet_lightning_cli()
    try:
        with warnings.catch_warnings():  # `args` is the point here, whatever the calling command's argv holds
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            _ConfigReader(EmulatorAlignmentModule, FederatedInstructionDataModule, trainer_defaults=TRAINER_DEFAULTS,
                          seed_everything_default=42, args=args, parser_kwargs={"exit_on_error": False})
    except _Parsed as parsed:
        return parsed.config
    except SystemExit as error:  # jsonargparse reports through the parser's error()
        names = ", ".join(map(str, files))
        raise ConfigError(f"cannot read {names}: the parser stopped (exit {error.code}).") from error
    except Exception as error:  # the parser's own errors (argparse.ArgumentError, jsonargparse's) name the key
        raise ConfigError(f"cannot read {', '.join(map(str, files))}: {error}") from error
    raise AssertionError("unreachable: the reader stops before instantiation")


def config_views(config: Any) -> Any:
    """The model views of parsed ``fit`` settings, laid out by their algorithm (reads the model's config only)."""
    import importlib

    from fedbiot_pl.algorithms import resolve_algorithm

    split = config.model.split
    module_name, _, class_name = split.class_path.rpartition(".")
    views = getattr(importlib.import_module(module_name), class_name)(**split.init_args.as_dict())
    return views.use_algorithm(resolve_algorithm(config_algorithm(config)))


def config_algorithm(config: Any) -> Any:
    """``federated.algorithm`` of parsed settings, as :func:`~fedbiot_pl.algorithms.resolve_algorithm` takes it."""
    algorithm = config.federated.algorithm
    return algorithm.as_dict() if hasattr(algorithm, "as_dict") else algorithm
