"""The ``train.py`` command line: a LightningCLI over the FedBiOT modules, data and loop.

``python train.py evaluate --run <run folder> ...`` evaluates a run (see :mod:`fedbiot_pl.evaluate`).

``python train.py`` with no arguments runs ``fit`` on the embedded default (stories260K, GSM8K and
Alpaca samples shipped in the package). Every other use is the plain LightningCLI:
``python train.py fit --config configs/llama2-7b-gsm8k.yaml --federated.rounds 10``.

Resuming: ``python train.py fit <same arguments> --ckpt_path last`` continues the newest run folder
of the logger (``<save_dir>/<name>/version_N``) from its ``checkpoints/last.ckpt`` (or starts it
afresh when it has none yet), so a preempted job can always be restarted with the same command.
Checkpoints and metric files are written atomically (:class:`AtomicCheckpointIO`,
:class:`AtomicCSVLogger`); checkpoints are read with ``weights_only=True``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from jsonargparse import lazy_instance
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from typing_extensions import override

from fedbiot_pl.callbacks import FederatedLoop
from fedbiot_pl.checkpoint_io import AtomicCheckpointIO
from fedbiot_pl.csv_logger import AtomicCSVLogger
from fedbiot_pl.datamodules import FederatedInstructionDataModule
from fedbiot_pl.modules import EmulatorAlignmentModule

DEFAULT_CONFIG = Path(__file__).resolve().parent / "assets" / "configs" / "default.yaml"
TRAINER_DEFAULTS = {
    "default_root_dir": "runs",
    "logger": lazy_instance(AtomicCSVLogger, save_dir="runs", name="fedbiot"),
    "plugins": lazy_instance(AtomicCheckpointIO),
    "num_sanity_val_steps": 0,
    "log_every_n_steps": 1,
    "devices": 1,
}


class FedBiOTCLI(LightningCLI):
    """LightningCLI with a ``federated:`` section (the :class:`FederatedLoop` callback)."""

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(FederatedLoop, "federated")
        # Round checkpoints (LoRA weights, optimizer, loop state): one per round plus `last.ckpt`; a
        # resumed run rewrites the same names instead of adding `-v1` copies.
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {"checkpoint.save_last": True, "checkpoint.save_top_k": -1, "checkpoint.every_n_epochs": 1,
             "checkpoint.filename": "round-{epoch}", "checkpoint.enable_version_counter": False}
        )
        # The clients' tokenizer is the model's.
        parser.link_arguments("model.split.init_args.model", "data.tokenizer")
        # One switch selects the algorithm: the loop's and the split's.
        parser.link_arguments("federated.algorithm", "model.split.init_args.algorithm")
        parser.link_arguments("seed_everything", "federated.seed")
        parser.link_arguments("seed_everything", "data.seed")

    def before_fit(self) -> None:
        """With ``--ckpt_path``, log into the run folder that the checkpoint belongs to."""
        ckpt_path = self.config[self.subcommand].get("ckpt_path")
        for logger in self.trainer.loggers:
            if isinstance(logger, AtomicCSVLogger):
                logger.continue_run(ckpt_path)

    @override
    def before_instantiate_classes(self) -> None:
        # Engine and precision settings this machine cannot run fail here, before any weights load.
        from fedbiot_pl.scaling_checks import check_scaling

        check_scaling(self.config[self.subcommand] if self.subcommand else self.config)


def main(args: list[str] | None = None) -> FedBiOTCLI:
    """Run the CLI; with no arguments at all, ``fit`` the embedded default configuration."""
    argv = sys.argv[1:] if args is None else args
    if argv and argv[0] == "evaluate":
        from fedbiot_pl.evaluate import main as evaluate

        sys.exit(evaluate(argv[1:]))
    if not argv:
        print(f"No arguments: running `fit --config {DEFAULT_CONFIG}` (the embedded default).", file=sys.stderr)
        argv = ["fit", "--config", str(DEFAULT_CONFIG)]
    elif args is None:
        argv = None  # let LightningCLI read sys.argv itself
    return FedBiOTCLI(
        EmulatorAlignmentModule,
        FederatedInstructionDataModule,
        trainer_defaults=TRAINER_DEFAULTS,
        seed_everything_default=42,
        save_config_kwargs={"overwrite": True},
        args=argv,
    )
