"""``fedbiot-plan`` for the KD algorithms (``fed_kd``, ``fedmkt``): top-k logit bytes instead of LoRA."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fedbiot_pl.plan import kd_traffic, main, plan
from tests.helpers import plan_cli as run
from tests.helpers import plan_error
from tests.helpers import plan_json as run_json

ROOT = Path(__file__).resolve().parents[1]
LLAMA2_7B = ROOT / "configs" / "models" / "llama2-7b"
STORIES = "embedded:models/stories260K"  # V = 512: uint16 indices
KD_ARGS = ("--top-k", "8", "--public-examples", "3", "--seq-len", "64")
SMALL = 3 * 64 * 8 * (2 + 2) + 12 * 3 + 4  # P T k (2 + index bytes) + offsets, metric, rows




def test_kd_traffic_hand_numbers() -> None:
    assert SMALL == 6184
    llama = kd_traffic(public_examples=50, seq_len=512, top_k=128, vocab_size=32_000)
    assert llama == {"upload_bytes": 50 * 512 * 128 * 4 + 604, "download_bytes": 50 * 512 * 128 * 4 + 604,
                     "index_bytes": 2, "tokens_upper_bound": 25_600, "dense_fp16_bytes": 25_600 * 32_000 * 2}
    assert llama["upload_bytes"] == 13_107_804 and 12 * 50 + 4 == 604
    wide = kd_traffic(50, 512, 128, 70_000)  # past 65,536 entries the indices are int32
    assert wide["upload_bytes"] == wide["download_bytes"] == 50 * 512 * 128 * 6 + 604 == 19_661_404
    assert wide["index_bytes"] == 4
    assert kd_traffic(1, 1, 1, 65_536)["index_bytes"] == 2 and kd_traffic(1, 1, 1, 65_537)["index_bytes"] == 4
    assert kd_traffic(3, 64, 8, 512)["upload_bytes"] == SMALL


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [({"top_k": 0}, "top_k must be an integer >= 1, got 0"), ({"public_examples": -1}, "got -1"),
     ({"seq_len": 0}, "seq_len must be an integer >= 1, got 0"), ({"top_k": 513}, "got 513"),
     ({"top_k": 2.5}, "got 2.5")],
)
def test_kd_traffic_rejects_bad_settings(kwargs: dict[str, Any], bad: str) -> None:
    with pytest.raises(ValueError, match=bad):
        kd_traffic(**{"public_examples": 3, "seq_len": 64, "top_k": 8, "vocab_size": 512, **kwargs})


def test_fed_kd_json_on_stories260k(capsys: pytest.CaptureFixture[str]) -> None:
    kd = run_json(capsys, "--model", STORIES, "--algorithm", "fed_kd", *KD_ARGS, "--clients", "3")
    assert kd["algorithm"] == "fed_kd"
    assert kd["per_client_per_round"] == {"download_params": 0, "download_bytes": SMALL,
                                          "upload_params": 0, "upload_bytes": SMALL}
    assert kd["per_round"] == {"clients": 3, "download_params": 0, "download_bytes": 3 * SMALL,
                               "upload_params": 0, "upload_bytes": 3 * SMALL}
    assert kd["kd"] == {"top_k": 8, "public_examples": 3, "seq_len": 64, "client_model": "full", "index_bytes": 2,
                        "tokens_upper_bound": 192, "dense_fp16_bytes": 192 * 512 * 2,
                        "formula": "P·T·k·(2 + index bytes) + 12P + 4 per direction"}
    # client_model full: the full model with LoRA on every layer, the same client as fedavg_lora's
    fedavg = run_json(capsys, "--model", STORIES, "--algorithm", "fedavg_lora")
    assert kd["params"] == fedavg["params"] and kd["params"]["compressed"] == kd["params"]["full"] == 260_032
    assert kd["layers"] == {"emulator": [], "adapter": [0, 1, 2, 3, 4]}
    assert kd["trainable"] == {"client": 5 * 1792, "server": 0}  # fed_kd's server only averages logits
    assert kd["client_peak_memory"] == fedavg["client_peak_memory"]
    assert kd["client_peak_memory"]["logits"] == 2 * 4000 * 512 * 4  # one micro-batch's logits, and their gradient
    assert "kd" not in fedavg


def test_module_entry_point_prints_the_kd_bytes() -> None:
    done = subprocess.run([sys.executable, "-m", "fedbiot_pl.plan", "--algorithm", "fed_kd", *KD_ARGS,
                           "--model", STORIES, "--json"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    one = json.loads(done.stdout)["per_client_per_round"]
    assert one["upload_bytes"] == one["download_bytes"] == 6184


def test_fedmkt_server_trains_its_lora_and_defaults_come_from_the_algorithm(
    capsys: pytest.CaptureFixture[str],
) -> None:
    mkt = run_json(capsys, "--model", STORIES, "--algorithm", "fedmkt")
    assert mkt["trainable"] == {"client": 8960, "server": 8960}
    assert {k: mkt["kd"][k] for k in ("top_k", "public_examples", "seq_len")} == {
        "top_k": 128, "public_examples": 50, "seq_len": 512}
    assert mkt["per_client_per_round"]["upload_bytes"] == 50 * 512 * 128 * 4 + 604


def test_text_report_shows_the_kd_figures(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--model", STORIES, "--algorithm", "fedmkt", *KD_ARGS, "--clients", "2")
    assert code == 0 and err == ""
    for figure in ("fedmkt plan for", "no LoRA travels", "P=3 public examples x T=64 tokens, k=8",
                   "uint16 indices", "an upper bound", "download 6,184 B", "upload   6,184 B",
                   "per round (2 clients)", "download 12,368 B", "server (its LoRA, distilled) 8,960",
                   "dense float16 logits of the same tokens: 196,608 B", "logits 16,384,000 B"):
        assert figure in out, figure


def test_llama2_7b_kd_matches_the_hand_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    kd = run_json(capsys, "--model", str(LLAMA2_7B), "--algorithm", "fed_kd", "--clients", "3")
    assert kd["per_client_per_round"]["upload_bytes"] == kd["per_client_per_round"]["download_bytes"] == 13_107_804
    assert kd["per_round"]["upload_bytes"] + kd["per_round"]["download_bytes"] == 6 * 13_107_804
    assert kd["trainable"]["client"] == 32 * 131_072 and kd["params"]["compressed"] == 6_738_415_616
    assert kd["kd"]["dense_fp16_bytes"] == 50 * 512 * 32_000 * 2


def test_compare_lists_the_kd_algorithms(capsys: pytest.CaptureFixture[str]) -> None:
    plans = {p["algorithm"]: p for p in run_json(capsys, "--model", STORIES, "--compare", "--clients", "3", *KD_ARGS)}
    assert {"fedbiot", "fedavg_lora", "fed_kd", "fedmkt"} <= set(plans)
    for name in ("fed_kd", "fedmkt"):
        assert plans[name]["per_client_per_round"]["upload_bytes"] == SMALL
        assert plans[name]["client_peak_memory"] == plans["fedavg_lora"]["client_peak_memory"]
    assert "kd" not in plans["fedbiot"] and plans["fedbiot"]["per_client_per_round"]["upload_bytes"] == 14_336
    code, text, err = run(capsys, "--model", STORIES, "--compare", "--clients", "3", *KD_ARGS)
    assert code == 0 and err == ""
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert {"fed_kd", "fedmkt", "fedbiot", "fedavg_lora"} <= set(rows)
    assert rows["fed_kd"].startswith("| fed_kd | 260,032 | 8,960 | 6,184 B (6.0 KiB) | 6,184 B (6.0 KiB) "
                                     "| 37,104 B (36.2 KiB) |")
    assert rows["fed_kd"].endswith(" | 0.09 GiB |") and "| round total (3 clients) |" in text
    assert "P·T·k·(2 + index bytes) + 12P + 4, an upper bound" in text
    assert "3·64·8·(2 + 2) + 12·3 + 4 = 6,184 B" in text


def test_config_sets_seq_len_client_model_and_kd_settings(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "kd.yaml"
    path.write_text(
        "model:\n  split: {model: embedded:models/stories260K, adapter_layers: 2, drop_rate: 0.2}\n"
        "data: {max_length: 64}\n"
        "federated:\n  algorithm:\n    class_path: fedbiot_pl.algorithms.FedKD\n"
        "    init_args: {top_k: 16, public_examples: 3, client_model: emulator}\n"
    )
    kd = run_json(capsys, "--config", str(path))
    assert {k: kd["kd"][k] for k in ("top_k", "public_examples", "seq_len", "client_model")} == {
        "top_k": 16, "public_examples": 3, "seq_len": 64, "client_model": "emulator"}
    assert kd["per_client_per_round"]["upload_bytes"] == 3 * 64 * 16 * 4 + 40
    fedbiot = run_json(capsys, "--model", STORIES, "--adapter-layers", "2", "--drop-rate", "0.2")
    assert kd["layers"] == fedbiot["layers"] and kd["params"] == fedbiot["params"]  # FedBiOT's emulator + adapter
    assert kd["client_peak_memory"] == fedbiot["client_peak_memory"]
    flags = run_json(capsys, "--config", str(path), "--seq-len", "10", "--top-k", "2")
    assert flags["per_client_per_round"]["upload_bytes"] == 3 * 10 * 2 * 4 + 40
    # --compare: the config's fed_kd row keeps its emulator; both KD rows take its top_k and public_examples
    plans = {p["algorithm"]: p for p in run_json(capsys, "--config", str(path), "--compare")}
    assert plans["fed_kd"]["kd"]["client_model"] == "emulator" and plans["fedmkt"]["kd"]["client_model"] == "full"
    assert plans["fed_kd"]["per_client_per_round"] == plans["fedmkt"]["per_client_per_round"]
    assert plans["fedmkt"]["per_client_per_round"]["download_bytes"] == 3 * 64 * 16 * 4 + 40


def test_plan_function_ignores_kd_settings_for_other_algorithms() -> None:
    assert plan(STORIES, algorithm="fedbiot", top_k=8, public_examples=3) == plan(STORIES)
    # seq_len is also the attention length of every algorithm's FLOPs per token, and changes nothing else
    short, default = plan(STORIES, algorithm="fedbiot", seq_len=64), plan(STORIES)
    assert short["client_compute"]["seq_len"] == 64 and short["client_compute"] != default["client_compute"]
    assert {k: v for k, v in short.items() if k != "client_compute"} == {
        k: v for k, v in default.items() if k != "client_compute"}


@pytest.mark.parametrize(
    ("argv", "bad"),
    [
        (["--algorithm", "fed_kd", "--top-k", "0"], "top_k must be an integer >= 1, got 0"),
        (["--algorithm", "fedmkt", "--public-examples", "0"], "public_examples must be an integer >= 1, got 0"),
        (["--algorithm", "fed_kd", "--seq-len", "-5"], "seq_len must be an integer >= 1, got -5"),
        (["--algorithm", "fed_kd", "--top-k", "600"], "at most the vocabulary size 512, got 600"),
        (["--compare", "--top-k", "0"], "got 0"),
        (["--algorithm", "fedbiot", "--top-k", "8"], "--top-k applies to the KD algorithms"),
        (["--seq-len", "8", "--public-examples", "2"], "--public-examples, --seq-len apply to the KD"),
    ],
)
def test_bad_kd_input_exits_2_with_one_line_naming_the_value(
    capsys: pytest.CaptureFixture[str], argv: list[str], bad: str
) -> None:
    assert bad in plan_error(capsys, "--model", STORIES, *argv)


def test_null_public_examples_asks_for_the_flag(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "all.yaml"
    path.write_text("model:\n  split: {model: embedded:models/stories260K}\n"
                    "federated:\n  algorithm: {class_path: fedbiot_pl.algorithms.FedMKT, init_args: "
                    "{public_examples: null}}\n")
    code, _, err = run(capsys, "--config", str(path))
    assert code == 2 and "public_examples null" in err and "--public-examples" in err
    assert run_json(capsys, "--config", str(path), "--public-examples", "3", "--top-k", "8", "--seq-len", "64")[
        "per_client_per_round"]["upload_bytes"] == SMALL


def test_module_entry_point_bad_top_k_has_no_traceback() -> None:
    done = subprocess.run([sys.executable, "-m", "fedbiot_pl.plan", "--algorithm", "fed_kd", "--top-k", "0",
                           "--model", STORIES], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert "Traceback" not in done.stderr and "top_k must be an integer >= 1, got 0" in done.stderr


def test_help_mentions_the_kd_algorithms(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "fed_kd, fedmkt" in out and "--top-k" in out and "--public-examples" in out and "--seq-len" in out
