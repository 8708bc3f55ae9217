"""DeepSpeed ZeRO-3 on the CPU: two gloo processes run the server's sharded full model and a round's
client fits, against a plain (unsharded) split doing the same steps.

DeepSpeed's CPU accelerator runs the real ZeRO-3 machinery (partitioning, gathering, the stage-3
optimizer); Lightning's DeepSpeedStrategy itself refuses non-CUDA accelerators, so the engine is made
with ``deepspeed.initialize`` and the strategy's config builder. Each process runs both models.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import traceback
from pathlib import Path

import pytest
import torch

from fedbiot_pl.scaling.checks import deepspeed_available
from tests.conftest import padded_batch
from tests.helpers import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not deepspeed_available(),
                       reason="DeepSpeed is not installed (pip install 'fedbiot-pl[deepspeed]')"),
]

MODEL = "embedded:models/stories260K"
SPLIT = {"adapter_layers": 2, "drop_rate": 0.2, "dtype": "bfloat16", "lora_dropout": 0.0}
WORLD = 2


def _batch(seed: int) -> dict[str, torch.Tensor]:
    return padded_batch(seed, vocab=500, length=16, padding=4)


def _split(zero3_config=None):
    from transformers.integrations import HfDeepSpeedConfig

    from fedbiot_pl.model.views import ModelViews
    from fedbiot_pl.scaling.deepspeed import zero3_loading_config

    keep = HfDeepSpeedConfig(zero3_loading_config(zero3_config, torch.bfloat16)) if zero3_config else None
    split = ModelViews(MODEL, **SPLIT).build()
    del keep
    torch.manual_seed(0)
    with torch.no_grad():  # the same non-zero LoRA on every rank and in both models
        for p in split.lora_parameters("all").values():
            p.normal_(0, 0.1)
    return split


class _RoundData:
    """The round's client data: fixed batches per client, FedAvg weight ``client + 1``."""

    def __init__(self, batches: dict[int, list[dict[str, torch.Tensor]]]) -> None:
        self.batches, self.num_clients = batches, len(batches)

    def client_dataloader(self, client_id: int, round_idx: int):
        from torch.utils.data import DataLoader

        return DataLoader(self.batches[client_id], batch_size=None)

    def client_num_examples(self, client_id: int) -> int:
        return client_id + 1


class _LocalOnly:
    """A transport that runs every client here and swaps nothing (the unsharded reference on each rank)."""

    def exchange(self, clients, broadcast, client_fn):
        return [client_fn(client, broadcast) for client in clients]


def _run_round(split, round_batches, rank: int = 0, world_size: int = 1):
    """Round 0 of FedBiOT on ``split`` through the production runner: this rank fits its share of the
    clients, the replies are swapped between the ranks and every rank applies the same FedAvg
    (``world_size=1``: all clients here, nothing swapped). Returns the round's client losses."""
    from fedbiot_pl.algorithms import ClientOptim, resolve_algorithm
    from fedbiot_pl.federation.client import ClientFitSettings, LocalClients
    from fedbiot_pl.federation.ledger import CommLedger
    from fedbiot_pl.federation.round import RoundRunner, RoundSettings
    from fedbiot_pl.federation.transport import InProcessTransport

    algorithm = resolve_algorithm("fedbiot")
    data = _RoundData(round_batches)
    module = algorithm.client_module(split, ClientOptim(lr=1e-2, proximal_weight=1.0))
    clients = LocalClients(algorithm, split, module, data, ClientFitSettings(2, 1), "cpu", "32-true", seed=0,
                           world_size=world_size)
    ledger = CommLedger()
    transport = InProcessTransport(ledger, rank, world_size) if world_size > 1 else _LocalOnly()
    runner = RoundRunner(algorithm, split, data, clients, RoundSettings(seed=0), ledger, transport)
    result = runner.run_round(0)
    assert result.entry["accepted"] == sorted(round_batches) and not result.entry["faults"], result.entry
    return result.attempts[-1].losses


def _worker(rank: int, port: int, logs: str, leave) -> None:
    """One rank. Its stdout and stderr go to its log (C++ aborts such as gloo's "terminate called ..." print
    there, and faulthandler's stacks), which the test puts in its failure message: a spawned process's
    output never reaches CI's summary."""
    with open(Path(logs) / f"rank{rank}.log", "a") as log:  # O_APPEND: the writers share it
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        _arm_faulthandler()
        try:
            _rank(rank, port)
        except BaseException:
            traceback.print_exc()
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
    # Leave together and at once. Both ranks have returned from the last gloo collective, so no message is still
    # on its way; only then does either close its sockets (a rank that closes them while the other still reads
    # aborts the other: "terminate called without an active exception"). os._exit skips the interpreter's
    # teardown, where DeepSpeed's and gloo's threads would be destroyed in any order.
    leave.wait(timeout=300)
    os._exit(0)


def _arm_faulthandler() -> None:
    """Python's stacks on a fatal signal, to stderr. Re-armed as the run goes: the libraries in it install their
    own SIGABRT handler (seen: faulthandler's was gone by the final barrier; ``enable`` alone does not re-arm)."""
    faulthandler.disable()
    faulthandler.enable(all_threads=True)


def _rank(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    import deepspeed

    from fedbiot_pl.modules import EmulatorAlignmentModule
    from fedbiot_pl.scaling.deepspeed import compressed_model_gathered, deepspeed_config, lora_gathered

    # DeepSpeed's shared-memory all-reduce for CPUs is a C++ extension compiled on first use (minutes
    # on a fresh machine); gloo does the same job here.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed("gloo")
    config = {**deepspeed_config(3), "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
              "gradient_clipping": 0.0}
    reference, sharded = _split(), _split(config)

    # The full model is partitioned: no tensor whole on this rank, each rank holds about half, in bf16.
    full = dict(sharded.full.named_parameters())
    assert all(p.numel() == 0 and p.dtype == torch.bfloat16 for p in full.values())
    held = sum(p.ds_tensor.numel() for p in full.values())
    total = sum(p.ds_numel for p in full.values())
    assert total // WORLD <= held <= total // WORLD + 2 * len(full)
    assert {p.dtype for p in sharded.lora_parameters("all").values()} == {torch.float32}

    modules = {}
    for name, split in (("reference", reference), ("sharded", sharded)):
        module = EmulatorAlignmentModule(split, kl_weight=1.0)
        split.set_trainable("emulator")
        split.eval()
        optimizer = torch.optim.SGD(list(split.lora_parameters("emulator").values()), lr=0.05)
        modules[name] = (module, optimizer)
    module, optimizer = modules["sharded"]
    engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, config=config,
                                      model_parameters=list(sharded.lora_parameters("emulator").values()))
    _arm_faulthandler()
    module.forward = lambda ids, mask: module.alignment_losses(ids, mask)  # what Lightning redirects to
    public = _batch(100)  # the same public batch on both ranks, so the averaged gradient is this one's

    def align_sharded() -> dict[str, float]:
        losses = engine(public["input_ids"], public["attention_mask"])
        engine.backward(losses["l2"] + losses["kl"])
        engine.step()
        return {k: v.item() for k, v in losses.items()}

    def align_reference() -> dict[str, float]:
        ref_module, ref_optimizer = modules["reference"]
        losses = ref_module.alignment_losses(public["input_ids"], public["attention_mask"])
        (losses["l2"] + losses["kl"]).backward()
        ref_optimizer.step()
        ref_optimizer.zero_grad()
        return {k: v.item() for k, v in losses.items()}

    # 1. Alignment under ZeRO-3 = alignment of the unsharded split (bf16 weights: rounding-level gaps).
    got, want = align_sharded(), align_reference()
    assert got == pytest.approx(want, rel=2e-3)
    with lora_gathered(sharded):
        emulator = sharded.lora_state("emulator")
    for key, value in reference.lora_state("emulator").items():
        torch.testing.assert_close(emulator[key], value, atol=2e-3, rtol=1e-2)

    # 2. A round's clients through the round runner: rank r fits its share, alone; the replies are swapped
    # and every rank applies the same FedAvg. Both models start from the sharded one's LoRA: the gathered
    # compressed model is then bit for bit the unsharded one, and so are the fits.
    with lora_gathered(sharded):
        reference.load_lora_state(sharded.lora_state("all"))
    clients = [0, 1, 2]
    round_batches = {c: [_batch(10 * c + i) for i in range(2)] for c in clients}
    dropped = [p for n, p in sharded.full.named_parameters() if ".layers.1." in n]  # beta=0.2 drops layer 1
    with compressed_model_gathered(engine, sharded):
        assert all(p.numel() > 0 for p in sharded.compressed.parameters())
        assert all(p.numel() == 0 for p in dropped)  # the dropped layers are never gathered
        losses = _run_round(sharded, round_batches, rank, WORLD)
        average = sharded.lora_state("adapter")  # the round's FedAvg, applied
    reference_losses = _run_round(reference, round_batches)
    assert [losses[c] for c in clients] == [reference_losses[c] for c in clients]
    for key, value in reference.lora_state("adapter").items():
        torch.testing.assert_close(average[key], value, atol=0, rtol=0)

    # 3. The averaged adapter survives the next ZeRO-3 steps (they re-gather LoRA from the partitions).
    for name in ("reference", "sharded"):
        modules[name][0].split.set_trainable("emulator")
        modules[name][0].split.eval()
    got, want = align_sharded(), align_reference()
    assert got == pytest.approx(want, rel=5e-3)
    align_sharded()
    with lora_gathered(sharded):
        after = sharded.lora_state("adapter")
    for key, value in average.items():
        torch.testing.assert_close(after[key], value, atol=0, rtol=0)
    _arm_faulthandler()
    torch.distributed.barrier()  # the last collective: after it, see _worker


def test_zero3_server_and_client_round_match_an_unsharded_split(tmp_path):
    try:
        leave = torch.multiprocessing.get_context("spawn").Barrier(WORLD)
        torch.multiprocessing.spawn(_worker, args=(free_port(), str(tmp_path), leave), nprocs=WORLD, join=True)
    except (torch.multiprocessing.ProcessRaisedException, torch.multiprocessing.ProcessExitedException) as error:
        failure = str(error)
    else:
        return
    logs = {p.name: "\n".join(line for line in p.read_text().splitlines() if not line.startswith("Extension modules:"))
            for p in sorted(tmp_path.glob("rank*.log"))}
    pytest.fail("\n".join([failure, *(f"--- {name}:\n{text[-3000:]}" for name, text in logs.items())]), pytrace=False)
