"""``fedbiot-plan`` for HierFedLoRA: per-depth costs, the groups' depth and intra rounds, traffic at both levels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedbiot_pl.plan import flat_traffic, hier_traffic, render
from fedbiot_pl.planning.hierarchy import table_depths
from tests.helpers import plan_cli as run
from tests.helpers import plan_error
from tests.helpers import plan_json as run_json

ROOT = Path(__file__).resolve().parents[1]
LLAMA2_7B = ROOT / "configs" / "models" / "llama2-7b"
STORIES = "embedded:models/stories260K"  # 5 layers
LORA_LAYER = 1792  # r=8 on q_proj (64x64) and v_proj (32x64): 8 (64 + 64) + 8 (64 + 32)
BETA = 4 * LORA_LAYER  # 7,168 B: one layer's LoRA as float32
SPEC_8 = ("--model", STORIES, "--algorithm", "hierfedlora", "--group-sizes", "2,2", "--depths", "2,1",
          "--intra-rounds", "1,2")
DOLLY = ("--config", "configs/dolly.yaml", "--config", "configs/algorithms/hierfedlora.yaml")
MIB = 2**20


def test_the_pure_traffic_gives_the_spec_test_8_figures() -> None:
    # group A: 2 devices, d 2, K 1; group B: 2 devices, d 1, K 2; the previous round changed the top c = 2 layers
    t = hier_traffic(BETA, (2, 1), (2, 2), (1, 2), num_layers=5)
    a_down, a_up = 2 * BETA, 2 * BETA  # top 2 down, top 2 up
    b_down, b_up = 2 * BETA + 1 * BETA, 2 * 1 * BETA  # top max(2, 1) = 2 down, then top 1; top 1 up twice
    assert 2 * a_down + 2 * b_down == 71_680 and 2 * a_up + 2 * b_up == 57_344
    assert t["device_edge"] == {"download_bytes": 71_680, "upload_bytes": 57_344, "total_bytes": 129_024}
    assert t["edge_cloud"] == {"download_bytes": 28_672, "upload_bytes": 21_504, "total_bytes": 50_176}
    assert [g["per_device"] for g in t["groups"]] == [{"download_bytes": a_down, "upload_bytes": a_up},
                                                      {"download_bytes": b_down, "upload_bytes": b_up}]
    assert t["device_rounds"] == 2 * 1 + 2 * 2
    # the first round fetches all 5 layers: as the ledger counts round 0 of a real run (test_hierfedlora_round)
    first = t["first_round"]
    assert first["device_edge"]["download_bytes"] == BETA * (2 * 5 + 2 * 6) == 157_696
    assert first["device_edge"]["upload_bytes"] == 57_344
    assert first["edge_cloud"] == {"download_bytes": BETA * 10, "upload_bytes": BETA * 3, "total_bytes": BETA * 13}
    # a given c: the layers changed since the devices last synced
    assert hier_traffic(BETA, (2, 1), (2, 2), (1, 2), changed_depth=4)["groups"][1]["per_device"] == {
        "download_bytes": 4 * BETA + BETA, "upload_bytes": 2 * BETA}
    # FedAvg-LoRA on the same 4 devices: all 5 layers once each way
    assert flat_traffic(BETA, 5, 4) == {"clients": 4, "download_bytes": 35_840, "upload_bytes": 35_840,
                                        "total_bytes": 286_720, "device_rounds": 4}
    with pytest.raises(ValueError, match="one value per group"):
        hier_traffic(BETA, (2, 1), (2, 2, 2), (1, 2))


def test_the_pure_traffic_gives_the_spec_llama2_7b_example() -> None:
    t = hier_traffic(131_072 * 4, (16, 8, 8, 4), (20, 20, 20, 20), (1, 2, 2, 3))
    # per device: down 16 | 16 + 8 | 16 + 8 | 16 + 2 x 4 half-MiB layers; up 16 | 2 x 8 | 2 x 8 | 3 x 4
    assert t["device_edge"]["download_bytes"] == 20 * (8 + 12 + 12 + 12) * MIB == 880 * MIB
    assert t["device_edge"]["upload_bytes"] == 20 * (8 + 8 + 8 + 6) * MIB == 600 * MIB
    assert (t["edge_cloud"]["upload_bytes"], t["edge_cloud"]["download_bytes"]) == (18 * MIB, 32 * MIB)
    assert t["device_rounds"] == 160
    assert flat_traffic(131_072 * 4, 32, 80)["total_bytes"] == 2_560 * MIB


def test_the_table_lists_every_depth_of_a_small_model_and_powers_of_two_of_a_large_one() -> None:
    assert table_depths(5) == [1, 2, 3, 4, 5]
    assert table_depths(32, (6, 8)) == [1, 2, 4, 6, 8, 16, 32]
    assert table_depths(40) == [1, 2, 4, 8, 16, 32, 40]


def test_stories260k_explicit_groups_through_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    h = run_json(capsys, *SPEC_8)["hier"]
    assert (h["num_layers"], h["lora_params_per_layer"], h["layer_bytes"]) == (5, LORA_LAYER, BETA)
    assert [(g["members"], g["depth"], g["intra_rounds"]) for g in h["groups"]] == [([0, 1], 2, 1), ([2, 3], 1, 2)]
    assert h["traffic"]["device_edge"]["total_bytes"] == 129_024
    assert h["traffic"]["edge_cloud"]["upload_bytes"] == 21_504
    assert h["traffic"]["edge_cloud"]["download_bytes"] == 28_672
    assert h["flat"]["total_bytes"] == 2 * 4 * 5 * BETA
    assert [row["depth"] for row in h["depth_table"]] == [1, 2, 3, 4, 5]
    assert [row["message_bytes"] for row in h["depth_table"]] == [d * BETA for d in range(1, 6)]
    code, text, _ = run(capsys, *SPEC_8)
    assert code == 0
    assert "2 groups (2,2; consecutive device ids), depths 2,1, intra-group rounds 1,2" in text
    assert "device<->edge 129,024 B (126.0 KiB): down 71,680 B (70.0 KiB), up 57,344 B (56.0 KiB)" in text
    assert "edge<->cloud  50,176 B (49.0 KiB): up 21,504 B (21.0 KiB), down 28,672 B (28.0 KiB)" in text
    assert "device local steps per global round: 6 x tau   (fedavg_lora, 4 clients: 4 x tau" in text
    # one value for every group; --groups splits --clients into balanced groups
    h = run_json(capsys, "--model", STORIES, "--algorithm", "hierfedlora", "--groups", "2", "--clients", "5",
                 "--depths", "3", "--intra-rounds", "2")["hier"]
    assert [(g["members"], g["depth"], g["intra_rounds"]) for g in h["groups"]] == [([0, 1, 2], 3, 2), ([3, 4], 3, 2)]


def test_llama2_7b_depth_rows_and_traffic_match_the_spec(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ("--model", str(LLAMA2_7B), "--algorithm", "hierfedlora", "--group-sizes", "20,20,20,20",
            "--depths", "16,8,8,4", "--intra-rounds", "1,2,2,3")
    h = run_json(capsys, *argv)["hier"]
    rows = {row["depth"]: row for row in h["depth_table"]}
    assert list(rows) == [1, 2, 4, 8, 16, 32]
    assert (rows[4]["lora_params"], rows[4]["message_bytes"]) == (524_288, 2 * MIB)
    assert (rows[32]["lora_params"], rows[32]["message_bytes"]) == (4_194_304, 16 * MIB)
    assert round(rows[4]["flops_vs_full"], 3) == 0.566 and rows[32]["flops_vs_full"] == 1.0
    assert round(rows[4]["peak_memory_bytes"] / 2**30, 2) == 15.35
    assert round(rows[32]["peak_memory_bytes"] / 2**30, 2) == 28.28
    assert h["micro_batch_tokens"] == 4000
    t = h["traffic"]
    assert (t["device_edge"]["download_bytes"], t["device_edge"]["upload_bytes"]) == (880 * MIB, 600 * MIB)
    code, text, _ = run(capsys, *argv)
    assert code == 0
    assert "    4      524,288    2.0 MiB    0.566                15.35 GiB                     3" in text
    assert "   32    4,194,304   16.0 MiB    1.000                28.28 GiB" in text


def test_a_runs_config_groups_its_clients_and_chooses_depth_and_rounds(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # The embedded Dolly sample: 8 clients, one category of 25 rows each. A two-tier fleet whose small devices
    # hold depth 2 but not 3 (memory at the config's micro-batch of 5 x 512 tokens), and a budget loose enough
    # for every depth: a group with a small device trains its top 2 layers, the others all 5.
    probe = run_json(capsys, *DOLLY)["hier"]
    memory = {row["depth"]: row["peak_memory_bytes"] for row in probe["depth_table"]}
    between = (memory[2] + memory[3]) / 2 / 2**30
    tiers = [{"name": "small", "share": 0.5, "tflops": 1.0, "mem_gib": between, "up_mbps": 20, "down_mbps": 50},
             {"name": "large", "share": 0.5, "tflops": 4.0, "mem_gib": 32, "up_mbps": 100, "down_mbps": 200}]
    extra = tmp_path / "fleet.yaml"
    extra.write_text(json.dumps({"federated": {
        "devices": {"tiers": tiers, "jitter": 0.0},
        "algorithm": {"class_path": "fedbiot_pl.algorithms.HierFedLoRA",
                      "init_args": {"num_groups": 4, "budget_factor": 100.0}}}}))
    plan = run_json(capsys, *DOLLY, "--config", str(extra))
    h = plan["hier"]
    assert h["source"] == "config" and h["micro_batch_tokens"] == 5 * 512 and h["tokens_per_step"] == 5 * 512 * 2
    assert h["num_clients"] == 8 and h["local_steps"] == 10
    groups = h["groups"]
    assert len(groups) == 4 and sorted(m for g in groups for m in g["members"]) == list(range(8))
    assert [g["examples"] for g in groups] == [50, 50, 50, 50]  # 2 clients x 25 rows
    small = [g["min_memory_bytes"] < memory[3] for g in groups]
    assert any(small) and not all(small)
    assert [g["depth"] for g in groups] == [2 if s else 5 for s in small]
    assert all(g["peak_memory_bytes"] <= g["min_memory_bytes"] and g["fits_memory"] for g in groups)
    assert all(1 <= g["intra_rounds"] <= 4 and g["seconds"] <= h["budget_seconds"] for g in groups)
    # two categories per group: KL 0 would need all 8; the grouping's J is what greedy found, with random's next to it
    assert h["divergence"]["divergence"] == pytest.approx(sum(g["kl"] for g in groups) / 4)
    text = render(plan)
    assert "4 groups of the 8 clients (greedy_kl, seed 42;" in text
    assert "before truncation drops" in text and "random grouping (20 seeded draws)" in text
    for g in groups:  # every group named with its depth and intra rounds
        assert any(line.split()[:1] == [str(g["group"])] and f"  {g['depth']}  " in line
                   and f"  {g['intra_rounds']}  " in line for line in text.splitlines())
    assert f"round budget T* = {h['budget_seconds']:.4g} s" in text


def test_the_shipped_recipe_on_dolly_names_every_group(capsys: pytest.CaptureFixture[str]) -> None:
    code, text, err = run(capsys, *DOLLY)
    assert code == 0, err
    header = next(i for i, line in enumerate(text.splitlines()) if line.strip().startswith("group  devices"))
    lines = text.splitlines()[header:]
    assert "depth  intra rounds" in lines[0] and "T_g s" in lines[0]
    groups = [line for line in lines[1:] if line.split() and line.split()[0].isdigit()]
    assert len(groups) >= 2 and "device<->edge" in text and "edge<->cloud" in text


@pytest.mark.parametrize(("argv", "named"), [
    (("--group-sizes", "2,2", "--depths", "6,1"), "--depths 6,1: depth 6 is outside [1, 5]"),
    (("--group-sizes", "2,2", "--depths", "2,1,1"), "--group-sizes 2,2 (2 groups) vs --depths 2,1,1 (3 groups)"),
    (("--group-sizes", "2,2", "--intra-rounds", "1,1,1"), "--intra-rounds 1,1,1 (3 groups)"),
    (("--groups", "5", "--clients", "4"), "--groups 5 asks for 5 groups but --clients is 4"),
    (("--group-sizes", "2,0"), "--group-sizes '2,0' must be a comma-separated list of integers >= 1"),
    (("--group-sizes", "2,2", "--clients", "3"), "--group-sizes 2,2 sum to 4 devices but --clients is 3"),
])
def test_bad_groups_exit_2_with_one_line_naming_the_flag(capsys: pytest.CaptureFixture[str], argv: tuple[str, ...],
                                                         named: str) -> None:
    assert named in plan_error(capsys, "--model", STORIES, "--algorithm", "hierfedlora", *argv)


def test_bad_input_to_a_config_plan_and_to_other_algorithms_names_the_flag(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert "(settings given by --groups 9)" in plan_error(capsys, *DOLLY, "--groups", "9")
    assert "--depths 6: depth 6 is outside [1, 5]" in plan_error(capsys, *DOLLY, "--depths", "6")
    err = plan_error(capsys, "--model", STORIES, "--depths", "2")
    assert "--depths applies to the hierarchical algorithms (hierfedlora); algorithm 'fedbiot'" in err
    assert "--compare's hierfedlora row" in plan_error(capsys, "--model", STORIES, "--compare", "--groups", "2")
