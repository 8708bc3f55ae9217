"""Where a model argument points: a hub id, a local folder with ``config.json``, or an ``embedded:`` name.

:func:`model_location` is the one place that turns a ``model`` setting into what ``from_pretrained``
takes, and it says what is wrong before transformers tries a path that does not exist as a hub id
(``Repo id must be in the form 'repo_name' or 'namespace/repo_name'``).
"""

from __future__ import annotations

import os
from typing import Any

from fedbiot_pl.assets import EMBEDDED_PREFIX, resolve
from fedbiot_pl.errors import MissingPathError

MODEL_FORMS = (
    "a model argument is a Hugging Face hub id (e.g. meta-llama/Llama-2-7b-hf), a local folder holding "
    f"config.json, a .gguf file, or an embedded name ({EMBEDDED_PREFIX}models/stories260K)"
)
GGUF_HINT = "pip install 'fedbiot-pl[gguf]'"


def looks_local(name: str) -> bool:
    """Whether ``name`` can only be a path.

    Absolute, ``./``, ``../``, ``~``, a ``.json`` file, or more than one ``/`` (a hub id is ``name`` or
    ``namespace/name``).
    """
    return name.startswith((os.sep, ".", "~")) or name.count("/") > 1 or name.endswith((".json", ".gguf"))


def model_location(model: str, needs_config: bool = True) -> str:
    """What ``from_pretrained`` should get for ``model``: an existing local path, or a hub id unchanged.

    ``embedded:`` names become their folder inside the package and ``~`` is expanded. A tokenizer
    folder (``needs_config=False``) need not hold ``config.json``.

    Raises:
        MissingPathError: ``model`` names a local path that does not exist, or a folder without
            ``config.json``; the message says what a model argument may be.
    """
    path = os.path.expanduser(resolve(model))
    if os.path.isdir(path):
        if needs_config and not os.path.isfile(os.path.join(path, "config.json")):
            raise MissingPathError(f"model={model!r}: the folder {path} has no config.json; {MODEL_FORMS}.")
        return path
    if os.path.exists(path):
        return path
    if looks_local(path):
        raise MissingPathError(f"model={model!r}: {path} does not exist; {MODEL_FORMS}.")
    return path


def model_source(model: str, needs_config: bool = True) -> tuple[str, dict[str, str]]:
    """What ``from_pretrained`` takes for ``model``: the path (or hub id) and the extra keyword arguments.

    A ``.gguf`` file becomes its folder and ``{"gguf_file": <file name>}`` (transformers de-quantises
    its weights; the ``gguf`` package must be installed); anything else is :func:`model_location`'s
    path and ``{}``.

    Raises:
        MissingPathError: the ``.gguf`` file does not exist (or as :func:`model_location`).
        ConfigError: a ``.gguf`` file without the ``gguf`` package, naming the install command.
    """
    path = os.path.expanduser(resolve(model))
    if not path.lower().endswith(".gguf"):
        return model_location(model, needs_config), {}
    if not os.path.isfile(path):
        raise MissingPathError(f"model={model!r}: {path} does not exist; {MODEL_FORMS}.")
    from importlib.util import find_spec

    if find_spec("gguf") is None:
        from fedbiot_pl.errors import ConfigError

        raise ConfigError(f"model={model!r} is a GGUF file, which needs the gguf package: {GGUF_HINT}.")
    return os.path.dirname(os.path.abspath(path)), {"gguf_file": os.path.basename(path)}


def unloadable(model: str, error: Exception) -> MissingPathError:
    """The error for a hub-id-shaped ``model`` that transformers could not load.

    No local folder of that name, and the hub unreachable or without it.
    """
    return MissingPathError(f"model={model!r} is no local folder and could not be loaded as a hub id "
                            f"({type(error).__name__}: {str(error).splitlines()[0]}); {MODEL_FORMS}.")


def load_model_config(model: str) -> Any:
    """The transformers config of ``model``, read offline when it is local.

    ``model`` is a hub id, a model folder, a ``config.json`` file or an ``embedded:`` name.

    Raises:
        MissingPathError: a local path that does not exist, or a hub id that cannot be loaded.
        OSError: a local config that cannot be read or parsed (naming ``model``).
    """
    from transformers import AutoConfig

    path, extra = model_source(model)
    try:
        return AutoConfig.from_pretrained(path, local_files_only=os.path.exists(path), **extra)
    except (OSError, ValueError) as error:
        if not os.path.exists(path):
            raise unloadable(model, error) from error
        raise OSError(f"cannot load the model config of {model!r}: {error}") from None


def load_tokenizer(name: str) -> Any:
    """The tokenizer of ``name`` (hub id, folder, ``.gguf`` file or ``embedded:`` name), offline when local.

    Raises:
        MissingPathError: a local path that does not exist.
    """
    from transformers import AutoTokenizer

    path, extra = model_source(name, needs_config=False)
    return AutoTokenizer.from_pretrained(path, local_files_only=os.path.isdir(path), **extra)
