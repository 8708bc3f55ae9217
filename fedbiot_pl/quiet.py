"""Keep the terminal for what a user must act on: silence the noise the toolkit knows to be expected.

Each piece is narrow: one message pattern or one library's progress bars, for the span of the call
that produces it, then the previous state comes back. Errors are never silenced.

* :func:`no_library_progress_bars` -- ``datasets``' "Generating train split" and map bars and
  transformers' "Loading weights" bar (the run shows one Lightning progress bar per round instead);
* :func:`expected_warnings` -- warnings matching given message patterns, e.g. transformers'
  ``FutureWarning`` that peft triggers by reading ``is_gradient_checkpointing``;
* :func:`quiet_lightning_cli` -- for the ``train.py`` process: Lightning's advertising tips, the
  ``LeafSpec`` deprecation that Lightning itself triggers on new torch versions, and the warnings
  about server epochs with nothing to align (the rounds of offsite-tuning, FedOT, FedAvg-LoRA);
  :data:`RESUME_WARNING` when ``--ckpt_path`` resumes a run into its own checkpoint folder.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

EVAL_MODE_WARNING = r"Found \d+ module\(s\) in eval mode at the start of training"
"""Lightning's warning about frozen modules; FedBiOT keeps its frozen layers in eval mode on purpose."""
NO_ALIGNMENT_WARNINGS = (r"`training_step` returned `None`", r"`LightningModule.configure_optimizers` returned `None`")
"""Lightning's warnings for a server epoch with nothing to align (offsite-tuning/FedOT rounds, FedAvg-LoRA)."""
RESUME_WARNING = r"Checkpoint directory .* exists and is not empty"
"""ModelCheckpoint's warning when a resumed run writes its round checkpoints into their own folder again."""
GRADIENT_CHECKPOINTING_WARNING = r"`is_gradient_checkpointing` is deprecated"
"""transformers 5's FutureWarning, raised by peft's own check of the attribute."""
LIGHTNING_NOISE = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",)
LIGHTNING_TIP = "💡 Tip:"
_LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                      "lightning_fabric.utilities.rank_zero")


@contextmanager
def expected_warnings(*patterns: str) -> Iterator[None]:
    """Ignore warnings whose message matches one of ``patterns`` (regex, from the start) inside the block."""
    with warnings.catch_warnings():
        for pattern in patterns:
            warnings.filterwarnings("ignore", message=pattern)
        yield


@contextmanager
def no_library_progress_bars() -> Iterator[None]:
    """Turn off the progress bars of ``datasets`` and ``transformers`` inside the block, then restore them."""
    from datasets.utils import logging as datasets_logging
    from transformers.utils import logging as transformers_logging

    datasets_on = datasets_logging.is_progress_bar_enabled()
    transformers_on = transformers_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if datasets_on:
            datasets_logging.enable_progress_bar()
        if transformers_on:
            transformers_logging.enable_progress_bar()


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LIGHTNING_TIP)


def quiet_lightning_cli() -> None:
    """For the ``train.py`` process: drop Lightning's tips and the warnings Lightning raises about itself."""
    for name in _LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
    for pattern in (*LIGHTNING_NOISE, *NO_ALIGNMENT_WARNINGS):  # the CLI's server module is always ours
        warnings.filterwarnings("ignore", message=pattern)



@contextmanager
def no_gguf_progress_bar() -> Iterator[None]:
    """Silence transformers' per-tensor bar while it de-quantises a GGUF file, then restore it.

    It is a plain ``tqdm`` that transformers' own progress-bar switch does not reach.
    """
    from functools import partial

    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    original = gguf_utils.tqdm
    gguf_utils.tqdm = partial(original, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = original
