"""The environment and the ``k=v`` arguments of Flower's commands (``--run-config``, ``--node-config``)."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

ConfigValue = str | int | float | bool
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


def flower_env(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a Flower process: ``os.environ`` plus Flower's settings for an offline, quiet machine.

    Sets ``FLWR_HOME`` (config, installed apps), ``FLWR_TELEMETRY_ENABLED=0`` (telemetry posts to flower.ai by
    default), ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1`` (the SuperLink otherwise runs ``uv sync`` for every
    run) and ``PYTHONUNBUFFERED=1`` (logs appear as they happen). ``OMP_NUM_THREADS`` etc. are left as the caller has
    them.

    Args:
        flwr_home: The Flower home folder. It must not lie inside a Flower app folder: ``flwr run`` packs the app
            folder and refuses trees deeper than 10 levels.
        extra: Variables set last (they override everything above).

    Returns:
        A new environment mapping.
    """
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(Path(flwr_home).resolve()),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


def _toml_value(value: ConfigValue) -> str | None:
    """``value`` as a TOML value that Flower's ``k=v`` parser reads back, or None if it cannot be written inline."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # Flower splits 'k="v" k2=...' with the regex (\S+?)=('[^']*'|"[^"]*"|\S+): a quoted value ends at the next
        # quote of its kind, even an escaped one. JSON string escapes are valid TOML basic-string escapes.
        if '"' not in value:
            return json.dumps(value)
        if "'" not in value and "\n" not in value and "\r" not in value:
            return f"'{value}'"  # TOML literal string: no escapes
        return None
    raise TypeError(f"config values must be str, int, float or bool, not {type(value).__name__} ({value!r})")


def config_arg(values: Mapping[str, ConfigValue], toml_file: Path | None = None) -> str:
    """The argument of ``flwr run --run-config`` or ``flower-supernode --node-config`` for ``values``.

    Normally the inline form ``k1=1 k2="text" k3=true``. When a string holds both quote kinds (or a quote and a
    newline) the inline form cannot carry it; then the values are written to ``toml_file`` and its path is returned
    (Flower reads a single argument that ends in ``.toml`` as a file).

    Args:
        values: Flat keys (letters, digits, ``-``, ``_``) to values.
        toml_file: Where to write the fallback file (must end in ``.toml``).

    Returns:
        The argument string.

    Raises:
        ValueError: A key is not a TOML bare key, or the fallback is needed and ``toml_file`` is None.
        TypeError: A value is not a str, int, float or bool.
    """
    parts, inline = [], True
    for key, value in values.items():
        if not _BARE_KEY.fullmatch(key):
            raise ValueError(f"config key {key!r} must consist of letters, digits, '-' and '_'")
        text = _toml_value(value)
        inline &= text is not None
        parts.append((key, text))
    if inline:
        return " ".join(f"{key}={text}" for key, text in parts)
    if toml_file is None or not str(toml_file).endswith(".toml"):
        raise ValueError(f"a config value holds quotes that cannot be written inline; give a .toml file ({values})")
    lines = [f"{key} = {text if text is not None else json.dumps(values[key])}" for key, text in parts]
    Path(toml_file).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(Path(toml_file).resolve())
