"""Overhead of one FedBiOT round of the toolkit against a plain PyTorch loop doing the same work.

Both paths train the same model views on the same pre-built batches with the same loss and the
same optimizer, and aggregate with the same :func:`fedbiot_pl.federation.aggregation.fedavg`:

* **toolkit**: the production round, called directly: :meth:`RoundRunner.run_round
  <fedbiot_pl.federation.round.RoundRunner.run_round>` of the :class:`~fedbiot_pl.algorithms.FedBiOT`
  algorithm object (sampling, broadcast encoded as a ``LoRAState`` message + ledger, the in-process
  transport, per client :meth:`LocalClients.run <fedbiot_pl.federation.client.LocalClients.run>`:
  decode and load of the broadcast, a seeded random context, the ``client_fit`` hook point, one fresh
  lean ``pl.Trainer`` + ``Trainer.fit`` of the algorithm's client module, the encoded upload; then
  decode + validation of every upload, FedAvg and apply), with a small data object exposing the
  client API over fixed batches. No server Trainer, no Lightning callback: the runner is built as
  ``FederatedLoop.on_fit_start`` builds it (``LocalClients`` + ``RoundRunner`` with its default
  in-process transport and ledger; CPU, one process, ``32-true``).
* **plain**: per client ``load_lora_state`` -> a random context of its own seeded from (seed,
  round, client) as ``LocalClients.run`` seeds one -> ``set_trainable("adapter")`` -> fresh AdamW ->
  ``local_steps * accumulate`` forward/backward (loss / accumulate) with ``step``/``zero_grad``
  every ``accumulate`` micro-batches -> cloned adapter upload; then the same ``fedavg``.

Every repeat runs, from the same LoRA weights each time:

1. a whole toolkit round and a whole plain round, one after the other (the order alternates between
   repeats): the round times and their ratio;
2. one **interleaved** round: the runner's round in which every client's toolkit fit (one
   ``LocalClients.run``) sits right next to the plain fit of the same client, from the same
   broadcast, the plain one first for every other client (alternating with the repeat too). The
   same client a fraction of a second apart on both paths gives the **paired per-client fit
   ratio** toolkit / plain, which the load of other processes on the machine disturbs far less than
   whole rounds some seconds apart (the ratio of the same client in the separate rounds of 1. is
   reported too).

The script reports medians and all repeats, and a break-down of the toolkit's time per client
(from the interleaved rounds):

* ``setup``: from the entry of ``LocalClients.run`` to the entry of the first ``training_step``;
  of it, ``receive`` is the part before the fit (decode and load of the broadcast, the client's
  random context, the hook point) and ``trainer_init`` the ``pl.Trainer(...)`` construction; the
  rest is fit set-up, Lightning's hooks, the optimizer and the first batch fetch,
* ``loop``: from the first ``training_step`` entry to the end of the last ``on_train_batch_end``,
* ``teardown``: from there to the return of ``LocalClients.run`` (fit teardown, step check, mean
  loss, upload copy + encode, gradient clean-up); of it, ``send`` is the part after the fit,

and the plain path's matching ``setup`` (client start to first forward) and ``loop``. The
timestamps come from a subclass of the algorithm's client module that only reads
``time.perf_counter()`` in ``training_step``/``on_train_batch_end``, from wrappers on the
``run`` and ``_fit`` methods of the :class:`LocalClients` instance, and from a wrapper on
``pl.Trainer.__init__``.

Both paths do the same math: the script checks that the aggregated adapters are equal, in the
separate and in the interleaved rounds (they are bit-identical, LoRA dropout included: each client
fit draws its masks in its own seeded random context, and the fixed-batch loader has its own
generator). peft's zero LoRA ``B`` is replaced by small seeded values so that the check compares
non-trivial updates.

``--profile N`` prints a cProfile of one more toolkit round.

Example::

    python benchmarks/round_overhead.py --clients 8 --local-steps 10 --model small
    python benchmarks/round_overhead.py --model stories260K --json stories.json
"""

from __future__ import annotations

import argparse
import cProfile
import functools
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

from fedbiot_pl.algorithms import Algorithm, ClientOptim, resolve_algorithm
from fedbiot_pl.assets import resolve
from fedbiot_pl.federation.aggregation import fedavg
from fedbiot_pl.federation.client import ClientFitSettings, LocalClients
from fedbiot_pl.federation.placement import client_seed
from fedbiot_pl.federation.round import RoundRunner, RoundSettings
from fedbiot_pl.federation.transport import ClientReply
from fedbiot_pl.model.views import ModelViews

ALGORITHM = "fedbiot"
# Random-init LLaMA presets (the shapes of the LlamaConfig); anything else is a model path/hub id.
PRESETS: dict[str, dict[str, int]] = {
    # Big enough that compute dominates on a CPU in a realistic way (5.4M params, 6 layers).
    "small": {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 6, "num_attention_heads": 8,
              "num_key_value_heads": 4, "vocab_size": 2048},
    # A smoke-test size: tiny compute, so the ratio is dominated by per-step/per-fit overhead.
    "tiny": {"hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 5, "num_attention_heads": 8,
             "num_key_value_heads": 4, "vocab_size": 512},
}
ALIASES = {"stories260K": "embedded:models/stories260K"}


# ---------------------------------------------------------------------------------------- model
def build_views(model: str, seed: int, lora_dropout: float, algorithm: Algorithm) -> ModelViews:
    """The model views of ``model`` laid out for ``algorithm``, with seeded non-zero LoRA ``B``."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if model in PRESETS:
        full = LlamaForCausalLM(LlamaConfig(**PRESETS[model], max_position_embeddings=2048))
    else:
        path = resolve(ALIASES.get(model, model))
        full = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                    local_files_only=os.path.isdir(path))
    views = ModelViews.from_model(full, adapter_layers=2, drop_rate=0.2, lora_dropout=lora_dropout)
    views = views.use_algorithm(algorithm).build()
    # peft initialises LoRA B to zero; give it (seeded) small values so the very first steps already
    # move both factors and the equality check compares non-trivial numbers.
    with torch.no_grad():
        for key, param in views.lora_parameters("all").items():
            if "lora_B" in key:
                param.normal_(0.0, 0.01)
    return views


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
    """The round's client data API (:class:`~fedbiot_pl.federation.client.ClientData`) over fixed batches.

    Pre-built batches: no tokenizer, no collation.
    """

    def __init__(self, batches: list[list[dict[str, Tensor]]], num_examples: list[int]) -> None:
        self.batches, self.num_examples = batches, num_examples

    @property
    def num_clients(self) -> int:
        """The number of clients."""
        return len(self.batches)

    def client_dataloader(self, client_id: int, round_idx: int = 0) -> DataLoader:
        """The client's fixed batches, in order."""
        # A generator of its own, as the real datamodule has: without one, creating the iterator
        # draws its base seed from the global RNG, which shifts every LoRA-dropout mask after it.
        generator = torch.Generator().manual_seed(client_id)
        return DataLoader(self.batches[client_id], batch_size=None, shuffle=False,  # type: ignore[arg-type]
                          generator=generator)

    def client_num_examples(self, client_id: int) -> int:
        """The client's FedAvg weight."""
        return self.num_examples[client_id]


# ---------------------------------------------------------------------------------------- toolkit
class StepTimes:
    """Mixin for the client module: records when each ``training_step`` starts and each batch ends."""

    step_starts: list[float]
    batch_ends: list[float]

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """The module's step, after noting when it starts."""
        self.step_starts.append(time.perf_counter())
        return super().training_step(batch, batch_idx)  # type: ignore[misc]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Note when the batch ends, then the module's own hook."""
        self.batch_ends.append(time.perf_counter())
        super().on_train_batch_end(outputs, batch, batch_idx)  # type: ignore[misc]


def timed_client_module(algorithm: Algorithm, views: ModelViews, optim: ClientOptim) -> Any:
    """The algorithm's client module with :class:`StepTimes` mixed in.

    Built like :meth:`~fedbiot_pl.algorithms.Algorithm.client_module`, with the same hyper-parameters.
    """
    module = algorithm.client_module(views, optim)
    timed_cls = type(f"Timed{type(module).__name__}", (StepTimes, type(module)), {})
    timed = timed_cls(views, **dict(module.hparams))
    timed.step_starts, timed.batch_ends = [], []
    return timed


def _step_durations(starts: list[float], last_end: float) -> list[float]:
    """Durations of the micro-batches from their start times (the last one ends at ``last_end``)."""
    return [b - a for a, b in zip(starts, starts[1:] + [last_end], strict=True)]


TRAINER_INIT_SECONDS: list[float] = []


def time_trainer_init() -> None:
    """Record how long each ``pl.Trainer(...)`` construction takes (a wrapper on the class)."""
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
    """The toolkit side: the production :class:`RoundRunner` of one data object, with timed clients.

    Built as ``FederatedLoop.on_fit_start`` builds it: the algorithm's client module (made once and
    shared by every client fit), :class:`LocalClients` on the server's views, a :class:`RoundRunner`
    with its default in-process transport and a fresh ledger. The ``run`` and ``_fit`` methods of
    the :class:`LocalClients` instance are wrapped to record (start, fit start, first step, last
    batch end, fit end, end) per client; nothing of the loop or the runner is subclassed.

    With :attr:`pair` set (an interleaved round, see :func:`toolkit_round`), the wrapper of ``run``
    also runs the plain client of the same client id right before or right after the toolkit
    client, outside the toolkit client's timestamps, from the same broadcast; both fits seed their
    own random context from (seed, round, client), so neither changes what the other one draws.

    Args:
        algorithm: the algorithm object.
        views: the (built) model views.
        module: the timed client module (:func:`timed_client_module`).
        data: the clients' data.
        args: the script's arguments (local steps, accumulation, seed).
    """

    def __init__(self, algorithm: Algorithm, views: ModelViews, module: Any, data: FixedBatchesDataModule,
                 args: argparse.Namespace) -> None:
        self.module, self.data = module, data
        self.clients = LocalClients(algorithm, views, module, data,
                                    ClientFitSettings(args.local_steps, args.accumulate, None),
                                    device="cpu", precision="32-true", seed=args.seed, world_size=1)
        self.runner = RoundRunner(algorithm, views, data, self.clients, RoundSettings(seed=args.seed))
        self.client_times: list[dict[str, Any]] = []
        self.pair: PlainPair | None = None
        self._fit_marks: dict[str, float] = {}
        run, fit = self.clients.run, self.clients._fit

        def timed(client_id: int, broadcast: bytes, round_idx: int, attempt: int) -> ClientReply:
            module.step_starts.clear()
            module.batch_ends.clear()
            self._fit_marks.clear()
            start = time.perf_counter()
            reply = run(client_id, broadcast, round_idx, attempt)
            end = time.perf_counter()
            if reply.dropped is None:  # a dropped client is not timed (the round is refused below)
                first, last = module.step_starts[0], module.batch_ends[-1]
                fit_start, fit_end = self._fit_marks["start"], self._fit_marks["end"]
                self.client_times.append({
                    "client": client_id, "setup": first - start, "receive": fit_start - start, "loop": last - first,
                    "teardown": end - last, "send": end - fit_end, "total": end - start,
                    "steps": _step_durations(module.step_starts, last),
                })
            return reply

        @functools.wraps(run)
        def timed_run(client_id: int, broadcast: bytes, round_idx: int, attempt: int = 0) -> ClientReply:
            pair = self.pair
            plain_first = pair is not None and pair.plain_first(client_id)
            if plain_first:
                pair.fit(client_id, round_idx)
            reply = timed(client_id, broadcast, round_idx, attempt)
            if pair is not None and not plain_first:
                pair.fit(client_id, round_idx)
            return reply

        @functools.wraps(fit)
        def timed_fit(*fit_args: Any, **fit_kwargs: Any) -> float:
            self._fit_marks["start"] = time.perf_counter()
            try:
                return fit(*fit_args, **fit_kwargs)
            finally:
                self._fit_marks["end"] = time.perf_counter()

        self.clients.run = timed_run  # type: ignore[method-assign]
        self.clients._fit = timed_fit  # type: ignore[method-assign]


def toolkit_round(toolkit: Toolkit, round_idx: int = 0, pair: PlainPair | None = None) -> dict[str, Any]:
    """One timed round of the runner; refuses a round in which any client was dropped or rejected.

    With ``pair``, every client's toolkit fit is paired with its plain fit (see :class:`Toolkit`);
    the round's wall time then includes the plain fits, and only the per-client times are used.
    """
    toolkit.client_times = []
    toolkit.pair = pair
    TRAINER_INIT_SECONDS.clear()
    start = time.perf_counter()
    try:
        result = toolkit.runner.run_round(round_idx)  # the whole round
    finally:
        toolkit.pair = None
    seconds = time.perf_counter() - start
    # The runner drops a client whose fit fails and goes on with the rest; a benchmark must not.
    clients = list(range(toolkit.data.num_clients))
    if (len(result.attempts) != 1 or result.entry["faults"] or result.entry["accepted"] != clients
            or len(toolkit.client_times) != len(clients)):
        raise RuntimeError(f"the toolkit round did not run every client cleanly: {result.entry}") \
            from toolkit.clients.last_error
    fits = sum(t["total"] for t in toolkit.client_times)
    for times, init in zip(toolkit.client_times, TRAINER_INIT_SECONDS, strict=True):
        times["trainer_init"] = init
    return {"seconds": seconds, "clients": toolkit.client_times, "outside_fits": seconds - fits}


# ---------------------------------------------------------------------------------------- plain
def plain_client(views: ModelViews, batches: list[dict[str, Tensor]], global_adapter: dict[str, Tensor],
                 optim: ClientOptim, local_steps: int, accumulate: int,
                 rng_seed: int) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """One client of the plain loop from ``global_adapter``: its upload and its times.

    The fit draws its LoRA dropout masks in a random context of its own seeded with ``rng_seed``
    (what ``LocalClients.run`` does with :func:`~fedbiot_pl.federation.placement.client_seed`).
    """
    c_start = time.perf_counter()
    views.load_lora_state(global_adapter)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(rng_seed)
        views.set_trainable("adapter")
        params = list(views.lora_parameters("adapter").values())
        optimizer = torch.optim.AdamW(params, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)
        optimizer.zero_grad(set_to_none=True)  # as Lightning does before the first backward
        model = views.compressed
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
        upload = views.lora_state("adapter")
    end = time.perf_counter()
    return upload, {"setup": starts[0] - c_start, "loop": last - starts[0], "teardown": end - last,
                    "total": end - c_start, "steps": _step_durations(starts, last)}


def plain_round(views: ModelViews, dm: FixedBatchesDataModule, optim: ClientOptim, args: argparse.Namespace,
                round_idx: int = 0) -> dict[str, Any]:
    """The same round in plain PyTorch (see the module docstring)."""
    start = time.perf_counter()
    global_adapter = views.lora_state("adapter")
    uploads, weights, clients = [], [], []
    for client_id in range(dm.num_clients):
        upload, times = plain_client(views, dm.batches[client_id], global_adapter, optim, args.local_steps,
                                     args.accumulate, client_seed(args.seed, round_idx, client_id))
        uploads.append(upload)
        weights.append(dm.client_num_examples(client_id))
        clients.append(times)
    views.load_lora_state(fedavg(uploads, weights))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "clients": clients,
            "outside_fits": seconds - sum(c["total"] for c in clients)}


class PlainPair:
    """The plain clients of an interleaved round: each one runs next to the toolkit client of the same id.

    The plain client goes first for every other client (which ones alternates with ``repeat``), so
    neither path always runs on the caches the other one warmed.

    Args:
        views: the model views (shared with the toolkit).
        dm: the clients' data.
        optim: the clients' optimizer settings.
        args: the script's arguments (local steps, accumulation).
        repeat: the repeat this round belongs to.
    """

    def __init__(self, views: ModelViews, dm: FixedBatchesDataModule, optim: ClientOptim,
                 args: argparse.Namespace, repeat: int) -> None:
        self.views, self.dm, self.optim, self.args, self.repeat = views, dm, optim, args, repeat
        self.global_adapter = views.lora_state("adapter")  # what the round broadcasts of the adapter
        self.uploads: dict[int, dict[str, Tensor]] = {}
        self.times: dict[int, dict[str, Any]] = {}
        self.first: dict[int, str] = {}

    def plain_first(self, client_id: int) -> bool:
        """Whether the plain client runs before the toolkit client of ``client_id``."""
        first = (client_id + self.repeat) % 2 == 1
        self.first[client_id] = "plain" if first else "toolkit"
        return first

    def fit(self, client_id: int, round_idx: int) -> None:
        """Run the plain client ``client_id`` of round ``round_idx`` (its upload and times are kept)."""
        self.uploads[client_id], self.times[client_id] = plain_client(
            self.views, self.dm.batches[client_id], self.global_adapter, self.optim, self.args.local_steps,
            self.args.accumulate, client_seed(self.args.seed, round_idx, client_id))

    def aggregate(self) -> dict[str, Tensor]:
        """The FedAvg of the plain uploads, in client order."""
        clients = sorted(self.uploads)
        return fedavg([self.uploads[c] for c in clients], [self.dm.client_num_examples(c) for c in clients])


# ---------------------------------------------------------------------------------------- driver
def max_abs_diff(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    """The largest absolute difference between two states with the same keys."""
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def median_ms(values: list[float]) -> float:
    """The median of ``values`` (seconds) in milliseconds."""
    return 1000.0 * statistics.median(values)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Warm up, time ``args.repeats`` interleaved rounds of both paths, and summarise them."""
    load_at_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    torch.set_num_threads(args.threads or torch.get_num_threads())
    algorithm = resolve_algorithm(ALGORITHM)
    views = build_views(args.model, args.seed, args.lora_dropout, algorithm)
    config = views.full.config
    per_client = args.local_steps * args.accumulate
    data = make_batches(args.clients, per_client, args.batch_size, args.seq_len, config.vocab_size, args.seed)
    # Unequal client sizes so the FedAvg weights matter.
    dm = FixedBatchesDataModule(data, [per_client * args.batch_size * (1 + c % 3) for c in range(args.clients)])
    optim = ClientOptim()  # the loop's defaults; no proximal term on either path
    module = timed_client_module(algorithm, views, optim)  # once per run, as FederatedLoop.on_fit_start
    toolkit = Toolkit(algorithm, views, module, dm, args)
    initial = views.lora_state("all")

    def fresh() -> None:
        views.load_lora_state(initial)
        for param in views.lora_parameters("all").values():
            param.grad = None
        torch.manual_seed(args.seed)
        gc.collect()

    # Warm-up (untimed for the comparison, but reported): the first fit in a process pays one-off
    # imports and first-use costs that a real run pays once for the server's own Trainer.
    time_trainer_init()
    warm_dm = FixedBatchesDataModule(data[:1], dm.num_examples[:1])
    fresh()
    warm_tk = toolkit_round(Toolkit(algorithm, views, module, warm_dm, args))
    fresh()
    plain_round(views, warm_dm, optim, args)

    toolkit_runs, plain_runs, diffs = [], [], []
    paired_toolkit: list[dict[str, Any]] = []  # per client, from the interleaved rounds
    paired_plain: list[dict[str, Any]] = []
    paired_order: list[str] = []
    for repeat in range(args.repeats):
        # Whole rounds, one path after the other (the round figures).
        order = ("toolkit", "plain") if repeat % 2 == 0 else ("plain", "toolkit")
        results = {}
        for path in order:
            fresh()
            if path == "toolkit":
                results[path] = toolkit_round(toolkit)
            else:
                results[path] = plain_round(views, dm, optim, args)
            results[path]["adapter"] = views.lora_state("adapter")
        diffs.append(max_abs_diff(results["toolkit"].pop("adapter"), results["plain"].pop("adapter")))
        toolkit_runs.append(results["toolkit"])
        plain_runs.append(results["plain"])
        # One interleaved round (the paired per-client figures): each toolkit client next to its plain twin.
        fresh()
        pair = PlainPair(views, dm, optim, args, repeat)
        interleaved = toolkit_round(toolkit, pair=pair)
        diffs.append(max_abs_diff(views.lora_state("adapter"), pair.aggregate()))
        for times in interleaved["clients"]:
            paired_toolkit.append(times)
            paired_plain.append(pair.times[times["client"]])
            paired_order.append(pair.first[times["client"]])
        fits = [t["total"] / pair.times[t["client"]]["total"] for t in interleaved["clients"]]
        print(f"  repeat {repeat + 1}/{args.repeats} ({' then '.join(order)}): toolkit "
              f"{results['toolkit']['seconds']:.3f} s, plain {results['plain']['seconds']:.3f} s; interleaved "
              f"per-client fit ratio median {statistics.median(fits):.3f}; max |diff| {diffs[-2]:.2e} (separate), "
              f"{diffs[-1]:.2e} (interleaved)",
              flush=True)
    moved = max_abs_diff(views.lora_state("adapter"), {k: initial[k] for k in views.lora_parameters("adapter")})

    profile_text = None
    if args.profile:
        fresh()
        profiler = cProfile.Profile()
        profiler.enable()
        toolkit_round(toolkit)
        profiler.disable()
        stream = io.StringIO()
        stats = pstats.Stats(profiler, stream=stream).strip_dirs()
        stats.sort_stats("cumulative").print_stats(args.profile)
        stats.sort_stats("tottime").print_stats(args.profile)
        profile_text = stream.getvalue()

    def summary(runs: list[dict[str, Any]], clients: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "round_seconds": [r["seconds"] for r in runs],
            "round_seconds_median": statistics.median(r["seconds"] for r in runs),
            "outside_fits_ms_median": median_ms([r["outside_fits"] for r in runs]),
            "separate_rounds_client_total_ms_median": median_ms([c["total"] for r in runs for c in r["clients"]]),
            "separate_rounds_step_ms_median": median_ms([d for r in runs for c in r["clients"] for d in c["steps"]]),
            **{f"client_{k}_ms_median": median_ms([c[k] for c in clients])
               for k in ("setup", "receive", "trainer_init", "loop", "teardown", "send", "total") if k in clients[0]},
            # Per micro-batch: start to next start (forward, backward, and the optimizer step and
            # the framework's per-step work after the last micro-batch of each window).
            "step_ms_median": median_ms([d for c in clients for d in c["steps"]]),
        }

    toolkit_summary = summary(toolkit_runs, paired_toolkit)
    plain_summary = summary(plain_runs, paired_plain)
    ratios = [t["seconds"] / p["seconds"] for t, p in zip(toolkit_runs, plain_runs, strict=True)]
    # The same client next to each other in the interleaved rounds: robust against load that changes
    # from second to second. The ratio of the separate rounds' clients (same client, same repeat, some
    # seconds apart) is kept for comparison with earlier runs.
    pairs = list(zip(paired_toolkit, paired_plain, strict=True))
    client_ratios = [tc["total"] / pc["total"] for tc, pc in pairs]
    client_extra_ms = [1000.0 * (tc["total"] - pc["total"]) for tc, pc in pairs]
    loop_ratios = [tc["loop"] / pc["loop"] for tc, pc in pairs]
    separate_ratios = [tc["total"] / pc["total"] for t, p in zip(toolkit_runs, plain_runs, strict=True)
                       for tc, pc in zip(t["clients"], p["clients"], strict=True)]
    by_order = {first: statistics.median(r for r, o in zip(client_ratios, paired_order, strict=True) if o == first)
                for first in sorted(set(paired_order))}
    n_params = sum(p.numel() for p in views.full.parameters())
    return {
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "profile")},
        "algorithm": algorithm.name,
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
                  "compressed_layers": list(views.layout.compressed),
                  "adapter_lora_params": sum(p.numel() for p in views.lora_parameters("adapter").values())},
        "toolkit": toolkit_summary,
        "plain": plain_summary,
        "ratio_of_medians": toolkit_summary["round_seconds_median"] / plain_summary["round_seconds_median"],
        "ratio_per_repeat": ratios,
        "ratio_median_of_pairs": statistics.median(ratios),
        "client_fit_ratios": client_ratios,
        "client_fit_ratio_median": statistics.median(client_ratios),
        "client_fit_ratio_median_by_first": by_order,
        "client_fit_extra_ms_median": statistics.median(client_extra_ms),
        "client_loop_ratio_median": statistics.median(loop_ratios),
        "client_fit_ratio_median_separate_rounds": statistics.median(separate_ratios),
        # Load from other processes only ever adds time: the fastest fit of each path is the least disturbed.
        "client_fit_ratio_of_minimums": min(tc["total"] for tc, _ in pairs) / min(pc["total"] for _, pc in pairs),
        "ratio_from_client_medians": (
            (args.clients * toolkit_summary["client_total_ms_median"] + toolkit_summary["outside_fits_ms_median"])
            / (args.clients * plain_summary["client_total_ms_median"] + plain_summary["outside_fits_ms_median"])
        ),
        "warmup_first_client_setup_ms": 1000.0 * warm_tk["clients"][0]["setup"],
        "max_abs_diff_toolkit_vs_plain": max(diffs),
        "bit_identical": all(diff == 0.0 for diff in diffs),  # False for a NaN too
        "max_abs_adapter_change_in_round": moved,
        "profile": profile_text,
    }


def report(res: dict[str, Any], args: argparse.Namespace) -> None:
    """Print the results as a table and the goals' verdicts."""
    t, p, m = res["toolkit"], res["plain"], res["model"]
    print(f"\nmodel {m['name']}: {m['params'] / 1e6:.2f}M params, {m['layers']} layers x {m['hidden']}, "
          f"compressed layers {m['compressed_layers']}; algorithm {res['algorithm']}; {args.clients} clients x "
          f"{args.local_steps} steps x {args.accumulate} micro-batches of {args.batch_size}x{args.seq_len}; "
          f"{args.repeats} repeats, torch threads {res['machine']['torch_threads']}")
    rows = [
        ("round [s] (median)", t["round_seconds_median"], p["round_seconds_median"], "{:.3f}"),
        ("per-client setup [ms]", t["client_setup_ms_median"], p["client_setup_ms_median"], "{:.1f}"),
        ("  of which receive [ms]", t["client_receive_ms_median"], 0.0, "{:.1f}"),
        ("  of which pl.Trainer() [ms]", t["client_trainer_init_ms_median"], 0.0, "{:.1f}"),
        ("per-client loop [ms]", t["client_loop_ms_median"], p["client_loop_ms_median"], "{:.1f}"),
        ("  per micro-batch [ms]", t["step_ms_median"], p["step_ms_median"], "{:.2f}"),
        ("per-client teardown [ms]", t["client_teardown_ms_median"], p["client_teardown_ms_median"], "{:.1f}"),
        ("  of which send [ms]", t["client_send_ms_median"], 0.0, "{:.1f}"),
        ("per-client total [ms]", t["client_total_ms_median"], p["client_total_ms_median"], "{:.1f}"),
        ("  in the separate rounds [ms]", t["separate_rounds_client_total_ms_median"],
         p["separate_rounds_client_total_ms_median"], "{:.1f}"),
        ("  per micro-batch there [ms]", t["separate_rounds_step_ms_median"], p["separate_rounds_step_ms_median"],
         "{:.2f}"),
        ("round outside fits [ms]", t["outside_fits_ms_median"], p["outside_fits_ms_median"], "{:.1f}"),
    ]
    print(f"{'':30}{'toolkit':>12}{'plain':>12}{'diff':>12}")
    for name, a, b, fmt in rows:
        print(f"{name:30}{fmt.format(a):>12}{fmt.format(b):>12}{fmt.format(a - b):>12}")
    print("round seconds, all repeats: toolkit " + ", ".join(f"{s:.3f}" for s in t["round_seconds"])
          + " | plain " + ", ".join(f"{s:.3f}" for s in p["round_seconds"]))
    print(f"ratio toolkit/plain: {res['ratio_of_medians']:.3f} (of medians), per repeat "
          + ", ".join(f"{r:.3f}" for r in res["ratio_per_repeat"])
          + f"; goal <= 1.10: {'MET' if res['ratio_of_medians'] <= 1.10 else 'NOT MET'}")
    order = ", ".join(f"{first} first {r:.3f}" for first, r in res["client_fit_ratio_median_by_first"].items())
    paired = res["client_fit_ratio_median"]
    print(f"per client fit (paired: the same client next to each other in an interleaved round): toolkit/plain median "
          f"{paired:.3f} (goal <= 1.05: {'MET' if paired <= 1.05 else 'NOT MET'}; {order}), "
          f"extra {res['client_fit_extra_ms_median']:.1f} ms, step loop alone "
          f"{res['client_loop_ratio_median']:.3f}; fastest toolkit fit / fastest plain fit "
          f"{res['client_fit_ratio_of_minimums']:.3f}; same client in the separate rounds "
          f"{res['client_fit_ratio_median_separate_rounds']:.3f}; round ratio rebuilt from per-client medians "
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
    """Parse ``argv``, run the benchmark, print and optionally write (``--json``) its results."""
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
