"""``fedbiot-plan``: split, parameter and traffic figures from a config alone (meta device, no weights)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fedbiot_pl.assets import resolve
from fedbiot_pl.plan import size, traffic, yaml_settings
from tests.helpers import plan_cli as run
from tests.helpers import plan_json as run_json

ROOT = Path(__file__).resolve().parents[1]
LLAMA2_7B = ROOT / "configs" / "models" / "llama2-7b"
STORIES = "embedded:models/stories260K"
DEFAULT_YAML = resolve("embedded:configs/default.yaml")




def lora(r: int, shapes: list[tuple[int, int]]) -> int:
    """LoRA parameters of one layer: A (r x in) + B (out x r) for every (out, in) target."""
    return sum(r * (fan_in + fan_out) for fan_out, fan_in in shapes)


def test_llama2_7b_acceptance_figures(capsys: pytest.CaptureFixture[str]) -> None:
    plan = run_json(capsys, "--model", str(LLAMA2_7B / "config.json"), "--adapter-layers", "2",
                    "--drop-rate", "0.2", "--lora-r", "8", "--lora-targets", "q_proj,v_proj")
    per_layer = lora(8, [(4096, 4096), (4096, 4096)])  # q_proj and v_proj, 32 kv heads x 128
    assert per_layer == 131_072
    assert plan["model"] == {"name": str(LLAMA2_7B / "config.json"), "class": "LlamaForCausalLM",
                             "num_layers": 32, "dtype": "float16"}
    assert plan["layers"]["emulator"] == [i for i in range(30) if i not in (4, 9, 14, 19, 24, 28)]
    assert plan["layers"]["emulator"][:9] == [0, 1, 2, 3, 5, 6, 7, 8, 10]
    assert plan["layers"]["emulator"][-2:] == [27, 29]
    assert plan["layers"]["adapter"] == [30, 31]
    layer = 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096  # attention, MLP, two RMSNorms
    embeddings = 2 * 32000 * 4096 + 4096  # untied embed_tokens and lm_head, final norm
    assert plan["params"] == {"full": 6_738_415_616, "compressed": 26 * layer + embeddings,
                              "emulator_lora": 24 * per_layer, "adapter_lora": 262_144}
    assert 32 * layer + embeddings == 6_738_415_616
    assert plan["trainable"] == {"client": 262_144, "server": 24 * per_layer}
    assert plan["per_client_per_round"] == {"download_params": 3_407_872, "download_bytes": 4 * 3_407_872,
                                            "upload_params": 262_144, "upload_bytes": 4 * 262_144}
    assert plan["one_time"]["compressed_base_bytes"] == 2 * (26 * layer + embeddings)  # float16


def test_llama2_7b_text_report_from_the_model_folder(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--model", str(LLAMA2_7B), "--adapter-layers", "2", "--drop-rate", "0.2",
                         "--lora-r", "8", "--clients", "10")
    assert code == 0 and err == ""
    for figure in ("32 decoder layers", "0, 1, 2, 3, 5, 6, 7, 8, 10, 11", "25, 26, 27, 29", "adapter layers: 30, 31",
                   "6,738,415,616", "3,407,872 params  13,631,488 B", "262,144 params  1,048,576 B",
                   "per round (10 clients)", "34,078,720 params", "2,621,440 params"):
        assert figure in out


def test_stories260k_hand_computed_figures(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    def no_weights(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the plan must not load weights")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_weights)
    plan = run_json(capsys, "--model", STORIES, "--adapter-layers", "2", "--drop-rate", "0.2", "--lora-r", "8")
    per_layer = lora(8, [(64, 64), (4 * 8, 64)])  # q_proj 64x64, v_proj (4 kv heads x head_dim 8) x 64
    assert per_layer == 8 * 64 + 64 * 8 + 8 * 64 + 32 * 8 == 1792
    assert plan["layers"] == {"emulator": [0, 2], "adapter": [3, 4]}
    layer = 64 * 64 + 2 * 32 * 64 + 64 * 64 + 3 * 64 * 172 + 2 * 64  # q, k, v, o, MLP, norms
    tied = 512 * 64 + 64  # embed_tokens is lm_head (tied, counted once), final norm
    assert plan["params"] == {"full": 5 * layer + tied, "compressed": 4 * layer + tied,
                              "emulator_lora": 2 * 1792, "adapter_lora": 2 * 1792}
    assert plan["params"]["full"] == 260_032
    assert plan["per_client_per_round"] == {"download_params": 4 * 1792, "download_bytes": 28_672,
                                            "upload_params": 3584, "upload_bytes": 14_336}
    assert plan["one_time"]["compressed_base_bytes"] == 4 * (4 * layer + tied)  # float32


def test_config_yaml_and_flags_override_it(capsys: pytest.CaptureFixture[str]) -> None:
    plan = run_json(capsys, "--config", DEFAULT_YAML)
    assert plan["model"]["name"] == STORIES
    assert plan["split"] == {"adapter_layers": 2, "bottom_adapter_layers": 0, "drop_rate": 0.2, "lora_r": 8,
                             "lora_alpha": 16, "lora_targets": ["q_proj", "v_proj"]}
    assert plan["per_round"] == {"clients": 3, "download_params": 3 * 7168, "download_bytes": 3 * 28_672,
                                 "upload_params": 3 * 3584, "upload_bytes": 3 * 14_336}
    override = run_json(capsys, "--config", DEFAULT_YAML, "--lora-r", "4", "--clients", "2", "--adapter-layers", "1")
    assert override["split"]["lora_r"] == 4 and override["layers"] == {"emulator": [0, 1, 3], "adapter": [4]}
    assert override["per_client_per_round"]["upload_params"] == 1792 // 2 and override["per_round"]["clients"] == 2


def test_yaml_settings_steps_through_init_args_and_fractions(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        "model:\n  split:\n"
        "    class_path: fedbiot_pl.ModelViews\n    init_args: {model: m, adapter_layers: 4, lora_r: 16}\n"
        "data: {num_clients: 10}\nfederated: {clients_per_round: 0.25}\n"
    )
    settings = yaml_settings(str(path))  # the CLI parser's reading: its defaults fill the rest
    assert {k: settings[k] for k in ("model", "adapter_layers", "lora_r", "clients", "algorithm")} == {
        "model": "m", "adapter_layers": 4, "lora_r": 16, "clients": 3, "algorithm": "fedbiot"}
    assert settings["drop_rate"] == 0.2


def test_json_and_text_report_the_same_figures(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ("--model", STORIES, "--adapter-layers", "1", "--drop-rate", "0.5", "--lora-r", "4",
            "--lora-targets", "q_proj,k_proj,v_proj,o_proj", "--clients", "7")
    plan = run_json(capsys, *argv)
    code, text, _ = run(capsys, *argv)
    assert code == 0
    figures = [*plan["params"].values(), *plan["trainable"].values(), *plan["per_client_per_round"].values(),
               *plan["per_round"].values(), plan["one_time"]["compressed_base_bytes"]]
    for value in figures:
        assert f"{value:,}" in text
    assert f"emulator layers (2 of 4 kept): {', '.join(map(str, plan['layers']['emulator']))}" in text
    assert plan["layers"] == {"emulator": [0, 3], "adapter": [4]} and "adapter layers: 4" in text


def test_pure_helpers() -> None:
    assert traffic(10, 3, 4)["per_round"] == {"clients": 4, "download_params": 52, "download_bytes": 208,
                                              "upload_params": 12, "upload_bytes": 48}
    assert size(512) == "512 B" and size(28_672) == "28,672 B (28.0 KiB)"
    assert size(13_631_488) == "13,631,488 B (13.0 MiB)" and size(3 * 2**30) == "3,221,225,472 B (3.0 GiB)"
    assert size(5 * 2**40) == "5,497,558,138,880 B (5.0 TiB)"


@pytest.mark.parametrize(
    ("argv", "bad"),
    [
        (["--model", "{tmp}/missing/config.json"], "{tmp}/missing/config.json"),
        (["--model", "embedded:models/nope"], "embedded:models/nope"),
        (["--model", STORIES, "--adapter-layers", "7"], "= 7"),
        (["--model", STORIES, "--drop-rate", "1.0"], "got 1.0"),
        (["--model", STORIES, "--drop-rate", "-0.1"], "got -0.1"),
        (["--model", STORIES, "--lora-targets", "q_proj,qq_proj"], "qq_proj"),
        (["--model", STORIES, "--clients", "0"], "got 0"),
        (["--config", "{tmp}/no.yaml"], "{tmp}/no.yaml"),
        (["--adapter-layers", "2"], "--model"),
    ],
)
def test_bad_input_exits_2_with_one_line_naming_the_value(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], bad: str
) -> None:
    code, out, err = run(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert code == 2 and out == ""
    assert err.startswith("fedbiot-plan: error: ") and err.count("\n") == 1
    assert bad.format(tmp=tmp_path) in err


def test_module_entry_point_exits_2_without_traceback() -> None:
    done = subprocess.run([sys.executable, "-m", "fedbiot_pl.plan", "--model", STORIES, "--clients", "0"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert "Traceback" not in done.stderr and "clients must be >= 1, got 0" in done.stderr


def test_compare_llama2_7b_reproduces_the_99_94_percent_headline(capsys: pytest.CaptureFixture[str]) -> None:
    plans = {p["algorithm"]: p for p in run_json(capsys, "--model", str(LLAMA2_7B), "--compare", "--clients", "3",
                                                 "--adapter-layers", "2", "--drop-rate", "0.2")}
    assert list(plans) == ["fedbiot", "fedot", "offsite_tuning", "fedavg_lora", "fedprox", "fed_kd", "fedmkt",
                           "splitfed_lora", "splitfed_lora_u", "hierfedlora"]
    full, layer = 6_738_415_616, 202_383_360
    # FedAvg-LoRA: r=8 q/v LoRA on all 32 layers, the client holds (and adapts) the full model
    fedavg = plans["fedavg_lora"]
    assert fedavg["params"]["compressed"] == full and fedavg["trainable"]["client"] == 32 * 131_072 == 4_194_304
    per_client = fedavg["per_client_per_round"]
    assert per_client["download_params"] == per_client["upload_params"] == 4_194_304
    assert round(100 * (1 - 4_194_304 / full), 2) == 99.94
    # HierFedLoRA's row: one group at full depth, one intra-group round: FedAvg-LoRA's figures
    hier = plans["hierfedlora"]
    assert hier["per_client_per_round"] == per_client and hier["trainable"] == fedavg["trainable"]
    assert hier["client_peak_memory"] == fedavg["client_peak_memory"] and hier["hier"]["groups"] is None
    # FedBiOT beta=0.2, adapter 2: 26-layer compressed model; emulator + adapter LoRA down, adapter LoRA up
    fedbiot = plans["fedbiot"]
    assert fedbiot["params"]["compressed"] == full - 6 * layer == 5_524_115_456
    assert fedbiot["per_client_per_round"]["download_params"] == 26 * 131_072 == 3_407_872
    assert round(100 * (1 - 3_407_872 / 5_524_115_456), 2) == 99.94
    # FedOT: layers 0,1 and 30,31 adapt; the fixed emulator LoRA is a one-time download
    fedot = plans["fedot"]
    assert fedot["trainable"] == {"client": 4 * 131_072, "server": 0}
    assert fedot["per_client_per_round"]["download_params"] == 4 * 131_072
    assert fedot["one_time"]["emulator_lora_bytes"] == 4 * 22 * 131_072
    # memory: FedBiOT keeps activations of its 2 adapter layers, FedOT and FedAvg-LoRA of every layer
    per_token_layer = 7 * 4096 + 3 * 11008
    assert fedbiot["client_peak_memory"]["activations"] == 2 * 4000 * per_token_layer * 2
    assert fedot["client_peak_memory"]["activations"] == 26 * 4000 * per_token_layer * 2
    assert fedavg["client_peak_memory"]["activations"] == 32 * 4000 * per_token_layer * 2
    assert fedavg["client_peak_memory"]["weights"] == 2 * full
    assert fedavg["client_peak_memory"]["lora_state"] == 16 * 4_194_304
    assert fedavg["client_peak_memory"]["logits"] == 2 * 4000 * 32000 * 4
    code, text, _ = run(capsys, "--model", str(LLAMA2_7B), "--compare", "--adapter-layers", "2", "--drop-rate", "0.2")
    assert code == 0
    # bytes per client and round (LoRA as float32), the round total for 1 client, the reductions vs float32 weights
    assert ("| fedavg_lora | 6,738,415,616 | 4,194,304 | 16,777,216 B (16.0 MiB) | 16,777,216 B (16.0 MiB) "
            "| 33,554,432 B (32.0 MiB) | 99.9378% | 99.9378% |") in text
    assert ("| fedbiot | 5,524,115,456 | 262,144 | 13,631,488 B (13.0 MiB) | 1,048,576 B (1.0 MiB) "
            "| 14,680,064 B (14.0 MiB) | 99.9494% | 99.9383% |") in text


def test_algorithm_from_the_yaml_and_unknown_algorithm(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  split: {model: embedded:models/stories260K}\nfederated: {algorithm: fedavg_lora}\n")
    assert run_json(capsys, "--config", str(path))["trainable"]["client"] == 5 * 1792
    code, _, err = run(capsys, "--model", STORIES, "--micro-batch-tokens", "0")
    assert code == 2 and "micro_batch_tokens must be >= 1, got 0" in err
