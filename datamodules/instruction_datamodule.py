"""The FedBiOT data: a public instruction set on the server and private task shards on the clients.

The server aligns its emulator on the *public* set, served by
:meth:`FederatedInstructionDataModule.train_dataloader`. The *task* set (GSM8K, code or Dolly
rows, or any instruction data) is partitioned across the clients, IID, by a meta key or by a
Dirichlet draw over a key; the federated loop fetches one client's shard per round with
:meth:`FederatedInstructionDataModule.client_dataloader`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Sampler
from transformers import PreTrainedTokenizerBase
from typing_extensions import override

from fedbiot_pl.data.partition_report import PartitionTable, format_partition_table, partition_table, write_report
from fedbiot_pl.data.pipeline import kept_mask, tokenize_dataset
from fedbiot_pl.data.sources import DataSource, RecordSpec, check_source, load_source
from fedbiot_pl.data.tokenization import InstructionCollator, ensure_pad_token, tokenizer_fingerprint
from fedbiot_pl.errors import ConfigError
from fedbiot_pl.evaluation.generation import read_eval_records
from fedbiot_pl.evaluation.settings import DEFAULT_EVALUATION, EvaluationSettings, evaluation_batches
from fedbiot_pl.model.location import load_tokenizer

from .client_shards import (
    argument_problems,
    as_source,
    check_client_sizes,
    client_shards,
    exclude_rows,
    keys_for_partition,
    loader_seed,
)
from .epoch_sampler import EpochShuffleSampler
from .public_rows import KeepColumns, PublicRows

log = logging.getLogger(__name__)

DEFAULT_TASK = DataSource("embedded:data/gsm8k/train_sample.jsonl", format="gsm8k")
"""The clients' data when neither ``task`` nor ``task_path`` is given: 300 GSM8K rows."""

DEFAULT_PUBLIC = DataSource("embedded:data/alpaca/alpaca_sample.json", format="alpaca")
"""The server's data when neither ``public`` nor ``public_path`` is given: 300 Alpaca rows."""


class FederatedInstructionDataModule(LightningDataModule):
    """Public alignment data for the server and partitioned private task data for the clients.

    Every row becomes an Alpaca prompt followed by its response (see
    :func:`fedbiot_pl.data.pipeline.record_texts`), tokenised with the prompt masked out of the
    labels; a ``datasets`` cache keyed on the data, tokenizer, template and ``max_length`` makes a
    second run skip the tokenising. Examples whose response is cut away entirely by ``max_length``
    are dropped and counted (:attr:`dropped`). Every data problem raises one error in
    :meth:`setup`, before the tokenizer is loaded where possible.

    Args:
        tokenizer: Tokenizer to load: a hub id, a local folder or an ``embedded:`` reference.
        task: The clients' data (:class:`DataSource`); default: the embedded GSM8K sample.
        public: The server's public data; default: the embedded Alpaca sample.
        task_path: Shorthand for ``task: {path: <task_path>}`` (format chosen from the columns).
        public_path: Shorthand for ``public: {path: <public_path>}``.
        num_clients: Number of clients; at least 1.
        partition: ``iid`` (random near-equal shards), ``meta`` (whole key values per client;
            values merged into ``num_clients`` buckets when there are more values than clients)
            or ``dirichlet`` (each value's rows spread by a Dirichlet(``dirichlet_alpha``) draw).
        partition_key: The key column, or ``instruction_language`` (the language named in the
            instruction); ``None`` uses the format's key (Dolly: ``category``, code: ``input``).
            With ``iid`` it only labels the partition report.
        exclude_keys: Key values whose rows are left out before partitioning (the paper's code
            task drops ``X86-64 Assembly`` to keep 9 single-language clients); each must occur.
        dirichlet_alpha: Dirichlet concentration (> 0); small = very non-IID.
        min_client_size: Fewest training examples a client may end up with; at least 1.
        val_fraction: Fraction of each client's rows held out (seeded by ``seed``) for
            :meth:`client_val_dataloader`; all clients' held-out rows together are the validation
            split of :meth:`val_dataloader` (``trainer.validate``, and validation during ``fit``).
        max_length: Longest tokenised example, in tokens; at least 2 (BOS plus one target).
        batch_size: Batch size of the clients' loaders; at least 1.
        public_batch_size: Batch size of the public loader; ``None`` uses ``batch_size``.
        max_task_examples: Keep only the first N task rows (quick runs); ``None`` keeps all.
        max_public_examples: Keep only the first N public rows; ``None`` keeps all.
        num_workers: DataLoader worker processes; 0 loads in the main process.
        cache_dir: The ``datasets`` cache folder; ``None`` uses ``datasets``' default.
        seed: Non-negative seed of the partition, the validation split and every shuffle.
        evaluation: What :meth:`test_dataloader` serves to ``trainer.test`` (``train.py test``):
            the task, its data and the generation settings (:class:`EvaluationSettings`); the
            default is ``train.py evaluate``'s, GSM8K 8-shot on the embedded test sample.

    Attributes:
        dropped: After :meth:`setup`, examples dropped by truncation, keyed ``task``/``public``.
        partition_report: After :meth:`setup`, the per-client table (also written by
            :meth:`write_partition_report`, and into the run folder when a Trainer is attached).
    """

    def __init__(
        self,
        tokenizer: str = "embedded:models/stories260K",
        task: DataSource | None = None,
        public: DataSource | None = None,
        task_path: str | None = None,
        public_path: str | None = None,
        num_clients: int = 3,
        partition: Literal["iid", "meta", "dirichlet"] = "iid",
        partition_key: str | None = None,
        exclude_keys: list[str] | None = None,
        dirichlet_alpha: float = 0.5,
        min_client_size: int = 1,
        val_fraction: float = 0.0,
        max_length: int = 256,
        batch_size: int = 5,
        public_batch_size: int | None = None,
        max_task_examples: int | None = None,
        max_public_examples: int | None = None,
        num_workers: int = 0,
        cache_dir: str | None = None,
        seed: int = 42,
        evaluation: EvaluationSettings = DEFAULT_EVALUATION,
    ) -> None:
        super().__init__()
        task, public = as_source(task), as_source(public)  # a dict (e.g. saved hyper-parameters) is accepted too
        problems = argument_problems(dict(locals()))
        if problems:
            raise ConfigError("Invalid FederatedInstructionDataModule arguments:\n- " + "\n- ".join(problems))
        self.save_hyperparameters()
        for name, source in (("task", task), ("public", public)):
            if source is not None:  # plain values in checkpoints: they reload without this package's classes
                self.hparams[name] = asdict(source)
        self.evaluation = EvaluationSettings.of(evaluation)  # a dict (saved hyper-parameters) is accepted too
        self.hparams["evaluation"] = self.evaluation.to_dict()
        self.eval_rows: list[dict[str, Any]] | None = None  # the evaluation rows, after setup("test")
        self.tokenizer_name = tokenizer
        self.task = task or (DataSource(task_path) if task_path else DEFAULT_TASK)
        self.public = public or (DataSource(public_path) if public_path else DEFAULT_PUBLIC)
        self._num_clients = num_clients
        self.partition, self.partition_key, self.exclude_keys = partition, partition_key, exclude_keys
        self.dirichlet_alpha, self.min_client_size, self.val_fraction = dirichlet_alpha, min_client_size, val_fraction
        self.max_length = max_length
        self.batch_size = batch_size
        self.public_batch_size = batch_size if public_batch_size is None else public_batch_size
        self.max_task_examples, self.max_public_examples = max_task_examples, max_public_examples
        self.num_workers, self.cache_dir, self.seed = num_workers, cache_dir, seed
        self.dropped: dict[str, int] = {}
        self.partition_report: PartitionTable | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._collator: InstructionCollator | None = None
        self._public: datasets.Dataset | None = None
        self._clients: list[datasets.Dataset] | None = None
        self._client_val: list[datasets.Dataset] = []

    @property
    def task_path(self) -> str:
        """The task source's path (kept for configs and code that read it)."""
        return self.task.path

    @property
    def public_path(self) -> str:
        """The public source's path."""
        return self.public.path

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The loaded tokenizer (with a pad token); available after :meth:`setup`."""
        if self._tokenizer is None:
            raise RuntimeError("FederatedInstructionDataModule.tokenizer is loaded by setup(); call setup() first.")
        return self._tokenizer

    @property
    def num_clients(self) -> int:
        """Number of clients the task data is split across."""
        return self._num_clients

    @property
    def num_val_rows(self) -> int:
        """Rows held out for validation over all clients (``val_fraction``); 0 before :meth:`setup`."""
        return sum(len(rows) for rows in self._client_val)

    @override
    def setup(self, stage: str | None = None) -> None:
        """Load, check, partition and tokenise both data sets; later calls do nothing.

        Files, fields, keys and the partition are checked before the tokenizer is loaded; only
        clients emptied by truncation can fail after tokenising.

        Raises:
            FileNotFoundError: A data file does not exist.
            ValueError: A data problem; the message names the file, the row or client, and the fix.
        """
        if stage == "test":  # trainer.test needs the tokenizer and the evaluation rows only
            if self.eval_rows is None:
                self.eval_rows = read_eval_records(self.evaluation.task, self.evaluation.data_path,
                                                   self.evaluation.limit)
            if self._tokenizer is None:
                self._tokenizer = ensure_pad_token(self._load_tokenizer())
            return
        if self._clients is not None:
            return
        task_rows, task_spec, key, keys, shards = self._task_shards()
        public_rows, public_spec = self._load(self.public, self.max_public_examples)

        tokenizer = ensure_pad_token(self._load_tokenizer())
        tokenizer_hash = tokenizer_fingerprint(tokenizer)
        task_examples = tokenize_dataset(task_rows, task_spec, tokenizer, self.max_length, tokenizer_hash, "task")
        public_examples = tokenize_dataset(
            public_rows, public_spec, tokenizer, self.max_length, tokenizer_hash, "public"
        )
        task_kept, public_kept = kept_mask(task_examples), kept_mask(public_examples)
        self.dropped = {"task": int((~task_kept).sum()), "public": int((~public_kept).sum())}
        for name, kept in (("task", task_kept), ("public", public_kept)):
            log.info(
                "%s set: kept %d of %d examples; dropped %d whose response did not fit max_length=%d (or was "
                "empty, with drop_empty).",
                name, int(kept.sum()), len(kept), self.dropped[name], self.max_length,
            )
        if not public_kept.any():
            raise ConfigError(
                f"All {len(public_kept)} public examples from {self.public.describe()} exceed max_length="
                f"{self.max_length} before their response starts; raise max_length."
            )
        train = [[i for i in rows if task_kept[i]] for rows, _ in shards]
        val = [[i for i in rows if task_kept[i]] for _, rows in shards]
        assigned = [rows for rows, _ in shards]
        check_client_sizes(train, assigned, self.min_client_size, self.max_length, self.task.describe())
        self._clients = [task_examples.select(rows) for rows in train]
        self._client_val = [task_examples.select(rows) for rows in val]
        self._public = public_examples.select(np.flatnonzero(public_kept))
        self._tokenizer = tokenizer
        self._collator = InstructionCollator(pad_token_id=int(tokenizer.pad_token_id))
        dropped = [len(t) + len(v) - len(kt) - len(kv) for (t, v), kt, kv in zip(shards, train, val, strict=True)]
        train_keys = [[keys[i] for i in rows] if keys is not None else [""] * len(rows) for rows in train]
        self.partition_report = partition_table(train_keys, [len(rows) for rows in val], dropped, key)
        log.info("Federated data ready: %d public examples.\n%s", len(self._public),
                 format_partition_table(self.partition_report))
        self._write_report_to_run_folder()

    def partition_counts(self) -> PartitionTable:
        """The per-client key counts of the task partition :meth:`setup` makes, without tokenising.

        Loads the task rows (``max_task_examples``) and applies ``keys_for_partition``, ``exclude_rows`` and
        ``client_shards`` exactly as :meth:`setup` does; the table's training counts are those before
        truncation drops (``dropped`` is 0: :meth:`setup` later drops the examples whose response
        ``max_length`` cuts away). The public data and the tokenizer are not loaded. For planning
        (``fedbiot-plan`` groups HierFedLoRA's clients by these counts).

        Raises:
            FileNotFoundError: The task file does not exist.
            ValueError: A data or partition problem, as :meth:`setup` raises it.
        """
        _, _, key, keys, shards = self._task_shards()
        train_keys = [[keys[i] for i in rows] if keys is not None else [""] * len(rows) for rows, _ in shards]
        return partition_table(train_keys, [len(rows) for _, rows in shards], [0] * len(shards), key)

    def _task_shards(self) -> tuple[Any, Any, str | None, list[str] | None, list[tuple[list[int], list[int]]]]:
        """The task rows (after ``exclude_keys``), their record spec, the partition key and values, and the shards."""
        task_rows, task_spec = self._load(self.task, self.max_task_examples)
        key, keys = keys_for_partition(self.task, task_rows, task_spec, self.partition, self.partition_key)
        task_rows, keys = exclude_rows(task_rows, key, keys, list(self.exclude_keys or ()), self.task.describe(),
                                       truncated=self.max_task_examples is not None)
        shards = client_shards(
            len(task_rows), keys, self.partition, self._num_clients, self.dirichlet_alpha, self.min_client_size,
            self.val_fraction, self.seed, f"{self.task.describe()} (partition={self.partition!r})",
        )
        return task_rows, task_spec, key, keys, shards

    def client_num_examples(self, client_id: int) -> int:
        """Number of training examples held by client ``client_id`` (after :meth:`setup`)."""
        return len(self._client_examples(client_id))

    def client_dataloader(self, client_id: int, round_idx: int = 0) -> DataLoader:
        """Loader over one client's training shard, reshuffled reproducibly every round.

        Args:
            client_id: Which client, in ``[0, num_clients)``.
            round_idx: The communication round; the shuffle order is a function of
                ``(seed, client_id, round_idx)``, so each round differs and reruns repeat it.

        Raises:
            ValueError: ``client_id`` is out of range or ``round_idx`` is negative.
        """
        examples = self._client_examples(client_id)
        if round_idx < 0:
            raise ValueError(f"round_idx must be >= 0, got {round_idx}.")
        return self._loader(examples, self.batch_size, loader_seed(self.seed, 1, client_id, round_idx))

    @property
    def num_public_examples(self) -> int:
        """Public examples kept after tokenising (after :meth:`setup`)."""
        return len(self._public_examples())

    def public_lengths(self, rows: Sequence[int]) -> list[int]:
        """Tokens of each public example ``rows`` (after :meth:`setup`)."""
        public = self._public_examples()
        return [len(public[int(row)]["input_ids"]) for row in rows]

    def public_dataloader(self, rows: Sequence[int], seed: int | None = None) -> DataLoader:
        """Loader over public examples ``rows`` (in order, or shuffled by ``seed``); each batch has ``public_row``.

        The KD algorithms' public slice: every party reads the same rows (``public_batch_size`` per batch).
        """
        public = self._public_examples()
        bad = [row for row in rows if not 0 <= int(row) < len(public)]
        if bad:
            raise ValueError(f"public rows {bad[:3]} are outside [0, {len(public)}).")
        return self._loader(PublicRows(public, [int(row) for row in rows]), self.public_batch_size, seed=seed,
                            keep=("public_row",))

    def _public_examples(self) -> datasets.Dataset:
        if self._public is None:
            raise RuntimeError("Call setup() before asking for the public data.")
        return self._public

    def client_val_dataloader(self, client_id: int) -> DataLoader:
        """Loader over one client's validation rows (``val_fraction``), in row order."""
        self._client_examples(client_id)
        return self._loader(self._client_val[client_id], self.batch_size, seed=None)

    @override
    def train_dataloader(self) -> DataLoader:
        """Loader over the server's public set, reshuffled every epoch in an order fixed by ``(seed, epoch)``.

        The order comes from :class:`EpochShuffleSampler`, so a resumed run repeats it exactly.
        """
        if self._public is None:
            raise RuntimeError("Call setup() before train_dataloader().")
        return self._loader(self._public, self.public_batch_size, seed=None,
                            sampler=EpochShuffleSampler(len(self._public), self.seed))

    @override
    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """Loader over the validation split: every client's held-out rows (``val_fraction``).

        Client by client in row order. ``[]`` when there are none: ``fit`` then skips validation, while
        ``trainer.validate`` stops with a message naming ``val_fraction``.
        """
        self._client_examples(0)  # after setup()
        rows = datasets.concatenate_datasets(self._client_val)
        if len(rows) == 0:
            trainer = getattr(self, "trainer", None)
            if trainer is not None and trainer.state.fn == "validate":
                raise ConfigError(
                    f"val_fraction={self.val_fraction} holds out no validation rows of {self.task.describe()}; set "
                    "data.val_fraction > 0 (e.g. 0.05) to validate."
                )
            return []
        return self._loader(rows, self.batch_size, seed=None)

    @override
    def test_dataloader(self) -> DataLoader:
        """The :attr:`evaluation` task's batches: every row for each variant in turn.

        See :func:`evaluation_batches`; the server module's ``test_step`` generates and scores them.
        """
        if self.eval_rows is None or self._tokenizer is None:
            raise RuntimeError("Call setup('test') before test_dataloader().")
        batches = evaluation_batches(self.evaluation, self.eval_rows, self._tokenizer)
        return DataLoader(batches, batch_size=None, generator=torch.Generator())  # type: ignore[arg-type]

    def write_partition_report(self, folder: str | Path) -> list[Path]:
        """Write ``partition.txt`` and ``partition.png`` into ``folder`` (see :func:`write_report`)."""
        if self.partition_report is None:
            raise RuntimeError("Call setup() before write_partition_report().")
        return write_report(self.partition_report, folder)

    def _write_report_to_run_folder(self) -> None:
        """Write the report into the attached Trainer's log folder (global rank 0 only)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or not trainer.is_global_zero:
            return
        folder = trainer.log_dir
        if folder:
            paths = self.write_partition_report(folder)
            log.info("Partition report written to %s", ", ".join(map(str, paths)))

    def _load(self, source: DataSource, limit: int | None) -> tuple[datasets.Dataset, RecordSpec]:
        """Load a source, keep its first ``limit`` rows, and check them."""
        rows = load_source(source, self.cache_dir)
        if limit is not None and limit < len(rows):
            rows = rows.select(range(limit))
        return rows, check_source(source, rows)

    def _load_tokenizer(self) -> PreTrainedTokenizerBase:
        """Load :attr:`tokenizer_name` (a ``.gguf`` file too), offline when it is local."""
        return load_tokenizer(self.tokenizer_name)

    def _client_examples(self, client_id: int) -> datasets.Dataset:
        """The training shard of ``client_id``, after validating the id."""
        if self._clients is None:
            raise RuntimeError("Call setup() before asking for client data.")
        if isinstance(client_id, bool) or not isinstance(client_id, int) or not 0 <= client_id < self._num_clients:
            raise ValueError(
                f"client_id must be an int in [0, {self._num_clients - 1}] (num_clients={self._num_clients}), "
                f"got {client_id!r}."
            )
        return self._clients[client_id]

    def _loader(
        self, examples: Any, batch_size: int, seed: int | None, sampler: Sampler[int] | None = None,
        keep: tuple[str, ...] = (),
    ) -> DataLoader:
        """A DataLoader over ``examples``.

        In ``sampler``'s order if given, else shuffled in an order fixed by ``seed`` (``None``: not shuffled).
        It always has a generator of its own, so that starting an iteration never draws from the global
        random state (LoRA dropout's).
        """
        generator = torch.Generator()
        generator.manual_seed(self.seed if seed is None else seed)
        return DataLoader(
            examples,  # type: ignore[arg-type]  # a datasets.Dataset is a map-style dataset
            batch_size=batch_size,
            shuffle=seed is not None and sampler is None,
            sampler=sampler,
            generator=generator,
            collate_fn=KeepColumns(self._collator, keep) if keep else self._collator,
            num_workers=self.num_workers,
        )
