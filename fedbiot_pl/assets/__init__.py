"""Files shipped inside the package so that ``python train.py`` works on a fresh machine.

An *embedded* reference is a string ``"embedded:<relative path>"``; :func:`resolve` turns it into
the absolute path of the file or folder inside the installed package. Anything else (a Hugging
Face hub id, a local path) is returned unchanged.
"""

from __future__ import annotations

from pathlib import Path

from fedbiot_pl.errors import MissingPathError

EMBEDDED_PREFIX = "embedded:"
ASSETS_DIR = Path(__file__).resolve().parent

DEFAULT_MODEL = "embedded:models/stories260K"
"""The real pretrained 260K-parameter LLaMA (MIT) that the default config trains."""


def resolve(name_or_path: str) -> str:
    """Return the on-disk path of an ``embedded:`` reference, or ``name_or_path`` unchanged.

    Raises:
        FileNotFoundError: the reference names no file shipped with the package.
    """
    if not name_or_path.startswith(EMBEDDED_PREFIX):
        return name_or_path
    relative = name_or_path[len(EMBEDDED_PREFIX) :].strip("/")
    path = ASSETS_DIR / relative
    if not path.exists():
        available = sorted(
            str(p.relative_to(ASSETS_DIR)) for p in ASSETS_DIR.glob("*/*") if p.name != "__pycache__"
        )
        raise MissingPathError(
            f"{name_or_path!r} names no embedded asset (looked for {path}). "
            f"Embedded assets: {', '.join(available)}."
        )
    return str(path)
