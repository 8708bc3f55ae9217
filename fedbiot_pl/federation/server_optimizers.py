"""FedOpt server optimisers (Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2).

Each round the server steps along the pseudo-gradient ``Delta_t = average - x_t`` (aggregate minus broadcast)::

    m_t = beta_1 * m_{t-1} + (1 - beta_1) * Delta_t
    v_t = v_{t-1} + Delta_t^2                                            (FedAdagrad)
    v_t = beta_2 * v_{t-1} + (1 - beta_2) * Delta_t^2                    (FedAdam)
    v_t = v_{t-1} - (1 - beta_2) * Delta_t^2 * sign(v_{t-1} - Delta_t^2) (FedYogi)
    x_{t+1} = x_t + lr * m_t / (sqrt(v_t) + tau)

from ``m_{-1} = 0``, ``v_{-1} = tau^2`` (Algorithm 2's bound ``v_{-1} >= tau^2``), without bias correction (as
in Algorithm 2). :class:`ServerSGD` is FedAvg with a server learning rate (FedAvgM with momentum).
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from fedbiot_pl.errors import ConfigError

__all__ = ["SERVER_OPTIMIZERS", "FedAdagrad", "FedAdam", "FedYogi", "ServerOptimizer", "ServerSGD",
           "server_optimizer", "server_optimizer_issues"]

#: The setting that means "no server optimiser": the aggregate becomes the new global model as is.
FEDAVG = "fedavg"


def _issue(name: str, value: Any, positive: bool) -> list[str]:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and (math.isfinite(value) and value > 0 if positive else 0 <= value < 1)
    rule = "a finite number > 0" if positive else "a number in [0, 1)"
    return [] if ok else [f"{name} must be {rule}, got {value!r}."]


def server_optimizer_issues(**settings: Any) -> list[str]:
    """One message per invalid setting, in order, naming the setting, its allowed range and the value.

    ``lr`` and ``tau`` must be finite and > 0; ``momentum``, ``beta_1``, ``beta_2`` and both of ``betas`` (a pair)
    in [0, 1). Other names are reported as unknown.
    """
    issues: list[str] = []
    for name, value in settings.items():
        if name in ("lr", "tau", "momentum", "beta_1", "beta_2"):
            issues += _issue(name, value, positive=name in ("lr", "tau"))
        elif name != "betas":
            issues.append(f"unknown server optimizer setting {name!r} (known: lr, momentum, betas, beta_1, beta_2, "
                          "tau).")
        elif isinstance(value, (str, bytes)) or not isinstance(value, Iterable) or len(pair := list(value)) != 2:
            issues.append(f"betas must be a pair (beta_1, beta_2), each in [0, 1), got {value!r}.")
        else:
            issues += _issue("betas: beta_1", pair[0], False) + _issue("betas: beta_2", pair[1], False)
    return issues


def _check(owner: object, **settings: Any) -> None:
    if issues := server_optimizer_issues(**settings):
        raise ConfigError(f"Invalid {type(owner).__name__} settings: " + " ".join(issues))


class ServerOptimizer(ABC):
    """A FedOpt server optimiser: the new global tensors from the broadcast ones and the clients' aggregate.

    Float tensors are updated in float32 (float64 in float64) and returned in ``current``'s dtype and device;
    other tensors are taken from ``average``. ``name`` is the registry key, ``slots`` the state tensors kept per
    global tensor, ``steps`` the steps taken since construction or a full :meth:`reset`.
    """

    name: ClassVar[str] = ""
    slots: tuple[str, ...] = ()
    _settings: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self.steps = 0
        self._keys: list[str] | None = None
        self._state: dict[str, dict[str, Tensor]] = {}

    @property
    def settings(self) -> dict[str, Any]:
        """The hyper-parameters as constructor keyword arguments (for logs and ``repr``)."""
        return {name: getattr(self, name) for name in self._settings}

    @abstractmethod
    def _update(self, current: Tensor, average: Tensor, delta: Tensor, state: dict[str, Tensor]) -> Tensor:
        """One tensor's new value; puts new slot tensors in ``state`` (never updates them in place)."""

    def step(self, current: Mapping[str, Tensor], average: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The new global tensors from the broadcast ones (``current``) and the aggregate (``average``).

        Raises:
            ValueError: Keys or shapes differ, or changed since the last step without a :meth:`reset`.
        """
        if diff := sorted(set(current).symmetric_difference(average)):
            raise ValueError(f"current and average have different keys: {diff[:5]} are in only one of them.")
        for key, x in current.items():
            if x.shape != (shape := average[key].shape):
                raise ValueError(f"{key}: current has shape {tuple(x.shape)} but average has {tuple(shape)}.")
        if self._keys is not None and (diff := sorted(set(current).symmetric_difference(self._keys))):
            raise ValueError(f"{type(self).__name__}: the keys changed since the last step ({diff[:5]} are new or "
                             "gone); call reset() first if that is intended.")
        for key, x in current.items():
            for slot, held in self._state.get(key, {}).items():
                if held.shape != x.shape:
                    raise ValueError(f"{type(self).__name__}: {key} has shape {tuple(x.shape)} but its {slot} state "
                                     f"has {tuple(held.shape)}; call reset([{key!r}]) first if that is intended.")
        new: dict[str, Tensor] = {}
        state: dict[str, dict[str, Tensor]] = {}
        with torch.no_grad():
            for key, x in current.items():
                if not x.is_floating_point():
                    new[key] = average[key].detach().to(x.device).clone()
                    continue
                dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
                x_work, avg = x.detach().to(dtype), average[key].detach().to(device=x.device, dtype=dtype)
                slots = {slot: t.to(device=x.device, dtype=dtype) for slot, t in self._state.get(key, {}).items()}
                new[key] = self._update(x_work, avg, avg - x_work, slots).to(x.dtype)
                if slots:
                    state[key] = slots
        self._state, self._keys = state, list(current)
        self.steps += 1
        return new

    def reset(self, keys: Iterable[str] | None = None) -> None:
        """Forget the state of ``keys`` (``None``: all state and the step count); the next step may change keys."""
        if keys is None:
            self._state, self.steps = {}, 0
        for key in keys or ():
            self._state.pop(key, None)
        self._keys = None

    def state_dict(self) -> dict[str, Any]:
        """``{"name", "steps", "keys", "state": {key: {slot: tensor}}}``; ``torch.load(weights_only=True)`` reads it."""
        return {"name": self.name, "steps": self.steps, "keys": None if self._keys is None else list(self._keys),
                "state": {key: dict(slots) for key, slots in self._state.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`state_dict` of the same optimiser (else ConfigError) and slots (else ValueError)."""
        if state["name"] != self.name:
            raise ConfigError(f"The server optimizer state was saved by {state['name']!r}, not {self.name!r}: "
                              "resume with the server optimizer the run was started with, or start a new run.")
        for key, slots in state["state"].items():
            if set(slots) != set(self.slots):
                raise ValueError(f"{type(self).__name__}.load_state_dict: {key!r} has state {sorted(slots)}, expected "
                                 f"{list(self.slots)} (was it saved with other settings, e.g. momentum on or off?).")
        self.steps = int(state["steps"])
        self._keys = None if state["keys"] is None else list(state["keys"])
        self._state = {key: dict(slots) for key, slots in state["state"].items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.settings.items())})"


class ServerSGD(ServerOptimizer):
    """Server SGD, ``x_new = x + lr * delta``; with momentum FedAvgM (Hsu et al., 2019), ``m = momentum * m + delta``.

    Without momentum the step is computed as ``x_new = average + (lr - 1) * delta``, so lr 1 is FedAvg bit
    for bit (``x + (average - x)`` can round away from ``average``).

    Args:
        lr: Server learning rate (> 0); the default 1 is plain FedAvg.
        momentum: Server momentum in [0, 1); 0 keeps no state.
    """

    name = "sgd"
    _settings = ("lr", "momentum")

    def __init__(self, lr: float = 1.0, momentum: float = 0.0) -> None:
        _check(self, lr=lr, momentum=momentum)
        super().__init__()
        self.lr, self.momentum = float(lr), float(momentum)
        self.slots = ("momentum_buffer",) if self.momentum > 0 else ()

    def _update(self, current: Tensor, average: Tensor, delta: Tensor, state: dict[str, Tensor]) -> Tensor:
        if self.momentum == 0:
            return average + (self.lr - 1.0) * delta
        buffer = state["momentum_buffer"] = (self.momentum * state["momentum_buffer"] + delta) if state else delta
        return current + self.lr * buffer


class _Adaptive(ServerOptimizer):
    """Algorithm 2 with ``betas``; FedAdagrad, FedAdam and FedYogi differ only in :meth:`_second_moment`."""

    slots = ("m", "v")
    _settings = ("lr", "betas", "tau")

    def __init__(self, lr: float = 0.1, betas: tuple[float, float] = (0.9, 0.99), tau: float = 1e-3) -> None:
        _check(self, lr=lr, betas=betas, tau=tau)
        super().__init__()
        self.lr, self.tau = float(lr), float(tau)
        self.beta_1, self.beta_2 = self.betas = tuple(float(beta) for beta in betas)

    @abstractmethod
    def _second_moment(self, v: Tensor, delta_sq: Tensor) -> Tensor:
        """``v_t`` from ``v_{t-1}`` and ``Delta_t^2``."""

    def _update(self, current: Tensor, average: Tensor, delta: Tensor, state: dict[str, Tensor]) -> Tensor:
        if not state:  # m_{-1} = 0, v_{-1} = tau^2
            state.update(m=torch.zeros_like(delta), v=torch.full_like(delta, self.tau**2))
        m = state["m"] = self.beta_1 * state["m"] + (1.0 - self.beta_1) * delta
        v = state["v"] = self._second_moment(state["v"], delta * delta)
        return current + self.lr * m / (v.sqrt() + self.tau)


class FedAdagrad(_Adaptive):
    """FedAdagrad, ``v_t = v_{t-1} + Delta_t^2``; defaults of Flower's ``flwr.serverapp.strategy.FedAdagrad``.

    Args:
        lr: Server learning rate ``eta`` (> 0).
        beta_1: Momentum decay in [0, 1) (Flower has none; Algorithm 2 allows it).
        tau: Adaptivity (> 0), added to ``sqrt(v_t)``; ``v_{-1} = tau^2``.
    """

    name = "fedadagrad"
    _settings = ("lr", "beta_1", "tau")

    def __init__(self, lr: float = 0.1, beta_1: float = 0.0, tau: float = 1e-3) -> None:
        _check(self, lr=lr, beta_1=beta_1, tau=tau)
        ServerOptimizer.__init__(self)
        self.lr, self.beta_1, self.beta_2, self.tau = float(lr), float(beta_1), None, float(tau)

    def _second_moment(self, v: Tensor, delta_sq: Tensor) -> Tensor:
        return v + delta_sq


class FedAdam(_Adaptive):
    """FedAdam, ``v_t = beta_2 v_{t-1} + (1 - beta_2) Delta_t^2``, without Adam's bias correction.

    Defaults of Flower's ``flwr.serverapp.strategy.FedAdam``.

    Args:
        lr: Server learning rate ``eta`` (> 0).
        betas: ``(beta_1, beta_2)``, the decays of the first and second moments, each in [0, 1).
        tau: Adaptivity (> 0), added to ``sqrt(v_t)``; ``v_{-1} = tau^2``.
    """

    name = "fedadam"

    def _second_moment(self, v: Tensor, delta_sq: Tensor) -> Tensor:
        return self.beta_2 * v + (1.0 - self.beta_2) * delta_sq


class FedYogi(_Adaptive):
    """FedYogi, ``v_t = v_{t-1} - (1 - beta_2) Delta_t^2 sign(v_{t-1} - Delta_t^2)``: no jump after one large step.

    Defaults of Flower's ``flwr.serverapp.strategy.FedYogi``.

    Args:
        lr: Server learning rate ``eta`` (> 0).
        betas: ``(beta_1, beta_2)``, each in [0, 1).
        tau: Adaptivity (> 0), added to ``sqrt(v_t)``; ``v_{-1} = tau^2``.
    """

    name = "fedyogi"

    def __init__(self, lr: float = 1e-2, betas: tuple[float, float] = (0.9, 0.99), tau: float = 1e-3) -> None:
        super().__init__(lr, betas, tau)

    def _second_moment(self, v: Tensor, delta_sq: Tensor) -> Tensor:
        return v - (1.0 - self.beta_2) * delta_sq * torch.sign(v - delta_sq)


#: The server optimisers by setting name; ``"fedavg"`` (no server optimiser) is handled by :func:`server_optimizer`.
SERVER_OPTIMIZERS: dict[str, type[ServerOptimizer]] = {c.name: c for c in (ServerSGD, FedAdagrad, FedAdam, FedYogi)}


def server_optimizer(value: str | ServerOptimizer | None) -> ServerOptimizer | None:
    """The server optimiser that a setting names, or ``None`` for plain FedAvg.

    Args:
        value: ``None`` or ``"fedavg"`` (plain FedAvg); a name in :data:`SERVER_OPTIMIZERS` (any case) for that
            optimiser with its defaults; or an instance, returned as it is. Anything else raises ConfigError.
    """
    if value is None or isinstance(value, ServerOptimizer):
        return value
    if isinstance(value, str) and (name := value.strip().lower()) in (FEDAVG, *SERVER_OPTIMIZERS):
        return None if name == FEDAVG else SERVER_OPTIMIZERS[name]()
    raise ConfigError(f"Unknown server optimizer {value!r}: choose one of {[FEDAVG, *SERVER_OPTIMIZERS]} (or null for "
                      "fedavg), or pass a ServerOptimizer instance (e.g. fedbiot_pl.federation.server_optimizers."
                      "FedAdam(lr=0.01)).")
