"""Local differential privacy on a client's uploaded LoRA update (pure functions over dicts of tensors).

What it does. Before a client uploads its adapter LoRA, :func:`privatize` replaces it by
``reference + clip(upload - reference) + N(0, sigma^2 I)``: the change against the broadcast
``reference`` is clipped to L2 norm ``clip_norm`` over all keys together, then Gaussian noise is added
to every value. ``sigma`` is calibrated so that one such release is ``(epsilon, delta)``-DP.

Neighbouring relation and sensitivity. Two inputs are neighbours when a client's whole local data
set is *replaced* by any other (the local-DP relation: the randomiser must hide everything the client
holds). The clipped change of either lies in the L2 ball of radius ``clip_norm``, so the L2
sensitivity of the release is ``2 * clip_norm`` (:attr:`LocalDP.sensitivity`). An add/remove relation
would give ``clip_norm``, half the noise, but it does not make sense for one client's only release.
(Flower's ``LocalDpMod`` takes the sensitivity as a free argument: pass ``2 * clipping_norm`` to match.)

Calibration (:attr:`LocalDP.calibration`).

* ``"analytic"`` (default): the analytic Gaussian mechanism (Balle & Wang, ICML 2018, Thm. 8). The
  smallest ``sigma`` with ``Phi(D/(2s) - e*s/D) - exp(e) * Phi(-D/(2s) - e*s/D) <= delta`` (``D`` the
  sensitivity, ``e`` epsilon, ``s`` sigma), found by bisection. The condition is necessary and
  sufficient, so this is exact for every ``epsilon > 0``.
* ``"classic"``: ``sigma = D * sqrt(2 ln(1.25/delta)) / epsilon`` (Dwork & Roth 2014, Thm. A.1). The
  proof needs ``epsilon < 1``, so :meth:`LocalDP.issues` refuses ``epsilon >= 1`` with it. It is
  always larger than the analytic ``sigma``.

What it protects. The server (and anyone who sees the wire) learns only a clipped, noised update
from each client each round: one release is ``(epsilon, delta)``-DP with respect to everything that
client holds (user-level *local* DP: no trust in the server or in other clients is needed).

What it does not. It does not hide *which* clients took part, nor the number of examples or any
metric sent next to the update. Each round is a new release: a client that takes part in ``k``
rounds has spent ``k`` mechanisms, see :func:`compose` (basic composition, or zero-concentrated DP
for the Gaussian mechanism). No amplification by client sampling or by data sub-sampling is claimed,
and none of the DP-SGD sample-level guarantees apply. The noise is drawn from a ``torch.Generator``
that the caller owns: it must not be seeded from anything the server knows (for example the
round's shared seed), or the server can subtract the noise again.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from fedbiot_pl.errors import ConfigError
from fedbiot_pl.federation.validation import l2_norm

Calibration = Literal["analytic", "classic"]
CALIBRATIONS: tuple[str, ...] = ("analytic", "classic")

_SQRT2 = math.sqrt(2.0)


def _phi(x: float) -> float:
    """Standard normal CDF, accurate in the lower tail (``erfc`` does not cancel)."""
    return 0.5 * math.erfc(-x / _SQRT2)


def _log_phi_lower(b: float) -> float:
    """``log Phi(-b)`` for ``b >= 0``, without underflow for large ``b`` (asymptotic Mills ratio)."""
    if b < 30.0:
        return math.log(0.5 * math.erfc(b / _SQRT2))
    inv2 = 1.0 / (b * b)
    series = 1.0 - inv2 + 3.0 * inv2**2 - 15.0 * inv2**3 + 105.0 * inv2**4
    return -0.5 * b * b - math.log(b) - 0.5 * math.log(2.0 * math.pi) + math.log(series)


def analytic_delta(sigma: float, sensitivity: float, epsilon: float) -> float:
    """The smallest ``delta`` for which the Gaussian mechanism is ``(epsilon, delta)``-DP.

    Balle & Wang (2018), Thm. 8: ``Phi(D/(2 sigma) - epsilon sigma/D) - exp(epsilon) Phi(-D/(2 sigma)
    - epsilon sigma/D)`` with ``D`` the L2 sensitivity. It decreases in ``sigma``.

    Args:
        sigma: Standard deviation of the noise on every coordinate (> 0).
        sensitivity: L2 sensitivity ``D`` of the released vector (> 0).
        epsilon: Privacy parameter (> 0).

    Returns:
        The ``delta`` of the tight ``(epsilon, delta)`` guarantee at this ``sigma``.
    """
    ratio = sigma / sensitivity
    a = 1.0 / (2.0 * ratio) - epsilon * ratio
    b = 1.0 / (2.0 * ratio) + epsilon * ratio
    second = math.exp(epsilon + _log_phi_lower(b))
    return _phi(a) - second


def classic_sigma(sensitivity: float, epsilon: float, delta: float) -> float:
    """``sensitivity * sqrt(2 ln(1.25/delta)) / epsilon`` (Dwork & Roth 2014, Thm. A.1; proved for epsilon < 1)."""
    return sensitivity * math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon


def analytic_sigma(sensitivity: float, epsilon: float, delta: float, rel_tol: float = 1e-12) -> float:
    """The smallest ``sigma`` with :func:`analytic_delta` ``<= delta``, by bisection on ``log sigma``.

    Args:
        sensitivity: L2 sensitivity of the released vector (> 0).
        epsilon: Privacy parameter (> 0, any size).
        delta: Privacy parameter in (0, 1).
        rel_tol: Relative width of the final bracket.

    Returns:
        ``sigma`` (the upper end of the final bracket, so the condition holds there).
    """
    lo, hi = 1e-3, 1.0  # in units of the sensitivity
    while analytic_delta(hi, 1.0, epsilon) > delta:
        lo, hi = hi, hi * 2.0
    while analytic_delta(lo, 1.0, epsilon) <= delta:
        lo, hi = lo / 2.0, lo
    while hi - lo > rel_tol * hi:
        mid = math.sqrt(lo * hi)
        if analytic_delta(mid, 1.0, epsilon) > delta:
            lo = mid
        else:
            hi = mid
    return hi * sensitivity


def _real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)  # True is an int, not a setting


@dataclass(frozen=True)
class LocalDP:
    """Settings of the local Gaussian mechanism on one client upload (see the module docstring).

    Attributes:
        clip_norm: L2 bound on ``upload - reference`` over all LoRA keys together (> 0).
        epsilon: Privacy parameter of *one* release (> 0; < 1 with the classic calibration).
        delta: Privacy parameter of one release, in (0, 1); well below 1/(number of records).
        calibration: ``"analytic"`` (Balle & Wang 2018, exact, any epsilon) or ``"classic"``
            (Dwork & Roth Thm. A.1, epsilon < 1 only, larger sigma).
    """

    clip_norm: float
    epsilon: float
    delta: float
    calibration: Calibration = "analytic"

    def issues(self) -> list[str]:
        """Every bad value at once, each message naming the value and the fix (empty when all are fine)."""
        found = []
        if not (_real(self.clip_norm) and 0 < self.clip_norm < math.inf):
            found.append(
                f"clip_norm={self.clip_norm!r} must be a finite number > 0: it bounds the L2 norm of the whole "
                "LoRA update (e.g. clip_norm=1.0; look at the pre-clip norms in the privacy report)."
            )
        if not (_real(self.epsilon) and 0 < self.epsilon < math.inf):
            found.append(
                f"epsilon={self.epsilon!r} must be a finite number > 0 (e.g. epsilon=1.0; smaller means more noise)."
            )
        elif self.calibration == "classic" and self.epsilon >= 1:
            found.append(
                f"epsilon={self.epsilon!r} is >= 1, where the classic Gaussian calibration (Dwork & Roth Thm. A.1) "
                'is not proved; use calibration="analytic" (exact for every epsilon) or an epsilon < 1.'
            )
        if not (_real(self.delta) and 0 < self.delta < 1):
            found.append(
                f"delta={self.delta!r} must be strictly between 0 and 1 (e.g. delta=1e-5, well below 1/records)."
            )
        if self.calibration not in CALIBRATIONS:
            found.append(f'calibration={self.calibration!r} must be "analytic" or "classic".')
        return found

    def check(self) -> None:
        """Raise :class:`~fedbiot_pl.errors.ConfigError` listing every issue, if there is any."""
        found = self.issues()
        if found:
            raise ConfigError("Local DP settings: " + " ".join(found))

    @property
    def sensitivity(self) -> float:
        """L2 sensitivity of the clipped update under replace-one-client: ``2 * clip_norm``."""
        return 2.0 * self.clip_norm

    @property
    def sigma(self) -> float:
        """Noise standard deviation per value, by :attr:`calibration` (raises ``ConfigError`` on bad settings)."""
        self.check()
        if self.calibration == "classic":
            return classic_sigma(self.sensitivity, self.epsilon, self.delta)
        return analytic_sigma(self.sensitivity, self.epsilon, self.delta)

    @property
    def rho(self) -> float:
        """Zero-concentrated DP of one release: ``sensitivity^2 / (2 sigma^2)`` (Bun & Steinke 2016, Prop. 1.6)."""
        return self.sensitivity**2 / (2.0 * self.sigma**2)


@dataclass(frozen=True)
class PrivacyReport:
    """What :func:`privatize` did to one upload (safe to log: it holds no data)."""

    pre_clip_norm: float
    clip_factor: float
    sigma: float
    sensitivity: float
    epsilon: float
    delta: float
    calibration: str
    num_values: int

    @property
    def clipped(self) -> bool:
        """Whether the update was scaled down."""
        return self.clip_factor < 1.0


def _check_keys(upload: Mapping[str, Tensor], reference: Mapping[str, Tensor]) -> None:
    if set(upload) != set(reference):
        missing, extra = sorted(set(reference) - set(upload)), sorted(set(upload) - set(reference))
        raise ValueError(f"upload and reference keys differ: missing {missing[:3]}, unexpected {extra[:3]}.")
    shapes = [k for k in sorted(upload) if upload[k].shape != reference[k].shape]
    if shapes:
        raise ValueError(f"upload and reference shapes differ at {shapes[:3]}.")


def clip_update(delta: Mapping[str, Tensor], clip_norm: float) -> tuple[dict[str, Tensor], float, float]:
    """Scale ``delta`` so that its L2 norm over all keys together is at most ``clip_norm``.

    Args:
        delta: The update, per key.
        clip_norm: The bound (> 0).

    Returns:
        ``(clipped, norm, factor)``: the scaled tensors, the norm before clipping (accumulated in
        float64) and the factor ``min(1, clip_norm / norm)`` (1 for a zero update).

    Raises:
        ValueError: If the update holds a non-finite value (clipping cannot bound it).
    """
    norm = l2_norm(delta)
    if not math.isfinite(norm):
        raise ValueError("The update holds NaN or inf values; it cannot be clipped or released.")
    factor = 1.0 if norm <= clip_norm else clip_norm / norm
    return {k: t * factor if factor < 1.0 else t.clone() for k, t in delta.items()}, norm, factor


def gaussian_noise(
    shapes: Mapping[str, torch.Size], sigma: float, generator: torch.Generator
) -> Iterator[tuple[str, Tensor]]:
    """``N(0, sigma^2)`` float32 noise per key, drawn from ``generator`` in sorted key order (on its device)."""
    for key in sorted(shapes):
        noise = torch.randn(shapes[key], generator=generator, dtype=torch.float32, device=generator.device)
        yield key, noise * sigma


def privatize(
    upload: Mapping[str, Tensor], reference: Mapping[str, Tensor], dp: LocalDP, generator: torch.Generator
) -> tuple[dict[str, Tensor], PrivacyReport]:
    """Release ``reference + clip(upload - reference) + N(0, sigma^2)``, an ``(epsilon, delta)``-DP upload.

    The arithmetic is in float32; the result has ``upload``'s keys (in its order), shapes, dtypes and
    devices. The noise comes only from ``generator`` (in sorted key order), so a generator in the same
    state gives the same release.

    Args:
        upload: The client's trained LoRA, by peft key.
        reference: What the server broadcast this round (same keys and shapes).
        dp: The mechanism's settings; bad settings raise :class:`~fedbiot_pl.errors.ConfigError`.
        generator: The client's private source of noise (never seeded from anything the server knows).

    Returns:
        The released LoRA and a :class:`PrivacyReport`.
    """
    sigma = dp.sigma
    _check_keys(upload, reference)
    base = {key: reference[key].detach().to(upload[key].device).float() for key in upload}
    clipped, norm, factor = clip_update({key: upload[key].detach().float() - base[key] for key in upload},
                                        dp.clip_norm)
    released = dict.fromkeys(upload)
    for key, noise in gaussian_noise({k: t.shape for k, t in clipped.items()}, sigma, generator):
        released[key] = (base[key] + (clipped[key] + noise.to(clipped[key].device))).to(upload[key].dtype)
    report = PrivacyReport(
        pre_clip_norm=norm,
        clip_factor=factor,
        sigma=sigma,
        sensitivity=dp.sensitivity,
        epsilon=dp.epsilon,
        delta=dp.delta,
        calibration=dp.calibration,
        num_values=sum(t.numel() for t in clipped.values()),
    )
    return released, report


@dataclass(frozen=True)
class Composition:
    """Privacy spent by one client over ``rounds`` releases; unpacks as ``(epsilon, delta)``.

    Attributes:
        epsilon: The tighter total epsilon (at :attr:`delta`).
        delta: The total delta it holds at.
        method: ``"basic"`` or ``"zcdp"``, whichever gave :attr:`epsilon`.
        rounds: Number of releases composed.
        basic_epsilon: ``rounds * epsilon``, valid at ``rounds * delta``.
        basic_delta: ``rounds * delta``.
        zcdp_epsilon: ``rho + 2 sqrt(rho ln(1/delta))`` with ``rho = rounds * rho_1``, at :attr:`delta`.
        rho: Total zero-concentrated DP ``rounds * sensitivity^2 / (2 sigma^2)``.
    """

    epsilon: float
    delta: float
    method: str
    rounds: int
    basic_epsilon: float
    basic_delta: float
    zcdp_epsilon: float
    rho: float

    def __iter__(self) -> Iterator[float]:
        return iter((self.epsilon, self.delta))


def compose(dp: LocalDP, rounds: int, delta_total: float | None = None) -> Composition:
    """The ``(epsilon, delta)`` a client has spent after ``rounds`` releases under ``dp``.

    Two bounds are computed and the smaller epsilon at the target ``delta_total`` is returned:

    * basic composition: ``(rounds * epsilon, rounds * delta)``; usable only when
      ``rounds * delta <= delta_total`` (a guarantee at a smaller delta also holds at a larger one);
    * zCDP (Bun & Steinke 2016, Prop. 1.3, 1.6, Lemma 2.3): each Gaussian release is
      ``rho_1 = sensitivity^2 / (2 sigma^2)``-zCDP, ``rounds`` of them are ``rounds * rho_1``-zCDP, which
      is ``(rho + 2 sqrt(rho ln(1/delta_total)), delta_total)``-DP.

    Args:
        dp: The per-release settings (its ``sigma`` is what was actually used).
        rounds: Number of rounds the client took part in (>= 1).
        delta_total: Target total delta in (0, 1); ``None`` means ``rounds * delta`` (which must then be < 1).

    Returns:
        A :class:`Composition`; ``epsilon, delta = compose(...)`` also works.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds={rounds!r} must be an int >= 1 (the number of releases by this client).")
    basic_eps, basic_delta = rounds * dp.epsilon, rounds * dp.delta
    target = basic_delta if delta_total is None else delta_total
    if not 0 < target < 1:
        raise ConfigError(
            f"delta_total={target!r} must be in (0, 1); pass a smaller delta_total (e.g. 1e-5) to compose()."
        )
    rho = rounds * dp.rho
    zcdp_eps = rho + 2.0 * math.sqrt(rho * math.log(1.0 / target))
    if basic_delta <= target and basic_eps <= zcdp_eps:
        epsilon, method = basic_eps, "basic"
    else:
        epsilon, method = zcdp_eps, "zcdp"
    return Composition(epsilon, target, method, rounds, basic_eps, basic_delta, zcdp_eps, rho)
