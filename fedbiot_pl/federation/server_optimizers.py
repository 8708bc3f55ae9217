"""Server optimisers of FedOpt: FedAvg(M), FedAdagrad, FedAdam and FedYogi on the clients' aggregate.

Reddi et al., "Adaptive Federated Optimization" (ICLR 2021), Algorithm 2: each round the server
treats ``Delta_t = average - x_t`` (the clients' aggregated model minus the broadcast global model)
as a pseudo-gradient pointing *downhill*, and takes one optimiser step along it::

    m_t = beta_1 * m_{t-1} + (1 - beta_1) * Delta_t
    v_t = v_{t-1} + Delta_t^2                                            (FedAdagrad)
    v_t = beta_2 * v_{t-1} + (1 - beta_2) * Delta_t^2                    (FedAdam)
    v_t = v_{t-1} - (1 - beta_2) * Delta_t^2 * sign(v_{t-1} - Delta_t^2) (FedYogi)
    x_{t+1} = x_t + lr * m_t / (sqrt(v_t) + tau)

with ``m_{-1} = 0`` and ``v_{-1} = tau^2`` (Algorithm 2 asks for ``v_{-1} >= tau^2``; we take the
bound itself). Algorithm 2 has no bias correction (no ``1 - beta^t`` factors), and neither has this
module. :class:`ServerSGD` is FedAvg with a server learning rate, and FedAvgM (Hsu et al., 2019)
with ``momentum > 0``.

The optimisers are plain Python objects (no ``torch.optim``): :meth:`ServerOptimizer.step` maps the
global tensors and the aggregate to the new global tensors, and the state (moments per tensor)
round-trips through :meth:`~ServerOptimizer.state_dict` / :meth:`~ServerOptimizer.load_state_dict`
as tensors, numbers, strings, lists and dicts only, so ``torch.load(..., weights_only=True)`` reads
it back. :func:`server_optimizer` turns a setting (a name, an instance or ``None``) into an optimiser.
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

__all__ = [
    "SERVER_OPTIMIZERS",
    "FedAdagrad",
    "FedAdam",
    "FedYogi",
    "ServerOptimizer",
    "ServerSGD",
    "server_optimizer",
    "server_optimizer_issues",
]

#: The setting that means "no server optimiser": the aggregate becomes the new global model as is.
FEDAVG = "fedavg"


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _positive_issue(name: str, value: Any) -> str | None:
    if _is_number(value) and math.isfinite(value) and value > 0:
        return None
    return f"{name} must be a finite number > 0, got {value!r}."


def _unit_issue(name: str, value: Any) -> str | None:
    if _is_number(value) and 0 <= value < 1:
        return None
    return f"{name} must be a number in [0, 1), got {value!r}."


def server_optimizer_issues(**settings: Any) -> list[str]:
    """Every invalid server-optimiser setting, each naming the setting, the allowed range and the value.

    Args:
        **settings: Any of ``lr`` and ``tau`` (finite, > 0), ``momentum``, ``beta_1`` and ``beta_2``
            (in [0, 1)) and ``betas`` (a pair ``(beta_1, beta_2)``, each in [0, 1)). Other names are
            reported as unknown.

    Returns:
        One message per bad value (empty when all are valid), in the order the settings were given.
    """
    issues: list[str] = []
    for name, value in settings.items():
        if name in ("lr", "tau"):
            issue = _positive_issue(name, value)
            issues.extend([issue] if issue else [])
        elif name in ("momentum", "beta_1", "beta_2"):
            issue = _unit_issue(name, value)
            issues.extend([issue] if issue else [])
        elif name == "betas":
            if isinstance(value, (str, bytes)) or not isinstance(value, Iterable) or len(pair := list(value)) != 2:
                issues.append(f"betas must be a pair (beta_1, beta_2), each in [0, 1), got {value!r}.")
                continue
            for beta_name, beta in zip(("beta_1", "beta_2"), pair, strict=True):
                issue = _unit_issue(f"betas: {beta_name}", beta)
                issues.extend([issue] if issue else [])
        else:
            known = "lr, momentum, betas, beta_1, beta_2, tau"
            issues.append(f"unknown server optimizer setting {name!r} (known: {known}).")
    return issues


def _check(owner: str, **settings: Any) -> None:
    issues = server_optimizer_issues(**settings)
    if issues:
        raise ConfigError(f"Invalid {owner} settings: " + " ".join(issues))


def _pair(betas: Any) -> Any:
    """``betas`` as a tuple when it is a non-string iterable (a list from a config, even a generator), else as is."""
    return tuple(betas) if isinstance(betas, Iterable) and not isinstance(betas, (str, bytes)) else betas


def _work_dtype(tensor: Tensor) -> torch.dtype:
    """Float64 stays float64; every other floating dtype (bf16, fp16, fp32) is updated in float32."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


class ServerOptimizer(ABC):
    """A server optimiser of FedOpt: the new global tensors from the broadcast ones and the clients' aggregate.

    Subclasses define :meth:`_update` for one tensor; this base class checks the inputs, keeps the
    per-tensor state (on each tensor's device, in float32 or float64) and (de)serialises it.

    Floating-point tensors are updated in float32 (float64 ones in float64) and returned in the dtype
    and on the device of ``current``. Other tensors (integer counters, masks) have no pseudo-gradient;
    they are taken from ``average`` unchanged.

    The key set is fixed by the first :meth:`step`; a later step with other keys or another shape of a
    tensor that has state raises ``ValueError`` unless the caller said so first with :meth:`reset`.

    Attributes:
        name: The registry name (a key of :data:`SERVER_OPTIMIZERS`).
        steps: How many steps were taken (since construction or the last full :meth:`reset`).
    """

    name: ClassVar[str] = ""

    def __init__(self) -> None:
        """Start with no state: the first :meth:`step` sets the key set and creates the moments."""
        self.steps = 0
        self._keys: list[str] | None = None
        self._state: dict[str, dict[str, Tensor]] = {}

    @property
    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """The hyper-parameters as constructor keyword arguments (for logs and ``repr``)."""

    @property
    def slots(self) -> tuple[str, ...]:
        """The names of the state tensors kept per global tensor (e.g. ``("m", "v")``)."""
        return ()

    @abstractmethod
    def _update(self, current: Tensor, average: Tensor, delta: Tensor, state: dict[str, Tensor]) -> Tensor:
        """One tensor's new value, in the work dtype.

        ``state`` holds last round's slots (or is empty) and must be filled with this round's: new
        tensors, never updated in place, so that an earlier :meth:`state_dict` stays as it was.
        """

    def step(self, current: Mapping[str, Tensor], average: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The new global tensors from the global tensors ``current`` (what was broadcast) and the clients' aggregate.

        The pseudo-gradient is ``delta = average - current`` (Reddi's ``Delta_t``), per tensor.

        Args:
            current: The global tensors that were broadcast to the clients this round.
            average: The clients' aggregate of their returned tensors (e.g. :func:`~fedbiot_pl.federation.
                aggregation.fedavg`), with the same keys and shapes.

        Returns:
            A new dict, keyed in ``current``'s order, with each tensor in ``current``'s dtype and device.

        Raises:
            ValueError: ``current`` and ``average`` differ in keys or in a tensor's shape, or the keys
                or a stateful tensor's shape changed since the last step without a :meth:`reset`.
        """
        if set(current) != set(average):
            diff = sorted(set(current).symmetric_difference(average))
            raise ValueError(f"current and average have different keys: {diff[:5]} are in only one of them.")
        for key, value in current.items():
            if value.shape != average[key].shape:
                raise ValueError(
                    f"{key}: current has shape {tuple(value.shape)} but average has {tuple(average[key].shape)}."
                )
        if self._keys is not None and set(current) != set(self._keys):
            diff = sorted(set(current).symmetric_difference(self._keys))
            raise ValueError(
                f"{type(self).__name__}: the keys changed since the last step ({diff[:5]} are new or gone); "
                "call reset() first if that is intended."
            )
        for key in current:
            held = self._state.get(key, {})
            for slot, tensor in held.items():
                if tensor.shape != current[key].shape:
                    raise ValueError(
                        f"{type(self).__name__}: {key} has shape {tuple(current[key].shape)} but its {slot} state "
                        f"has {tuple(tensor.shape)}; call reset([{key!r}]) first if that is intended."
                    )
        new: dict[str, Tensor] = {}
        state: dict[str, dict[str, Tensor]] = {}
        with torch.no_grad():
            for key, x in current.items():
                if not x.is_floating_point():
                    new[key] = average[key].detach().to(x.device).clone()
                    continue
                dtype = _work_dtype(x)
                x_work = x.detach().to(dtype)
                avg_work = average[key].detach().to(device=x.device, dtype=dtype)
                slots = {slot: t.to(device=x.device, dtype=dtype) for slot, t in self._state.get(key, {}).items()}
                new[key] = self._update(x_work, avg_work, avg_work - x_work, slots).to(x.dtype)
                if slots:
                    state[key] = slots
        self._state = state
        self._keys = list(current)
        self.steps += 1
        return new

    def reset(self, keys: Iterable[str] | None = None) -> None:
        """Forget state, and accept a new key set at the next :meth:`step`.

        Args:
            keys: The tensors whose state (moments) to forget; ``None`` forgets all state and the step
                count. The state of other tensors carries on if the next step still has them, and is
                dropped if it does not; new tensors start from the initial state.
        """
        if keys is None:
            self._state = {}
            self.steps = 0
        else:
            for key in keys:
                self._state.pop(key, None)
        self._keys = None

    def state_dict(self) -> dict[str, Any]:
        """The state, loadable with ``torch.load(weights_only=True)`` after ``torch.save``.

        Returns:
            ``{"name", "steps", "keys", "state"}``: the registry name, the step count, the key set of
            the last step (``None`` before the first) and ``{key: {slot: tensor}}``. The tensors are the
            optimiser's own (not copies); a step replaces them rather than changing them in place.
            The hyper-parameters are not included: they come from the constructor.
        """
        return {
            "name": self.name,
            "steps": self.steps,
            "keys": None if self._keys is None else list(self._keys),
            "state": {key: dict(slots) for key, slots in self._state.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`state_dict` of an optimiser of the same kind.

        The tensors move to each global tensor's device (and work dtype) at the next :meth:`step`.

        Args:
            state: What :meth:`state_dict` returned (possibly through ``torch.save``/``torch.load``).

        Raises:
            ConfigError: The state is another optimiser's (e.g. the settings switched from fedadam to
                fedyogi between a run and its resumption).
            ValueError: The state is malformed (missing entries, slots of another kind, keys with state
                that are not in the key set).
            TypeError: An entry has the wrong type (``keys`` not a list of str, ``state`` not a dict of
                dicts of tensors).
        """
        missing = [entry for entry in ("name", "steps", "keys", "state") if entry not in state]
        if missing:
            raise ValueError(f"{type(self).__name__}.load_state_dict: the state lacks {missing}.")
        if state["name"] != self.name:
            raise ConfigError(
                f"The server optimizer state was saved by {state['name']!r}, not {self.name!r}: resume with the "
                "server optimizer the run was started with, or start a new run."
            )
        keys, tensors = state["keys"], state["state"]
        if keys is not None and (not isinstance(keys, list) or not all(isinstance(k, str) for k in keys)):
            raise TypeError(f"{type(self).__name__}.load_state_dict: 'keys' must be None or a list of str.")
        if not isinstance(tensors, Mapping):
            raise TypeError(f"{type(self).__name__}.load_state_dict: 'state' must be a dict of dicts of tensors.")
        loaded: dict[str, dict[str, Tensor]] = {}
        for key, slots in tensors.items():
            if keys is None or key not in keys:
                raise ValueError(f"{type(self).__name__}.load_state_dict: {key!r} has state but is not in 'keys'.")
            if not isinstance(slots, Mapping) or set(slots) != set(self.slots):
                names = sorted(slots) if isinstance(slots, Mapping) else slots
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: {key!r} has state {names}, expected {list(self.slots)} "
                    "(was it saved with other settings, e.g. momentum on or off?)."
                )
            if not all(isinstance(t, Tensor) for t in slots.values()):
                raise TypeError(f"{type(self).__name__}.load_state_dict: {key!r} has a state entry that is no tensor.")
            loaded[key] = dict(slots)
        self.steps = int(state["steps"])
        self._keys = None if keys is None else list(keys)
        self._state = loaded

    def __repr__(self) -> str:
        """The class name with its hyper-parameters, e.g. ``FedAdam(lr=0.1, betas=(0.9, 0.99), tau=0.001)``."""
        args = ", ".join(f"{name}={value!r}" for name, value in self.settings.items())
        return f"{type(self).__name__}({args})"


class ServerSGD(ServerOptimizer):
    """Server SGD on the pseudo-gradient: FedAvg with a server learning rate, FedAvgM with momentum.

    Without momentum ``x_{t+1} = x_t + lr * Delta_t``; with momentum (Hsu et al., 2019, FedAvgM)
    ``m_t = momentum * m_{t-1} + Delta_t`` and ``x_{t+1} = x_t + lr * m_t``, ``m_{-1} = 0``.
    The defaults (``lr=1``, no momentum) are plain FedAvg: the aggregate itself, bit for bit.

    Args:
        lr: Server learning rate (> 0).
        momentum: Server momentum in [0, 1); 0 keeps no state.

    Raises:
        ConfigError: Naming every invalid value.
    """

    name = "sgd"

    def __init__(self, lr: float = 1.0, momentum: float = 0.0) -> None:
        """Check and keep the settings (see the class docstring)."""
        _check(type(self).__name__, lr=lr, momentum=momentum)
        super().__init__()
        self.lr = float(lr)
        self.momentum = float(momentum)

    @property
    def settings(self) -> dict[str, Any]:
        """``{"lr", "momentum"}``."""
        return {"lr": self.lr, "momentum": self.momentum}

    @property
    def slots(self) -> tuple[str, ...]:
        """``("momentum_buffer",)`` with momentum, else none."""
        return ("momentum_buffer",) if self.momentum > 0 else ()

    def _update(self, current: Tensor, average: Tensor, delta: Tensor, state: dict[str, Tensor]) -> Tensor:
        if self.momentum > 0:
            buffer = delta if "momentum_buffer" not in state else self.momentum * state["momentum_buffer"] + delta
            state["momentum_buffer"] = buffer
            return current + self.lr * buffer
        # x + lr * delta == average + (lr - 1) * delta in exact arithmetic. In floating point,
        # x + (average - x) need not round back to average (e.g. x = 1e8, average = 1 in float32 gives 0),
        # while average + 0 * delta is average exactly: with lr = 1 this is FedAvg bit for bit.
        return average + (self.lr - 1.0) * delta


class _Adaptive(ServerOptimizer):
    """The shared part of Reddi's Algorithm 2: ``m_t``, and ``x_t + lr * m_t / (sqrt(v_t) + tau)``."""

    def __init__(self, lr: float, beta_1: float, beta_2: float | None, tau: float) -> None:
        super().__init__()
        self.lr = float(lr)
        self.beta_1 = float(beta_1)
        self.beta_2 = None if beta_2 is None else float(beta_2)
        self.tau = float(tau)

    @property
    def slots(self) -> tuple[str, ...]:
        """``("m", "v")``: the first moment and the second-moment estimate."""
        return ("m", "v")

    @abstractmethod
    def _second_moment(self, v: Tensor, delta_sq: Tensor) -> Tensor:
        """``v_t`` from ``v_{t-1}`` and ``Delta_t^2``."""

    def _update(self, current: Tensor, average: Tensor, delta: Tensor, state: dict[str, Tensor]) -> Tensor:
        m_prev = state.get("m")
        v_prev = state.get("v")
        if v_prev is None:  # Algorithm 2: m_{-1} = 0, v_{-1} = tau^2.
            m_prev = torch.zeros_like(delta)
            v_prev = torch.full_like(delta, self.tau**2)
        m = self.beta_1 * m_prev + (1.0 - self.beta_1) * delta
        v = self._second_moment(v_prev, delta * delta)
        state["m"], state["v"] = m, v
        return current + self.lr * m / (v.sqrt() + self.tau)


class FedAdagrad(_Adaptive):
    """FedAdagrad (Reddi et al., ICLR 2021, Algorithm 2): ``v_t = v_{t-1} + Delta_t^2``.

    ``m_t = beta_1 m_{t-1} + (1 - beta_1) Delta_t`` and ``x_{t+1} = x_t + lr m_t / (sqrt(v_t) + tau)``,
    from ``m_{-1} = 0`` and ``v_{-1} = tau^2`` (Algorithm 2's bound ``v_{-1} >= tau^2``), without bias
    correction (Algorithm 2 has none).

    Defaults follow Flower's ``flwr.serverapp.strategy.FedAdagrad`` (``eta=0.1``, ``tau=1e-3``; it has no
    momentum, i.e. ``beta_1=0``, which is also plain Adagrad). Algorithm 2 allows ``beta_1 > 0``.

    Args:
        lr: Server learning rate ``eta`` (> 0).
        beta_1: Momentum decay in [0, 1).
        tau: Adaptivity ``tau`` (> 0): added to ``sqrt(v_t)``, and ``v_{-1} = tau^2``.

    Raises:
        ConfigError: Naming every invalid value.
    """

    name = "fedadagrad"

    def __init__(self, lr: float = 0.1, beta_1: float = 0.0, tau: float = 1e-3) -> None:
        """Check and keep the settings (see the class docstring)."""
        _check(type(self).__name__, lr=lr, beta_1=beta_1, tau=tau)
        super().__init__(lr, beta_1, None, tau)

    @property
    def settings(self) -> dict[str, Any]:
        """``{"lr", "beta_1", "tau"}``."""
        return {"lr": self.lr, "beta_1": self.beta_1, "tau": self.tau}

    def _second_moment(self, v: Tensor, delta_sq: Tensor) -> Tensor:
        return v + delta_sq


class FedAdam(_Adaptive):
    """FedAdam (Reddi et al., ICLR 2021, Algorithm 2): ``v_t = beta_2 v_{t-1} + (1 - beta_2) Delta_t^2``.

    ``m_t = beta_1 m_{t-1} + (1 - beta_1) Delta_t`` and ``x_{t+1} = x_t + lr m_t / (sqrt(v_t) + tau)``,
    from ``m_{-1} = 0`` and ``v_{-1} = tau^2`` (Algorithm 2's bound ``v_{-1} >= tau^2``). Unlike Adam
    (Kingma & Ba), there is no bias correction: Algorithm 2 has none.

    Defaults follow Flower's ``flwr.serverapp.strategy.FedAdam`` (``eta=0.1``, ``beta_1=0.9``,
    ``beta_2=0.99``, ``tau=1e-3``; ``tau=1e-3`` gives ``v_{-1} = 1e-6``).

    Args:
        lr: Server learning rate ``eta`` (> 0).
        betas: ``(beta_1, beta_2)``, the decays of the first and second moments, each in [0, 1).
        tau: Adaptivity ``tau`` (> 0): added to ``sqrt(v_t)``, and ``v_{-1} = tau^2``.

    Raises:
        ConfigError: Naming every invalid value.
    """

    name = "fedadam"

    def __init__(self, lr: float = 0.1, betas: tuple[float, float] = (0.9, 0.99), tau: float = 1e-3) -> None:
        """Check and keep the settings (see the class docstring)."""
        betas = _pair(betas)
        _check(type(self).__name__, lr=lr, betas=betas, tau=tau)
        beta_1, beta_2 = betas
        super().__init__(lr, beta_1, beta_2, tau)

    @property
    def settings(self) -> dict[str, Any]:
        """``{"lr", "betas", "tau"}``."""
        return {"lr": self.lr, "betas": (self.beta_1, self.beta_2), "tau": self.tau}

    def _second_moment(self, v: Tensor, delta_sq: Tensor) -> Tensor:
        return self.beta_2 * v + (1.0 - self.beta_2) * delta_sq


class FedYogi(_Adaptive):
    """FedYogi (Reddi et al., ICLR 2021, Algorithm 2): ``v_t = v - (1 - beta_2) Delta_t^2 sign(v - Delta_t^2)``.

    Here ``v = v_{t-1}``: ``v_t`` moves towards ``Delta_t^2`` by ``(1 - beta_2) Delta_t^2`` (and stays put
    where ``v_{t-1} == Delta_t^2``), so, unlike FedAdam's, it does not jump after one large update.
    ``m_t = beta_1 m_{t-1} + (1 - beta_1) Delta_t`` and ``x_{t+1} = x_t + lr m_t / (sqrt(v_t) + tau)``,
    from ``m_{-1} = 0`` and ``v_{-1} = tau^2`` (Algorithm 2's bound ``v_{-1} >= tau^2``), without bias
    correction (Algorithm 2 has none).

    Defaults follow Flower's ``flwr.serverapp.strategy.FedYogi`` (``eta=1e-2``, ``beta_1=0.9``,
    ``beta_2=0.99``, ``tau=1e-3``; ``tau=1e-3`` gives ``v_{-1} = 1e-6``).

    Args:
        lr: Server learning rate ``eta`` (> 0).
        betas: ``(beta_1, beta_2)``, each in [0, 1).
        tau: Adaptivity ``tau`` (> 0): added to ``sqrt(v_t)``, and ``v_{-1} = tau^2``.

    Raises:
        ConfigError: Naming every invalid value.
    """

    name = "fedyogi"

    def __init__(self, lr: float = 1e-2, betas: tuple[float, float] = (0.9, 0.99), tau: float = 1e-3) -> None:
        """Check and keep the settings (see the class docstring)."""
        betas = _pair(betas)
        _check(type(self).__name__, lr=lr, betas=betas, tau=tau)
        beta_1, beta_2 = betas
        super().__init__(lr, beta_1, beta_2, tau)

    @property
    def settings(self) -> dict[str, Any]:
        """``{"lr", "betas", "tau"}``."""
        return {"lr": self.lr, "betas": (self.beta_1, self.beta_2), "tau": self.tau}

    def _second_moment(self, v: Tensor, delta_sq: Tensor) -> Tensor:
        return v - (1.0 - self.beta_2) * delta_sq * torch.sign(v - delta_sq)


#: The server optimisers by setting name; ``"fedavg"`` (no server optimiser) is handled by :func:`server_optimizer`.
SERVER_OPTIMIZERS: dict[str, type[ServerOptimizer]] = {
    cls.name: cls for cls in (ServerSGD, FedAdagrad, FedAdam, FedYogi)
}


def server_optimizer(value: str | ServerOptimizer | None) -> ServerOptimizer | None:
    """The server optimiser that a setting names.

    Args:
        value: ``None`` or ``"fedavg"`` for plain FedAvg (the aggregate is applied as is); a name in
            :data:`SERVER_OPTIMIZERS` (any case) for that optimiser with its defaults; or an instance.

    Returns:
        ``None`` for plain FedAvg, else the optimiser (an instance is returned as it is).

    Raises:
        ConfigError: Any other value, naming it and listing the choices.
    """
    if value is None or isinstance(value, ServerOptimizer):
        return value
    if isinstance(value, str):
        name = value.strip().lower()
        if name == FEDAVG:
            return None
        if name in SERVER_OPTIMIZERS:
            return SERVER_OPTIMIZERS[name]()
    choices = [FEDAVG, *SERVER_OPTIMIZERS]
    raise ConfigError(
        f"Unknown server optimizer {value!r}: choose one of {choices} (or null for fedavg), or pass a "
        "ServerOptimizer instance (e.g. fedbiot_pl.federation.server_optimizers.FedAdam(lr=0.01))."
    )
