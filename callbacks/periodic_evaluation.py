"""Evaluate AdapFu/AdapEmu every N federated rounds, inside the server's fit."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch import Callback
from typing_extensions import override

from fedbiot_pl.artifacts.export import atomic_write
from fedbiot_pl.callbacks.federated_loop import round_due
from fedbiot_pl.evaluation.generation import DEFAULT_DATA, Task, evaluate_split, read_eval_records
from fedbiot_pl.modules.generation_module import GenerationSettings, Variant


class PeriodicEvaluation(Callback):
    """Every ``every_n_rounds`` rounds (and after the last), generate and score on ``data``.

    Logs ``eval/<task>/<variant>/<metric>`` and writes the predictions to
    ``<log_dir>/eval/round-<r>-<task>-<variant>.predictions.jsonl``. Rounds are counted after the
    server's pre-alignment epochs, as the :class:`FederatedLoop` (which must also be attached) does.

    Args:
        every_n_rounds: evaluate after rounds ``n, 2n, ...``.
        task: ``gsm8k``, ``humaneval`` or ``dolly``.
        data: evaluation file; ``null`` = the embedded GSM8K test sample.
        limit: evaluate the first ``limit`` rows (keep it small: this runs inside training).
        variants: ``adapfu`` and/or ``adapemu``.
        generation: decoding settings (greedy by default; ``do_sample``, ``temperature``, ``top_p``,
            ``top_k``, ``num_return_sequences``, ``max_new_tokens`` from YAML).
        shots: GSM8K demonstrations.
        batch_size: prompts per generation batch.
        seed: seed of the demonstration order.
    """

    def __init__(self, every_n_rounds: int = 10, task: Task = "gsm8k", data: str | None = None, limit: int = 20,
                 variants: list[Variant] | None = None, generation: GenerationSettings | None = None, shots: int = 8,
                 batch_size: int = 8, seed: int = 0) -> None:
        if every_n_rounds < 1 or limit < 1:
            raise ValueError(f"every_n_rounds and limit must be >= 1, got {every_n_rounds} and {limit}.")
        data = data or DEFAULT_DATA.get(task)
        if data is None:
            raise ValueError(f"PeriodicEvaluation needs `data` for task {task!r}.")
        self.every_n_rounds, self.task, self.data, self.limit = every_n_rounds, task, data, limit
        self.variants = list(variants or ["adapfu", "adapemu"])
        self.settings = generation or GenerationSettings(max_new_tokens=128)
        self.shots, self.batch_size, self.seed = shots, batch_size, seed
        self.rows = read_eval_records(task, data, limit)  # fail at start-up, not at round n

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _, round_idx = round_due(trainer, self.every_n_rounds)
        if round_idx is None:
            return
        result = evaluate_split(pl_module.split, trainer.datamodule.tokenizer, self.task, self.rows, self.variants,
                                self.settings, self.batch_size, self.shots, self.seed)
        for variant, metrics in result.metrics.items():
            for name, value in metrics.items():
                pl_module.log(f"eval/{self.task}/{variant}/{name}", value, on_epoch=True)
            if trainer.is_global_zero and trainer.log_dir:
                lines = "".join(json.dumps(p) + "\n" for p in result.predictions[variant])
                path = Path(trainer.log_dir) / "eval" / f"round-{round_idx}-{self.task}-{variant}.predictions.jsonl"
                atomic_write(path, lambda tmp, text=lines: Path(tmp).write_text(text))
