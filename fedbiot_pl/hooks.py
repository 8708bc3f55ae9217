"""Named hook points: places where tests and benchmarks may attach code to a running round.

Production code only calls :func:`fire` and :func:`transform`, which do nothing while no handler is
attached; nothing here reads the environment. The fault actions that tests attach (kill, raise,
corrupt) live in :mod:`fedbiot_pl.testing.faults`.

==============  =================================================  ==========================================
point           where                                              context (``transform``: the value)
==============  =================================================  ==========================================
``client_fit``  a client's fit, before its Trainer is built        round, client, attempt
``client_step`` start of every client batch (only when attached)   round, client, attempt, step, module
``upload``      a client's encoded upload, before it is sent       round, client, attempt (value: the bytes)
``align_step``  start of every server (alignment) batch            epoch, step
``file_write``  an atomic write, after the temporary file is        name (the file name); checkpoints also
                complete and before its rename                     epoch
==============  =================================================  ==========================================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
POINTS = ("client_fit", "client_step", "upload", "align_step", "file_write")
_handlers: dict[str, list[Callable[..., Any]]] = {}


def attach(point: str, handler: Callable[..., Any]) -> Callable[[], None]:
    """Call ``handler(**context)`` at every :func:`fire` of ``point``; returns the function that detaches it.

    At every :func:`transform` of ``point`` the call is ``handler(value, **context)``.

    Raises:
        ValueError: ``point`` is not one of :data:`POINTS`.
    """
    if point not in POINTS:
        raise ValueError(f"unknown hook point {point!r}; choose one of {list(POINTS)}.")
    _handlers.setdefault(point, []).append(handler)

    def detach() -> None:
        if handler in _handlers.get(point, []):
            _handlers[point].remove(handler)

    return detach


def attached(point: str) -> bool:
    """Whether any handler listens at ``point`` (callers skip work that only a handler would need)."""
    return bool(_handlers.get(point))


def fire(point: str, **context: Any) -> None:
    """Run the handlers of ``point`` (none: nothing happens). Their exceptions propagate."""
    for handler in list(_handlers.get(point, ())):
        handler(**context)


def transform(point: str, value: T, **context: Any) -> T:
    """``value`` passed through the handlers of ``point``; a handler returning ``None`` keeps it."""
    for handler in list(_handlers.get(point, ())):
        result = handler(value, **context)
        value = value if result is None else result
    return value
