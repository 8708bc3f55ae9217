"""Fault actions for the reliability tests and benchmarks, attached to the hook points of :mod:`fedbiot_pl.hooks`.

Production code never imports this module: it only calls the no-op hook points, and nothing reads
the environment. A test attaches faults in-process (:func:`attach_faults`, :func:`injected_faults`);
a subprocess test starts ``python -m fedbiot_pl.testing.launch '<faults json>' <train.py arguments>``
(:mod:`fedbiot_pl.testing.launch`).

Faults are a JSON list (or one object), for example
``[{"point": "align_step", "epoch": 2, "step": 1, "action": "kill"}]``. A fault fires at every call of
its ``point`` whose context equals every context key the fault names; keys it leaves out match
anything; of several matching faults of one point, the first listed fires. The points and their
context keys:

===============  ========================================================  ========================
point            where                                                     context keys
===============  ========================================================  ========================
``client_fit``   a client's fit, before its Trainer is built               round, client, attempt
``client_step``  start of every client batch (only while attached)         round, client, attempt,
                                                                           step
``upload``       a client's encoded upload, before it is sent              round, client, attempt
``align_step``   start of every server (alignment) batch                   epoch, step
``file_write``   an atomic write, after the temporary file is complete     name, epoch (checkpoints)
                 and before its rename
===============  ========================================================  ========================

``step`` is the batch index within the fit or epoch. Actions: ``kill`` (SIGKILL this process),
``crash`` (:class:`InjectedCrash`, a ``BaseException`` that no fault handling catches: an
in-process stand-in for the process dying), ``raise`` (:class:`InjectedFault`, an ordinary error,
so a client fit that raises it is dropped) and ``sleep`` (``seconds``, default 1) work at every
point; ``nan``/``inf`` at ``client_step`` fill the adapter LoRA with NaN/Inf (so the loss is NaN);
at ``upload`` the update is damaged by ``nan``, ``inf``, ``missing_key``, ``extra_key``, ``shape``,
``dtype``, ``scale`` (multiplied by ``factor``, default 1e6) or replaced by ``garbage`` bytes; a top-k
logits upload also by ``index_range`` (an index past the vocabulary) and ``offsets`` (one example a
token longer) (:func:`corrupt_update`).
"""

from __future__ import annotations

import contextlib
import json
import numbers
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from fedbiot_pl import hooks
from fedbiot_pl.federation.messages import decode_update, encode_update, payload_metadata

Faults = str | Mapping[str, Any] | Sequence[Mapping[str, Any]]
"""What :func:`parse_faults` and :func:`attach_faults` take: JSON text, one fault, or a list of faults."""

POINTS = hooks.POINTS
POINT_CONTEXT = {
    "client_fit": ("round", "client", "attempt"),
    "client_step": ("round", "client", "attempt", "step"),
    "upload": ("round", "client", "attempt"),
    "align_step": ("epoch", "step"),
    "file_write": ("name", "epoch"),
}
CONTEXT_KEYS = ("round", "client", "attempt", "step", "epoch", "name")
BASIC_ACTIONS = ("kill", "crash", "raise", "sleep")
LOGITS_CORRUPTIONS = ("index_range", "offsets")  # of a top-k logits upload only
CORRUPTIONS = ("nan", "inf", "missing_key", "extra_key", "shape", "dtype", "scale", "garbage", *LOGITS_CORRUPTIONS)
ACTIONS = (*BASIC_ACTIONS, *CORRUPTIONS)
POINT_ACTIONS = {point: BASIC_ACTIONS for point in POINTS} | {
    "client_step": (*BASIC_ACTIONS, "nan", "inf"),
    "upload": ACTIONS,
}
OPTIONS = {"seconds": ("sleep",), "factor": ("scale",)}
GARBAGE = b"\x80\x04not safetensors"


class InjectedFault(RuntimeError):
    """The error that a ``raise`` fault throws."""


class InjectedCrash(BaseException):
    """What a ``crash`` fault throws: like a dying process, it passes every ``except Exception``."""


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _fault_problems(index: int, fault: Any) -> list[str]:
    """What is wrong with fault number ``index`` (empty: nothing)."""
    if not isinstance(fault, Mapping):
        return [f"fault {index}: {fault!r} is not an object"]
    problems = []
    point, action = fault.get("point"), fault.get("action")
    if point not in POINTS:
        problems.append(f"fault {index}: point {point!r} is not one of {list(POINTS)}")
    if action not in ACTIONS:
        problems.append(f"fault {index}: action {action!r} is not one of {list(ACTIONS)}")
    elif point in POINTS and action not in POINT_ACTIONS[point]:
        problems.append(f"fault {index}: action {action!r} does not apply at {point}; "
                        f"choose one of {list(POINT_ACTIONS[point])}")
    allowed_keys = {"point", "action", *OPTIONS, *CONTEXT_KEYS}
    unknown = sorted(set(fault) - allowed_keys)
    if unknown:
        problems.append(f"fault {index}: unknown keys {unknown}; allowed: {sorted(allowed_keys)}")
    if point in POINTS:
        foreign = [key for key in CONTEXT_KEYS if key in fault and key not in POINT_CONTEXT.get(point, ())]
        if foreign:
            problems.append(f"fault {index}: {point} has no context keys {foreign} (it would never fire); "
                            f"its keys: {list(POINT_CONTEXT.get(point, ()))}")
    for key in CONTEXT_KEYS:
        if key in fault and not (isinstance(fault[key], str) if key == "name" else _is_int(fault[key])):
            problems.append(f"fault {index}: {key} {fault[key]!r} is not {'a string' if key == 'name' else 'an int'}")
    for option, actions in OPTIONS.items():
        if option not in fault:
            continue
        if action in ACTIONS and action not in actions:
            problems.append(f"fault {index}: {option!r} only applies to action {actions[0]!r}")
        if not _is_number(fault[option]) or fault[option] < 0:
            problems.append(f"fault {index}: {option} {fault[option]!r} is not a non-negative number")
    return problems


def parse_faults(faults: Faults) -> tuple[dict[str, Any], ...]:
    """The faults of ``faults``, checked.

    Args:
        faults: JSON text of a list of faults (or of one fault), or the list (or the fault) itself.

    Returns:
        The faults, as plain dicts in the order given.

    Raises:
        ValueError: the JSON does not parse, or (naming every problem at once, with the allowed
            values) a fault has an unknown point, action or key, an action or context key its point
            does not have, or a value of the wrong type.
    """
    if isinstance(faults, str):
        try:
            faults = json.loads(faults)
        except json.JSONDecodeError as error:
            raise ValueError(f"faults: not JSON ({error})") from error
    if isinstance(faults, Mapping):
        faults = [faults]
    if not isinstance(faults, Sequence) or isinstance(faults, (str, bytes)):
        raise ValueError(f"faults: expected a list of faults (objects), got {type(faults).__name__}")  # noqa: TRY004
    problems = [problem for index, fault in enumerate(faults) for problem in _fault_problems(index, fault)]
    if problems:
        raise ValueError("faults: " + "; ".join(problems))
    return tuple(dict(fault) for fault in faults)


def _matching(faults: Sequence[dict[str, Any]], context: Mapping[str, Any]) -> dict[str, Any] | None:
    """The first of ``faults`` whose context keys all equal ``context``'s, else ``None``."""
    for fault in faults:
        if all(fault[key] == context.get(key) for key in CONTEXT_KEYS if key in fault):
            return fault
    return None


def _act(point: str, fault: dict[str, Any], context: Mapping[str, Any]) -> None:
    """Carry out ``fault``'s ``kill``/``crash``/``raise``/``sleep`` action (others: nothing here)."""
    action = fault["action"]
    shown = {key: value for key, value in context.items() if key in CONTEXT_KEYS}
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "crash":
        raise InjectedCrash(f"injected crash at {point} {shown}")
    elif action == "raise":
        raise InjectedFault(f"injected fault at {point} {shown}")
    elif action == "sleep":
        time.sleep(float(fault.get("seconds", 1.0)))


def corrupt_update(state: Mapping[str, Tensor], fault: Mapping[str, Any]) -> dict[str, Tensor] | bytes:
    """``state`` damaged as ``fault["action"]`` says.

    Args:
        state: An update (tensor name -> tensor); left unchanged.
        fault: A fault (only ``action`` and, for ``scale``, ``factor`` are read).

    Returns:
        A new dict: the first key in sorted order (of a logits upload: ``values``) set to NaN/Inf at
        its first element (``nan``, ``inf``), removed (``missing_key``), joined by ``<first>.extra``
        (``extra_key``), one row longer (``shape``), float64 (``dtype``), or every tensor times ``factor`` (``scale``);
        ``garbage`` gives bytes that are no safetensors buffer. For logits: ``index_range`` sets the
        first index to 65,535 (past a small vocabulary), ``offsets`` adds 1 to every offset but the first.
    """
    action = fault["action"]
    if action == "garbage":
        return GARBAGE
    state = dict(state)
    first = min(state)
    if action in ("nan", "inf"):
        first = "values" if "values" in state and "indices" in state else first
        damaged = state[first].clone()
        damaged.view(-1)[0] = float(action)
        state[first] = damaged
    elif action == "missing_key":
        del state[first]
    elif action == "extra_key":
        state[first + ".extra"] = torch.zeros(2)
    elif action == "shape":
        state[first] = torch.cat([state[first], state[first][:1]])
    elif action == "dtype":
        state[first] = state[first].double()
    elif action in LOGITS_CORRUPTIONS and "indices" not in state:
        raise ValueError(f"fault action {action!r} damages a top-k logits upload; this upload has {sorted(state)}.")
    elif action == "index_range":
        state["indices"] = state["indices"].clone()
        state["indices"].view(-1)[0] = 65_535
    elif action == "offsets":
        state["offsets"] = torch.cat([state["offsets"][:1], state["offsets"][1:] + 1])
    elif action == "scale":
        state = {key: value * float(fault.get("factor", 1e6)) for key, value in state.items()}
    return state


def _fire_handler(point: str, faults: Sequence[dict[str, Any]]) -> Callable[..., None]:
    """The :func:`hooks.fire` handler of ``point``'s faults."""

    def handler(**context: Any) -> None:
        fault = _matching(faults, context)
        if fault is None:
            return
        _act(point, fault, context)
        if point == "client_step" and fault["action"] in ("nan", "inf"):
            module = context["module"]  # what the client trains (split learning: its own layers only)
            own = getattr(module, "client_lora", None)
            trained = own() if own is not None else module.split.lora_parameters("adapter")
            with torch.no_grad():
                for param in trained.values():
                    param.fill_(float(fault["action"]))

    return handler


def _upload_handler(faults: Sequence[dict[str, Any]]) -> Callable[..., bytes | None]:
    """The :func:`hooks.transform` handler of the ``upload`` faults: the damaged upload bytes.

    The tensors are decoded, damaged by :func:`corrupt_update` and encoded again with the same header
    metadata.
    """

    def handler(payload: bytes, **context: Any) -> bytes | None:
        fault = _matching(faults, context)
        if fault is None:
            return None
        _act("upload", fault, context)
        if fault["action"] not in CORRUPTIONS:
            return None
        payload = bytes(payload)
        damaged = corrupt_update(decode_update(payload), fault)
        return damaged if isinstance(damaged, bytes) else encode_update(damaged, payload_metadata(payload))

    return handler


def attach_faults(faults: Faults) -> Callable[[], None]:
    """Attach ``faults`` to their hook points: one handler per point that has any.

    Args:
        faults: JSON text, one fault, or a list of faults (see the module docstring).

    Returns:
        The function that detaches every handler attached here (calling it twice is harmless).

    Raises:
        ValueError: ``faults`` is not valid (:func:`parse_faults`); nothing is attached then.
    """
    parsed = parse_faults(faults)
    detachers = []
    for point in POINTS:
        of_point = [fault for fault in parsed if fault["point"] == point]
        if of_point:
            handler = _upload_handler(of_point) if point == "upload" else _fire_handler(point, of_point)
            detachers.append(hooks.attach(point, handler))

    def detach() -> None:
        for detach_one in detachers:
            detach_one()

    return detach


@contextlib.contextmanager
def injected_faults(faults: Faults) -> Iterator[tuple[dict[str, Any], ...]]:
    """Attach the faults for the duration of a ``with`` block.

    ``with injected_faults([...]):`` the faults are attached inside the block, and detached after it
    however it ends (an :class:`InjectedCrash` included).

    Args:
        faults: JSON text, one fault, or a list of faults (see the module docstring).

    Yields:
        The parsed faults.
    """
    parsed = parse_faults(faults)
    detach = attach_faults(parsed)
    try:
        yield parsed
    finally:
        detach()
