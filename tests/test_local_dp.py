"""Local DP on a client's LoRA upload: clipping, calibration, noise and composition against hand numbers."""

from __future__ import annotations

import math

import pytest
import torch

from fedbiot_pl.errors import ConfigError
from fedbiot_pl.privacy.local_dp import (
    LocalDP,
    analytic_sigma,
    classic_sigma,
    clip_update,
    compose,
    privatize,
)


def _phi(x: float) -> float:
    """Standard normal CDF written independently of the module.

    ``0.5 * erfc(-x / sqrt 2)``, not ``0.5 * (1 + erf(x / sqrt 2))``: the latter cancels in the lower tail,
    which ``exp(eps)`` then magnifies (by 5e8 at eps=20).
    """
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _balle_wang_delta(sigma: float, sens: float, eps: float) -> float:
    """Balle & Wang (2018) Thm. 8, written out by hand."""
    a, b = sens / (2 * sigma), eps * sigma / sens
    return _phi(a - b) - math.exp(eps) * _phi(-a - b)


def test_clip_scales_a_3_4_5_update_over_all_keys_together():
    delta = {"a.lora_A.weight": torch.tensor([3.0, 0.0]), "b.lora_B.weight": torch.tensor([[0.0, 4.0]])}
    clipped, norm, factor = clip_update(delta, 1.0)
    assert norm == pytest.approx(5.0, abs=1e-12)
    assert factor == pytest.approx(0.2, abs=1e-12)
    assert torch.allclose(clipped["a.lora_A.weight"], torch.tensor([0.6, 0.0]))
    assert torch.allclose(clipped["b.lora_B.weight"], torch.tensor([[0.0, 0.8]]))
    total = math.sqrt(sum(float((t.double() ** 2).sum()) for t in clipped.values()))
    assert total == pytest.approx(1.0, abs=1e-6)  # per-key clipping would give sqrt(2)


def test_no_clip_below_the_bound():
    delta = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([0.0, 4.0])}
    clipped, norm, factor = clip_update(delta, 5.0)
    assert (norm, factor) == (5.0, 1.0)
    assert all(torch.equal(clipped[k], delta[k]) for k in delta)
    clipped, _, factor = clip_update({"a": torch.zeros(3)}, 1.0)
    assert factor == 1.0 and torch.equal(clipped["a"], torch.zeros(3))


def test_clip_refuses_non_finite_updates():
    with pytest.raises(ValueError, match="NaN or inf"):
        clip_update({"a": torch.tensor([1.0, float("nan")])}, 1.0)


def test_sensitivity_is_twice_the_clip_norm_under_replace_one():
    assert LocalDP(clip_norm=0.5, epsilon=0.5, delta=1e-5).sensitivity == 1.0


def test_classic_sigma_matches_hand_values():
    # delta = 1.25 e^-2 makes ln(1.25/delta) = 2: sigma = (2 * 1) * sqrt(4) / 0.5 = 8.
    assert LocalDP(1.0, 0.5, 1.25 * math.exp(-2), calibration="classic").sigma == pytest.approx(8.0, rel=1e-12)
    # 2 * sqrt(2 ln(125000)) / 0.5 = 4 * sqrt(23.4721380326) = 4 * 4.8448052625
    assert LocalDP(1.0, 0.5, 1e-5, calibration="classic").sigma == pytest.approx(19.37922105, rel=1e-9)
    assert classic_sigma(1.0, 1.0, 1.25 * math.exp(-2)) == pytest.approx(2.0, rel=1e-12)


@pytest.mark.parametrize("eps", [0.05, 0.5, 1.0, 4.0, 20.0])
@pytest.mark.parametrize("delta", [1e-3, 1e-5, 1e-9])
def test_analytic_sigma_is_the_smallest_satisfying_balle_wang(eps, delta):
    dp = LocalDP(clip_norm=0.7, epsilon=eps, delta=delta)
    sigma = dp.sigma
    assert _balle_wang_delta(sigma, dp.sensitivity, eps) <= delta + 1e-9
    assert _balle_wang_delta(0.99 * sigma, dp.sensitivity, eps) > delta


def test_analytic_is_below_classic_and_is_the_default():
    analytic, classic = LocalDP(1.0, 0.5, 1e-5), LocalDP(1.0, 0.5, 1e-5, calibration="classic")
    assert analytic.calibration == "analytic"
    assert analytic.sigma < 0.8 * classic.sigma
    assert analytic_sigma(2.0, 0.5, 1e-5) == pytest.approx(analytic.sigma, rel=1e-12)


def _pair(n: int = 6):
    g = torch.Generator().manual_seed(0)
    reference = {"z.lora_B.weight": torch.randn(2, n, generator=g), "a.lora_A.weight": torch.randn(n, 3, generator=g)}
    upload = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in reference.items()}
    return upload, reference


def test_privatize_adds_noise_from_the_generator_in_sorted_key_order():
    upload, reference = _pair()
    dp = LocalDP(clip_norm=0.05, epsilon=2.0, delta=1e-5)
    released, report = privatize(upload, reference, dp, torch.Generator().manual_seed(11))
    clipped, norm, factor = clip_update({k: upload[k] - reference[k] for k in upload}, dp.clip_norm)
    assert report.pre_clip_norm == pytest.approx(norm) and report.clip_factor == pytest.approx(factor)
    assert factor < 1
    assert report.clipped and report.sigma == dp.sigma and report.num_values == 30
    g = torch.Generator().manual_seed(11)
    noise = {k: torch.randn(upload[k].shape, generator=g) * dp.sigma for k in sorted(upload)}  # a... then z...
    for key in upload:
        assert torch.allclose(released[key], reference[key] + clipped[key] + noise[key], atol=1e-5)
    assert list(released) == list(upload)


def test_privatize_is_reproducible_and_keeps_dtypes_and_shapes():
    upload, reference = _pair()
    upload["z.lora_B.weight"] = upload["z.lora_B.weight"].to(torch.bfloat16)
    dp = LocalDP(clip_norm=1.0, epsilon=1.0, delta=1e-5)
    first, _ = privatize(upload, reference, dp, torch.Generator().manual_seed(3))
    again, _ = privatize(upload, reference, dp, torch.Generator().manual_seed(3))
    other, _ = privatize(upload, reference, dp, torch.Generator().manual_seed(4))
    assert all(torch.equal(first[k], again[k]) for k in upload)
    assert not torch.equal(first["a.lora_A.weight"], other["a.lora_A.weight"])
    assert {k: (v.dtype, v.shape) for k, v in first.items()} == {k: (v.dtype, v.shape) for k, v in upload.items()}


def test_noise_has_the_calibrated_standard_deviation():
    zeros = {"w": torch.zeros(100_000)}
    dp = LocalDP(clip_norm=0.25, epsilon=0.8, delta=1e-6)
    released, report = privatize(zeros, zeros, dp, torch.Generator().manual_seed(123))
    assert report.pre_clip_norm == 0.0 and report.clip_factor == 1.0
    std = float(released["w"].double().std())
    assert std == pytest.approx(dp.sigma, rel=0.02)
    assert abs(float(released["w"].double().mean())) < 5 * dp.sigma / math.sqrt(100_000)


def test_privatize_refuses_mismatched_keys_and_bad_settings():
    upload, reference = _pair()
    with pytest.raises(ValueError, match="keys differ"):
        privatize({"x": torch.zeros(1)}, reference, LocalDP(1.0, 1.0, 1e-5), torch.Generator())
    with pytest.raises(ConfigError, match="epsilon=0"):
        privatize(upload, reference, LocalDP(1.0, 0, 1e-5), torch.Generator())


def test_zcdp_composition_matches_hand_numbers():
    # classic, C=1 (sensitivity 2), eps=0.5, delta=1.25e^-2: sigma = 8, rho_1 = 4 / (2 * 64) = 1/32.
    dp = LocalDP(1.0, 0.5, 1.25 * math.exp(-2), calibration="classic")
    # 32 rounds: rho = 1; at delta_total = e^-1, eps = 1 + 2 sqrt(1 * 1) = 3; basic needs delta 32 * 0.169 > 1.
    total = compose(dp, 32, delta_total=math.exp(-1))
    assert total.rho == pytest.approx(1.0, rel=1e-12)
    assert (total.epsilon, total.delta, total.method) == (pytest.approx(3.0, rel=1e-12), math.exp(-1), "zcdp")
    assert (total.basic_epsilon, total.basic_delta) == (16.0, pytest.approx(32 * 1.25 * math.exp(-2)))
    epsilon, delta = total
    assert (epsilon, delta) == (total.epsilon, total.delta)
    # 1 round at delta: zCDP gives 1/32 + 2 sqrt(ln(e^2 / 1.25) / 32) = 0.50253... > 0.5, so basic wins.
    one = compose(dp, 1)
    assert one.zcdp_epsilon == pytest.approx(0.03125 + 2 * math.sqrt((2 - math.log(1.25)) / 32), rel=1e-12)
    assert (one.epsilon, one.delta, one.method) == (0.5, pytest.approx(1.25 * math.exp(-2)), "basic")
    # A target delta below the per-round delta: basic composition does not reach it, however small its epsilon.
    tight = compose(dp, 1, delta_total=math.exp(-4))
    assert tight.basic_epsilon < tight.zcdp_epsilon
    assert (tight.epsilon, tight.method) == (pytest.approx(0.03125 + 2 * math.sqrt(4 / 32), rel=1e-12), "zcdp")


def test_composition_refuses_bad_rounds_and_delta():
    dp = LocalDP(1.0, 1.0, 1e-3)
    with pytest.raises(ConfigError, match="rounds=0"):
        compose(dp, 0)
    with pytest.raises(ConfigError, match="delta_total"):
        compose(dp, 2000)  # 2000 * 1e-3 >= 1 without a target
    assert compose(dp, 2000, delta_total=1e-5).method == "zcdp"


def test_issues_lists_every_bad_value_at_once():
    issues = LocalDP(clip_norm=-1.0, epsilon=float("nan"), delta=1.0, calibration="gauss").issues()  # type: ignore[arg-type]
    assert len(issues) == 4
    for name in ("clip_norm=-1.0", "epsilon=nan", "delta=1.0", "calibration='gauss'"):
        assert sum(name in message for message in issues) == 1, name
    assert LocalDP(1.0, 0.5, 1e-5).issues() == []
    booleans = LocalDP(clip_norm=True, epsilon=True, delta=1e-5).issues()  # type: ignore[arg-type]
    assert [issue.split(" ")[0] for issue in booleans] == ["clip_norm=True", "epsilon=True"]
    with pytest.raises(ConfigError) as raised:
        _ = LocalDP(0.0, 0.0, 0.0).sigma
    assert all(name in str(raised.value) for name in ("clip_norm=0.0", "epsilon=0.0", "delta=0.0"))


def test_classic_calibration_refuses_epsilon_of_one_or_more():
    issues = LocalDP(1.0, 1.0, 1e-5, calibration="classic").issues()
    assert len(issues) == 1 and "epsilon=1.0" in issues[0] and 'calibration="analytic"' in issues[0]
    assert LocalDP(1.0, 1.0, 1e-5).issues() == []
