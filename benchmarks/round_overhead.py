"""Overhead of one FedBiOT round of the toolkit against a plain PyTorch loop doing the same work.

Both paths train the same split model on the same pre-built batches with the same loss and the
same optimizer, and aggregate with the same :func:`fedbiot_pl.federation.aggregation.fedavg`:

* **toolkit**: the real :meth:`FederatedLoop.on_train_epoch_start` (sampling, broadcast + ledger,
  one fresh lean ``pl.Trainer`` + ``Trainer.fit`` of :class:`AdapterFinetuneModule` per client via
  :meth:`FederatedLoop.fit_client`, upload + update validation, FedAvg), called with a real server
  ``pl.Trainer`` (CPU, one device, ``32-true``, the loop among its callbacks; never fitted) and a
  real server :class:`EmulatorAlignmentModule` on the same split, and a small datamodule object
  exposing the client API over fixed batches (attached as ``trainer.datamodule``, as ``fit`` does).
* **plain**: per client ``load_lora_state`` -> ``set_trainable("adapter")`` -> fresh AdamW ->
  ``local_steps * accumulate`` forward/backward (loss / accumulate) with ``step``/``zero_grad``
  every ``accumulate`` micro-batches -> cloned adapter upload; then the same ``fedavg``.

Every repeat starts both paths from the same LoRA weights and runs them interleaved (the order
alternates between repeats); the script reports medians and all repeats, the ratio
toolkit / plain, and a break-down of the toolkit's time per client fit:

* ``setup``: from the start of ``fit_client`` (before ``pl.Trainer(...)``) to the entry of the first
  ``training_step`` (Trainer construction, fit set-up, hooks, optimizer, first batch fetch),
* ``loop``: from the first ``training_step`` entry to the end of the last ``on_train_batch_end``,
* ``teardown``: from there to the return of ``fit_client`` (fit teardown, step check, loss compute),

and the plain path's matching ``setup`` (client start to first forward) and ``loop``. The
timestamps come from a subclass of :class:`AdapterFinetuneModule` that only reads
``time.perf_counter()`` in ``training_step``/``on_train_batch_end``, from a subclass of
:class:`FederatedLoop` that wraps ``fit_client``, and from a wrapper on ``pl.Trainer.__init__``.
The same client in the same repeat gives a paired toolkit/plain ratio per client fit, which is
much less sensitive to other processes on the machine than whole-round times.

Both paths do the same math: the script checks that the aggregated adapters are equal (they are
bit-identical, LoRA dropout included, because the fixed-batch loader has its own generator and so
draws nothing from the global RNG). peft's zero LoRA ``B`` is replaced by small seeded values so
that the check compares non-trivial updates.

``--profile N`` prints a cProfile of one more toolkit round.

Example::

    python benchmarks/round_overhead.py --clients 8 --local-steps 10 --model small
    python benchmarks/round_overhead.py --model stories260K --json stories.json
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import statistics
import sys
import time
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from fedbiot_pl.federation.aggregation import fedavg
from fedbiot_pl.assets import resolve
from fedbiot_pl.callbacks.federated_loop import FederatedLoop
from fedbiot_pl.modules.adapter_module import AdapterFinetuneModule
from fedbiot_pl.modules.alignment_module import EmulatorAlignmentModule
from fedbiot_pl.model.views import SplitModel

# Random-init LLaMA presets (the shapes of the LlamaConfig); anything else is a model path/hub id.
PRESETS: dict[str, dict[str, int]] = {
    # Big enough that compute dominates on a CPU in a realistic way (5.4M params, 6 layers).
    "small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=6, num_attention_heads=8,
                  num_key_value_heads=4, vocab_size=2048),
    # A smoke-test size: tiny compute, so the ratio is dominated by per-step/per-fit overhead.
    "tiny": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=5, num_attention_heads=8,
                 num_key_value_heads=4, vocab_size=512),
}
ALIASES = {"stories260K": "embedded:models/stories260K"}


# ---------------------------------------------------------------------------------------- model
def build_split(model: str, seed: int, lora_dropout: float) -> SplitModel:
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if model in PRESETS:
        full = LlamaForCausalLM(LlamaConfig(**PRESETS[model], max_position_embeddings=2048))
    else:
        path = resolve(ALIASES.get(model, model))
        full = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                    local_files_only=os.path.isdir(path))
    split = SplitModel.from_model(full, adapter_layers=2, drop_rate=0.2, lora_dropout=lora_dropout).build()
    # peft initialises LoRA B to zero; give it (seeded) small values so the very first steps already
    # move both factors and the equality check compares non-trivial numbers.
    with torch.no_grad():
        for key, param in split.lora_parameters("all").items():
            if "lora_B" in key:
                param.normal_(0.0, 0.01)
    return split


# ---------------------------------------------------------------------------------------- data
def make_batches(clients: int, per_client: int, batch_size: int, seq_len: int, vocab: int,
                 seed: int) -> list[list[dict[str, Tensor]]]:
    """Per client ``per_client`` batches of random tokens; labels mask the first half (-100)."""
    generator = torch.Generator().manual_seed(seed)
    data = []
    for _ in range(clients):
        batches = []
        for _ in range(per_client):
            ids = torch.randint(3, vocab, (batch_size, seq_len), generator=generator)
            labels = ids.clone()
            labels[:, : seq_len // 2] = -100
            batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
        data.append(batches)
    return data


class FixedBatchesDataModule:
    """The datamodule's client API over pre-built batches (no tokenizer, no collation)."""

    def __init__(self, batches: list[list[dict[str, Tensor]]], num_examples: list[int]) -> None:
        self.batches, self.num_examples = batches, num_examples

    @property
    def num_clients(self) -> int:
        return len(self.batches)

    def client_dataloader(self, client_id: int, round_idx: int = 0) -> DataLoader:
        # A generator of its own, as the real datamodule has: without one, creating the iterator
        # draws its base seed from the global RNG, which shifts every LoRA-dropout mask after it.
        generator = torch.Generator().manual_seed(client_id)
        return DataLoader(self.batches[client_id], batch_size=None, shuffle=False,  # type: ignore[arg-type]
                          generator=generator)

    def client_num_examples(self, client_id: int) -> int:
        return self.num_examples[client_id]


# ---------------------------------------------------------------------------------------- toolkit
class TimedClientModule(AdapterFinetuneModule):
    """AdapterFinetuneModule that records when each training_step starts and each batch ends."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.step_starts: list[float] = []
        self.batch_ends: list[float] = []

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        self.step_starts.append(time.perf_counter())
        return super().training_step(batch, batch_idx)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.batch_ends.append(time.perf_counter())


def _step_durations(starts: list[float], last_end: float) -> list[float]:
    """Durations of the micro-batches from their start times (the last one ends at ``last_end``)."""
    return [b - a for a, b in zip(starts, starts[1:] + [last_end])]


class TimedLoop(FederatedLoop):
    """FederatedLoop whose fit_client records (start, first step, last batch end, end) per client."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client_times: list[dict[str, float]] = []

    def fit_client(self, trainer: Any, client_id: int, round_idx: int, datamodule: Any) -> float:
        module = self._client_module
        module.step_starts.clear()
        module.batch_ends.clear()
        start = time.perf_counter()
        loss = super().fit_client(trainer, client_id, round_idx, datamodule)
        end = time.perf_counter()
        first, last = module.step_starts[0], module.batch_ends[-1]
        self.client_times.append({"setup": first - start, "loop": last - first, "teardown": end - last,
                                  "total": end - start, "steps": _step_durations(module.step_starts, last)})
        return loss


TRAINER_INIT_SECONDS: list[float] = []


def time_trainer_init() -> None:
    """Record how long each ``pl.Trainer(...)`` construction takes (a wrapper on the class)."""
    import functools

    import lightning.pytorch as pl

    original = pl.Trainer.__init__
    if getattr(original, "_round_overhead_timed", False):
        return

    @functools.wraps(original)
    def timed(self: Any, *args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        original(self, *args, **kwargs)
        TRAINER_INIT_SECONDS.append(time.perf_counter() - start)

    timed._round_overhead_timed = True  # type: ignore[attr-defined]
    pl.Trainer.__init__ = timed  # type: ignore[method-assign]


class Toolkit:
    """The toolkit side: the timed loop, and the real server Trainer and module it runs a round for."""

    def __init__(self, split: SplitModel, args: argparse.Namespace) -> None:
        import logging

        import lightning.pytorch as pl

        self.loop = TimedLoop(rounds=1, local_steps=args.local_steps, client_accumulate_grad_batches=args.accumulate,
                              proximal_weight=0.0, export_final_adapter=False)
        # What FederatedLoop.on_fit_start does (once per server fit).
        self.loop._client_module = TimedClientModule(split, log_steps=False, **self.loop.client_hparams)
        # The server side is real, not a stand-in: a single-device CPU Trainer (world size 1, rank 0,
        # 32-true) at epoch 0 (round 0, no pre-alignment), never fitted, and FedBiOT's server module.
        # on_train_epoch_start reads from them whatever the loop reads in a real fit.
        quiet = logging.getLogger("lightning.pytorch.utilities.rank_zero")
        level = quiet.level
        quiet.setLevel(logging.WARNING)  # no "GPU available: ..." lines
        try:
            self.server_trainer = pl.Trainer(
                accelerator="cpu", devices=1, precision="32-true", max_epochs=1, callbacks=[self.loop],
                logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            )
        finally:
            quiet.setLevel(level)
        self.server_module = EmulatorAlignmentModule(split, kl_weight=1.0)


def toolkit_round(toolkit: Toolkit, dm: FixedBatchesDataModule) -> dict[str, Any]:
    loop = toolkit.loop
    loop.client_times = []
    TRAINER_INIT_SECONDS.clear()
    toolkit.server_trainer.datamodule = dm  # what Trainer.fit's attach_datamodule sets
    start = time.perf_counter()
    loop.on_train_epoch_start(toolkit.server_trainer, toolkit.server_module)  # the whole round
    seconds = time.perf_counter() - start
    # The loop drops a client whose fit fails and goes on with the rest; a benchmark must not.
    entry = loop.history[-1]
    if entry["faults"] or entry["accepted"] != list(range(dm.num_clients)) or len(loop.client_times) != dm.num_clients:
        raise RuntimeError(f"the toolkit round did not run every client cleanly: {entry}") from loop._last_client_error
    fits = sum(t["total"] for t in loop.client_times)
    for times, init in zip(loop.client_times, TRAINER_INIT_SECONDS):
        times["trainer_init"] = init
    return {"seconds": seconds, "clients": loop.client_times, "outside_fits": seconds - fits}


# ---------------------------------------------------------------------------------------- plain
def plain_round(split: SplitModel, dm: FixedBatchesDataModule, hparams: dict[str, Any], local_steps: int,
                accumulate: int) -> dict[str, Any]:
    start = time.perf_counter()
    global_adapter = split.lora_state("adapter")
    model = split.compressed
    uploads, weights, clients = [], [], []
    for client_id in range(dm.num_clients):
        c_start = time.perf_counter()
        split.load_lora_state(global_adapter)
        split.set_trainable("adapter")
        params = list(split.lora_parameters("adapter").values())
        optimizer = torch.optim.AdamW(params, lr=hparams["lr"], betas=hparams["betas"],
                                      weight_decay=hparams["weight_decay"])
        optimizer.zero_grad(set_to_none=True)  # as Lightning does before the first backward
        batches = dm.batches[client_id]
        starts: list[float] = []
        for step in range(local_steps):
            for micro in range(accumulate):
                batch = batches[step * accumulate + micro]
                starts.append(time.perf_counter())
                loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             labels=batch["labels"], use_cache=False).loss
                (loss / accumulate).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        last = time.perf_counter()
        first = starts[0]
        uploads.append(split.lora_state("adapter"))
        weights.append(dm.client_num_examples(client_id))
        end = time.perf_counter()
        clients.append({"setup": first - c_start, "loop": last - first, "teardown": end - last,
                        "total": end - c_start, "steps": _step_durations(starts, last)})
    split.load_lora_state(fedavg(uploads, weights))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "clients": clients,
            "outside_fits": seconds - sum(c["total"] for c in clients)}


# ---------------------------------------------------------------------------------------- driver
def max_abs_diff(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def median_ms(values: list[float]) -> float:
    return 1000.0 * statistics.median(values)


def run(args: argparse.Namespace) -> dict[str, Any]:
    load_at_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    torch.set_num_threads(args.threads or torch.get_num_threads())
    split = build_split(args.model, args.seed, args.lora_dropout)
    config = split.full.config
    per_client = args.local_steps * args.accumulate
    data = make_batches(args.clients, per_client, args.batch_size, args.seq_len, config.vocab_size, args.seed)
    # Unequal client sizes so the FedAvg weights matter.
    dm = FixedBatchesDataModule(data, [per_client * args.batch_size * (1 + c % 3) for c in range(args.clients)])
    toolkit = Toolkit(split, args)
    hparams = toolkit.loop.client_hparams
    initial = split.lora_state("all")

    def fresh() -> None:
        split.load_lora_state(initial)
        for param in split.lora_parameters("all").values():
            param.grad = None  # Lightning leaves the last step's gradients on the parameters
        torch.manual_seed(args.seed)
        gc.collect()

    # Warm-up (untimed for the comparison, but reported): the first fit in a process pays one-off
    # imports and first-use costs that a real run pays once for the server's own Trainer.
    time_trainer_init()
    warm_dm = FixedBatchesDataModule(data[:1], dm.num_examples[:1])
    fresh()
    warm_tk = toolkit_round(toolkit, warm_dm)
    fresh()
    plain_round(split, warm_dm, hparams, args.local_steps, args.accumulate)

    toolkit_runs, plain_runs, diffs = [], [], []
    for repeat in range(args.repeats):
        order = ("toolkit", "plain") if repeat % 2 == 0 else ("plain", "toolkit")
        results = {}
        for path in order:
            fresh()
            if path == "toolkit":
                results[path] = toolkit_round(toolkit, dm)
            else:
                results[path] = plain_round(split, dm, hparams, args.local_steps, args.accumulate)
            results[path]["adapter"] = split.lora_state("adapter")
        diffs.append(max_abs_diff(results["toolkit"].pop("adapter"), results["plain"].pop("adapter")))
        toolkit_runs.append(results["toolkit"])
        plain_runs.append(results["plain"])
        print(f"  repeat {repeat + 1}/{args.repeats} ({' then '.join(order)}): toolkit "
              f"{results['toolkit']['seconds']:.3f} s, plain {results['plain']['seconds']:.3f} s, "
              f"max |diff| {diffs[-1]:.2e}", flush=True)
    moved = max_abs_diff(split.lora_state("adapter"), {k: initial[k] for k in split.lora_parameters("adapter")})

    profile_text = None
    if args.profile:
        fresh()
        profiler = cProfile.Profile()
        profiler.enable()
        toolkit_round(toolkit, dm)
        profiler.disable()
        stream = io.StringIO()
        stats = pstats.Stats(profiler, stream=stream).strip_dirs()
        stats.sort_stats("cumulative").print_stats(args.profile)
        stats.sort_stats("tottime").print_stats(args.profile)
        profile_text = stream.getvalue()

    def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
        clients = [c for r in runs for c in r["clients"]]
        return {
            "round_seconds": [r["seconds"] for r in runs],
            "round_seconds_median": statistics.median(r["seconds"] for r in runs),
            "outside_fits_ms_median": median_ms([r["outside_fits"] for r in runs]),
            **{f"client_{k}_ms_median": median_ms([c[k] for c in clients])
               for k in ("setup", "loop", "teardown", "total", "trainer_init") if k in clients[0]},
            # Per micro-batch: start to next start (forward, backward, and the optimizer step and
            # the framework's per-step work after the last micro-batch of each window).
            "step_ms_median": median_ms([d for c in clients for d in c["steps"]]),
        }

    toolkit, plain = summary(toolkit_runs), summary(plain_runs)
    ratios = [t["seconds"] / p["seconds"] for t, p in zip(toolkit_runs, plain_runs)]
    # The same client in the same repeat on both paths: robust against load bursts that hit one round.
    client_ratios = [tc["total"] / pc["total"] for t, p in zip(toolkit_runs, plain_runs)
                     for tc, pc in zip(t["clients"], p["clients"])]
    client_extra_ms = [1000.0 * (tc["total"] - pc["total"]) for t, p in zip(toolkit_runs, plain_runs)
                       for tc, pc in zip(t["clients"], p["clients"])]
    n_params = sum(p.numel() for p in split.full.parameters())
    return {
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "profile")},
        "machine": {
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": sys.version.split()[0], "torch": torch.__version__,
            "lightning": __import__("lightning").__version__,
            "transformers": __import__("transformers").__version__, "peft": __import__("peft").__version__,
            "load_average_start": load_at_start,
            "load_average_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "model": {"name": args.model, "params": n_params, "layers": config.num_hidden_layers,
                  "hidden": config.hidden_size, "vocab": config.vocab_size,
                  "compressed_layers": list(split.layout.compressed),
                  "adapter_lora_params": sum(p.numel() for p in split.lora_parameters("adapter").values())},
        "toolkit": toolkit,
        "plain": plain,
        "ratio_of_medians": toolkit["round_seconds_median"] / plain["round_seconds_median"],
        "ratio_per_repeat": ratios,
        "ratio_median_of_pairs": statistics.median(ratios),
        "client_fit_ratio_median": statistics.median(client_ratios),
        "client_fit_extra_ms_median": statistics.median(client_extra_ms),
        "ratio_from_client_medians": (
            (args.clients * toolkit["client_total_ms_median"] + toolkit["outside_fits_ms_median"])
            / (args.clients * plain["client_total_ms_median"] + plain["outside_fits_ms_median"])
        ),
        "warmup_first_client_setup_ms": 1000.0 * warm_tk["clients"][0]["setup"],
        "max_abs_diff_toolkit_vs_plain": max(diffs),
        "bit_identical": all(diff == 0.0 for diff in diffs),  # False for a NaN too
        "max_abs_adapter_change_in_round": moved,
        "profile": profile_text,
    }


def report(res: dict[str, Any], args: argparse.Namespace) -> None:
    t, p, m = res["toolkit"], res["plain"], res["model"]
    print(f"\nmodel {m['name']}: {m['params'] / 1e6:.2f}M params, {m['layers']} layers x {m['hidden']}, "
          f"compressed layers {m['compressed_layers']}; {args.clients} clients x {args.local_steps} steps "
          f"x {args.accumulate} micro-batches of {args.batch_size}x{args.seq_len}; {args.repeats} repeats, "
          f"torch threads {res['machine']['torch_threads']}")
    rows = [
        ("round [s] (median)", t["round_seconds_median"], p["round_seconds_median"], "{:.3f}"),
        ("per-client setup [ms]", t["client_setup_ms_median"], p["client_setup_ms_median"], "{:.1f}"),
        ("  of which pl.Trainer() [ms]", t["client_trainer_init_ms_median"], 0.0, "{:.1f}"),
        ("per-client loop [ms]", t["client_loop_ms_median"], p["client_loop_ms_median"], "{:.1f}"),
        ("  per micro-batch [ms]", t["step_ms_median"], p["step_ms_median"], "{:.2f}"),
        ("per-client teardown [ms]", t["client_teardown_ms_median"], p["client_teardown_ms_median"], "{:.1f}"),
        ("per-client total [ms]", t["client_total_ms_median"], p["client_total_ms_median"], "{:.1f}"),
        ("round outside fits [ms]", t["outside_fits_ms_median"], p["outside_fits_ms_median"], "{:.1f}"),
    ]
    print(f"{'':28}{'toolkit':>12}{'plain':>12}{'diff':>12}")
    for name, a, b, fmt in rows:
        print(f"{name:28}{fmt.format(a):>12}{fmt.format(b):>12}{fmt.format(a - b):>12}")
    print("round seconds, all repeats: toolkit " + ", ".join(f"{s:.3f}" for s in t["round_seconds"])
          + " | plain " + ", ".join(f"{s:.3f}" for s in p["round_seconds"]))
    print(f"ratio toolkit/plain: {res['ratio_of_medians']:.3f} (of medians), per repeat "
          + ", ".join(f"{r:.3f}" for r in res["ratio_per_repeat"])
          + f"; goal <= 1.10: {'MET' if res['ratio_of_medians'] <= 1.10 else 'NOT MET'}")
    print(f"per client fit (paired, same client and repeat): toolkit/plain median {res['client_fit_ratio_median']:.3f}, "
          f"extra {res['client_fit_extra_ms_median']:.1f} ms; round ratio rebuilt from per-client medians "
          f"{res['ratio_from_client_medians']:.3f}")
    print(f"per-client fit setup: {t['client_setup_ms_median']:.1f} ms (median over clients x repeats); "
          f"goal < 50 ms: {'MET' if t['client_setup_ms_median'] < 50 else 'NOT MET'}; "
          f"first fit of the process (warm-up): {res['warmup_first_client_setup_ms']:.1f} ms")
    print(f"aggregated adapter, max |toolkit - plain| = {res['max_abs_diff_toolkit_vs_plain']:.3e} "
          f"(the round moved it by up to {res['max_abs_adapter_change_in_round']:.3e}); bit-identical in every "
          f"repeat: {res['bit_identical']}")
    if res["profile"]:
        print("\n" + res["profile"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--clients", type=int, default=8, help="clients in the round (all take part)")
    parser.add_argument("--local-steps", type=int, default=10, help="optimizer steps per client")
    parser.add_argument("--accumulate", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--batch-size", type=int, default=4, help="sequences per micro-batch")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per path (after one warm-up)")
    parser.add_argument("--model", default="small",
                        help=f"a random-init preset {sorted(PRESETS)}, 'stories260K' (the embedded real "
                             "model), or any Hugging Face id / local folder / embedded: reference")
    parser.add_argument("--lora-dropout", type=float, default=0.05,
                        help="LoRA dropout (> 0 draws masks from the global RNG; both paths draw the "
                             "same masks as long as nothing else consumes the global RNG)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model, the data and the RNG")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="after timing, cProfile one toolkit round and print the top N functions")
    parser.add_argument("--json", metavar="OUT", help="write all numbers to this JSON file")
    args = parser.parse_args(argv)
    for name in ("clients", "local_steps", "accumulate", "batch_size", "seq_len", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    started = time.perf_counter()
    res = run(args)
    res["benchmark_wall_seconds"] = time.perf_counter() - started
    report(res, args)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(res, handle, indent=2)
    return res


if __name__ == "__main__":
    main()
