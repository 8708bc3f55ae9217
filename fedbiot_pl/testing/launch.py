"""``train.py`` with faults attached, for subprocess tests and benchmarks.

``python -m fedbiot_pl.testing.launch FAULTS <train.py arguments...>`` attaches ``FAULTS``
(:func:`fedbiot_pl.testing.faults.attach_faults`) and then runs :func:`fedbiot_pl.cli.main` on the
remaining arguments, with ``train.py``'s exit codes: 0 on success, 2 (and the message) on a setting
error, a traceback and 1 on any other error, and -9 when a ``kill`` fault fires. ``FAULTS`` is JSON
text (a list of faults, or one fault, e.g. ``'[{"point": "align_step", "epoch": 1, "action": "kill"}]'``)
or the path of a file that holds it; ``'[]'`` runs without faults. Invalid faults exit with code 2
before anything runs.

``sys.argv`` is left as it is, so processes that Lightning re-launches (DDP) start the same command,
faults included. Production entry points never import this module.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fedbiot_pl.testing.faults import attach_faults, parse_faults

USAGE = "usage: python -m fedbiot_pl.testing.launch FAULTS [train.py arguments...]  (FAULTS: JSON text or a file)"


def read_faults(spec: str) -> str:
    """The faults JSON text of ``spec``.

    ``spec`` itself when it is JSON (starts with ``[`` or ``{``), else the contents of the file ``spec``
    names.

    Raises:
        ValueError: ``spec`` is not JSON and names no readable file.
    """
    if spec.lstrip().startswith(("[", "{")):
        return spec
    try:
        return Path(spec).read_text()
    except OSError as error:
        raise ValueError(f"faults: {spec!r} is neither JSON nor a readable file ({error})") from error


def main(argv: list[str] | None = None) -> None:
    """Attach the faults of ``argv[0]`` and run ``train.py`` on ``argv[1:]`` (default: ``sys.argv[1:]``).

    Args:
        argv: The launcher's arguments: the faults, then ``train.py``'s arguments.

    Raises:
        SystemExit: code 2 with a message for missing or invalid faults; otherwise as
            :func:`fedbiot_pl.cli.main` raises it.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr)
        sys.exit(0 if argv else 2)
    try:
        faults = parse_faults(read_faults(argv[0]))
    except ValueError as error:
        print(f"error: {error}\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    attach_faults(faults)  # lives as long as the process

    from fedbiot_pl.cli import main as train

    train(argv[1:])


if __name__ == "__main__":
    main()
