"""Model FLOPs per token and MFU (hand-computed references), and the CPU-side parts of the GPU benchmark."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fedbiot_pl.scaling import flops

ROOT = Path(__file__).resolve().parents[1]
# hidden 8, intermediate 16, 2 heads, 1 kv head (kv_dim 4), vocab 10
SHAPE = flops.DecoderShape(hidden=8, intermediate=16, heads=2, kv_heads=1, vocab=10)


def test_layer_and_lora_sizes():
    # q 8x8 + k 8x4 + v 8x4 + o 8x8 + gate 8x16 + up 8x16 + down 16x8 = 64+32+32+64+128+128+128
    assert flops.layer_weight_params(SHAPE) == 576
    # r=2: q 2*(8+8) + v 2*(8+4)
    assert flops.lora_params(SHAPE, 2, ["q_proj", "v_proj"]) == 56
    config = SimpleNamespace(hidden_size=8, intermediate_size=16, num_attention_heads=2, num_key_value_heads=1,
                             vocab_size=10)
    assert flops.decoder_shape(config) == SHAPE


def test_client_step_counts_forward_everywhere_and_backward_only_through_the_adapter():
    # 3 layers forward, the top 1 trained, T = 5. Per token:
    #   forward  3 x (2*576 + 4*5*8)        = 3 x 1312 = 3936
    #   LoRA fwd 3 x 2*56                   =  336
    #   backward 1 x (2*576 + 8*5*8 + 2*56) = 1584   (input gradients, attention twice its forward)
    #   LoRA weight gradients 1 x 2*56      =  112
    #   head forward + backward 2 x 2*8*10  =  320
    plan = flops.client_plan(compressed_layers=3, trained_layers=1)
    assert plan == flops.PassPlan(3, 1, 3, 1)
    assert flops.flops_per_token(SHAPE, 5, plan, 2, ["q_proj", "v_proj"]) == 3936 + 336 + 1584 + 112 + 320


def test_fedavg_lora_backward_goes_all_the_way_down():
    plan = flops.client_plan(3, 3)
    # forward 3936 + LoRA 336 + backward 3 x 1584 + LoRA weight gradients 3 x 112 + head 320
    assert flops.flops_per_token(SHAPE, 5, plan, 2, ["q_proj", "v_proj"]) == 3936 + 336 + 4752 + 336 + 320


def test_alignment_passes_with_and_without_kl():
    student, teacher = flops.alignment_plans(compressed_layers=4, emulator_layers=3, full_layers=6, kl=True)
    assert student == flops.PassPlan(4, 4, 4, 3)
    assert teacher == flops.PassPlan(6, 0, 1, 0, head_forward=True, head_backward=False)
    # teacher: 6 x 1312 forward + LoRA of 1 adapter layer 112 + head forward 160
    assert flops.flops_per_token(SHAPE, 5, teacher, 2, ["q_proj", "v_proj"]) == 6 * 1312 + 112 + 160
    student, teacher = flops.alignment_plans(4, 3, 6, kl=False)
    assert student == flops.PassPlan(3, 3, 3, 3, head_forward=False, head_backward=False)
    assert teacher == flops.PassPlan(5, 0, 0, 0, head_forward=False, head_backward=False)


def test_llama2_7b_client_is_far_below_six_n():
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(ROOT / "configs/models/llama2-7b")
    shape = flops.decoder_shape(config)
    assert flops.layer_weight_params(shape) == 4 * 4096**2 + 3 * 4096 * 11008  # 202,375,168
    per_token = flops.flops_per_token(shape, 800, flops.client_plan(17, 2), 8, ["q_proj", "v_proj"])
    n_compressed = 17 * flops.layer_weight_params(shape) + 4096 * 32000
    assert 2 * n_compressed < per_token < 3 * n_compressed  # forward everywhere, backward through 2 of 17 layers


def test_mfu():
    assert flops.mfu(1e9, 4e5, 1e15) == pytest.approx(0.4)


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_round", ROOT / "benchmarks" / "gpu_round.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_refuses_to_run_without_cuda(bench, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        bench.main(["--phase", "client"])


def test_benchmark_knows_the_peaks(bench):
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert bench.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bench.peak_tflops("NVIDIA H200") == 989.4
    assert bench.peak_tflops("Some GPU") is None


def test_benchmark_client_phases_run_on_cpu_and_the_table_reads_them(bench, tmp_path):
    from transformers import LlamaConfig

    from tests.conftest import TINY

    LlamaConfig(**TINY).save_pretrained(tmp_path)
    args = bench.parse_args(["--device", "cpu", "--model-config", str(tmp_path / "config.json"), "--batch-size", "2",
                             "--seq-len", "8", "--local-steps", "2", "--accumulate", "1"])
    results = {"client": bench.phase_client(args, "fedbiot"), "fedavg": bench.phase_client(args, "fedavg_lora")}
    assert results["client"]["layers"] == 4 and results["fedavg"]["layers"] == 6  # 6 layers, adapter 2, beta 0.5
    assert results["client"]["tokens"] == 2 * 2 * 8
    assert 0 < results["client"]["flops_per_token"] < results["fedavg"]["flops_per_token"]
    for result in results.values():
        result["peak_gib"] = 10.0 if result["phase"] == "fedavg" else 4.0  # the CPU run measures no GPU memory
    report = bench.table(results, args, "cpu", peak=100.0)
    assert "| FedBiOT client training |" in report and "FedBiOT client peak = 40 % of this" in report
