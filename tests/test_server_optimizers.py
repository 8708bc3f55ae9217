"""FedOpt server optimisers against hand computation on tiny tensors (Reddi et al., ICLR 2021, Algorithm 2).

The settings are picked so that every ``v_t`` is a perfect square and every result a short binary
fraction: the expected values below are exact, worked out in the comments.
"""

from __future__ import annotations

import io

import pytest
import torch

from fedbiot_pl.errors import ConfigError
from fedbiot_pl.federation.server_optimizers import (
    SERVER_OPTIMIZERS,
    FedAdagrad,
    FedAdam,
    FedYogi,
    ServerOptimizer,
    ServerSGD,
    server_optimizer,
    server_optimizer_issues,
)


def t(*values: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A 1-D tensor of ``values``."""
    return torch.tensor(values, dtype=dtype)


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Assert equal values up to float rounding, and the same dtype."""
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- FedAdagrad


def test_fedadagrad_one_and_two_steps_by_hand():
    """v_{-1} = tau^2 = 9, v_t = v_{t-1} + delta^2, m_t = (m_{t-1} + delta) / 2 (beta_1 = 0.5)."""
    opt = FedAdagrad(lr=1.0, beta_1=0.5, tau=3.0)
    # Step 1: delta = [5, -2] - [1, 2] = [4, -4]; m0 = 0.5 * delta = [2, -2];
    # v0 = 9 + 16 = [25, 25]; sqrt(v0) + tau = [8, 8]; x1 = [1, 2] + [2/8, -2/8] = [1.25, 1.75].
    x1 = opt.step({"w": t(1.0, 2.0)}, {"w": t(5.0, -2.0)})["w"]
    close(x1, t(1.25, 1.75))
    # Step 2: delta = [12, 0]; m1 = 0.5*[2, -2] + 0.5*[12, 0] = [7, -1];
    # v1 = [25 + 144, 25 + 0] = [169, 25]; sqrt + tau = [16, 8]; x2 = x1 + [7/16, -1/8] = [1.6875, 1.625].
    x2 = opt.step({"w": x1}, {"w": x1 + t(12.0, 0.0)})["w"]
    close(x2, t(1.6875, 1.625))
    close(opt.state_dict()["state"]["w"]["v"], t(169.0, 25.0))
    assert opt.steps == 2


def test_fedadagrad_defaults_have_no_momentum():
    """beta_1 = 0 by default: m_0 = delta; v_0 = tau^2 + delta^2."""
    opt = FedAdagrad()
    assert opt.settings == {"lr": 0.1, "beta_1": 0.0, "tau": 1e-3}
    # delta = 1: v0 = 1e-6 + 1; x1 = 0.1 * 1 / (sqrt(1.000001) + 1e-3).
    out = opt.step({"w": t(0.0, dtype=torch.float64)}, {"w": t(1.0, dtype=torch.float64)})["w"]
    close(out, t(0.1 / (1.000001**0.5 + 1e-3), dtype=torch.float64))


# ---------------------------------------------------------------- FedAdam


def test_fedadam_one_and_two_steps_by_hand():
    """beta_1 = beta_2 = 0.5, tau = 1 (v_{-1} = 1), lr = 3; no bias correction."""
    opt = FedAdam(lr=3.0, betas=(0.5, 0.5), tau=1.0)
    # Step 1: delta = [1, 7]; m0 = [0.5, 3.5]; v0 = 0.5*1 + 0.5*[1, 49] = [1, 25];
    # sqrt + tau = [2, 6]; x1 = 0 + 3 * [0.5/2, 3.5/6] = [0.75, 1.75].
    x1 = opt.step({"w": t(0.0, 0.0)}, {"w": t(1.0, 7.0)})["w"]
    close(x1, t(0.75, 1.75))
    # Step 2: delta = [7, 5]; m1 = 0.5*[0.5, 3.5] + 0.5*[7, 5] = [3.75, 4.25];
    # v1 = 0.5*[1, 25] + 0.5*[49, 25] = [25, 25]; sqrt + tau = [6, 6];
    # x2 = x1 + 3 * [3.75/6, 4.25/6] = [0.75 + 1.875, 1.75 + 2.125] = [2.625, 3.875].
    x2 = opt.step({"w": x1}, {"w": x1 + t(7.0, 5.0)})["w"]
    close(x2, t(2.625, 3.875))
    state = opt.state_dict()["state"]["w"]
    close(state["m"], t(3.75, 4.25))
    close(state["v"], t(25.0, 25.0))


# ---------------------------------------------------------------- FedYogi


def test_fedyogi_one_and_two_steps_by_hand_both_sign_branches():
    """beta_1 = beta_2 = 0.5, tau = 3 (v_{-1} = 9), lr = 1; v_t = v - 0.5 d^2 sign(v - d^2)."""
    opt = FedYogi(lr=1.0, betas=(0.5, 0.5), tau=3.0)
    # Step 1, delta = [12, -3]:
    #   element 0: v - d^2 = 9 - 144 < 0 -> sign -1 -> v0 = 9 + 0.5*144 = 81 (FedAdam would give 76.5);
    #   element 1: v - d^2 = 9 - 9 = 0 -> sign 0 -> v0 = 9 (unchanged).
    #   m0 = [6, -1.5]; sqrt(v0) + tau = [12, 6]; x1 = [6/12, -1.5/6] = [0.5, -0.25].
    x1 = opt.step({"w": t(0.0, 0.0)}, {"w": t(12.0, -3.0)})["w"]
    close(x1, t(0.5, -0.25))
    close(opt.state_dict()["state"]["w"]["v"], t(81.0, 9.0))
    # Step 2, delta = [8, -12]:
    #   element 0: 81 - 64 > 0 -> sign +1 -> v1 = 81 - 0.5*64 = 49 (shrinks; FedAdam would give 72.5);
    #   element 1: 9 - 144 < 0 -> sign -1 -> v1 = 9 + 0.5*144 = 81.
    #   m1 = 0.5*[6, -1.5] + 0.5*[8, -12] = [7, -6.75]; sqrt + tau = [10, 12];
    #   x2 = x1 + [7/10, -6.75/12] = [0.5 + 0.7, -0.25 - 0.5625] = [1.2, -0.8125].
    x2 = opt.step({"w": x1}, {"w": x1 + t(8.0, -12.0)})["w"]
    close(x2, t(1.2, -0.8125))
    close(opt.state_dict()["state"]["w"]["v"], t(49.0, 81.0))


# ---------------------------------------------------------------- ServerSGD


def test_server_sgd_lr_one_returns_the_average_bit_for_bit():
    """With lr = 1 (FedAvg) the result is ``average`` exactly, even where x + (avg - x) rounds."""
    current = {"w": t(1e8, 0.1, -3.0), "h": t(1e8, 2.5, dtype=torch.bfloat16)}
    average = {"w": t(1.0, 0.3, 7.0), "h": t(1.0, -0.5, dtype=torch.bfloat16)}
    # In float32, 1 - 1e8 = -99999999 rounds to -1e8 (spacing 8 there), so the naive x + (avg - x) gives 0, not 1.
    naive = current["w"] + (average["w"] - current["w"])
    assert not torch.equal(naive, average["w"]), "the pair must make the naive formula round"
    out = ServerSGD().step(current, average)
    assert torch.equal(out["w"], average["w"])
    assert torch.equal(out["h"], average["h"]) and out["h"].dtype == torch.bfloat16


def test_server_sgd_lr_scales_the_step():
    """With lr = 0.5 the step is x + 0.5 * delta, written as avg + (0.5 - 1) * delta."""
    # delta = [2, -4]; x_new = [2, 0] - 0.5*[2, -4] = [1, 2] = [0, 4] + 0.5*[2, -4].
    out = ServerSGD(lr=0.5).step({"w": t(0.0, 4.0)}, {"w": t(2.0, 0.0)})
    close(out["w"], t(1.0, 2.0))


def test_server_sgd_momentum_by_hand():
    """FedAvgM: m_t = momentum * m_{t-1} + delta; x_new = x + lr * m_t (momentum 0.5, lr 2)."""
    opt = ServerSGD(lr=2.0, momentum=0.5)
    # Step 1: delta = [1, -2]; m0 = [1, -2]; x1 = 0 + 2*[1, -2] = [2, -4].
    x1 = opt.step({"w": t(0.0, 0.0)}, {"w": t(1.0, -2.0)})["w"]
    close(x1, t(2.0, -4.0))
    # Step 2: delta = [3, -4] - [2, -4] = [1, 0]; m1 = 0.5*[1, -2] + [1, 0] = [1.5, -1]; x2 = [2, -4] + 2*[1.5, -1].
    x2 = opt.step({"w": x1}, {"w": t(3.0, -4.0)})["w"]
    close(x2, t(5.0, -6.0))


# ---------------------------------------------------------------- dtypes, devices, non-float tensors


def test_low_precision_is_updated_in_float32_and_returned_in_its_dtype():
    """bf16 tensors keep bf16, their state is float32; float64 tensors and state stay float64."""
    opt = FedAdam(lr=3.0, betas=(0.5, 0.5), tau=1.0)
    out = opt.step(
        {"a": t(0.0, 0.0, dtype=torch.bfloat16), "b": t(0.0, 0.0, dtype=torch.float64), "n": torch.tensor([1, 2])},
        {"a": t(1.0, 7.0, dtype=torch.bfloat16), "b": t(1.0, 7.0, dtype=torch.float64), "n": torch.tensor([5, 6])},
    )
    assert out["a"].dtype == torch.bfloat16 and out["b"].dtype == torch.float64
    close(out["a"].float(), t(0.75, 1.75))
    close(out["b"], t(0.75, 1.75, dtype=torch.float64))
    state = opt.state_dict()["state"]
    assert state["a"]["m"].dtype == torch.float32 and state["b"]["v"].dtype == torch.float64
    # Integer tensors have no pseudo-gradient: taken from the average as is, with no state.
    assert torch.equal(out["n"], torch.tensor([5, 6])) and "n" not in state


# ---------------------------------------------------------------- state_dict


def _steps(opt: ServerOptimizer, rounds: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    return [opt.step({"w": current}, {"w": average})["w"] for current, average in rounds]


@pytest.mark.parametrize(
    "make",
    [
        lambda: ServerSGD(lr=0.7, momentum=0.9),
        lambda: ServerSGD(lr=0.7),
        lambda: FedAdagrad(lr=0.3, beta_1=0.5, tau=0.1),
        lambda: FedAdam(lr=0.3, betas=(0.8, 0.9), tau=0.1),
        lambda: FedYogi(lr=0.3, betas=(0.8, 0.9), tau=0.1),
    ],
    ids=["sgd-momentum", "sgd", "fedadagrad", "fedadam", "fedyogi"],
)
def test_state_dict_round_trip_through_torch_save_continues_identically(make):
    """A fresh optimiser loaded from a saved state_dict (weights_only) takes the same next steps."""
    g = torch.Generator().manual_seed(0)
    rounds = [(torch.randn(3, generator=g), torch.randn(3, generator=g)) for _ in range(4)]
    original = make()
    _steps(original, rounds[:2])
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    resumed = make()
    resumed.load_state_dict(loaded)
    assert resumed.steps == original.steps == 2
    for a, b in zip(_steps(original, rounds[2:]), _steps(resumed, rounds[2:]), strict=True):
        assert torch.equal(a, b)


def test_state_dict_is_a_snapshot_and_rejects_another_optimizer():
    """A later step does not change an earlier state_dict; loading FedAdam state into FedYogi is refused."""
    opt = FedAdam(lr=3.0, betas=(0.5, 0.5), tau=1.0)
    opt.step({"w": t(0.0, 0.0)}, {"w": t(1.0, 7.0)})
    snapshot = opt.state_dict()
    opt.step({"w": t(0.0, 0.0)}, {"w": t(7.0, 5.0)})
    close(snapshot["state"]["w"]["v"], t(1.0, 25.0))
    with pytest.raises(ConfigError, match="'fedadam', not 'fedyogi'"):
        FedYogi().load_state_dict(snapshot)
    with_momentum = ServerSGD(momentum=0.5)
    with_momentum.step({"w": t(0.0)}, {"w": t(1.0)})
    with pytest.raises(ValueError, match=r"has state \['momentum_buffer'\], expected \[\].*momentum on or off"):
        ServerSGD().load_state_dict(with_momentum.state_dict())


# ---------------------------------------------------------------- mismatches


def test_key_and_shape_mismatches_raise():
    """current/average must agree; keys and stateful shapes may change only after reset()."""
    opt = FedAdam()
    with pytest.raises(ValueError, match="different keys"):
        opt.step({"a": t(1.0)}, {"b": t(1.0)})
    with pytest.raises(ValueError, match=r"shape \(2,\) but average has \(3,\)"):
        opt.step({"a": t(1.0, 2.0)}, {"a": t(1.0, 2.0, 3.0)})
    opt.step({"a": t(1.0, 2.0)}, {"a": t(2.0, 3.0)})
    with pytest.raises(ValueError, match="keys changed"):
        opt.step({"a": t(1.0, 2.0), "b": t(1.0)}, {"a": t(1.0, 2.0), "b": t(1.0)})
    with pytest.raises(ValueError, match="state has"):
        opt.step({"a": t(1.0)}, {"a": t(1.0)})
    kept = opt.state_dict()["state"]["a"]["m"]
    opt.reset([])  # allow a new key set, keep the moments of "a"
    opt.step({"a": t(1.0, 2.0), "b": t(1.0)}, {"a": t(1.0, 2.0), "b": t(2.0)})
    close(opt.state_dict()["state"]["a"]["m"], 0.9 * kept)  # delta of "a" was 0
    opt.reset()
    assert opt.steps == 0 and opt.state_dict()["state"] == {}
    opt.step({"c": t(1.0)}, {"c": t(1.0)})


# ---------------------------------------------------------------- settings


def test_bad_settings_raise_config_error_naming_every_value():
    """Each constructor reports all its bad values at once."""
    with pytest.raises(ConfigError) as info:
        FedAdam(lr=0.0, betas=(1.0, -0.1), tau=-2.0)
    message = str(info.value)
    for part in ("FedAdam", "lr", "got 0.0", "beta_1", "got 1.0", "beta_2", "got -0.1", "tau", "got -2.0"):
        assert part in message
    with pytest.raises(ConfigError, match=r"lr must .* got -1\..*momentum must .* got 1\.0"):
        ServerSGD(lr=-1, momentum=1.0)
    with pytest.raises(ConfigError, match=r"lr must .* got inf.*beta_1 must .* got 1\.5.*tau must .* got 0"):
        FedAdagrad(lr=float("inf"), beta_1=1.5, tau=0)
    with pytest.raises(ConfigError, match=r"betas must be a pair.*got \(0\.9,\)"):
        FedYogi(betas=(0.9,))
    assert server_optimizer_issues(lr=1.0, momentum=0.0, betas=(0.0, 0.999), tau=1e-9) == []
    assert server_optimizer_issues(lr=True, gamma=0.5) == [
        "lr must be a finite number > 0, got True.",
        "unknown server optimizer setting 'gamma' (known: lr, momentum, betas, beta_1, beta_2, tau).",
    ]


def test_server_optimizer_resolves_settings():
    """None/"fedavg" -> None, names -> default instances, instances -> themselves, else ConfigError."""
    assert set(SERVER_OPTIMIZERS) == {"sgd", "fedadagrad", "fedadam", "fedyogi"}
    assert server_optimizer(None) is None
    assert server_optimizer("fedavg") is None
    made = server_optimizer("FedAdam")
    assert type(made) is FedAdam and made.settings == {"lr": 0.1, "betas": (0.9, 0.99), "tau": 1e-3}
    assert type(server_optimizer("fedyogi")) is FedYogi and server_optimizer("fedyogi").lr == 1e-2
    assert type(server_optimizer("sgd")) is ServerSGD
    mine = FedAdagrad(lr=0.5)
    assert server_optimizer(mine) is mine
    assert repr(mine) == "FedAdagrad(lr=0.5, beta_1=0.0, tau=0.001)"
    with pytest.raises(ConfigError) as info:
        server_optimizer("nope")
    assert "'nope'" in str(info.value)
    assert "['fedavg', 'sgd', 'fedadagrad', 'fedadam', 'fedyogi']" in str(info.value)
    with pytest.raises(ConfigError, match="Unknown server optimizer 3"):
        server_optimizer(3)  # type: ignore[arg-type]
