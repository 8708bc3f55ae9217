"""What ``trainer.test`` of the server module evaluates: ``data.evaluation`` in a run's YAML.

:class:`EvaluationSettings` holds ``train.py evaluate``'s options (task, data, rows, variants,
decoding, shots, seed, pass@k) as one typed value with the same defaults, so that ``python train.py
test --ckpt_path <round checkpoint>`` gives the numbers that ``python train.py evaluate --ckpt <the
same checkpoint>`` gives. :func:`evaluation_batches` cuts the task's prompts into the test batches.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from fedbiot_pl.errors import ConfigError
from fedbiot_pl.evaluation.eval_data import build_prompts
from fedbiot_pl.evaluation.prompts import GSM8K_DEMOS
from fedbiot_pl.evaluation.tasks import EVAL_TASKS, Task, eval_task
from fedbiot_pl.modules.generation_module import GenerationSettings, Variant, left_padded_batches

VARIANTS = ("adapfu", "adapemu")


@dataclass(frozen=True)
class EvaluationSettings:
    """The evaluation task of ``trainer.test`` (``python train.py test``), as ``train.py evaluate``'s options.

    Example (YAML, under ``data:``)::

        evaluation:
          task: dolly
          data: embedded:data/dolly/dolly_sample.jsonl
          limit: 50
          variants: [adapemu]
          generation: {max_new_tokens: 128}

    Attributes:
        task: ``gsm8k`` (accuracy), ``humaneval`` (pass@k in the sandbox), ``dolly`` (ROUGE-L,
            token F1, exact match), ``mc`` (multiple choice ranked by log-likelihood) or the name of a
            task registered with :func:`~fedbiot_pl.evaluation.tasks.register_task`.
        data: The evaluation file (``.jsonl``/``.jsonl.gz``/JSON list, or ``embedded:...``); ``None``
            is the task's default file (``default_data``: e.g. the embedded GSM8K test sample).
        limit: Evaluate the first ``limit`` rows; ``None`` evaluates all.
        variants: ``adapfu`` (the adapter in the full model) and/or ``adapemu`` (the compressed model).
        generation: Decoding settings (greedy, at most 256 new tokens by default); unused by ``mc``.
        shots: GSM8K demonstrations in each prompt, 0 to 8.
        batch_size: Prompts per generation batch (also the rows per ``mc`` batch).
        seed: Seed of the GSM8K demonstration order and of sampling (restarted for each variant).
        k: The ``k`` of pass@k (``humaneval``, ``humanevalx``); each at most ``generation.num_return_sequences``.
    """

    task: Task = "gsm8k"
    data: str | None = None
    limit: int | None = None
    variants: tuple[Variant, ...] = VARIANTS
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    shots: int = 8
    batch_size: int = 8
    seed: int = 0
    k: tuple[int, ...] = (1,)

    def __post_init__(self) -> None:
        """Normalise the sequences and the saved generation dict; raise ConfigError naming every bad value."""
        if isinstance(self.generation, dict):  # as saved in a checkpoint's hyper-parameters
            object.__setattr__(self, "generation", GenerationSettings(**self.generation))
        object.__setattr__(self, "variants", tuple(self.variants))
        object.__setattr__(self, "k", tuple(self.k))
        problems = self.problems()
        if problems:
            raise ConfigError("Invalid evaluation settings (data.evaluation):\n- " + "\n- ".join(problems))

    def problems(self) -> list[str]:
        """Every invalid setting, each with its value and what is allowed."""
        problems = []
        task = EVAL_TASKS.get(self.task) if isinstance(self.task, str) else None
        if task is None:
            problems.append(f"task={self.task!r}: must be one of {', '.join(EVAL_TASKS)}.")
        elif self.data is None and task.default_data is None:
            defaults = [name for name, other in EVAL_TASKS.items() if other.default_data is not None]
            problems.append(f"data=None: task {self.task!r} needs an evaluation file; set data (only "
                            f"{', '.join(defaults) or 'no task'} {'has' if len(defaults) < 2 else 'have'} an "
                            "embedded default).")
        if self.limit is not None and (not _is_int(self.limit) or self.limit < 1):
            problems.append(f"limit={self.limit!r}: must be an int >= 1, or None for every row.")
        if not self.variants or len(set(self.variants)) != len(self.variants) or set(self.variants) - set(VARIANTS):
            problems.append(f"variants={list(self.variants)!r}: must be adapfu and/or adapemu, each once.")
        if not isinstance(self.generation, GenerationSettings):
            problems.append(f"generation={self.generation!r}: must be GenerationSettings (max_new_tokens, ...).")
        if not _is_int(self.shots) or not 0 <= self.shots <= len(GSM8K_DEMOS):
            problems.append(f"shots={self.shots!r}: must be an int from 0 to {len(GSM8K_DEMOS)}.")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            problems.append(f"batch_size={self.batch_size!r}: must be an int >= 1.")
        if not self.k or not all(_is_int(k) and k >= 1 for k in self.k):
            problems.append(f"k={list(self.k)!r}: must be a non-empty list of ints >= 1.")
        elif task is not None and task.uses_pass_at_k and isinstance(self.generation, GenerationSettings) \
                and max(self.k) > self.generation.num_return_sequences:
            problems.append(f"k={list(self.k)!r}: pass@{max(self.k)} needs generation.num_return_sequences >= "
                            f"{max(self.k)}, got {self.generation.num_return_sequences}.")
        return problems

    @property
    def data_path(self) -> str:
        """The evaluation file: :attr:`data`, or the task's embedded default."""
        return self.data or eval_task(self.task).default_data  # type: ignore[return-value]  # checked

    @classmethod
    def of(cls, value: EvaluationSettings | dict[str, Any] | None) -> EvaluationSettings:
        """Settings from an instance, the dict of :meth:`to_dict` (a checkpoint's) or ``None`` (defaults)."""
        if value is None:
            return cls()
        return value if isinstance(value, cls) else cls(**value)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists, no classes), as hyper-parameters that ``weights_only`` loads read back."""
        return {**asdict(self), "variants": list(self.variants), "k": list(self.k)}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


DEFAULT_EVALUATION = EvaluationSettings()
"""``train.py evaluate``'s defaults: GSM8K 8-shot on the embedded test sample, greedy, both variants."""


def evaluation_batches(settings: EvaluationSettings, rows: list[dict[str, Any]],
                       tokenizer: Any) -> list[dict[str, Any]]:
    """The test batches: all rows for the first variant, then all again for the next one.

    Each batch is ``{"variant": ..., "ids": [row indices]}``; for generation tasks it also holds the
    ``prompts`` and their left-padded ``input_ids``/``attention_mask``, batched exactly as
    :func:`fedbiot_pl.evaluation.generation.generate` batches them.

    Args:
        settings: The evaluation settings.
        rows: The evaluation rows.
        tokenizer: The tokenizer.

    Returns:
        The batches.
    """
    ids, size = list(range(len(rows))), settings.batch_size
    if not eval_task(settings.task).generates:  # rows of choices, ranked by log-likelihood
        chunks = [{"ids": ids[start : start + size]} for start in range(0, len(ids), size)]
    else:
        prompts = build_prompts(settings.task, rows, shots=settings.shots, seed=settings.seed)
        chunks = [{**batch, "prompts": [prompts[i] for i in batch["ids"]]}
                  for batch in left_padded_batches(tokenizer, prompts, ids, size)]
    return [{**chunk, "variant": variant} for variant in settings.variants for chunk in chunks]
