"""The FedBiOT data: a public instruction set on the server and private task shards on the clients.

The server aligns its emulator on the *public* set (Alpaca-format records), served by
:meth:`FederatedInstructionDataModule.train_dataloader`. The *task* set (GSM8K-format records)
is split IID across the clients; the federated loop fetches one client's shard per round with
:meth:`FederatedInstructionDataModule.client_dataloader`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from typing_extensions import override

from fedbiot_pl.assets import resolve
from fedbiot_pl.partition import iid_partition
from fedbiot_pl.prompts import format_prompt, gsm8k_to_instruction
from fedbiot_pl.tokenization import InstructionCollator, ensure_pad_token, tokenize_example

log = logging.getLogger(__name__)

Example = dict[str, list[int]]
"""A tokenised example: ``input_ids`` and ``labels`` (see :func:`tokenize_example`)."""

Record = dict[str, Any]
"""One raw row of a data file."""

TASK_FIELDS = ("question", "answer")
"""Fields every GSM8K-format row must carry as strings."""

PUBLIC_FIELDS = ("instruction", "output")
"""Fields every Alpaca-format row must carry as strings (``input`` is optional)."""


def _iter_json_lines(path: Path, text: str) -> Iterator[tuple[int, object]]:
    """Yield ``(1-based line number, parsed value)`` for every non-blank line of a jsonl text."""
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield line_number, json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path}: row {line_number} is not valid JSON ({error.msg}); each line of a .jsonl "
                "file must hold one JSON object."
            ) from error


def _parse_rows(path: Path, text: str) -> list[tuple[int, object]]:
    """Parse a JSON list or a JSON-lines text into ``(1-based row number, value)`` pairs.

    A text whose first non-blank character is ``[`` is read as one JSON list (row number = list
    position); anything else as JSON lines (row number = line number).
    """
    if text.lstrip().startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path} is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}); "
                "fix the file or convert it to one JSON object per line."
            ) from error
        return list(enumerate(values, start=1))
    return list(_iter_json_lines(path, text))


def read_records(
    path_or_ref: str, required: tuple[str, ...], optional: tuple[str, ...] = (), limit: int | None = None
) -> list[Record]:
    """Read and check the rows of a JSON-list or JSON-lines file.

    Args:
        path_or_ref: A file path or an ``embedded:`` reference.
        required: Fields every row must hold as a string.
        optional: Fields that may be missing or ``null`` but, when given, must be strings.
        limit: Keep only the first ``limit`` rows (only those are checked); ``None`` keeps all.

    Returns:
        The rows, in file order.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file cannot be read or decoded, holds no rows, or a row is not an object,
            lacks a required field, or has a non-string value; the message names the file, the
            1-based row number and the field.
    """
    path = Path(resolve(path_or_ref))
    if not path.is_file():
        raise FileNotFoundError(
            f"Data file {path_or_ref!r} does not exist (looked for {path}); pass the path of a "
            "JSON-list or JSON-lines file."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"Cannot read {path} as UTF-8 text ({error}); check the file and its permissions.") from error
    if not text.strip():
        raise ValueError(f"{path} is empty; it must hold at least one record with fields {', '.join(required)}.")
    rows = _parse_rows(path, text)
    if not rows:
        raise ValueError(f"{path} holds no records; it must hold at least one with fields {', '.join(required)}.")
    if limit is not None:
        rows = rows[:limit]
    records: list[Record] = []
    for row_number, value in rows:
        if not isinstance(value, dict):
            raise ValueError(
                f"{path}: row {row_number} is a JSON {type(value).__name__}, not an object; each record "
                f"must be an object with fields {', '.join(required)}."
            )
        for field in required:
            if field not in value:
                raise ValueError(
                    f"{path}: row {row_number} has no field {field!r} (it has {sorted(value)}); every row "
                    f"needs the fields {', '.join(required)}."
                )
        for field in (*required, *optional):
            field_value = value.get(field)
            if field in optional and field_value is None:
                continue
            if not isinstance(field_value, str):
                raise ValueError(
                    f"{path}: row {row_number} field {field!r} is a {type(field_value).__name__}, not a "
                    "string; store it as a JSON string."
                )
        records.append(value)
    return records


def _loader_seed(*keys: int) -> int:
    """Derive a 63-bit torch seed from non-negative integer keys (distinct keys, unrelated seeds)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


class FederatedInstructionDataModule(LightningDataModule):
    """Public alignment data for the server and IID private task shards for the clients.

    Every record becomes an Alpaca prompt (:func:`format_prompt`) followed by its response; GSM8K
    answers end with ``The answer is <number>`` (:func:`gsm8k_to_instruction`). Examples whose
    response is cut away entirely by ``max_length`` are dropped; the counts are in
    :attr:`dropped` and in the log.

    Args:
        tokenizer: Tokenizer to load: a Hugging Face hub id, a local folder (loaded with
            ``local_files_only=True``) or an ``embedded:`` reference.
        task_path: The clients' private task data: a GSM8K-format file (rows with string fields
            ``question`` and ``answer``), as JSON lines or a JSON list; path or ``embedded:``.
        public_path: The server's public data: an Alpaca-format file (rows with string fields
            ``instruction`` and ``output`` and an optional ``input``), as a JSON list or JSON
            lines; path or ``embedded:``.
        num_clients: Number of clients that share the task data IID; at least 1.
        max_length: Longest tokenised example, in tokens; at least 2 (BOS plus one target).
        batch_size: Batch size of the clients' loaders; at least 1.
        public_batch_size: Batch size of the public loader; ``None`` uses ``batch_size``.
        max_task_examples: Keep only the first N task rows (quick runs); ``None`` keeps all.
        max_public_examples: Keep only the first N public rows; ``None`` keeps all.
        num_workers: DataLoader worker processes; 0 loads in the main process.
        seed: Non-negative seed of the client partition and of every shuffle.

    Attributes:
        dropped: After :meth:`setup`, the number of fully truncated examples per set, keyed
            ``"task"`` and ``"public"``.
    """

    def __init__(
        self,
        tokenizer: str = "embedded:models/stories260K",
        task_path: str = "embedded:data/gsm8k/train_sample.jsonl",
        public_path: str = "embedded:data/alpaca/alpaca_sample.json",
        num_clients: int = 3,
        max_length: int = 256,
        batch_size: int = 5,
        public_batch_size: int | None = None,
        max_task_examples: int | None = None,
        max_public_examples: int | None = None,
        num_workers: int = 0,
        seed: int = 42,
    ) -> None:
        super().__init__()
        problems = _argument_problems(
            tokenizer=tokenizer,
            task_path=task_path,
            public_path=public_path,
            num_clients=num_clients,
            max_length=max_length,
            batch_size=batch_size,
            public_batch_size=public_batch_size,
            max_task_examples=max_task_examples,
            max_public_examples=max_public_examples,
            num_workers=num_workers,
            seed=seed,
        )
        if problems:
            raise ValueError("Invalid FederatedInstructionDataModule arguments:\n- " + "\n- ".join(problems))
        self.save_hyperparameters()
        self.tokenizer_name = tokenizer
        self.task_path = task_path
        self.public_path = public_path
        self._num_clients = num_clients
        self.max_length = max_length
        self.batch_size = batch_size
        self.public_batch_size = batch_size if public_batch_size is None else public_batch_size
        self.max_task_examples = max_task_examples
        self.max_public_examples = max_public_examples
        self.num_workers = num_workers
        self.seed = seed
        self.dropped: dict[str, int] = {}
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._collator: InstructionCollator | None = None
        self._public: list[Example] | None = None
        self._clients: list[list[Example]] | None = None

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

    @override
    def setup(self, stage: str | None = None) -> None:
        """Read, check, tokenise and partition both data sets; later calls do nothing.

        Files are checked before the tokenizer is loaded, so a bad file fails fast.

        Args:
            stage: Lightning's stage name; the same data serves every stage.

        Raises:
            FileNotFoundError: A data file does not exist.
            ValueError: A data file is empty, malformed, or has a row with a missing or non-string
                field; or some client would receive no example.
        """
        if self._clients is not None:
            return
        task_rows = read_records(self.task_path, TASK_FIELDS, limit=self.max_task_examples)
        public_rows = read_records(self.public_path, PUBLIC_FIELDS, optional=("input",), limit=self.max_public_examples)
        self._check_clients_served(len(task_rows), dropped=0)

        tokenizer = ensure_pad_token(self._load_tokenizer())
        task_pairs = [
            (format_prompt(instruction), response)
            for instruction, response in (gsm8k_to_instruction(row["question"], row["answer"]) for row in task_rows)
        ]
        public_pairs = [
            (format_prompt(row["instruction"], row.get("input") or ""), row["output"]) for row in public_rows
        ]
        task_examples = self._tokenize("task", tokenizer, task_pairs)
        public_examples = self._tokenize("public", tokenizer, public_pairs)
        if not public_examples:
            raise ValueError(
                f"All {len(public_rows)} public examples from {self.public_path} exceed max_length="
                f"{self.max_length} before their response starts; raise max_length."
            )
        self._check_clients_served(len(task_examples), dropped=self.dropped["task"])

        shards = iid_partition(len(task_examples), self._num_clients, self.seed)
        self._clients = [[task_examples[index] for index in shard] for shard in shards]
        self._public = public_examples
        self._tokenizer = tokenizer
        self._collator = InstructionCollator(pad_token_id=int(tokenizer.pad_token_id))
        log.info(
            "Federated data ready: %d public examples, client sizes %s.",
            len(public_examples),
            [len(client) for client in self._clients],
        )

    def client_num_examples(self, client_id: int) -> int:
        """Number of task examples held by client ``client_id`` (after :meth:`setup`)."""
        return len(self._client_examples(client_id))

    def client_dataloader(self, client_id: int, round_idx: int = 0) -> DataLoader:
        """Loader over one client's private shard, reshuffled reproducibly every round.

        Args:
            client_id: Which client, in ``[0, num_clients)``.
            round_idx: The communication round; the shuffle order is a function of
                ``(seed, client_id, round_idx)``, so each round differs and reruns repeat it.

        Returns:
            A shuffled DataLoader with batches from :class:`InstructionCollator`.

        Raises:
            ValueError: ``client_id`` is out of range or ``round_idx`` is negative.
        """
        examples = self._client_examples(client_id)
        if round_idx < 0:
            raise ValueError(f"round_idx must be >= 0, got {round_idx}.")
        return self._loader(examples, self.batch_size, _loader_seed(self.seed, 1, client_id, round_idx))

    @override
    def train_dataloader(self) -> DataLoader:
        """Loader over the server's public set, shuffled with a generator seeded from ``seed``."""
        if self._public is None:
            raise RuntimeError("Call setup() before train_dataloader().")
        return self._loader(self._public, self.public_batch_size, _loader_seed(self.seed, 0))

    def _load_tokenizer(self) -> PreTrainedTokenizerBase:
        """Load :attr:`tokenizer_name`, offline when it is a local folder."""
        location = resolve(self.tokenizer_name)
        if Path(location).is_dir():
            return AutoTokenizer.from_pretrained(location, local_files_only=True)
        return AutoTokenizer.from_pretrained(location)

    def _tokenize(
        self, name: str, tokenizer: PreTrainedTokenizerBase, pairs: list[tuple[str, str]]
    ) -> list[Example]:
        """Tokenise ``(prompt, response)`` pairs, record and log how many were fully truncated."""
        examples = [tokenize_example(tokenizer, prompt, response, self.max_length) for prompt, response in pairs]
        kept = [example for example in examples if example is not None]
        self.dropped[name] = len(examples) - len(kept)
        log.info(
            "%s set: kept %d of %d examples; dropped %d whose response did not fit max_length=%d.",
            name,
            len(kept),
            len(examples),
            self.dropped[name],
            self.max_length,
        )
        return kept

    def _check_clients_served(self, num_examples: int, dropped: int) -> None:
        """Raise if ``num_examples`` task examples cannot give every client at least one."""
        if num_examples >= self._num_clients:
            return
        cause = f" after dropping {dropped} too long for max_length={self.max_length}" if dropped else ""
        raise ValueError(
            f"Client {num_examples} would receive no task examples: {self.task_path} yields only "
            f"{num_examples} example(s){cause} for num_clients={self._num_clients}. Use "
            f"num_clients <= {num_examples}, or more task data."
        )

    def _client_examples(self, client_id: int) -> list[Example]:
        """The shard of ``client_id``, after validating the id."""
        if self._clients is None:
            raise RuntimeError("Call setup() before asking for client data.")
        if isinstance(client_id, bool) or not isinstance(client_id, int) or not 0 <= client_id < self._num_clients:
            raise ValueError(
                f"client_id must be an int in [0, {self._num_clients - 1}] (num_clients={self._num_clients}), "
                f"got {client_id!r}."
            )
        return self._clients[client_id]

    def _loader(self, examples: list[Example], batch_size: int, seed: int) -> DataLoader:
        """A shuffled DataLoader over ``examples`` whose order is fixed by ``seed``."""
        generator = torch.Generator()
        generator.manual_seed(seed)
        return DataLoader(
            examples,  # type: ignore[arg-type]  # a list is a valid map-style dataset
            batch_size=batch_size,
            shuffle=True,
            generator=generator,
            collate_fn=self._collator,
            num_workers=self.num_workers,
        )


def _argument_problems(**arguments: Any) -> list[str]:
    """List every invalid constructor argument, each with the value it had and what is allowed."""
    problems: list[str] = []
    for name in ("tokenizer", "task_path", "public_path"):
        value = arguments[name]
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{name}={value!r}: must be a non-empty string (a path, a hub id or 'embedded:...').")
    minimums = {
        "num_clients": 1,
        "max_length": 2,
        "batch_size": 1,
        "public_batch_size": 1,
        "max_task_examples": 1,
        "max_public_examples": 1,
        "num_workers": 0,
        "seed": 0,
    }
    optional = {"public_batch_size", "max_task_examples", "max_public_examples"}
    for name, minimum in minimums.items():
        value = arguments[name]
        if value is None and name in optional:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            allowed = f"an int >= {minimum}" + (" or None" if name in optional else "")
            problems.append(f"{name}={value!r}: must be {allowed}.")
    return problems
