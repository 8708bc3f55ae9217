"""Errors that mean "change a setting, a path or the data", not "the toolkit has a bug".

Every check of user input raises :class:`ConfigError` (a ``ValueError``, so ``except ValueError``
still catches it) or :class:`MissingPathError` (also a ``FileNotFoundError``). The command-line
entry points print such an error's message and exit with code 2, without a traceback; any other
exception keeps its traceback. Set ``FEDBIOT_TRACEBACK=1`` to see the traceback of a
``ConfigError`` too (for a bug report).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting, file or data row that the user must change; the message names the value and the fix."""


class MissingPathError(ConfigError, FileNotFoundError):
    """A file or folder that was named in the settings does not exist."""
