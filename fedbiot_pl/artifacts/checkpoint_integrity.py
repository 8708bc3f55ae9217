"""Damaged round checkpoints: found before a resume loads them, named, and replaced by an intact one.

:class:`~fedbiot_pl.artifacts.checkpoint_io.AtomicCheckpointIO` writes a SHA-256 sidecar next to every
checkpoint, ``<name>.sha256`` in ``sha256sum`` format (``sha256sum -c last.ckpt.sha256`` checks it
by hand). A sidecar, not a verification of the file alone: a bit flip in the tensor data leaves a
checkpoint that still loads, and only a recorded checksum tells it apart. The old sidecar is removed
before the new checkpoint is renamed onto its name and the new one written after, so whatever
instant a process is killed at, a sidecar never describes another content than its file's.

A checkpoint without a sidecar (written before checksums, copied without it, or caught in that
instant) is checked by reading it whole with ``torch.load(weights_only=True)``, which finds
truncation, the damage of a broken copy or a full disk. ``last.ckpt`` may be a symlink
(``ModelCheckpoint(save_last="link")``): it is checked through the file it points to. Checkpoint
folders (DeepSpeed) and remote paths are not checked here.

:func:`resume_path` is what the CLI asks before ``fit``: the file a resume from ``--ckpt_path``
should load, falling back from a damaged ``last.ckpt`` to the newest intact checkpoint with a
warning, and refusing (:class:`DamagedCheckpointError`) a damaged explicit path, or a run whose
checkpoints are all damaged, instead of starting over.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from fedbiot_pl.errors import ConfigError

log = logging.getLogger(__name__)
LIGHTNING_CKPT_NAMES = ("best", "hpc", "last")
"""``--ckpt_path`` values that name no file (``last`` is looked up by :func:`resume_path`)."""
CHECKSUM_SUFFIX = ".sha256"
_LAST = re.compile(r"^last(-(\d+))?")  # ModelCheckpoint._find_last_checkpoints' pattern (on the stem)
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class DamagedCheckpointError(ConfigError):
    """A checkpoint to resume from is damaged; the message names it and the intact alternative."""


def checksum_path(path: str | Path) -> Path:
    """The sidecar of ``path``: ``<name>.sha256`` in the same folder."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 hex digest of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def recorded_sha256(path: str | Path) -> str | None:
    """The digest in ``path``'s sidecar; ``None`` without one (or with one that is not a digest)."""
    try:
        fields = checksum_path(path).read_text().split()
    except (OSError, UnicodeDecodeError):
        return None
    return fields[0] if fields and _DIGEST.match(fields[0]) else None


def _read(path: Path, mmap: bool) -> tuple[dict[str, Any] | None, str | None]:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # noqa: BLE001 - whatever a broken zip, pickle or tensor record raises
        if mmap:  # e.g. a legacy (non-zip) file cannot be memory-mapped: read it whole
            return _read(path, mmap=False)
        return None, f"it cannot be read ({path.stat().st_size} bytes; {type(error).__name__}: {error})"
    if not isinstance(checkpoint, dict) or "epoch" not in checkpoint:
        return None, "it is not a Lightning checkpoint (no 'epoch' entry)"
    return checkpoint, None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """``path`` loaded cheaply (tensors memory-mapped, not read): for its epoch and settings."""
    checkpoint, problem = _read(Path(path), mmap=True)
    if checkpoint is None:
        raise DamagedCheckpointError(f"{path}: {problem}")
    return checkpoint


def checkpoint_problem(path: str | Path) -> str | None:
    """``None`` if the checkpoint file at ``path`` is intact, else what is wrong with it."""
    real = Path(path).resolve()  # a symlinked last.ckpt is its target
    if real.is_dir():
        return None  # a DeepSpeed checkpoint folder: not checked here
    if not real.is_file():
        return "it does not exist" + (f" (it links to {real})" if Path(path).is_symlink() else "")
    expected = recorded_sha256(real)
    if expected is not None:
        actual = file_sha256(real)
        if actual != expected:
            return (f"its SHA-256 {actual[:12]}... is not the {expected[:12]}... recorded in "
                    f"{checksum_path(real).name} when it was written ({real.stat().st_size} bytes now)")
        return None
    return _read(real, mmap=False)[1]  # no checksum: it must load whole


def checkpoint_folders(trainer: Any) -> list[Path]:
    """The folders the trainer's ``ModelCheckpoint`` callbacks write to, resolved as they resolve it at setup.

    Their ``dirpath``, else ``<save_dir>/<name>/<version>/checkpoints`` of the first logger, else
    ``<default_root_dir>/checkpoints``.
    """
    folders: list[Path] = []
    for callback in trainer.checkpoint_callbacks:
        if getattr(callback, "dirpath", None) is not None:
            folder = Path(callback.dirpath)
        elif trainer.loggers:
            logger = trainer.loggers[0]
            save_dir = logger.save_dir if logger.save_dir is not None else trainer.default_root_dir
            version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
            folder = Path(save_dir, str(logger.name), version, "checkpoints")
        else:
            folder = Path(trainer.default_root_dir, "checkpoints")
        if folder not in folders:
            folders.append(folder)
    return folders


def _progress(checkpoint: dict[str, Any]) -> tuple[int, int]:
    return int(checkpoint.get("epoch", -1)), int(checkpoint.get("global_step", -1))


def newest_intact(
    folders: Iterable[Path], exclude: Iterable[Path] = ()
) -> tuple[Path | None, int | None, dict[Path, str]]:
    """The intact ``*.ckpt`` of ``folders`` furthest into training, its epoch, and the problems met on the way.

    Furthest into training: by epoch, then step (a round file before ``last.ckpt`` on a tie). The
    problems are those of each damaged file met on the way.

    Ranked by the progress they record, not by modification time, which a copy between machines
    resets. Files are checked from the newest down, so the older ones are not all hashed.
    """
    skip = {Path(p).resolve() for p in exclude}
    ranked, problems, seen = [], {}, set()
    for path in sorted(p for folder in folders for p in Path(folder).glob("*.ckpt") if not p.name.startswith(".")):
        real = path.resolve()
        if real in skip or real in seen or real.is_dir():
            continue
        seen.add(real)
        checkpoint, problem = _read(path, mmap=True)
        if checkpoint is None:
            problems[path] = problem
        else:
            ranked.append((_progress(checkpoint), not _LAST.match(path.stem), path.name, path))
    for (epoch, _), _, _, path in sorted(ranked, reverse=True):
        if (problem := checkpoint_problem(path)) is None:
            return path, epoch, problems
        problems[path] = problem
    return None, None, problems


def _listing(problems: dict[Path, str]) -> str:
    return "".join(f"\n  {path}: {problem}" for path, problem in problems.items())


def local_checkpoint(ckpt_path: str | Path) -> Path | None:
    """The local file that a checkpoint path names (``file://`` stripped).

    ``None`` for a remote (fsspec) path and for the names Lightning resolves itself (``best``, ``hpc``,
    ``registry:...``).
    """
    text = str(ckpt_path)
    if text in LIGHTNING_CKPT_NAMES or text.startswith("registry") or ("://" in text and not text.startswith("file://")):
        return None
    return Path(text.removeprefix("file://"))


def resume_path(ckpt_path: str | Path | None, folders: list[Path]) -> str | Path | None:
    """The checkpoint that fitting with ``ckpt_path`` should load.

    ``folders`` are the run's checkpoint folders, where ``"last"`` is looked up.

    * ``None``, remote paths and Lightning's own names (``best``, ``hpc``, ``registry:...``) are
      returned unchanged.
    * ``"last"``: the newest ``last*.ckpt`` (by modification time, as Lightning picks it) when intact;
      when it is damaged or missing while other checkpoints exist, the newest intact one, with a
      warning naming both; ``"last"`` itself when the folders hold no checkpoint yet (a new run).
    * a path: the path when intact.

    Raises:
        DamagedCheckpointError: a damaged explicit path (naming the newest intact alternative), or
            no intact checkpoint at all where checkpoints exist (never a silent fresh start).
    """
    if ckpt_path is None or (str(ckpt_path) != "last" and local_checkpoint(ckpt_path) is None):
        return ckpt_path
    if str(ckpt_path) != "last":
        path = local_checkpoint(ckpt_path)
        exists = path.exists() or path.is_symlink()
        problem = checkpoint_problem(path) if exists else None
        if exists and problem is None:
            return ckpt_path
        alternative, epoch, others = newest_intact([path.parent], exclude=[path])
        instead = (f"Use the newest intact one instead: --ckpt_path {alternative} (epoch {epoch})."
                   if alternative else f"No checkpoint in {path.parent} is intact either.{_listing(others)}")
        what = f"is damaged: {problem}" if exists else "does not exist"
        raise DamagedCheckpointError(f"Checkpoint {path} {what}.\n{instead}")
    lasts = [p for folder in folders if folder.is_dir() for p in folder.glob("*.ckpt") if _LAST.match(p.stem)]
    last = max(lasts, key=lambda p: p.lstat().st_mtime) if lasts else None
    problem = checkpoint_problem(last) if last is not None else None
    if last is not None and problem is None:
        return last
    alternative, epoch, others = newest_intact([f for f in folders if f.is_dir()], exclude=[last] if last else [])
    if last is None and alternative is None and not others:
        return "last"  # nothing saved yet: Lightning starts the run and says so
    where = ", ".join(str(f) for f in folders)
    damaged = f"{last} is damaged: {problem}" if last is not None else f"{where} holds no last.ckpt"
    if alternative is None:
        raise DamagedCheckpointError(
            f"Cannot resume with --ckpt_path last: {damaged}, and no other checkpoint there is intact."
            f"{_listing(others)}\nNot starting over: restore the checkpoints from a copy, or start a new "
            f"run (in a new version folder) without --ckpt_path."
        )
    log.warning("--ckpt_path last: %s; resuming from %s (epoch %d), the newest intact checkpoint.%s",
                damaged, alternative, epoch, _listing(others))
    return alternative
