"""Round checkpoints that are written whole or not at all, and read without running pickled code."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from typing_extensions import override

from fedbiot_pl.artifacts.checkpoint_integrity import checksum_path, file_sha256, local_checkpoint
from fedbiot_pl.artifacts.export import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``torch.save``/``torch.load`` checkpoint IO with two guarantees for local paths.

    * **Atomic saves**: the checkpoint goes to a temporary file in the same folder, is flushed to
      disk (``fsync``) and renamed onto its name (:func:`fedbiot_pl.artifacts.export.atomic_write`), so a
      process killed mid-write leaves the previous ``last.ckpt`` intact and ``--ckpt_path last``
      never loads a truncated file.
    * **Checksums**: each checkpoint gets a ``<name>.sha256`` sidecar (``sha256sum`` format), removed
      before the new file's rename and written after it, so it never describes another content;
      :mod:`fedbiot_pl.artifacts.checkpoint_integrity` finds a damaged checkpoint with it before a resume.
    * **No code from checkpoints**: loads use ``torch.load(weights_only=True)`` unless the caller
      explicitly passes ``weights_only=False`` for a file they trust.

    The CLI makes it the Trainer's default plugin (``trainer.plugins``); pass it yourself as
    ``Trainer(plugins=[AtomicCheckpointIO()])``. Remote (fsspec) paths use Lightning's own save.
    """

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        local = local_checkpoint(path)
        if storage_options is not None or local is None:
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = local
        context, digest = {"epoch": checkpoint.get("epoch")}, []

        def write(tmp: str) -> None:
            torch.save(checkpoint, tmp)
            digest.append(file_sha256(tmp))
            # Until the new sidecar is written, the file has none and is checked by loading it whole.
            checksum_path(path).unlink(missing_ok=True)

        atomic_write(path, write, context=context)
        atomic_write(checksum_path(path), lambda tmp: Path(tmp).write_text(f"{digest[0]}  {path.name}\n"),
                     context=context)
        return None

    @override
    def remove_checkpoint(self, path: Any) -> None:
        super().remove_checkpoint(path)
        local = local_checkpoint(path)
        if local is not None:
            checksum_path(local).unlink(missing_ok=True)

    @override
    def load_checkpoint(
        self,
        path: Any,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location=map_location,
                                       weights_only=True if weights_only is None else weights_only)
