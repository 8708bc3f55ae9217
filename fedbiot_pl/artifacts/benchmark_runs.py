"""The benchmark scripts' loop over their runs: each ``train.py fit`` in turn, partial results kept."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def run_each(names: Iterable[str], run_one: Callable[[str], dict[str, Any]], out: Path) -> list[dict] | None:
    """``run_one(name)`` for every name, ``out/results.json`` rewritten after each (partial results survive a stop).

    Returns:
        the rows, or ``None`` when a ``train.py fit`` stopped (its own message is above, from its stderr;
        one line here names the run and the exit status).
    """
    rows: list[dict] = []
    for name in names:
        try:
            rows.append(run_one(name))
        except subprocess.CalledProcessError as error:
            print(f"{name}: train.py fit stopped with exit status {error.returncode}", file=sys.stderr)
            return None
        (out / "results.json").write_text(json.dumps(rows, indent=2))
    return rows
