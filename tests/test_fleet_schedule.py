"""HierFedLoRA's device fleet, depth costs, schedule and simulated clock (hand-computed references)."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from fedbiot_pl.errors import ConfigError, MissingPathError
from fedbiot_pl.hierarchy.clock import SimClock, device_seconds, edge_cloud_seconds, time_to_target
from fedbiot_pl.hierarchy.costs import DepthCosts, depth_costs
from fedbiot_pl.hierarchy.fleet import DeviceProfile, Fleet, Tier, fleet_issues, load_fleet, tier_counts
from fedbiot_pl.hierarchy.schedule import (
    GroupConfig,
    ScheduleError,
    choose,
    configure,
    edge_seconds,
    feasible_depths,
    intra_round_seconds,
    round_seconds,
)
from fedbiot_pl.scaling import flops
from fedbiot_pl.scaling.memory import client_peak_memory

GIB = 2**30
MIB = 2**20

# ---------------------------------------------------------------- schedule: spec test 6

# L = 8, e = 0, u_A(d) = 1 + d/4, u_B(d) = 2 + d/2.
U_A = lambda d: 1 + d / 4  # noqa: E731
U_B = lambda d: 2 + d / 2  # noqa: E731
NO_EDGE = lambda d: 0.0  # noqa: E731
DEPTHS = range(1, 9)


def spec6_costs(memory_gib: tuple[int, ...] = (0,) * 8) -> DepthCosts:
    # With tau = 1, 1 token per step, no message bytes and no latency, u(d) = F(d) / speed. F(d) = 4 + d gives
    # u_A = (4 + d) / 4 = 1 + d/4 at speed 4 and u_B = (4 + d) / 2 = 2 + d/2 at speed 2.
    return DepthCosts(num_layers=8, tokens_per_step=1, flops_per_token=tuple(4 + d for d in DEPTHS),
                      lora_bytes_per_layer=0, memory_bytes=tuple(m * GIB for m in memory_gib))


def device(speed: float, memory_gib: float = 100, bps: float = 1.0, tier: str = "") -> DeviceProfile:
    return DeviceProfile(flops_per_s=speed, up_Bps=bps, down_Bps=bps, memory_bytes=memory_gib * GIB, tier=tier)


A, B = device(4), device(2)


def spec6_configure(groups=((A,), (B,)), costs: DepthCosts | None = None, **settings) -> list[tuple[int, int]]:
    configs = configure(groups, costs or spec6_costs(), local_steps=1, latency_s=0.0, edge_Bps=1.0,
                        edge_latency_s=0.0, **settings)
    return [(c.depth, c.intra_rounds) for c in configs]


@pytest.mark.parametrize(("rho", "budget", "expected_a", "expected_b"), [
    (1, 2.5, (6, 1), (1, 1)),  # T* = max(T_A(1,1) = 1.25, T_B(1,1) = 2.5); 1 + 6/4 = 2.5; K = 2 would be 5
    (2, 5.0, (8, 1), (6, 1)),  # A: T(8,1) = 3, K = 2 gives 6 > 5; B: 2 + 6/2 = 5
])
def test_spec_test_6_choose_and_configure(rho, budget, expected_a, expected_b):
    computed = rho * max(1 * U_A(1) + NO_EDGE(1), 1 * U_B(1) + NO_EDGE(1))  # configure's budget rule
    assert computed == budget
    assert choose(U_A, NO_EDGE, DEPTHS, budget, 1, 4) == expected_a
    assert choose(U_B, NO_EDGE, DEPTHS, budget, 1, 4) == expected_b
    # The same through configure, with u_A, u_B built from FLOPs and speeds.
    assert spec6_configure(budget_factor=rho) == [expected_a, expected_b]
    configs = configure(((A,), (B,)), spec6_costs(), local_steps=1, latency_s=0.0, edge_Bps=1.0, edge_latency_s=0.0,
                        budget_factor=rho)
    assert [c.seconds for c in configs] == [U_A(expected_a[0]), U_B(expected_b[0])]
    assert round_seconds(configs) == budget


def test_memory_caps_a_group_at_the_depths_its_weakest_member_holds():
    costs = spec6_costs(memory_gib=tuple(10 * d for d in DEPTHS))  # memory(d) = 10 d GiB
    weak = device(4, memory_gib=25)  # below memory(3) = 30 GiB
    assert feasible_depths([A, weak], costs) == [1, 2]
    assert feasible_depths([device(4, memory_gib=20)], costs) == [1, 2]  # exactly memory(2) holds depth 2
    assert feasible_depths([A], costs, min_depth=3) == [3, 4, 5, 6, 7, 8]
    # A generous budget: the unconstrained group goes to L = 8, the capped one stops at 2.
    assert spec6_configure(groups=((A, weak), (A,)), costs=costs, budget_seconds=100.0)[0][0] == 2
    assert spec6_configure(groups=((A, weak), (A,)), costs=costs, budget_seconds=100.0)[1][0] == 8
    with pytest.raises(ScheduleError, match=r"group 0: the fixed depth 3 is not feasible.*25\.00 GiB.*30\.00 GiB"):
        spec6_configure(groups=((A, weak), (A,)), costs=costs, depths=[3, None])


def test_a_group_whose_memory_holds_no_depth_is_named():
    costs = spec6_costs(memory_gib=tuple(10 * d for d in DEPTHS))
    tiny = device(4, memory_gib=5, tier="small")
    with pytest.raises(ScheduleError) as caught:
        spec6_configure(groups=((A,), (A, tiny), (tiny,)), costs=costs)
    message = str(caught.value)
    assert "group 1: no depth in [1, 8]" in message and "group 2:" in message and "group 0" not in message
    assert "(small) has 5.00 GiB" in message and "depth 1 needs an estimated 10.00 GiB" in message
    assert "never get it" in message


# ---------------------------------------------------------------- spec test 7: the clock of one group


def test_spec_test_7_intra_round_edge_and_group_seconds():
    # 0.5 s/step: 1e9 FLOPs per step at 2e9 FLOP/s; beta = 1 MiB each way at 1 MiB/s; latency 0.
    costs = DepthCosts(num_layers=1, tokens_per_step=1, flops_per_token=(10**9,), lora_bytes_per_layer=MIB,
                       memory_bytes=(0,))
    member = DeviceProfile(flops_per_s=2e9, up_Bps=MIB, down_Bps=MIB, memory_bytes=GIB)
    u = intra_round_seconds([member], costs, 1, local_steps=2, latency_s=0.0)
    assert u == 3.0  # 1 s down + 2 x 0.5 s + 1 s up
    e = edge_seconds(costs, 1, edge_Bps=4 * MIB, edge_latency_s=0.0)
    assert e == 0.5  # 1 MiB up and 1 MiB down at 4 MiB/s
    assert 2 * u + e == 6.5
    [config] = configure([[member]], costs, local_steps=2, latency_s=0.0, edge_Bps=4 * MIB, edge_latency_s=0.0,
                         depths=[1], intra_rounds=[2])
    assert config == GroupConfig(depth=1, intra_rounds=2, seconds=6.5)
    assert GroupConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    # The slowest member sets u; latency and a larger download add up.
    slow = replace(member, flops_per_s=1e9)
    assert intra_round_seconds([member, slow], costs, 1, local_steps=2, latency_s=0.25) == 0.25 + 1 + 2 + 1
    two = replace(costs, num_layers=2, flops_per_token=(10**9, 10**9), memory_bytes=(0, 0))
    assert intra_round_seconds([member], two, 1, local_steps=2, latency_s=0.0, download_depth=2) == 2 + 1 + 1
    assert round_seconds([config, GroupConfig(1, 1, 7.0)]) == 7.0


# ---------------------------------------------------------------- solver options


def test_priority_frequency_and_objective_product():
    # u(d) = 1 + d/4, e = 0, T* = 5, K in [1, 4].
    assert choose(U_A, NO_EDGE, DEPTHS, 5.0) == (8, 1)  # depth first: T(8,1) = 3, T(8,2) = 6
    # Frequency first: at d = 1, 4 x 1.25 = 5 fits, so K = 4; then 4 (1 + d/4) <= 5 only for d = 1.
    assert choose(U_A, NO_EDGE, DEPTHS, 5.0, priority="frequency") == (1, 4)
    # Product: K(d) = min(4, floor(5 / (1 + d/4))) = 4,3,2,2,2,2,1,1 -> K*d = 4,6,6,8,10,12,7,8 -> d = 6, K = 2.
    assert choose(U_A, NO_EDGE, DEPTHS, 5.0, objective="product") == (6, 2)
    # Ties go to the larger K: u(d) = d/2, T* = 2.5 -> K(2) = 2 (2*2 = 4), K(4) = 1 (1*4 = 4).
    assert choose(lambda d: d / 2, NO_EDGE, [2, 4], 2.5, objective="product") == (2, 2)
    # Only depths with K(d) >= base count: base 2 rules out d = 7, 8 (K = 1) and keeps d = 6 (K = 2).
    assert choose(U_A, NO_EDGE, DEPTHS, 5.0, base_intra_rounds=2, objective="product") == (6, 2)
    # The edge term counts: with e = 1, K(d) = floor(4 / (1 + d/4)) = 3,2,2,2,1,1,1,1 -> K*d = 3,4,6,8,5,6,7,8;
    # d = 4 (K = 2) and d = 8 (K = 1) tie at 8, and the larger K wins.
    assert choose(U_A, lambda d: 1.0, DEPTHS, 5.0, objective="product") == (4, 2)


def test_fixed_depths_and_intra_rounds_override_the_choice():
    # T* = 5 (rho = 2). A fixed at depth 2: u = 1.5, so K = 3 (4.5 <= 5, 6 > 5); B chooses (6, 1).
    assert spec6_configure(budget_factor=2, depths=[2, None]) == [(2, 3), (6, 1)]
    # B fixed at K = 2: 2 (2 + d/2) <= 5 only for d = 1; A chooses (8, 1).
    assert spec6_configure(budget_factor=2, intra_rounds=[None, 2]) == [(8, 1), (1, 2)]
    # Both fixed: taken as they are, no budget check (T_B(8, 4) = 24 s against T* = 5 s).
    configs = configure(((A,), (B,)), spec6_costs(), local_steps=1, latency_s=0.0, edge_Bps=1.0, edge_latency_s=0.0,
                        budget_factor=2, depths=[8, 8], intra_rounds=[4, 4])
    assert [(c.depth, c.intra_rounds, c.seconds) for c in configs] == [(8, 4, 12.0), (8, 4, 24.0)]
    # A fixed depth past the budget keeps K = base; fixed K past the budget keeps the shallowest depth.
    assert spec6_configure(depths=[None, 8]) == [(6, 1), (8, 1)]
    assert spec6_configure(intra_rounds=[None, 4]) == [(6, 1), (1, 4)]
    # Only choosing groups must meet budget_seconds at their shallowest depth: B (2.5 s > 2 s) is fixed here.
    assert spec6_configure(budget_seconds=2.0, depths=[None, 8]) == [(4, 1), (8, 1)]


def test_a_budget_no_group_meets_names_the_budget_the_needed_time_and_the_fix():
    with pytest.raises(ScheduleError) as caught:
        spec6_configure(budget_seconds=2.0)
    message = str(caught.value)
    assert "round budget of 2 s (budget_seconds)" in message
    assert "group 1 needs 2.5 s at its shallowest feasible depth 1" in message and "group 0" not in message
    assert "raise budget_seconds" in message and "from 2.5 s" in message
    with pytest.raises(ScheduleError, match=r"budget_factor 0\.5"):
        spec6_configure(budget_factor=0.5)
    with pytest.raises(ScheduleError, match=r"budget of 2 s .*shortest round takes 2\.5 s \(depth 1\).*budget_seconds"):
        choose(U_B, NO_EDGE, DEPTHS, 2.0)


def test_invalid_schedule_settings_are_reported_together():
    with pytest.raises(ScheduleError) as caught:
        configure(((A,), ()), spec6_costs(), local_steps=0, latency_s=-1.0, edge_Bps=1.0, edge_latency_s=0.0,
                  min_depth=9, priority="speed", objective="sum", depths=[1], intra_rounds=[0, None],
                  max_intra_rounds=0)
    message = str(caught.value)
    for fragment in ("group 1 has no devices", "local_steps must be an int >= 1, got 0", "latency_s must be",
                     "min_depth must be an int in [1, 8]", "got 9", "max_intra_rounds must be", "priority must be",
                     "'speed'", "objective must be", "depths must list one value per group (2)",
                     "intra_rounds[0] (group 0) must be an int >= 1"):
        assert fragment in message, fragment


# ---------------------------------------------------------------- depth costs

SMALL = flops.DecoderShape(hidden=8, intermediate=16, heads=2, kv_heads=1, vocab=10)


def test_depth_costs_by_hand():
    costs = depth_costs(SMALL, num_layers=3, seq_len=5, tokens_per_step=7, micro_batch_tokens=4, lora_rank=2,
                        lora_targets=["q_proj", "v_proj"], base_params=1000, dtype_bytes=2)
    # LoRA q 2*(8+8) + v 2*(8+4) = 56 params per layer, 224 bytes in float32.
    assert costs.lora_bytes_per_layer == 224 and costs.message_bytes(3) == 672
    # Per extra layer trained: backward 2*576 + 8*5*8 + 2*56 = 1584 plus LoRA weight gradients 2*56 = 112.
    f = costs.flops_per_token
    assert f[1] - f[0] == f[2] - f[1] == 1696
    assert f == tuple(flops.flops_per_token(SMALL, 5, flops.client_plan(3, d), 2, ["q_proj", "v_proj"])
                      for d in (1, 2, 3))
    assert costs.step_flops(2) == 7 * f[1]
    # weights 1000*2 + LoRA state 16*56 d + activations d*4*(7*8+3*16)*2 + logits 2*4*10*4.
    assert costs.memory(1) == 2000 + 896 + 832 + 320
    assert costs.memory(2) == 2000 + 2 * 896 + 2 * 832 + 320
    with pytest.raises(ValueError, match=r"d=4 must be in \[1, L=3\]"):
        costs.step_flops(4)
    with pytest.raises(ValueError, match=r"d=0"):
        costs.memory(0)


def test_depth_costs_of_llama2_7b_match_the_spec_table():
    shape = flops.DecoderShape(hidden=4096, intermediate=11008, heads=32, kv_heads=32, vocab=32000)
    costs = depth_costs(shape, num_layers=32, seq_len=512, tokens_per_step=4000, micro_batch_tokens=4000,
                        lora_rank=8, lora_targets=["q_proj", "v_proj"], base_params=6_738_415_616, dtype_bytes=2)
    assert costs.lora_bytes_per_layer == 524_288 and costs.message_bytes(32) == 16 * MIB
    f = costs.flops_per_token
    assert round(f[0] / f[31], 3) == 0.520 and round(f[15] / f[31], 3) == 0.752
    assert len({f[d] - f[d - 1] for d in range(1, 32)}) == 1  # affine in d
    assert round(costs.memory(1) / GIB, 2) == 13.97 and round(costs.memory(32) / GIB, 2) == 28.28
    expected = client_peak_memory(model_params=6_738_415_616, trained_lora=16 * 131_072, layers_with_activations=16,
                                  hidden_size=4096, intermediate_size=11008, vocab_size=32000, tokens=4000,
                                  dtype_bytes=2)["total"]
    assert costs.memory(16) == expected


# ---------------------------------------------------------------- fleet


def test_the_default_fleet_has_80_devices_in_tiers_of_40_24_16():
    fleet = load_fleet()
    assert fleet.num_devices == 80 and fleet.seed == 0 and fleet.jitter == 0.1
    assert fleet.tier_counts() == (40, 24, 16)
    profiles = fleet.profiles()
    assert len(profiles) == 80
    assert Counter(p.tier for p in profiles) == {t.name: n for t, n in zip(fleet.tiers, (40, 24, 16), strict=True)}
    small = fleet.tiers[0].profile()
    assert (small.flops_per_s, small.up_Bps, small.down_Bps, small.memory_bytes) == (1e12, 2.5e6, 6.25e6, 16 * GIB)
    assert fleet.edge_Bps == 1.25e8
    assert [row["devices"] for row in fleet.table()] == [40, 24, 16]
    assert fleet.table()[2] == {"tier": fleet.tiers[2].name, "devices": 16, "share": 0.2, "tflops": 4.0,
                                "mem_gib": 32, "up_mbps": 100, "down_mbps": 200}


def test_tier_counts_by_largest_remainder():
    assert tier_counts((0.5, 0.3, 0.2), 7) == (4, 2, 1)  # 3.5, 2.1, 1.4 -> the .5 gets the last device
    assert tier_counts((1 / 3, 1 / 3, 1 / 3), 10) == (4, 3, 3)  # tie -> the earlier tier
    assert tier_counts((0.5, 0.3, 0.2), 1) == (1, 0, 0)


def test_profiles_are_deterministic_seed_dependent_and_independent_of_anything_else():
    fleet = load_fleet()
    assert fleet.tier_indices() == load_fleet().tier_indices()
    other = replace(fleet, seed=1)
    assert other.tier_counts() == fleet.tier_counts() and other.tier_indices() != fleet.tier_indices()
    expected = np.random.default_rng(0).permutation(np.repeat([0, 1, 2], [40, 24, 16]))
    assert fleet.tier_indices() == tuple(int(x) for x in expected)
    # num_devices None: as many as the data's clients.
    open_fleet = replace(fleet, num_devices=None)
    with pytest.raises(ConfigError, match="num_devices is not set"):
        open_fleet.profiles()
    assert len(open_fleet.with_devices(10).profiles()) == 10
    assert open_fleet.with_devices(10).tier_counts() == (5, 3, 2)


def test_jitter_is_a_pure_function_of_seed_round_and_device():
    fleet = load_fleet()
    first = fleet.profile_at(5, 3)
    assert first == fleet.profile_at(5, 3) == load_fleet().profile_at(5, 3)
    base = fleet.profiles()[5]
    speed, up, down = np.exp(0.1 * np.random.default_rng([0, 3, 5]).standard_normal(3))
    assert math.isclose(first.flops_per_s, base.flops_per_s * speed, rel_tol=1e-12)
    assert math.isclose(first.up_Bps, base.up_Bps * up, rel_tol=1e-12)
    assert math.isclose(first.down_Bps, base.down_Bps * down, rel_tol=1e-12)
    assert first.memory_bytes == base.memory_bytes and first.tier == base.tier
    later = fleet.profile_at(5, 4)
    assert later.flops_per_s != first.flops_per_s and later.up_Bps != first.up_Bps
    assert fleet.profile_at(6, 3).flops_per_s / fleet.profiles()[6].flops_per_s != speed
    assert replace(fleet, seed=1).profile_at(5, 3) != replace(fleet, seed=1).profiles()[5]
    still = replace(fleet, jitter=0.0)
    assert [still.profile_at(i, 7) for i in range(80)] == still.profiles() == still.round_profiles(7)
    with pytest.raises(ValueError, match=r"device must be in \[0, 80\)"):
        fleet.profile_at(80, 0)


BAD_FLEET = """\
num_devices: 10
tiers:
  - {name: a, share: 0.5, tflops: -1, mem_gib: 16, up_mbps: 20, down_mbps: 50}
  - {name: b, share: 0.5, tflops: 2, mem_gib: 24, down_mbps: 100}
"""


def test_a_fleet_file_with_a_missing_field_and_a_bad_value_reports_both(tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text(BAD_FLEET)
    with pytest.raises(ConfigError) as caught:
        load_fleet(path)
    message = str(caught.value)
    assert message.startswith(f"Invalid device fleet {path}:\n  ")
    assert "tiers[1]: missing up_mbps" in message
    assert "tiers[0].tflops must be > 0, got -1" in message


def test_fleet_issues_cover_shares_numbers_and_unknown_keys():
    tier = {"share": 0.6, "tflops": 1, "mem_gib": 16, "up_mbps": 20, "down_mbps": 50}
    issues = fleet_issues({"tiers": [tier, {**tier, "share": 0.6, "speed": 3}], "speed": 1, "num_devices": 0,
                           "jitter": -0.1, "latency_s": "fast", "edge_cloud_mbps": 0, "seed": 1.5})
    text = "\n".join(issues)
    assert "unknown key 'speed' (allowed: tiers, num_devices, seed, jitter" in text
    assert "tiers[1]: unknown key 'speed' (allowed: name, share, tflops" in text
    assert "shares must sum to 1, got 0.6 + 0.6 = 1.2" in text
    for fragment in ("num_devices must be an int >= 1 or null", "jitter must be >= 0, got -0.1",
                     "latency_s must be a finite number >= 0, got 'fast'", "edge_cloud_mbps must be > 0, got 0",
                     "seed must be an int >= 0, got 1.5"):
        assert fragment in text, fragment
    assert fleet_issues({"tiers": []}) and fleet_issues([1]) and fleet_issues({})
    assert fleet_issues({"tiers": [{**tier, "share": 1.0}]}) == []
    with pytest.raises(ConfigError, match=r"Invalid device fleet settings \(inline\):\n  unknown key 'speed'"):
        load_fleet({"tiers": [{**tier, "share": 1.0}], "speed": 1})
    with pytest.raises(ConfigError, match=r"tiers\[0\]\.share must be > 0"):
        Fleet(tiers=(Tier("x", -1.0, 1, 1, 1, 1),))


def test_inline_missing_and_unparsable_fleets(tmp_path):
    fleet = load_fleet({"tiers": [{"share": 1, "tflops": 1, "mem_gib": 8, "up_mbps": 8, "down_mbps": 16}]})
    assert fleet.num_devices is None and fleet.tiers[0].name == "tier0"
    assert fleet.with_devices(3).profiles()[0] == DeviceProfile(1e12, 1e6, 2e6, 8 * GIB, "tier0")
    with pytest.raises(MissingPathError, match="nope.yaml"):
        load_fleet(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("tiers: [{share: 1,\n")
    with pytest.raises(ConfigError, match="broken.yaml is not valid YAML"):
        load_fleet(str(broken))
    assert load_fleet("embedded:fleets/default-80.yaml") == load_fleet()


# ---------------------------------------------------------------- clock


def test_device_and_edge_seconds():
    profile = DeviceProfile(flops_per_s=10.0, up_Bps=2.0, down_Bps=4.0, memory_bytes=0)
    assert device_seconds(profile, down_bytes=8, up_bytes=6, flops=50, latency_s=0.5) == 0.5 + 2 + 5 + 3
    assert edge_cloud_seconds(0, 0, edge_Bps=1.0, edge_latency_s=0.0) == 0.0
    assert edge_cloud_seconds(3, 5, edge_Bps=4.0, edge_latency_s=0.25) == 0.5 + 2


def test_sim_clock_adds_rounds_and_round_trips_its_state():
    clock = SimClock()
    assert clock.advance(6.5) == 6.5 and clock.advance(1.25) == 7.75
    state = json.loads(json.dumps(clock.state_dict()))
    assert state == {"seconds": 7.75, "rounds": [6.5, 1.25]}
    restored = SimClock()
    restored.load_state_dict(state)
    assert (restored.seconds, restored.rounds) == (7.75, [6.5, 1.25])
    assert restored.advance(0.25) == clock.advance(0.25) == 8.0
    with pytest.raises(ValueError, match="round_seconds"):
        clock.advance(-1)


def test_time_to_target_at_evaluation_points():
    times, accuracy = [10, 20, 30, 40], [0.1, 0.3, 0.29, 0.5]
    assert time_to_target(times, accuracy, 0.3) == 20
    assert time_to_target(times, accuracy, 0.4) == 40
    assert time_to_target(times, accuracy, 0.6) is None
    losses = [3.0, 2.5, 2.6, 1.9]
    assert time_to_target(times, losses, 2.5, mode="min") == 20
    assert time_to_target(times, losses, 2.0, mode="min") == 40
    assert time_to_target(times, losses, 1.0, mode="min") is None
    with pytest.raises(ValueError, match="same length"):
        time_to_target(times, accuracy[:3], 0.3)
    with pytest.raises(ValueError, match="mode"):
        time_to_target(times, accuracy, 0.3, mode="best")
