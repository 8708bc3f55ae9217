"""``fedbiot-plan`` for split learning (``splitfed_lora``, ``splitfed_lora_u``) and every algorithm's client FLOPs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from fedbiot_pl.algorithms import SplitFedLoRA
from fedbiot_pl.plan import SPLIT_FORMULA, flops, main, plan, split_numbers, split_traffic
from tests.helpers import plan_cli as run
from tests.helpers import plan_error
from tests.helpers import plan_json as run_json

ROOT = Path(__file__).resolve().parents[1]
LLAMA2_7B = ROOT / "configs" / "models" / "llama2-7b"
STORIES = "embedded:models/stories260K"  # d = 64, 5 layers, float32, tied head, V = 512
LORA_LAYER = 1792  # r=8 on q_proj (64x64) and v_proj (32x64): 8 (64 + 64) + 8 (64 + 32)
SMALL = ("--batch-size", "2", "--seq-len", "16", "--micro-batches", "3")  # B T = 32 tokens a micro-batch
# Per token at T = 16 on stories260K (fedbiot_pl.scaling.flops): a layer's linears hold 45,312 weights
# (q 4096, k 2048, v 2048, o 4096, MLP 3 x 64 x 172), attention 4 T d = 4,096, LoRA 1,792, head 2 d V = 65,536.
LAYER_FWD = 2 * 45_312 + 4 * 16 * 64 + 2 * LORA_LAYER  # 98,304
LAYER_BWD = 2 * 45_312 + 8 * 16 * 64 + 2 * LORA_LAYER + 2 * LORA_LAYER  # input + LoRA weight gradients: 105,984
HEAD = 2 * 64 * 512




def stories_parts() -> dict[str, Any]:
    """stories260K's base parameters by part, counted on a meta-device model (no weights)."""
    from transformers import AutoModelForCausalLM

    from fedbiot_pl.model.location import load_model_config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(load_model_config(STORIES))
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied: one tensor
    return {"embeddings": model.model.embed_tokens.weight.numel(), "norm": model.model.norm.weight.numel(),
            "layers": [sum(p.numel() for p in layer.parameters()) for layer in model.model.layers]}


# ---------------------------------------------------------------- split_traffic, by hand
@pytest.mark.parametrize(
    ("b", "u_shaped", "up", "down"),
    [  # M=3, B=2, T=4, d=8: activations b·64, mask 8, labels 32, client LoRA 10 -> 40 B each way
        (4, False, {"activations": 768, "mask": 24, "labels": 96, "loss_grad": 12, "lora": 40},
         {"loss": 12, "gradients": 768, "lora": 40}),
        (2, False, {"activations": 384, "mask": 24, "labels": 96, "loss_grad": 12, "lora": 40},
         {"loss": 12, "gradients": 384, "lora": 40}),
        (4, True, {"activations": 768, "mask": 24, "gradients": 768, "lora": 40},
         {"activations": 768, "gradients": 768, "lora": 40}),
        (2, True, {"activations": 384, "mask": 24, "gradients": 384, "lora": 40},
         {"activations": 384, "gradients": 384, "lora": 40}),
    ],
)
def test_split_traffic_terms_by_hand(b: int, u_shaped: bool, up: dict[str, int], down: dict[str, int]) -> None:
    moved = split_traffic(micro_batches=3, batch_size=2, seq_len=4, hidden_size=8, activation_bytes=b,
                          client_lora=10, u_shaped=u_shaped)
    assert moved["upload"] == up and moved["download"] == down
    assert moved["upload_bytes"] == sum(up.values()) and moved["download_bytes"] == sum(down.values())
    assert moved["per_micro_batch"] == {"upload": {k: v // 3 for k, v in up.items() if k != "lora"},
                                        "download": {k: v // 3 for k, v in down.items() if k != "lora"}}
    assert moved["formula"] == SPLIT_FORMULA["u_shaped" if u_shaped else "vanilla"]


def test_split_traffic_totals_and_formula_text() -> None:
    assert split_traffic(3, 2, 4, 8, 4, 10, False)["upload_bytes"] == 3 * (256 + 8 + 32 + 4) + 40 == 940
    assert split_traffic(3, 2, 4, 8, 4, 10, False)["download_bytes"] == 3 * (4 + 256) + 40 == 820
    assert split_traffic(3, 2, 4, 8, 2, 10, False)["upload_bytes"] == 3 * (128 + 8 + 32 + 4) + 40 == 556
    assert split_traffic(3, 2, 4, 8, 4, 10, True)["upload_bytes"] == 3 * (256 + 8 + 256) + 40 == 1600
    assert split_traffic(3, 2, 4, 8, 2, 10, True)["download_bytes"] == 3 * (128 + 128) + 40 == 808
    assert SPLIT_FORMULA == {
        "vanilla": "up = M·(b·B·T·d + B·T + 4·B·T + 4) + 4·LoRA_c, down = M·(4 + b·B·T·d) + 4·LoRA_c",
        "u_shaped": "up = M·(b·B·T·d + B·T + b·B·T·d) + 4·LoRA_c, down = M·(b·B·T·d + b·B·T·d) + 4·LoRA_c"}


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [({"micro_batches": 0}, "micro_batches must be an integer >= 1, got 0; set --micro-batches"),
     ({"batch_size": 2.5}, "batch_size must be an integer >= 1, got 2.5; set --batch-size"),
     ({"seq_len": -1}, "seq_len must be an integer >= 1, got -1; set --seq-len"),
     ({"hidden_size": True}, "hidden_size must be an integer >= 1, got True"),
     ({"activation_bytes": 0}, "activation_bytes must be an integer >= 1, got 0"),
     ({"client_lora": -1}, "client_lora must be an integer >= 0, got -1")],
)
def test_split_traffic_rejects_bad_settings(kwargs: dict[str, Any], bad: str) -> None:
    with pytest.raises(ValueError, match=bad.replace("(", r"\(")):
        split_traffic(**{"micro_batches": 3, "batch_size": 2, "seq_len": 4, "hidden_size": 8, "activation_bytes": 4,
                         "client_lora": 10, "u_shaped": False, **kwargs})


# ---------------------------------------------------------------- plans on stories260K
def test_vanilla_split_on_stories260k_by_hand(capsys: pytest.CaptureFixture[str]) -> None:
    p = run_json(capsys, "--model", STORIES, "--algorithm", "splitfed_lora", "--cut-layer", "1", *SMALL,
                 "--clients", "2")
    parts, tokens = stories_parts(), 2 * 16
    assert p["family"] == "split" and parts["layers"] == [45_440] * 5 and parts["embeddings"] == 32_768
    # client: embeddings + layer 0; its LoRA is layer 0's, the server's layers 1-4's
    assert p["params"]["compressed"] == parts["embeddings"] + parts["layers"][0] == 78_208
    assert p["trainable"] == {"client": LORA_LAYER, "server": 4 * LORA_LAYER}
    up = 3 * (4 * tokens * 64 + tokens + 4 * tokens + 4) + 4 * LORA_LAYER  # float32 activations: b = 4
    down = 3 * (4 + 4 * tokens * 64) + 4 * LORA_LAYER
    assert (up, down) == (32_236, 31_756)
    assert p["per_client_per_round"] == {"download_params": LORA_LAYER, "download_bytes": down,
                                         "upload_params": LORA_LAYER, "upload_bytes": up}
    assert p["per_round"] == {"clients": 2, "download_params": 2 * LORA_LAYER, "download_bytes": 2 * down,
                              "upload_params": 2 * LORA_LAYER, "upload_bytes": 2 * up}
    s = p["split"]
    assert {k: s[k] for k in ("cut_layer", "client_top_layers", "u_shaped", "activation_dtype", "activation_bytes",
                              "batch_size", "seq_len", "micro_batches", "hidden_size", "client_layers",
                              "server_layers", "client_lora", "server_lora", "tokens_per_client_per_round")} == {
        "cut_layer": 1, "client_top_layers": 0, "u_shaped": False, "activation_dtype": "float32",
        "activation_bytes": 4, "batch_size": 2, "seq_len": 16, "micro_batches": 3, "hidden_size": 64,
        "client_layers": [0], "server_layers": [1, 2, 3, 4], "client_lora": LORA_LAYER,
        "server_lora": 4 * LORA_LAYER, "tokens_per_client_per_round": 96}
    assert s["server_params"] == 4 * 45_440 + 64 + 32_768  # its layers, the final norm and the (tied) head
    assert s["upload"] == {"activations": 3 * 8192, "mask": 96, "labels": 384, "loss_grad": 12, "lora": 7168}
    assert s["formula"] == SPLIT_FORMULA["vanilla"]
    assert split_numbers(s) == (
        "up = M·(b·B·T·d + B·T + 4·B·T + 4) + 4·LoRA_c = 3·(4·2·16·64 + 2·16 + 4·2·16 + 4) + 4·1,792 = 32,236 B, "
        "down = M·(4 + b·B·T·d) + 4·LoRA_c = 3·(4 + 4·2·16·64) + 4·1,792 = 31,756 B")
    # memory: the client's weights, its LoRA's state, activations of its one layer, no logits (no head)
    assert p["client_peak_memory"] == {"micro_batch_tokens": 32, "weights": 4 * 78_208, "lora_state": 16 * 1792,
                                       "activations": 1 * 32 * (7 * 64 + 3 * 172) * 4, "logits": 0,
                                       "total": 4 * 78_208 + 16 * 1792 + 32 * 964 * 4}
    assert p["one_time"] == {"compressed_base_bytes": 4 * 78_208, "emulator_lora_bytes": 0}


def test_u_shaped_split_on_stories260k_by_hand(capsys: pytest.CaptureFixture[str]) -> None:
    p = run_json(capsys, "--model", STORIES, "--algorithm", "splitfed_lora_u", "--cut-layer", "1",
                 "--client-top-layers", "2", "--activation-dtype", "bfloat16", *SMALL)
    parts, tokens = stories_parts(), 2 * 16
    # client: embeddings + layers 0, 3, 4 + final norm; the tied head is the embeddings' tensor (once)
    held = parts["embeddings"] + parts["layers"][0] + parts["layers"][3] + parts["layers"][4] + parts["norm"]
    assert p["params"]["compressed"] == held == 169_152
    assert p["trainable"] == {"client": 3 * LORA_LAYER, "server": 2 * LORA_LAYER}
    assert p["split"]["client_layers"] == [0, 3, 4] and p["split"]["server_layers"] == [1, 2]
    up = 3 * (2 * tokens * 64 + tokens + 2 * tokens * 64) + 4 * 3 * LORA_LAYER  # bfloat16 activations: b = 2
    down = 3 * (2 * tokens * 64 + 2 * tokens * 64) + 4 * 3 * LORA_LAYER
    assert p["per_client_per_round"]["upload_bytes"] == up == 46_176
    assert p["per_client_per_round"]["download_bytes"] == down == 46_080
    assert p["split"]["server_params"] == 2 * 45_440  # the middle layers only
    memory = p["client_peak_memory"]
    assert memory["activations"] == 3 * 32 * 964 * 4  # every client layer trains; float32 model
    assert memory["logits"] == 2 * 32 * 512 * 4  # it holds the head


def test_split_compute_by_hand_and_against_fedavg(capsys: pytest.CaptureFixture[str]) -> None:
    """Client + server FLOPs per token = FedAvg-LoRA's exactly: every term is per layer or the head, held once."""
    fedavg = plan(STORIES, algorithm="fedavg_lora", seq_len=16)["client_compute"]
    assert fedavg == {"seq_len": 16, "forward": 5 * LAYER_FWD + HEAD, "backward": 5 * LAYER_BWD + HEAD,
                      "total": 5 * (LAYER_FWD + LAYER_BWD) + 2 * HEAD, "forward_layers": 5, "backward_layers": 5,
                      "head": True}
    vanilla = run_json(capsys, "--model", STORIES, "--algorithm", "splitfed_lora", "--cut-layer", "1", *SMALL)
    assert LAYER_FWD + LAYER_BWD == 98_304 + 105_984 == 204_288
    assert vanilla["client_compute"] == {"seq_len": 16, "forward": LAYER_FWD, "backward": LAYER_BWD,
                                         "total": LAYER_FWD + LAYER_BWD, "forward_layers": 1,
                                         "backward_layers": 1, "head": False}
    assert vanilla["server_compute_per_client"] == {
        "seq_len": 16, "forward": 4 * LAYER_FWD + HEAD, "backward": 4 * LAYER_BWD + HEAD,
        "total": 4 * (LAYER_FWD + LAYER_BWD) + 2 * HEAD, "forward_layers": 4, "backward_layers": 4, "head": True}
    u = run_json(capsys, "--model", STORIES, "--algorithm", "splitfed_lora_u", "--cut-layer", "1",
                 "--client-top-layers", "2", *SMALL)
    assert u["client_compute"]["total"] == 3 * (LAYER_FWD + LAYER_BWD) + 2 * HEAD
    assert u["server_compute_per_client"]["total"] == 2 * (LAYER_FWD + LAYER_BWD)
    for split in (vanilla, u):
        assert split["client_compute"]["total"] < fedavg["total"]
        for key in ("forward", "backward", "total"):
            assert split["client_compute"][key] + split["server_compute_per_client"][key] == fedavg[key]


def test_every_algorithm_has_client_compute(capsys: pytest.CaptureFixture[str]) -> None:
    plans = {p["algorithm"]: p for p in run_json(capsys, "--model", STORIES, "--compare", "--seq-len", "16")}
    fedavg = plans["fedavg_lora"]["client_compute"]
    # FedBiOT: forward through its 4-layer compressed model, backward through its 2 adapter layers only
    assert plans["fedbiot"]["client_compute"] == {
        "seq_len": 16, "forward": 4 * LAYER_FWD + HEAD, "backward": 2 * LAYER_BWD + HEAD,
        "total": 4 * LAYER_FWD + 2 * LAYER_BWD + 2 * HEAD, "forward_layers": 4, "backward_layers": 2, "head": True}
    # KD: the same step as FedAvg-LoRA's, plus the public tokens forward (P T = 50 x 16)
    for name in ("fed_kd", "fedmkt"):
        kd = plans[name]["client_compute"]
        assert {k: v for k, v in kd.items() if not k.startswith("public")} == fedavg
        assert kd["public_forward"] == fedavg["forward"] and kd["public_tokens_per_round"] == 800
    assert all("server_compute_per_client" not in p for n, p in plans.items() if not n.startswith("splitfed"))


def test_split_settings_default_to_the_algorithm_and_override_keeps_the_rest() -> None:
    default = plan(STORIES, algorithm="splitfed_lora_u")
    assert {k: default["split"][k] for k in ("cut_layer", "client_top_layers", "activation_dtype", "batch_size",
                                             "micro_batches", "seq_len")} == {
        "cut_layer": 2, "client_top_layers": 1, "activation_dtype": "float32", "batch_size": 5,
        "micro_batches": 60, "seq_len": 512}
    own = plan(STORIES, algorithm=SplitFedLoRA(cut_layer=3, activation_dtype="float16", server_mode="per_client"),
               cut_layer=1, client_top_layers=2)  # vanilla ignores client_top_layers
    assert {k: own["split"][k] for k in ("cut_layer", "client_top_layers", "activation_dtype", "server_mode")} == {
        "cut_layer": 1, "client_top_layers": 0, "activation_dtype": "float16", "server_mode": "per_client"}
    assert plan(STORIES, algorithm="fedbiot", cut_layer=1, activation_dtype="bfloat16", batch_size=2,
                micro_batches=3) == plan(STORIES)  # the split settings do not touch other algorithms


def test_config_sets_batch_size_micro_batches_and_the_split_algorithm(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    path = tmp_path / "split.yaml"
    path.write_text(
        "model:\n  split: {model: embedded:models/stories260K}\n"
        "data: {max_length: 16, batch_size: 2}\n"
        "federated:\n  local_steps: 3\n  client_accumulate_grad_batches: 2\n"
        "  algorithm:\n    class_path: fedbiot_pl.algorithms.SplitFedLoRAU\n"
        "    init_args: {cut_layer: 1, client_top_layers: 2, activation_dtype: bfloat16}\n"
    )
    p = run_json(capsys, "--config", str(path))
    assert {k: p["split"][k] for k in ("cut_layer", "client_top_layers", "activation_dtype", "batch_size",
                                       "micro_batches", "seq_len")} == {
        "cut_layer": 1, "client_top_layers": 2, "activation_dtype": "bfloat16", "batch_size": 2,
        "micro_batches": 6, "seq_len": 16}
    assert p["per_client_per_round"]["upload_bytes"] == 6 * (2 * 32 * 64 * 2 + 32) + 4 * 3 * LORA_LAYER
    flags = run_json(capsys, "--config", str(path), "--micro-batches", "1", "--cut-layer", "2")
    assert flags["split"]["micro_batches"] == 1 and flags["split"]["client_layers"] == [0, 1, 3, 4]
    # --compare: the config's cut and activation dtype set the vanilla row too
    plans = {p["algorithm"]: p for p in run_json(capsys, "--config", str(path), "--compare")}
    assert plans["splitfed_lora"]["split"]["cut_layer"] == 1
    assert plans["splitfed_lora"]["split"]["activation_dtype"] == "bfloat16"
    assert plans["splitfed_lora_u"]["split"]["client_layers"] == [0, 3, 4]


# ---------------------------------------------------------------- --compare and the command line
def test_compare_has_the_split_rows_and_the_flops_columns(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ("--model", STORIES, "--compare", "--clients", "3", "--cut-layer", "1", "--client-top-layers", "2", *SMALL)
    plans = {p["algorithm"]: p for p in run_json(capsys, *argv)}
    assert {"fedbiot", "fedavg_lora", "fed_kd", "splitfed_lora", "splitfed_lora_u"} <= set(plans)
    assert plans["splitfed_lora"]["split"]["client_layers"] == [0]  # --client-top-layers: the U row only
    assert plans["splitfed_lora_u"]["split"]["client_layers"] == [0, 3, 4]
    assert plans["splitfed_lora"]["per_client_per_round"]["upload_bytes"] == 32_236
    assert plans["fed_kd"]["kd"]["seq_len"] == 16  # --seq-len sets the KD rows too
    code, text, err = run(capsys, *argv)
    assert code == 0 and err == ""
    assert ("| client FLOPs/token (fwd+bwd) | server FLOPs/token per client | est. client peak memory |") in text
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in text.splitlines() if line.startswith("| ")}
    vanilla = plans["splitfed_lora"]
    assert rows["splitfed_lora"].startswith(
        "| splitfed_lora | 78,208 | 1,792 | 31,756 B (31.0 KiB) | 32,236 B (31.5 KiB) | 191,976 B (187.5 KiB) |")
    assert (f"| {flops(vanilla['client_compute']['total'])} | {flops(vanilla['server_compute_per_client']['total'])} "
            "|") in rows["splitfed_lora"]
    assert flops(204_288) == "204.29 kFLOP" and "| 204.29 kFLOP |" in rows["splitfed_lora"]
    assert rows["fedbiot"].count(" | - | ") == 1  # no server FLOPs per client outside split learning
    assert split_numbers(vanilla["split"]) in text and split_numbers(plans["splitfed_lora_u"]["split"]) in text
    assert "M=3 micro-batches of B=2 x T=16 tokens" in text and "client + server = fedavg_lora's" in text


def test_text_report_of_a_split_plan(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--model", STORIES, "--algorithm", "splitfed_lora", "--cut-layer", "1", *SMALL)
    assert code == 0 and err == ""
    for figure in ("split learning (vanilla): cut after k=1 layers", "client layers: 0 (+ embeddings)",
                   "server layers: 1-4 (+ final norm, LM head and loss)",
                   "per micro-batch up: activations 8,192 B, mask 32 B, labels 128 B, loss_grad 4 B",
                   "per micro-batch down: loss 4 B, gradients 8,192 B", "client model (base)", "78,208",
                   "1,792 params  32,236 B (31.5 KiB)", "server FLOPs per token of each client's tokens",
                   "= 32,236 B"):
        assert figure in out, figure


@pytest.mark.parametrize(
    ("argv", "bad"),
    [
        (["--algorithm", "fedbiot", "--cut-layer", "2"], "--cut-layer applies to the split algorithms"),
        (["--algorithm", "fedavg_lora", "--batch-size", "2", "--micro-batches", "3"],
         "--batch-size, --micro-batches apply to the split algorithms (splitfed_lora, splitfed_lora_u)"),
        (["--algorithm", "fed_kd", "--activation-dtype", "bfloat16"], "algorithm 'fed_kd' moves top-k logits"),
        (["--algorithm", "splitfed_lora", "--client-top-layers", "1"],
         "--client-top-layers applies to the U-shaped split algorithms (splitfed_lora_u)"),
        (["--algorithm", "splitfed_lora", "--top-k", "8"], "--top-k applies to the KD algorithms"),
        (["--seq-len", "8"], "--seq-len to the split algorithms (splitfed_lora, splitfed_lora_u) too"),
        (["--algorithm", "splitfed_lora", "--micro-batches", "0"], "micro_batches must be an integer >= 1, got 0"),
        (["--algorithm", "splitfed_lora_u", "--batch-size", "-2"], "batch_size must be an integer >= 1, got -2"),
        (["--algorithm", "splitfed_lora_u", "--client-top-layers", "0"], "client_top_layers must be an integer >= 1"),
        (["--algorithm", "splitfed_lora", "--cut-layer", "5"], "set cut_layer <= 4"),
        (["--compare", "--cut-layer", "9"], "cut_layer 9"),
    ],
)
def test_bad_split_input_exits_2_with_one_line_naming_the_flag(
    capsys: pytest.CaptureFixture[str], argv: list[str], bad: str
) -> None:
    assert bad in plan_error(capsys, "--model", STORIES, *argv)


def test_split_flags_are_accepted_by_the_split_algorithms(capsys: pytest.CaptureFixture[str]) -> None:
    u = run_json(capsys, "--model", STORIES, "--algorithm", "splitfed_lora_u", "--seq-len", "16", "--cut-layer", "1")
    assert u["split"]["seq_len"] == 16 and u["client_compute"]["seq_len"] == 16


def test_help_lists_the_split_flags_and_formula(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for flag in ("--cut-layer", "--client-top-layers", "--activation-dtype", "--batch-size", "--micro-batches"):
        assert flag in out
    assert "splitfed_lora, splitfed_lora_u" in out and SPLIT_FORMULA["vanilla"] in out


def test_llama2_7b_split_matches_the_spec_setting() -> None:
    """kd-split-spec §3: 3 clients, B=5, T=512, M=60, bf16 activations, k=2, m=1 (plus our mask and loss scalars)."""
    settings = {"clients": 3, "batch_size": 5, "seq_len": 512, "micro_batches": 60, "activation_dtype": "bfloat16",
                "cut_layer": 2, "client_top_layers": 1}
    vanilla = plan(str(LLAMA2_7B), algorithm="splitfed_lora", **settings)
    u = plan(str(LLAMA2_7B), algorithm="splitfed_lora_u", **settings)
    layer, embeddings, tokens, act = 202_383_360, 32_000 * 4096, 2560, 2 * 2560 * 4096
    assert vanilla["params"]["compressed"] == 2 * layer + embeddings == 535_838_720
    assert u["params"]["compressed"] == 3 * layer + 2 * embeddings + 4096 == 869_298_176  # untied head + norm
    assert vanilla["trainable"]["client"] == 2 * 131_072 and u["trainable"]["client"] == 3 * 131_072
    one = vanilla["per_client_per_round"]
    assert one["upload_bytes"] == 60 * (act + tokens + 4 * tokens + 4) + 4 * 262_144 == 1_260_107_776 + 240
    assert one["download_bytes"] == 60 * (4 + act) + 4 * 262_144 == 1_259_339_776 + 240
    assert u["per_client_per_round"]["upload_bytes"] == 60 * (2 * act + tokens) + 4 * 393_216 == 2_518_308_864
    assert u["per_client_per_round"]["download_bytes"] == 60 * 2 * act + 4 * 393_216 == 2_518_155_264
    assert round(vanilla["client_peak_memory"]["total"] / 2**30, 2) == 1.59
    assert round(u["client_peak_memory"]["total"] / 2**30, 2) == 3.12
    fedavg = plan(str(LLAMA2_7B), algorithm="fedavg_lora", seq_len=512)["client_compute"]["total"]
    for split in (vanilla, u):
        assert split["client_compute"]["total"] + split["server_compute_per_client"]["total"] == fedavg
