"""Algorithm families as the plan sees them: KD (top-k logits), split learning (activations), else LoRA.

:func:`is_kd` and :func:`is_split` tell an algorithm's family, :func:`is_hier` whether its LoRA rounds run in
device groups (HierFedLoRA), :func:`kd_names`, :func:`split_names` and :func:`hier_names` list the registered
ones, and :func:`with_split_settings` rebuilds a split algorithm with the command's
cut, client top layers and activation dtype.
"""

from __future__ import annotations

import inspect

from fedbiot_pl.algorithms import ALGORITHMS, Algorithm


def is_kd(algorithm: Algorithm) -> bool:
    """Whether ``algorithm`` shares top-k logits (``family == "kd"``) instead of LoRA."""
    return getattr(algorithm, "family", "params") == "kd"


def kd_names() -> list[str]:
    """The registered KD algorithms."""
    return [name for name, cls in ALGORITHMS.items() if getattr(cls, "family", "params") == "kd"]


def is_split(algorithm: Algorithm) -> bool:
    """Whether ``algorithm`` is split learning (``family == "split"``): activations and gradients at a cut."""
    return getattr(algorithm, "family", "params") == "split"


def split_names() -> list[str]:
    """The registered split-learning algorithms."""
    return [name for name, cls in ALGORITHMS.items() if getattr(cls, "family", "params") == "split"]


def is_hier(algorithm: Algorithm) -> bool:
    """Whether ``algorithm`` runs its rounds in device groups (it overrides :meth:`Algorithm.groups`: HierFedLoRA)."""
    return getattr(type(algorithm), "groups", Algorithm.groups) is not Algorithm.groups


def hier_names() -> list[str]:
    """The registered hierarchical (grouped) algorithms."""
    return [name for name, cls in ALGORITHMS.items()
            if getattr(cls, "groups", Algorithm.groups) is not Algorithm.groups]


def with_split_settings(algorithm: Algorithm, cut_layer: int | None = None, client_top_layers: int | None = None,
                        activation_dtype: str | None = None) -> Algorithm:
    """``algorithm`` (a split one) rebuilt with the settings given (``None``: its own), its other settings kept.

    ``client_top_layers`` is ignored by an algorithm that takes none (vanilla ``splitfed_lora``).

    Raises:
        ValueError: a bad setting (the algorithm's own checks), naming it and its value.
    """
    accepted = inspect.signature(type(algorithm)).parameters
    given = {"cut_layer": cut_layer, "client_top_layers": client_top_layers, "activation_dtype": activation_dtype}
    overrides = {k: v for k, v in given.items() if v is not None and k in accepted}
    if overrides:
        current = {k: getattr(algorithm, k) for k in accepted if hasattr(algorithm, k)}
        algorithm = type(algorithm)(**{**current, **overrides})
    issues = getattr(algorithm, "setting_issues", [])
    if issues:
        raise ValueError(f"algorithm {algorithm.label!r}: {' '.join(issues)}")
    return algorithm
