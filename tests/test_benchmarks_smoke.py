"""Smoke tests of every script in ``benchmarks/``: each runs with tiny arguments (seconds) and what it
reports is checked, so that a benchmark cannot break unnoticed. Every run writes under ``tmp_path``.

In-process through ``main(argv)`` where the script has one; the scripts' own subprocesses (the fresh
interpreters of ``tokenize_gsm8k.py``, ``train.py`` of ``compare_algorithms.py``) run as they do from
the command line. ``gpu_round.py``'s refusal without CUDA and its client phase are in test_flops.py;
here its ``main`` runs the CPU client phase. Tests that need ``../shared/data`` skip without it.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
HUMANEVAL = SHARED / "humaneval" / "HumanEval.jsonl.gz"


def load_script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module (its ``if __name__ == "__main__"`` block does not run)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script runs
    spec.loader.exec_module(module)
    return module


def finite_positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@pytest.fixture
def keep_torch_threads():
    """The benchmarks set torch's thread count for the whole process; give it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tempfile``'s folder (and the children's ``TMPDIR``) inside this test's ``tmp_path``."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv("TMPDIR", str(scratch))
    return scratch


# ------------------------------------------------------------------------------ round_overhead.py
@pytest.fixture
def round_overhead(monkeypatch: pytest.MonkeyPatch, keep_torch_threads) -> ModuleType:
    import lightning.pytorch as pl

    # The script wraps pl.Trainer.__init__ with a timer for the rest of the process: undo it after.
    monkeypatch.setattr(pl.Trainer, "__init__", pl.Trainer.__init__)
    return load_script("round_overhead")


TINY_ROUND = ["--model", "tiny", "--clients", "2", "--local-steps", "2", "--accumulate", "2", "--batch-size", "2",
              "--seq-len", "16", "--threads", "1"]


def test_round_overhead_runs_the_real_round_and_matches_the_plain_loop_bit_for_bit(round_overhead, tmp_path):
    out = tmp_path / "round.json"
    returned = round_overhead.main([*TINY_ROUND, "--repeats", "2", "--json", str(out)])
    res = json.loads(out.read_text())
    assert res["settings"]["clients"] == 2 and res["settings"]["repeats"] == 2 and res["algorithm"] == "fedbiot"
    assert res["bit_identical"] is True and returned["bit_identical"] is True  # separate and interleaved rounds
    assert res["max_abs_diff_toolkit_vs_plain"] == 0.0
    assert res["max_abs_adapter_change_in_round"] > 0  # equal because both trained, not because neither did
    for key in ("ratio_of_medians", "ratio_median_of_pairs", "client_fit_ratio_median", "ratio_from_client_medians",
                "client_fit_ratio_median_separate_rounds", "client_loop_ratio_median", "client_fit_ratio_of_minimums",
                "warmup_first_client_setup_ms",
                "benchmark_wall_seconds"):
        assert finite_positive(res[key]), key
    # One pair per client and repeat, each order (plain first, toolkit first) in every repeat.
    assert len(res["client_fit_ratios"]) == 2 * 2 and all(map(finite_positive, res["client_fit_ratios"]))
    assert sorted(res["client_fit_ratio_median_by_first"]) == ["plain", "toolkit"]
    for path in ("toolkit", "plain"):
        assert len(res[path]["round_seconds"]) == 2 and all(map(finite_positive, res[path]["round_seconds"]))
        for key in ("client_setup_ms_median", "client_loop_ms_median", "client_total_ms_median", "step_ms_median"):
            assert finite_positive(res[path][key]), (path, key)
    for key in ("client_trainer_init_ms_median", "client_receive_ms_median", "client_send_ms_median"):
        assert finite_positive(res["toolkit"][key]), key


def test_round_overhead_drives_the_round_runner_without_a_server_trainer(round_overhead, monkeypatch):
    # The toolkit path is RoundRunner.run_round itself (no FederatedLoop, no server pl.Trainer).
    from fedbiot_pl.callbacks import FederatedLoop
    from fedbiot_pl.federation.round import RoundRunner

    rounds = []
    original = RoundRunner.run_round
    monkeypatch.setattr(RoundRunner, "run_round", lambda self, *a, **k: rounds.append(self) or original(self, *a, **k))
    monkeypatch.setattr(FederatedLoop, "on_train_epoch_start", lambda *a: pytest.fail("the loop callback ran"))
    round_overhead.main([*TINY_ROUND, "--clients", "1", "--repeats", "1"])
    # warm-up, the separate toolkit round and the interleaved one
    assert len(rounds) == 3 and all(type(runner.algorithm).__name__ == "FedBiOT" for runner in rounds)


def test_round_overhead_refuses_a_round_that_dropped_a_client(round_overhead, monkeypatch):
    # The federated loop drops a failing client and goes on with the others; the benchmark must not
    # time such a round. Client 1 fails (the warm-up round has client 0 only).
    original = round_overhead.FixedBatchesDataModule.client_dataloader

    def broken(self, client_id, round_idx=0):
        if client_id == 1:
            raise RuntimeError("client fit broke")
        return original(self, client_id, round_idx)

    monkeypatch.setattr(round_overhead.FixedBatchesDataModule, "client_dataloader", broken)
    with pytest.raises(RuntimeError, match="did not run every client cleanly") as caught:
        round_overhead.main([*TINY_ROUND, "--repeats", "1"])
    assert "client fit broke" in str(caught.value.__cause__)


# ------------------------------------------------------------------------------ generation_throughput.py
def test_generation_throughput(tmp_path, keep_torch_threads):
    bench = load_script("generation_throughput")
    out = tmp_path / "generation.json"
    returned = bench.main(["--batch-size", "2", "--new-tokens", "4", "--repeats", "1", "--json", str(out)])
    res = json.loads(out.read_text())
    assert res == json.loads(json.dumps(returned))
    assert sorted(res["runs"]) == ["adapemu/cache", "adapemu/no_cache", "adapfu/cache", "adapfu/no_cache"]
    for run in res["runs"].values():
        assert len(run["runs_s"]) == 1 and finite_positive(run["median_s"]) and finite_positive(run["tokens_per_s"])
        assert run["tokens_per_s"] == pytest.approx(2 * 4 / run["median_s"])
    assert all(map(finite_positive, res["kv_cache_speedup"].values()))


# ------------------------------------------------------------------------------ tokenize_gsm8k.py
def test_tokenize_gsm8k_on_embedded_rows(tmp_path, private_tmp):
    """The script's cold and cached runs (fresh interpreters) on 20 embedded GSM8K rows and the
    embedded stories260K tokenizer: no shared data needed."""
    from fedbiot_pl.assets import resolve

    rows = Path(resolve("embedded:data/gsm8k/train_sample.jsonl")).read_text().splitlines()[:20]
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "tokenize.json"
    bench = load_script("tokenize_gsm8k")
    returned = bench.main(["--data", str(data), "--tokenizer", resolve("embedded:models/stories260K"),
                           "--max-length", "256", "--repeats", "1", "--json", str(out)])
    res = json.loads(out.read_text())
    assert res == json.loads(json.dumps(returned))
    for kind in ("cold", "cached"):
        (run,) = res["runs"][kind]
        assert run["rows"] == 20 and 0 < run["kept"] <= 20
        assert finite_positive(run["total_without_tokenizer_load"]) and finite_positive(run["tokenize_dataset"])
        assert all(math.isfinite(v) and v >= 0 for v in run.values())
        assert res["medians"][kind]["rows"] == 20
    assert list(private_tmp.iterdir()) == []  # the per-repeat cache folders are gone


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"the shared data sets are not at {SHARED}")
def test_tokenize_gsm8k_defaults_point_at_the_shared_data():
    bench = load_script("tokenize_gsm8k")
    assert bench.DEFAULT_DATA.is_file(), bench.DEFAULT_DATA
    assert (bench.DEFAULT_TOKENIZER / "tokenizer_config.json").is_file(), bench.DEFAULT_TOKENIZER


# ------------------------------------------------------------------------------ humaneval_sandbox.py
@pytest.fixture
def humaneval_sandbox(monkeypatch, private_tmp) -> ModuleType:
    """The script, with sandbox uids no other test session uses (as in test_sandbox.py)."""
    from fedbiot_pl.evaluation import sandbox

    monkeypatch.setattr(sandbox, "UID_BASE", 1_000_000 + random.randrange(0, 1_000_000, sandbox.UID_SLOTS))
    return load_script("humaneval_sandbox")


ADD = {"prompt": "def add(a: int, b: int) -> int:\n    \"\"\"Sum of a and b.\"\"\"\n",
       "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n", "entry_point": "add"}


def test_humaneval_sandbox_passes_right_and_lists_wrong_solutions(humaneval_sandbox, tmp_path):
    problems = tmp_path / "problems.jsonl"
    problems.write_text("\n".join(json.dumps({**ADD, **extra}) for extra in (
        {"task_id": "toy/right", "canonical_solution": "    return a + b\n"},
        {"task_id": "toy/wrong", "canonical_solution": "    return a - b\n"},
    )) + "\n")
    out = tmp_path / "sandbox.json"
    assert humaneval_sandbox.main(["--problems", str(problems), "--workers", "1", "--repeats", "1",
                                   "--json", str(out)]) == 0
    (run,) = json.loads(out.read_text())["1"]
    assert run["passed"] == 1
    assert [f["task_id"] for f in run["failures"]] == ["toy/wrong"]
    assert finite_positive(run["wall_s"]) and finite_positive(run["program_max_s"])


def test_humaneval_sandbox_names_a_missing_problem_file(humaneval_sandbox, tmp_path, capsys):
    assert humaneval_sandbox.main(["--problems", str(tmp_path / "absent.jsonl.gz")]) == 2
    assert "absent.jsonl.gz not found" in capsys.readouterr().err


@pytest.mark.skipif(not HUMANEVAL.exists(), reason=f"{HUMANEVAL} not present")
def test_humaneval_sandbox_on_real_problems(humaneval_sandbox, tmp_path):
    with gzip.open(HUMANEVAL, "rt") as f:
        first = [line for line in f if line.strip()][:3]
    problems = tmp_path / "HumanEval3.jsonl.gz"
    with gzip.open(problems, "wt") as f:
        f.writelines(first)
    out = tmp_path / "sandbox.json"
    assert humaneval_sandbox.main(["--problems", str(problems), "--workers", "2", "--repeats", "1",
                                   "--json", str(out)]) == 0
    (run,) = json.loads(out.read_text())["2"]
    assert run["passed"] == 3 and run["failures"] == []


# ------------------------------------------------------------------------------ gpu_round.py
def test_gpu_round_main_runs_the_client_phase_on_cpu(tmp_path, capsys):
    from transformers import LlamaConfig

    from tests.conftest import TINY

    LlamaConfig(**TINY).save_pretrained(tmp_path)
    bench = load_script("gpu_round")
    bench.main(["--device", "cpu", "--phase", "client", "--model-config", str(tmp_path / "config.json"),
                "--batch-size", "2", "--seq-len", "8", "--local-steps", "2", "--accumulate", "1"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1
    result = json.loads(lines[0].removeprefix("RESULT "))
    assert result["phase"] == "client" and result["layers"] == 4  # 6 layers, adapter 2, beta 0.5
    assert result["tokens"] == 2 * 1 * 2 * 8
    assert finite_positive(result["seconds"]) and finite_positive(result["flops_per_token"])


# ------------------------------------------------------------------------------ compare_algorithms.py
def test_compare_algorithms_one_quick_fedbiot_run(tmp_path, monkeypatch):
    """``train.py fit`` and ``train.py evaluate`` in their own processes, as the script runs them, on the
    embedded model and data, shrunk to one round of one step and one scored test row."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    bench = load_script("compare_algorithms")
    out = tmp_path / "compare"
    quick = ["--federated.pre_alignment_rounds=0", "--federated.align_steps=1", "--data.max_public_examples=4",
             "--data.batch_size=2", "--federated.client_accumulate_grad_batches=1",
             "--trainer.accumulate_grad_batches=1", f"--data.cache_dir={tmp_path / 'datasets'}"]
    assert bench.main(["--algorithms", "fedbiot", "--rounds", "1", "--local-steps", "1", "--eval-limit", "1",
                       "--max-new-tokens", "2", "--out", str(out), *(f"--fit-arg={arg}" for arg in quick)]) == 0
    (row,) = json.loads((out / "results.json").read_text())
    assert row["algorithm"] == "fedbiot" and len(row["history"]) == 1
    for key in ("adapemu_loss", "adapfu_loss", "wall_s", "bytes_per_round", "client_memory"):
        assert finite_positive(row[key]), key
    assert sorted(row["accuracy"]) == ["adapemu", "adapfu"] and all(0 <= a <= 1 for a in row["accuracy"].values())
    assert "| fedbiot |" in (out / "table.md").read_text()
    assert (out / "loss_vs_bytes.png").stat().st_size > 0


# ------------------------------------------------------------------------------ replicate_small.py
def test_replicate_small_budgets_are_equal_and_the_paper_s():
    bench = load_script("replicate_small")
    args = bench.parse_args(["--model", "embedded:models/stories260K", "--rounds", "8", "--local-steps", "10"])
    budgets = {name: bench.overrides(name, args) for name in bench.VARIANTS}
    assert budgets["fedbiot_b0.5"]["federated.pre_alignment_rounds"] == 100  # the paper's 100 x 5 at beta 0.5
    assert budgets["fedbiot_b0.2"]["federated.pre_alignment_rounds"] == 50  # and 50 x 5 at beta 0.2
    assert budgets["fedot_one_shot"]["federated.pre_alignment_rounds"] == 50 + 8  # FedBiOT b0.2's server steps
    assert budgets["offsite_tuning"]["federated.local_steps"] == 3 * 10  # one client, the 3 clients' examples
    assert {b["federated.rounds"] for b in budgets.values()} == {8}


def test_replicate_small_tiny_run(tmp_path, monkeypatch):
    """Two variants on the embedded model, one round of one step, pre-alignment shrunk to 2 epochs."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    bench = load_script("replicate_small")
    out = tmp_path / "replicate"
    quick = ["--data.max_length=512", "--data.max_public_examples=10", "--data.batch_size=2",
             f"--data.cache_dir={tmp_path / 'datasets'}"]
    assert bench.main(["--model", "embedded:models/stories260K", "--variants", "fedbiot_b0.5", "fedot_one_shot",
                       "--rounds", "1", "--local-steps", "1", "--pre-alignment-scale", "0.02", "--eval-limit", "1",
                       "--max-new-tokens", "2", "--out", str(out), *(f"--fit-arg={arg}" for arg in quick)]) == 0
    rows = {row["variant"]: row for row in json.loads((out / "results.json").read_text())}
    assert sorted(rows) == ["fedbiot_b0.5", "fedot_one_shot"]
    fedbiot = rows["fedbiot_b0.5"]
    assert list(fedbiot["gap"]) == ["start", "after_pre_alignment", "end"]
    assert fedbiot["gap"]["after_pre_alignment"]["kl"] < fedbiot["gap"]["start"]["kl"]  # 2 epochs of alignment
    # the adapter is untrained before round 0: AdapFu is the full model itself
    assert fedbiot["gap"]["start"]["adapfu_loss"] == fedbiot["gap"]["after_pre_alignment"]["adapfu_loss"]
    for row in rows.values():
        assert finite_positive(row["client_flops_per_round"]) and finite_positive(row["bytes_per_round"])
        assert len(row["history"]) == 1 and sorted(row["accuracy"]) == ["adapemu", "adapfu"]
    assert "| fedot_one_shot |" in (out / "table.md").read_text()
    assert (out / "quality.png").stat().st_size > 0


def test_every_script_has_a_smoke_test():
    tested = {"round_overhead", "generation_throughput", "tokenize_gsm8k", "humaneval_sandbox", "gpu_round",
              "compare_algorithms", "replicate_small", "kd_loss", "kd_heterogeneous", "compare_frameworks",
              "hierfedlora", "flower_startup"}
    assert {p.stem for p in (ROOT / "benchmarks").glob("*.py")} == tested


# ------------------------------------------------------------------------------ kd_heterogeneous.py
def test_kd_heterogeneous_one_quick_run_checks_the_ledger_against_the_formula(tmp_path):
    bench = load_script("kd_heterogeneous")
    assert bench.main(["--model", "embedded:models/stories260K", "--variants", "fed_kd_emulator", "--rounds", "1",
                       "--local-steps", "1", "--public-examples", "2", "--out", str(tmp_path),
                       "--fit-arg=--data.max_length=512", "--fit-arg=--federated.algorithm.init_args.kd_steps=1"]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["variant"] for r in rows] == ["fed_kd_emulator"] and rows[0]["bytes_match"]
    assert (rows[0]["server_layers"], rows[0]["client_layers"]) == (5, 4)  # stories260K and its emulator
    assert "| fed_kd_emulator | 5 / 4 |" in (tmp_path / "table.md").read_text()


# ------------------------------------------------------------------------------ kd_loss.py
def test_kd_loss_benchmark_tiny_run(tmp_path, capsys, keep_torch_threads):
    bench = load_script("kd_loss")
    out = tmp_path / "kd_loss.json"
    returned = bench.main(["--vocab", "500", "--tokens", "32", "--top-k", "8", "--chunk-rows", "7", "--repeats", "1",
                           "--out", str(out)])
    res = json.loads(out.read_text())
    assert res == json.loads(json.dumps(returned))
    assert res["settings"] == {"vocab": 500, "tokens": 32, "batch": 1, "top_k": 8, "alpha": 0.9, "chunk_rows": 7,
                               "repeats": 1, "seed": 0, "dtype": "float32"}
    assert res["command"] == "python benchmarks/kd_loss.py --vocab 500 --tokens 32 --top-k 8 --chunk-rows 7 --repeats 1"
    assert res["logits_bytes"] == 32 * 500 * 4
    assert sorted(res["methods"]) == ["dense", "gathered"]
    for method, run in res["methods"].items():
        assert run["method"] == method and len(run["runs_s"]) == 1 and finite_positive(run["median_s"])
        assert isinstance(run["peak_increase_bytes"], int) and run["peak_increase_bytes"] >= 0
        assert finite_positive(run["baseline_peak_rss_bytes"]) and finite_positive(run["loss"])
    assert finite_positive(res["ratios"]["time_dense_over_gathered"])
    # both methods agree: in the children (same seeded inputs) and in the parent's sanity pass
    g, d = res["methods"]["gathered"], res["methods"]["dense"]
    for key in ("loss", "ce", "kd"):
        assert g[key] == pytest.approx(d[key], abs=1e-5), key
        assert res["sanity"]["gathered"][key] == pytest.approx(g[key], abs=1e-6), key
    assert res["sanity"]["max_abs_loss_diff"] < 1e-5
    assert res["sanity"]["max_abs_grad_diff"] < 1e-6 < res["sanity"]["max_abs_grad"]
    text = capsys.readouterr().out
    assert text.startswith("## KD distillation loss: gathered vs dense")
    assert "| gathered (`distill_loss`) |" in text and "| dense (`dense_distill_loss`) |" in text
    assert "2-core CPU, shared" in text and "dense / gathered: time x" in text


# ------------------------------------------------------------------------------ compare_frameworks.py
def test_compare_frameworks_settings_vary_one_thing_at_a_time():
    bench = load_script("compare_frameworks")
    args = bench.parse_args(["--clients", "3", "6", "--cut-layers", "2", "1", "--top-ks", "32", "8"])
    names = [s.name for s in bench.settings(args)]
    assert names == ["fedavg_lora-c3", "fedbiot-c3", "fed_kd-c3-k32", "splitfed_lora-c3-cut2",
                     "splitfed_lora_u-c3-cut2",
                     "splitfed_lora-c3-cut1", "splitfed_lora_u-c3-cut1", "fed_kd-c3-k8",
                     "fedavg_lora-c6", "fedbiot-c6", "fed_kd-c6-k32", "splitfed_lora-c6-cut2",
                     "splitfed_lora_u-c6-cut2"]
    cut = ["--data.num_clients=3", "--federated.algorithm.init_args.cut_layer=1"]
    assert bench.settings(args)[5].fit_args() == cut


def test_compare_frameworks_one_quick_split_sweep(tmp_path, monkeypatch):
    """Two ``train.py fit`` processes (the vanilla split at two cuts), one round of one step each."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    bench = load_script("compare_frameworks")
    out = tmp_path / "frameworks"
    quick = ["--data.max_public_examples=4", "--data.batch_size=2", "--federated.client_accumulate_grad_batches=1",
             "--trainer.accumulate_grad_batches=1", f"--data.cache_dir={tmp_path / 'datasets'}"]
    assert bench.main(["--algorithms", "splitfed_lora", "--cut-layers", "2", "1", "--rounds", "1",
                       "--local-steps", "1", "--out", str(out), *(f"--fit-arg={arg}" for arg in quick)]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in rows] == ["splitfed_lora-c3-cut2", "splitfed_lora-c3-cut1"]
    for row in rows:
        for key in ("clients_loss", "bytes_per_round", "client_flops_per_token", "server_flops_per_client_token",
                    "client_memory", "wall_s"):
            assert finite_positive(row[key]), key
        # 3 clients x 1 micro-batch of 2 rows: the activations up equal the gradients down
        split = row["split_bytes_per_round"]
        assert split["up/activations"] == split["down/gradients"] > 0 and split["down/loss"] == 3 * 4
    # a lower cut: less client compute, more server compute, the same activation bytes
    assert rows[1]["client_flops_per_token"] < rows[0]["client_flops_per_token"]
    assert rows[1]["server_flops_per_client_token"] > rows[0]["server_flops_per_client_token"]
    assert "| splitfed_lora-c3-cut1 | split |" in (out / "table.md").read_text()
    assert (out / "loss_vs_bytes.png").stat().st_size > 0 and (out / "costs.png").stat().st_size > 0
    # --reuse: the finished runs are read again, none is trained (the fit wall times stay the recorded ones)
    assert bench.main(["--algorithms", "splitfed_lora", "--cut-layers", "2", "1", "--rounds", "1", "--reuse",
                       "--out", str(out)]) == 0
    again = json.loads((out / "results.json").read_text())
    assert [(r["name"], r["wall_s"], r["bytes_per_round"]) for r in again] == [
        (r["name"], r["wall_s"], r["bytes_per_round"]) for r in rows]


# ------------------------------------------------------------------------------ hierfedlora.py
def test_hierfedlora_fleet_keeps_the_reference_proportions():
    """The scaled fleet: every tier's step over message seconds as for LLaMA-2-7B; memory tiers nest."""
    from fedbiot_pl.hierarchy.fleet import load_fleet
    from fedbiot_pl.hierarchy.schedule import feasible_depths

    bench = load_script("hierfedlora")
    small = bench.model_costs("embedded:models/stories260K", 256, 4 * 256, 4 * 256)
    ref = bench.model_costs(str(ROOT / "configs" / "models" / "llama2-7b"), 800, 8000, 4000, dtype_bytes=2)
    reference = load_fleet(None)
    fleet, derivation = bench.scaled_fleet(reference, small, ref, num_devices=8)
    assert (small.num_layers, ref.num_layers, fleet.num_devices) == (5, 32, 8)
    assert (fleet.seed, fleet.jitter, fleet.latency_s, fleet.edge_latency_s) == (
        reference.seed, reference.jitter, reference.latency_s, reference.edge_latency_s)
    assert [(t.name, t.share) for t in fleet.tiers] == [(t.name, t.share) for t in reference.tiers]
    assert derivation["compute_factor"] == pytest.approx(small.step_flops(5) / ref.step_flops(32), rel=1e-12)
    for scaled, original in zip(fleet.tiers, reference.tiers, strict=True):
        p, q = scaled.profile(), original.profile()
        step, step_ref = small.step_flops(5) / p.flops_per_s, ref.step_flops(32) / q.flops_per_s
        for bandwidth, bandwidth_ref in ((p.up_Bps, q.up_Bps), (p.down_Bps, q.down_Bps)):
            message, message_ref = small.message_bytes(5) / bandwidth, ref.message_bytes(32) / bandwidth_ref
            assert step / message == pytest.approx(step_ref / message_ref, rel=1e-9)
        assert step / (small.message_bytes(5) / fleet.edge_Bps) == pytest.approx(
            step_ref / (ref.message_bytes(32) / reference.edge_Bps), rel=1e-9)
    # memory: 16 / 24 / 32 GiB hold LLaMA-2-7B depths 1..5, 1..22, 1..32 -> stories260K depths 1..1, 1..3, 1..5
    held = [feasible_depths([t.profile()], small) for t in fleet.tiers]
    held_ref = [feasible_depths([t.profile()], ref) for t in reference.tiers]
    assert [d[-1] for d in held_ref] == [5, 22, 32] and held == [[1], [1, 2, 3], [1, 2, 3, 4, 5]]
    assert all(set(a) <= set(b) for a, b in zip(held, held[1:], strict=False))  # nested: more memory, deeper
    assert [r["depth"] for r in derivation["tiers"]] == [1, 3, 5]
    assert load_fleet(fleet.to_dict()) == fleet


def test_hierfedlora_one_quick_run_of_two_variants(tmp_path, monkeypatch):
    """Two ``train.py fit`` processes (HierFedLoRA and flat FedAvg-LoRA), 8 clients, one round of one step."""
    from fedbiot_pl.hierarchy.fleet import load_fleet

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    bench = load_script("hierfedlora")
    out = tmp_path / "hier"
    quick = ["--federated.local_steps=1", "--data.dirichlet_alpha=1.0", f"--data.cache_dir={tmp_path / 'datasets'}"]
    argv = ["--clients", "8", "--groups", "2", "--rounds", "1", "--variants", "hierfedlora", "fedavg_lora",
            "--data", "embedded:data/dolly/dolly_sample.jsonl", "--out", str(out)]
    assert bench.main([*argv, *(f"--fit-arg={arg}" for arg in quick)]) == 0
    results = json.loads((out / "results.json").read_text())
    rows = {row["variant"]: row for row in results["rows"]}
    assert sorted(rows) == ["fedavg_lora", "hierfedlora"]
    for row in rows.values():
        assert finite_positive(row["final_loss"]) and finite_positive(row["sim_seconds"])
        assert finite_positive(row["total_bytes"]) and len(row["rounds"]) == 1
        assert row["tta_s"] == row["sim_seconds"]  # the target is the worst final loss: every variant reaches it
    assert results["target"] == max(row["final_loss"] for row in rows.values())
    hier, flat = rows["hierfedlora"], rows["fedavg_lora"]
    assert hier["cloud_total_bytes"] > 0 and flat["cloud_total_bytes"] == 0
    assert len(hier["depths_round0"]) == 2 and hier["grouping"]["J"] >= 0 and len(hier["grouping"]["groups"]) == 2
    assert flat["speedup"] == 1.0 and flat["grouping"] == {}
    fleet = load_fleet(out / "fleet.yaml")
    assert fleet.num_devices == 8 and [t.name for t in fleet.tiers] == ["small", "medium", "large"]
    assert "| hierfedlora |" in (out / "table.md").read_text()
    assert (out / "hierfedlora.png").stat().st_size > 0
    # --reuse: the runs are read again, none is trained
    assert bench.main([*argv, "--reuse"]) == 0
    again = {row["variant"]: row for row in json.loads((out / "results.json").read_text())["rows"]}
    assert {k: (r["wall_s"], r["final_loss"]) for k, r in again.items()} == {
        k: (r["wall_s"], r["final_loss"]) for k, r in rows.items()}


# ------------------------------------------------------------------------------ flower_startup.py
@pytest.mark.slow
def test_flower_startup_measures_every_item(tmp_path: Path) -> None:
    out = tmp_path / "startup.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "flower_startup.py"), "--repeats", "1",
                           "--workdir", str(tmp_path / "work"), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["model"] == "embedded:models/stories260K" and results["repeats"] == 1
    median = results["median"]
    assert set(median) == {"import", "mmap_load", "copy_load", "views"}
    for item, figures in median.items():
        assert finite_positive(figures["seconds"]) and finite_positive(figures["process_seconds"]), (item, figures)
        assert len(results["runs"][item]) == 1
    for item in ("mmap_load", "copy_load", "views"):
        assert finite_positive(median[item]["rss_mb"]), (item, median[item])
    for item in ("mmap_load", "copy_load"):
        assert finite_positive(median[item]["rss_touched_mb"]), (item, median[item])
    assert finite_positive(results["model_file_mb"]) and finite_positive(results["export_seconds"])
    ratio = results["ratio_copy_over_mmap"]
    assert finite_positive(ratio["seconds"]) and finite_positive(ratio["rss"])
    assert (tmp_path / "work" / "client_model_stories260K_fedbiot" / "manifest.sha256").is_file()
