"""Pick a run's best round checkpoint by the validation loss that each checkpoint records.

:class:`~fedbiot_pl.callbacks.RoundCheckpoint` (the CLI's ``checkpoint:``) stores in every checkpoint
it writes ``checkpoint["fedbiot_round"]``: the federated round it ends, counted from 1 (``round``), and
the validation losses measured at the end of that round (``validation``). These are
``val/adapfu_loss`` and ``val/adapemu_loss``: the response-only cross-entropy of AdapFu and AdapEmu,
averaged over every label token of the clients' held-out rows (``data.val_fraction``), as the server
module's validation loop of that epoch logged them, or as
:class:`~fedbiot_pl.callbacks.ClientValidation` measured them after that round. A loss measured in an
earlier epoch is never recorded as the round's. Choosing a round therefore reads no weights and runs
no model: each checkpoint is opened memory-mapped for its record only.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedbiot_pl.artifacts.checkpoint_integrity import DamagedCheckpointError, read_checkpoint
from fedbiot_pl.errors import ConfigError

ROUND_KEY = "fedbiot_round"
"""The checkpoint entry of :class:`~fedbiot_pl.callbacks.RoundCheckpoint`: ``{"round": int, "validation": {...}}``."""
VALIDATION_FIX = (
    "set data.val_fraction > 0 (fit then validates after every epoch, before the round checkpoint), or add the "
    "callback fedbiot_pl.callbacks.ClientValidation with the same every_n_rounds as checkpoint.every_n_rounds"
)
_LAST = re.compile(r"^last(-v?\d+)?$")


@dataclass(frozen=True)
class RoundScore:
    """One round checkpoint and its recorded validation loss (``None``: not validated at that round)."""

    round: int
    path: Path
    loss: float | None


@dataclass(frozen=True)
class Selection:
    """The round checkpoint with the lowest ``metric`` and the scores of every round checkpoint."""

    metric: str
    best: RoundScore
    scores: list[RoundScore]

    def as_dict(self) -> dict[str, Any]:
        """The selection as JSON: the metric, the picked round and checkpoint, and each round's loss."""
        return {"metric": self.metric, "round": self.best.round, "checkpoint": str(self.best.path),
                "scores": {str(score.round): score.loss for score in self.scores}}

    def table(self) -> str:
        """One line per round checkpoint, the picked one marked with ``*``."""
        lines = [f"round checkpoints by {self.metric} (lowest picked):"]
        for score in self.scores:
            loss = "not validated" if score.loss is None else f"{score.loss:.6f}"
            mark = "*" if score is self.best else " "
            lines.append(f"{mark} round {score.round:>6}  {loss:>14}  {score.path.name}")
        return "\n".join(lines)


def round_checkpoints(folder: str | Path, skipped: list[str] | None = None) -> list[tuple[int, Path, dict[str, Any]]]:
    """``(round, path, record)`` of every round checkpoint in ``folder``, by round.

    A round checkpoint is a ``*.ckpt`` file other than ``last*.ckpt`` whose :data:`ROUND_KEY` record
    names a round >= 1; the round is the recorded one, whatever the file name. Of two files of one
    round (a resume rewrote it), the newer is kept. A checkpoint folder (DeepSpeed's) or a file that
    cannot be read is left out and described in ``skipped``.
    """
    found: dict[int, tuple[int, Path, dict[str, Any]]] = {}
    for path in sorted(Path(folder).glob("*.ckpt"), key=lambda p: (p.stat().st_mtime, p.name)):
        if _LAST.match(path.stem) or path.name.startswith("."):
            continue
        if path.is_dir():
            if skipped is not None:
                skipped.append(f"{path.name}: a DeepSpeed checkpoint folder (pass it with --ckpt)")
            continue
        try:
            record = read_checkpoint(path).get(ROUND_KEY)
        except DamagedCheckpointError as error:
            if skipped is not None:
                skipped.append(f"{path.name}: {error}")
            continue
        if isinstance(record, dict) and int(record.get("round", 0)) >= 1:
            found[int(record["round"])] = (int(record["round"]), path, record)  # the newest file of a round wins
    return [found[number] for number in sorted(found)]


def checkpoint_folder(run: Path) -> Path:
    """Where ``run`` wrote its checkpoints: ``checkpoint.dirpath`` of its ``config.yaml``, else ``checkpoints``."""
    try:
        import yaml

        dirpath = ((yaml.safe_load((run / "config.yaml").read_text()) or {}).get("checkpoint") or {}).get("dirpath")
    except (OSError, yaml.YAMLError):
        dirpath = None
    return Path(dirpath) if dirpath else run / "checkpoints"


def select_best_round(run: str | Path, variant: str = "adapfu") -> Selection:
    """The round checkpoint of ``run`` (a run folder) with the lowest ``val/<variant>_loss``.

    Ties go to the earlier round; a round whose loss was not recorded (or is not finite) is listed
    but never picked.

    Raises:
        ConfigError: the run has no round checkpoints, or none records the metric (the message says
            what to set for the next run).
    """
    folder, metric, skipped = checkpoint_folder(Path(run)), f"val/{variant}_loss", []
    rounds = round_checkpoints(folder, skipped) if folder.is_dir() else []
    if not rounds:
        left_out = f" Left out: {'; '.join(skipped)}." if skipped else ""
        raise ConfigError(
            f"{folder} holds no round checkpoint (a round-NNNN.ckpt written by fedbiot_pl.callbacks.RoundCheckpoint, "
            "the CLI's `checkpoint:`; runs trained before checkpoints were counted by round have none): pass a "
            f"checkpoint file with --ckpt instead, or keep checkpoint.every_n_rounds >= 1 in the next run.{left_out}"
        )
    for reason in skipped:
        warnings.warn(f"--ckpt best leaves out {reason}", stacklevel=2)
    scores = []
    for number, path, record in rounds:
        loss = (record.get("validation") or {}).get(metric)
        scores.append(RoundScore(number, path, float(loss) if loss is not None else None))
    scored = [score for score in scores if score.loss is not None and math.isfinite(score.loss)]
    if not scored:
        recorded = sorted({name for _, _, record in rounds for name in (record.get("validation") or {})})
        hint = (f"they record {', '.join(recorded)}: pick by another variant with --select-by" if recorded
                else f"the run measured no validation loss at its round checkpoints: {VALIDATION_FIX}")
        raise ConfigError(f"no round checkpoint in {folder} records a finite {metric}; {hint}.")
    best = min(scored, key=lambda score: (score.loss, score.round))
    return Selection(metric, best, scores)
