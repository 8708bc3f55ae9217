"""``fedbiot-flower-export``: export the clients' model of a run config, once, for the sites.

``fedbiot-flower-export --out client_model/ [train.py fit arguments]`` (also
``python -m fedbiot_pl.flower.export``) reads the run's settings exactly as ``train.py fit`` does
(the embedded default without ``--config``), loads the full model once, and writes what the
algorithm's clients hold (:func:`~fedbiot_pl.flower.client_model.export_client_model`). It prints the
model's sha256; copy the folder to every site and give its path as the node's ``model-dir``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fedbiot_pl.errors import ConfigError


def fit_config(args: list[str]) -> tuple[list[str], Any]:
    """``train.py fit`` arguments ``args`` as ``train.py`` reads them: ``(argv with the default config, config)``."""
    from fedbiot_pl.cli import read_config, with_default_config

    argv = with_default_config(["fit", *args])
    files = [argv[i + 1] for i, arg in enumerate(argv) if arg in ("--config", "-c")]
    overrides = [arg for i, arg in enumerate(argv[1:], start=1)
                 if arg not in ("--config", "-c") and argv[i - 1] not in ("--config", "-c")]
    return argv, read_config(files, overrides)


def export_for_args(args: list[str], out: str | Path, config: Any = None) -> str:
    """Export the client model of ``train.py fit`` arguments ``args`` into ``out``; return its sha256.

    ``config``: their config when the caller has read it already (:func:`fit_config`).
    """
    from fedbiot_pl.cli import config_views
    from fedbiot_pl.flower.client_model import check_new_folder, export_client_model
    from fedbiot_pl.flower.transport import flower_issues
    from fedbiot_pl.model.location import load_tokenizer
    from fedbiot_pl.quiet import no_library_progress_bars

    config = fit_config(args)[1] if config is None else config
    views = config_views(config)
    issues = flower_issues(views.algorithm)
    if issues:
        raise ConfigError("; ".join(issues))
    check_new_folder(Path(out))  # before the full model loads
    with no_library_progress_bars():
        views.build()
        return export_client_model(views, load_tokenizer(config.data.tokenizer), out)


def main(argv: list[str] | None = None) -> int:
    """Run the command; a bad setting ends it with its message and exit code 2."""
    parser = argparse.ArgumentParser(prog="fedbiot-flower-export", description=__doc__.split("\n\n")[0],
                                     epilog="Every other argument is a `train.py fit` argument.")
    parser.add_argument("--out", required=True, help="new folder for the client model")
    known, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        digest = export_for_args(rest, known.out)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"client model: {known.out}\nsha256: {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
