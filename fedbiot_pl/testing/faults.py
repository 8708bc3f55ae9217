"""Named fault points for the reliability tests; a no-op unless ``FEDBIOT_FAULTS`` is set.

``FEDBIOT_FAULTS`` holds a JSON list of faults, for example
``[{"point": "align_step", "epoch": 2, "step": 1, "action": "kill"}]``. A fault fires at every call
of its ``point`` whose context equals every context key the fault names; keys it leaves out match
anything. The points, where they sit, and the context each one passes:

===============  ======================================================  ==================================
point            where                                                    context
===============  ======================================================  ==================================
``client_fit``   a client's fit, before its Trainer is built             round, client, attempt
``client_step``  start of every client batch (only with faults set)      round, client, attempt, step
``upload``       a client's upload, before it is serialised              round, client, attempt
``align_step``   start of every server (alignment) batch                 epoch, step
``file_write``   an atomic write, after the temporary file is complete   name (the file name); checkpoints
                 and before its rename                                    also epoch
===============  ======================================================  ==================================

``step`` is the batch index within the fit or epoch. Actions: ``kill`` (SIGKILL this process),
``crash`` (:class:`InjectedCrash`, a ``BaseException`` that no fault handling catches: an
in-process stand-in for the process dying), ``raise`` (:class:`InjectedFault`, an ordinary error,
so a client fit that raises it is dropped) and ``sleep`` (``seconds``, default 1) work everywhere;
``nan`` at ``client_step`` turns the adapter LoRA into NaN (so the loss is NaN); at ``upload`` the
update is damaged by ``nan``, ``inf``, ``missing_key``, ``extra_key``, ``shape``, ``dtype``,
``scale`` (multiplied by ``factor``, default 1e6) or replaced by ``garbage`` bytes.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import time
from typing import Any

import torch
from lightning.pytorch import Callback
from torch import Tensor
from typing_extensions import override

ENV = "FEDBIOT_FAULTS"
POINTS = ("client_fit", "client_step", "upload", "align_step", "file_write")
CONTEXT_KEYS = ("round", "client", "attempt", "step", "epoch", "name")
CORRUPTIONS = ("nan", "inf", "missing_key", "extra_key", "shape", "dtype", "scale", "garbage")
ACTIONS = ("kill", "crash", "raise", "sleep", *CORRUPTIONS)


class InjectedFault(RuntimeError):
    """The error that a ``raise`` fault throws."""


class InjectedCrash(BaseException):
    """What a ``crash`` fault throws: like a dying process, it passes every ``except Exception``."""


@functools.lru_cache(maxsize=8)
def parse_faults(text: str) -> tuple[dict[str, Any], ...]:
    """The faults of a ``FEDBIOT_FAULTS`` value.

    Raises:
        ValueError: naming every fault with an unknown point, action or key, and the allowed ones.
    """
    faults = json.loads(text)
    if isinstance(faults, dict):
        faults = [faults]
    problems = []
    allowed_keys = {"point", "action", "seconds", "factor", *CONTEXT_KEYS}
    for index, fault in enumerate(faults):
        if fault.get("point") not in POINTS:
            problems.append(f"fault {index}: point {fault.get('point')!r} is not one of {list(POINTS)}")
        if fault.get("action") not in ACTIONS:
            problems.append(f"fault {index}: action {fault.get('action')!r} is not one of {list(ACTIONS)}")
        unknown = sorted(set(fault) - allowed_keys)
        if unknown:
            problems.append(f"fault {index}: unknown keys {unknown}; allowed: {sorted(allowed_keys)}")
    if problems:
        raise ValueError(f"{ENV}: " + "; ".join(problems))
    return tuple(faults)


def active() -> bool:
    """Whether any fault is configured in this process."""
    return bool(os.environ.get(ENV))


def find(point: str, **context: Any) -> dict[str, Any] | None:
    """The first configured fault of ``point`` that matches ``context``, else ``None``."""
    text = os.environ.get(ENV)
    if not text:
        return None
    for fault in parse_faults(text):
        if fault["point"] == point and all(fault[key] == context.get(key) for key in CONTEXT_KEYS if key in fault):
            return fault
    return None


def trigger(point: str, **context: Any) -> dict[str, Any] | None:
    """Carry out the ``kill``/``raise``/``sleep`` fault matching ``point`` and ``context``; return the
    matching fault (whose other actions the caller applies), or ``None``."""
    fault = find(point, **context)
    if fault is None:
        return None
    action = fault["action"]
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "crash":
        raise InjectedCrash(f"injected crash at {point} {context}")
    if action == "raise":
        raise InjectedFault(f"injected fault at {point} {context}")
    if action == "sleep":
        time.sleep(float(fault.get("seconds", 1.0)))
    return fault


def corrupt_update(state: dict[str, Tensor], fault: dict[str, Any]) -> dict[str, Tensor] | bytes:
    """``state`` damaged as ``fault["action"]`` says (a new dict; ``garbage`` gives bytes)."""
    action = fault["action"]
    if action == "garbage":
        return b"\x80\x04not safetensors"
    state = dict(state)
    first = min(state)
    if action in ("nan", "inf"):
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
    elif action == "scale":
        state = {key: value * float(fault.get("factor", 1e6)) for key, value in state.items()}
    return state


class ClientStepFaults(Callback):
    """Fires the ``client_step`` faults of one client fit (added to the client Trainer only when
    faults are configured, so normal fits pay nothing)."""

    def __init__(self, round_idx: int, client_id: int, attempt: int) -> None:
        self.context = {"round": round_idx, "client": client_id, "attempt": attempt}

    @override
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        fault = trigger("client_step", step=batch_idx, **self.context)
        if fault is not None and fault["action"] in ("nan", "inf"):
            with torch.no_grad():
                for param in pl_module.split.lora_parameters("adapter").values():
                    param.fill_(float(fault["action"]))
