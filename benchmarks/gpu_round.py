"""One FedBiOT round of a LLaMA-2-7B-shaped model (random bf16 weights) on a CUDA GPU.

Tokens/s and MFU of client training and of alignment, peak GPU memory of a client and of the server,
time per round, and a FedAvg-LoRA client (LoRA on the full model) for the memory comparison.

    python benchmarks/gpu_round.py                                  # every phase, one GPU, markdown table
    python benchmarks/gpu_round.py --drop-rate 0.2 --seq-len 512 --gradient-checkpointing
    python benchmarks/gpu_round.py --phase server --zero-stage 3    # one phase only

Each phase runs in a fresh process (its peak memory is its own):

* ``client``: a FedBiOT client. The full model is built, split, and the layers the compressed model
  does not use are freed, so the GPU holds what a client holds (the compressed model). Then
  ``--local-steps`` optimizer steps of the algorithm's client module (``Algorithm.client_module``:
  ``AdapterFinetuneModule``) through the toolkit's lean client Trainer (``build_client_trainer``),
  after one untimed warm-up fit.
* ``fedavg``: the same client fit on the FedAvg-LoRA split (the full model, LoRA on every layer).
* ``server``: the server's alignment (normalised L2 + KL, only the emulator LoRA trains) through a
  DeepSpeed engine made from :func:`fedbiot_pl.scaling.deepspeed.deepspeed_config` (ZeRO ``--zero-stage``), the
  model loaded partitioned as under ``FedBiOTDeepSpeed``; ``--align-steps`` timed steps after a warm-up.
* ``round``: one whole round on the ZeRO server through the production round runner
  (:class:`~fedbiot_pl.federation.round.RoundRunner` with :class:`~fedbiot_pl.federation.client.LocalClients`
  and the in-process transport): broadcast, ``--clients`` client fits inside
  :func:`fedbiot_pl.scaling.deepspeed.compressed_model_gathered` (spread over the ranks under ``torchrun``),
  the replies swapped between the ranks, checked and averaged (FedAvg), then the alignment steps the
  algorithm takes after a round (``server_steps``: ``--align-steps`` for FedBiOT). Time per round.

MFU = model FLOPs per token (:mod:`fedbiot_pl.scaling.flops`: forward through every layer run, input-gradient
backward only from the loss down to the lowest trained layer, LoRA forward/backward, attention by the
PaLM convention, no recomputation) x tokens/s / the GPU's dense bf16 peak. Tokens are every position
of the random ``--batch-size`` x ``--seq-len`` batches (no padding). Precision is the toolkit's:
bf16 base weights, float32 LoRA and losses, no autocast (``32-true``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from fedbiot_pl.algorithms import Algorithm, ClientOptim

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("client", "fedavg", "server", "round")
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "GH200": 989.4, "A100": 312.0, "L40S": 362.0}


def peak_tflops(name: str) -> float | None:
    """Dense bf16 peak of a GPU by its CUDA device name (the longest key found in the name)."""
    found = [key for key in PEAK_BF16_TFLOPS if all(part in name for part in key.split())]
    return PEAK_BF16_TFLOPS[max(found, key=len)] if found else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's settings."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-config", default=str(ROOT / "configs/models/llama2-7b/config.json"))
    p.add_argument("--phase", choices=("all", *PHASES), default="all")
    p.add_argument("--adapter-layers", type=int, default=2)
    p.add_argument("--drop-rate", type=float, default=0.5)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=5, help="sequences per micro-batch (the paper: 5)")
    p.add_argument("--seq-len", type=int, default=800, help="tokens per sequence (the paper's GSM8K max: 800)")
    p.add_argument("--accumulate", type=int, default=2, help="micro-batches per optimizer step (the paper: 2)")
    p.add_argument("--local-steps", type=int, default=10, help="timed client optimizer steps per fit")
    p.add_argument("--clients", type=int, default=3, help="clients per round (round phase)")
    p.add_argument("--align-steps", type=int, default=5, help="timed alignment optimizer steps")
    p.add_argument("--zero-stage", type=int, choices=(2, 3), default=3)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak; default from the GPU name")
    p.add_argument("--out", default=None, help="also write the markdown table here")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cpu only for the CPU smoke test of this script (no memory or MFU figures)")
    return p.parse_args(argv)


# ---------------------------------------------------------------- shared set-up
def require_cuda(args: argparse.Namespace) -> None:
    """Exit with the way to run this script when ``--device cuda`` has no GPU."""
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("benchmarks/gpu_round.py needs a CUDA GPU (torch.cuda.is_available() is False); run it on a GPU "
                 "machine, see benchmarks/RESULTS.md 'Scale (GPU)' for the command.")


def model_config(args: argparse.Namespace) -> Any:
    """The model's Hugging Face config (``--model-config``), with SDPA attention."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(Path(args.model_config).parent), local_files_only=True)
    config._attn_implementation = "sdpa"
    return config


def random_full_model(config, device: torch.device):
    """The model with random bf16 weights, built on ``device`` directly (seconds on a GPU)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")


def split_of(full: Any, args: argparse.Namespace, algorithm: str | Algorithm = "fedbiot") -> Any:
    """The model views of ``full`` laid out for ``algorithm`` (a name or an algorithm object), built."""
    from fedbiot_pl.model.views import ModelViews

    return ModelViews.from_model(
        full, adapter_layers=args.adapter_layers, drop_rate=args.drop_rate, lora_r=args.lora_r, dtype="bfloat16",
        gradient_checkpointing=args.gradient_checkpointing,
    ).use_algorithm(algorithm).build()


def client_optim(algorithm: Algorithm) -> ClientOptim:
    """The clients' optimizer settings: the defaults, with a proximal weight where the algorithm has a term.

    The weight is 1 where :meth:`~fedbiot_pl.algorithms.Algorithm.check` accepts a proximal weight
    (FedBiOT, FedProx), else 0.
    """
    from fedbiot_pl.algorithms import ClientOptim, RunSettings

    has_proximal = not algorithm.check(RunSettings(proximal_weight=1.0))
    return ClientOptim(proximal_weight=1.0 if has_proximal else 0.0)


def batches(args: argparse.Namespace, vocab: int, count: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Random token batches (CPU); labels mask the first quarter of each sequence as the prompt."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.randint(3, vocab, (args.batch_size, args.seq_len), generator=g)
        labels = ids.clone()
        labels[:, : args.seq_len // 4] = -100
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return out


def gib(num_bytes: int) -> float:
    """Bytes in GiB."""
    return num_bytes / 2**30


def local_device(args: argparse.Namespace) -> torch.device:
    """This process's device (the ``LOCAL_RANK``-th GPU, or the CPU)."""
    if args.device == "cpu":
        return torch.device("cpu")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(device)
    return device


def sync(device: torch.device) -> None:
    """Wait for the GPU's queued work (nothing on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    """Start a new peak-memory measurement."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    """Peak GPU memory allocated since :func:`reset_peak` [GiB] (0 on the CPU)."""
    return gib(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else 0.0


def allocated_gib(device: torch.device) -> float:
    """GPU memory allocated now [GiB] (0 on the CPU)."""
    return gib(torch.cuda.memory_allocated(device)) if device.type == "cuda" else 0.0


def fit_client(split, args: argparse.Namespace, data: list[dict], device: torch.device, steps: int) -> float:
    """One client fit of the views' algorithm's client module through the toolkit's lean Trainer.

    Returns its wall time (synchronised).
    """
    from torch.utils.data import DataLoader

    from fedbiot_pl.federation.client_trainer import build_client_trainer, client_fit_context

    module = split.algorithm.client_module(split, client_optim(split.algorithm))
    sync(device)
    start = time.perf_counter()
    with client_fit_context():
        trainer = build_client_trainer(device, "32-true", steps, args.accumulate)
        trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=None))
    sync(device)
    return time.perf_counter() - start


# ---------------------------------------------------------------- phases
def phase_client(args: argparse.Namespace, algorithm: str | Algorithm) -> dict:
    """A client's fit of ``algorithm`` (``client``: a compressed model, ``fedavg``: the full model)."""
    from torch import nn

    from fedbiot_pl.algorithms import resolve_algorithm
    from fedbiot_pl.model.views import decoder_of
    from fedbiot_pl.scaling import flops

    algorithm = resolve_algorithm(algorithm)
    device = local_device(args)
    config = model_config(args)
    split = split_of(random_full_model(config, device), args, algorithm)
    layout = split.layout
    if algorithm.compresses():  # free what a client does not hold: the layers outside the compressed model
        kept = set(layout.compressed)
        for model in (split.full, split.full_with_adapter):
            layers = decoder_of(model).layers
            for index in range(len(layers)):
                if index not in kept:
                    layers[index] = nn.Identity()
    reset_peak(device)
    weights = allocated_gib(device)
    steps_data = batches(args, config.vocab_size, args.local_steps * args.accumulate, seed=1)
    fit_client(split, args, steps_data[: 2 * args.accumulate], device, 2)  # warm-up
    seconds = fit_client(split, args, steps_data, device, args.local_steps)
    tokens = args.local_steps * args.accumulate * args.batch_size * args.seq_len
    compressed = len(layout.compressed)
    trained = len(layout.adapter_positions)
    plan = flops.client_plan(compressed, trained, compressed - min(layout.adapter_positions))
    per_token = flops.flops_per_token(flops.decoder_shape(config), args.seq_len, plan, args.lora_r, split.lora_targets)
    return {"phase": "client" if algorithm.compresses() else "fedavg", "layers": compressed, "seconds": seconds,
            "tokens": tokens, "flops_per_token": per_token, "weights_gib": weights, "peak_gib": peak_gib(device)}


def zero_engine(args: argparse.Namespace, device: torch.device):
    """The FedBiOT split loaded partitioned (ZeRO-3) or whole (ZeRO-2), its alignment module and engine."""
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    from fedbiot_pl.modules import EmulatorAlignmentModule
    from fedbiot_pl.scaling.deepspeed import deepspeed_config, zero3_loading_config

    if device.type == "cpu":  # the CPU smoke test: gloo, without DeepSpeed's compiled shared-memory op
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed("nccl" if device.type == "cuda" else "gloo")
    config = {**deepspeed_config(args.zero_stage), "train_micro_batch_size_per_gpu": args.batch_size,
              "gradient_accumulation_steps": args.accumulate, "gradient_clipping": 0.0}
    keep = HfDeepSpeedConfig(zero3_loading_config(config, torch.bfloat16)) if args.zero_stage == 3 else None
    split = split_of(random_full_model(model_config(args), device), args)
    module = EmulatorAlignmentModule(split, kl_weight=1.0)
    split.set_trainable("emulator")
    engine, *_ = deepspeed.initialize(model=module, optimizer=module.configure_optimizers(), config=config,
                                      model_parameters=list(split.lora_parameters("emulator").values()))
    module.forward = lambda ids, mask: module.alignment_losses(ids, mask)  # what Lightning redirects to
    return split, module, engine, keep


def align(engine: Any, module: Any, data: list[dict], device: torch.device) -> None:
    """One alignment optimizer step of the engine per batch of ``data``."""
    for batch in data:
        module.split.set_trainable("emulator")
        losses = engine(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        engine.backward(losses["l2"] + losses["kl"])
        engine.step()


def alignment_flops(args: argparse.Namespace, split: Any, config: Any) -> int:
    """Model FLOPs per token of one alignment step (student and KL teacher)."""
    from fedbiot_pl.scaling import flops

    layout, shape = split.layout, flops.decoder_shape(config)
    student, teacher = flops.alignment_plans(len(layout.compressed), len(layout.emulator), layout.num_full_layers,
                                             kl=True)
    targets = split.lora_targets
    return (flops.flops_per_token(shape, args.seq_len, student, args.lora_r, targets)
            + flops.flops_per_token(shape, args.seq_len, teacher, args.lora_r, targets))


def phase_server(args: argparse.Namespace) -> dict:
    """The server's alignment steps through a DeepSpeed engine."""
    device = local_device(args)
    reset_peak(device)
    split, module, engine, _keep = zero_engine(args, device)
    data = batches(args, split.full.config.vocab_size, (args.align_steps + 1) * args.accumulate, seed=2)
    align(engine, module, data[: args.accumulate], device)  # warm-up step
    sync(device)
    start = time.perf_counter()
    align(engine, module, data[args.accumulate:], device)
    sync(device)
    seconds = time.perf_counter() - start
    return {"phase": "server", "seconds": seconds, "tokens": args.align_steps * args.accumulate * args.batch_size
            * args.seq_len, "flops_per_token": alignment_flops(args, split, split.full.config),
            "peak_gib": peak_gib(device), "zero_stage": args.zero_stage}


class RoundData:
    """The round's client data for the runner: fixed batches per client, equal FedAvg weights."""

    def __init__(self, batches: dict[int, list[dict[str, torch.Tensor]]]) -> None:
        self.batches, self.num_clients = batches, len(batches)

    def client_dataloader(self, client_id: int, round_idx: int) -> Any:
        """The client's batches, in order."""
        from torch.utils.data import DataLoader

        return DataLoader(self.batches[client_id], batch_size=None)

    def client_num_examples(self, client_id: int) -> int:
        """Every client weighs the same."""
        return 1


def phase_round(args: argparse.Namespace) -> dict:
    """One FedBiOT round on the ZeRO server through the production round runner, then its alignment."""
    import torch.distributed as dist

    from fedbiot_pl.federation.client import ClientFitSettings, LocalClients
    from fedbiot_pl.federation.ledger import CommLedger
    from fedbiot_pl.federation.round import RoundRunner, RoundSettings
    from fedbiot_pl.federation.transport import InProcessTransport
    from fedbiot_pl.scaling.deepspeed import compressed_model_gathered, lora_gathered

    device = local_device(args)
    reset_peak(device)
    split, module, engine, _keep = zero_engine(args, device)
    algorithm = split.algorithm
    vocab = split.full.config.vocab_size
    public = batches(args, vocab, (args.align_steps + 1) * args.accumulate, seed=2)
    data = RoundData({c: batches(args, vocab, args.local_steps * args.accumulate, seed=10 + c)
                      for c in range(args.clients)})
    align(engine, module, public[: args.accumulate], device)  # warm-up
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    # As FederatedLoop.on_fit_start builds it: the clients share the server's views (here the ZeRO
    # server's, gathered below), and the ranks fit their shares of the clients and swap the replies.
    clients = LocalClients(algorithm, split, algorithm.client_module(split, client_optim(algorithm)), data,
                           ClientFitSettings(args.local_steps, args.accumulate), device, "32-true", world_size=world)
    ledger = CommLedger()
    runner = RoundRunner(algorithm, split, data, clients, RoundSettings(), ledger,
                         InProcessTransport(ledger, rank, world))
    fit_seconds: list[float] = []
    run = clients.run

    def timed_run(*run_args: Any, **run_kwargs: Any) -> Any:
        sync(device)
        start = time.perf_counter()
        reply = run(*run_args, **run_kwargs)
        sync(device)
        fit_seconds.append(time.perf_counter() - start)
        return reply

    clients.run = timed_run  # type: ignore[method-assign]
    gathered = compressed_model_gathered(engine, split) if args.zero_stage == 3 else lora_gathered(split)
    sync(device)
    start = time.perf_counter()
    with gathered:
        result = runner.run_round(0)  # broadcast, this rank's client fits, swap, checks, FedAvg, apply
    sync(device)
    clients_done = time.perf_counter()
    if result.entry["faults"]:
        raise RuntimeError(f"the round dropped or rejected clients: {result.entry['faults']}") from clients.last_error
    server_steps = algorithm.server_steps(0, args.align_steps)
    align(engine, module, public[args.accumulate:][: server_steps * args.accumulate], device)
    sync(device)
    end = time.perf_counter()
    return {"phase": "round", "seconds": end - start, "client_phase_seconds": clients_done - start,
            "client_fit_seconds": sum(fit_seconds), "align_seconds": end - clients_done, "clients": args.clients,
            "align_steps": server_steps, "world_size": world, "peak_gib": peak_gib(device),
            "zero_stage": args.zero_stage, "bytes_down": ledger.bytes_down, "bytes_up": ledger.bytes_up}


# ---------------------------------------------------------------- report
def table(results: dict[str, dict], args: argparse.Namespace, device_name: str, peak: float | None) -> str:
    """The phases' results as a markdown table under a line of settings."""
    from fedbiot_pl.scaling.flops import mfu

    def rate(r: dict) -> str:
        tps = r["tokens"] / r["seconds"]
        util = f"{100 * mfu(r['flops_per_token'], tps, peak * 1e12):.1f} %" if peak else "n/a"
        return f"{tps:,.0f} | {util}"

    setting = (f"GPU: {device_name}, peak {peak or 'unknown'} TFLOP/s bf16 dense; torch {torch.__version__}; "
               f"batch {args.batch_size} x {args.seq_len} tokens, accumulate {args.accumulate}, adapter "
               f"{args.adapter_layers}, beta {args.drop_rate}, r {args.lora_r}, gradient checkpointing "
               f"{args.gradient_checkpointing}, ZeRO-{args.zero_stage}")
    lines = [
        setting,
        "",
        "| phase | tokens/s | MFU | peak GPU memory [GiB] | notes |",
        "|---|---|---|---|---|",
    ]
    if "client" in results:
        r = results["client"]
        lines.append(f"| FedBiOT client training | {rate(r)} | {r['peak_gib']:.1f} | {r['layers']} layers, "
                     f"weights {r['weights_gib']:.1f} GiB, {r['flops_per_token'] / 1e9:.1f} GFLOP/token |")
    if "fedavg" in results:
        r = results["fedavg"]
        note = ""
        if "client" in results:
            note = f"FedBiOT client peak = {100 * results['client']['peak_gib'] / r['peak_gib']:.0f} % of this"
        lines.append(f"| FedAvg-LoRA client training | {rate(r)} | {r['peak_gib']:.1f} | {note} |")
    if "server" in results:
        r = results["server"]
        lines.append(f"| server alignment (L2 + KL) | {rate(r)} | {r['peak_gib']:.1f} | "
                     f"{r['flops_per_token'] / 1e9:.1f} GFLOP/token |")
    if "round" in results:
        r = results["round"]
        lines.append(f"| one round | - | - | {r['peak_gib']:.1f} | {r['seconds']:.1f} s per round: "
                     f"{r['clients']} clients x {args.local_steps} steps {r['client_phase_seconds']:.1f} s on "
                     f"{r['world_size']} GPU(s), "
                     f"{r['align_steps']} alignment steps {r['align_seconds']:.1f} s |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run one phase here, or every phase in its own process and print the table."""
    args = parse_args(argv)
    require_cuda(args)
    if args.phase != "all":
        result = {"client": lambda: phase_client(args, "fedbiot"), "fedavg": lambda: phase_client(args, "fedavg_lora"),
                  "server": lambda: phase_server(args), "round": lambda: phase_round(args)}[args.phase]()
        print("RESULT " + json.dumps(result), flush=True)
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}
    results = {}
    for phase in PHASES:
        command = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--phase", phase]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        found = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not found:
            print(f"phase {phase} failed (exit {done.returncode}):\n{done.stderr[-4000:]}", file=sys.stderr)
            continue
        results[phase] = json.loads(found[-1].removeprefix("RESULT "))
        print(f"{phase}: {results[phase]}", flush=True)
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    report = table(results, args, name, args.peak_tflops or peak_tflops(name))
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")


if __name__ == "__main__":
    main()
