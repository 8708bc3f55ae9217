"""KD-FedLLM: clients share top-k logits on a public slice instead of parameters (FedMKT: :mod:`.fedmkt`).

``fed_kd`` (FedMD-style) and ``fedmkt`` (FedMKT's mutual distillation, FATE-LLM). Each client keeps
its own LoRA across rounds; nothing but logits travels. One round ``t`` on public slice ``S_t``
(:func:`~fedbiot_pl.distillation.public.public_rows`: the same rows for every party)::

    server -> clients  targets on S_{t-1} (none in round 0)          LogitsMessage
    client             KD fit on S_{t-1}: alpha CE + (1 - alpha) KD   kd_steps
                       private fit: CE                                local_steps
    client -> server   its top-k logits on S_t, CE per example         LogitsMessage
    server (fed_kd)    union of indices, weighted mean, top-k renormalised -> targets on S_t
    server (fedmkt)    own top-k on S_t; per example the teacher with the lowest CE (``greater``)
                       among its own and the clients'; distils its LoRA on S_t; its new top-k -> targets

FedMKT runs the server's step and the clients' KD inside one epoch; here the clients' KD on the
server's answer happens at the start of the next round (a one-round shift), so a round is one
exchange. The server's LoRA is the run's global model (validated, checkpointed, exported as
``final_adapter``); each client's LoRA is exported under ``final_adapter/clients/``.

Clients hold the full model (``client_model: full``, LoRA on every layer) or FedBiOT's emulator
built from it (``client_model: emulator``: emulator + adapter; the server then trains the adapter
inside the full model).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from torch import Tensor

from fedbiot_pl.algorithms.base import (
    Algorithm,
    ClientOptim,
    LayoutRequest,
    Part,
    RunSettings,
    compressed_layout,
    register_algorithm,
)
from fedbiot_pl.distillation.public import (
    PublicSlice,
    TargetBatches,
    collect_topk,
    empty_topk,
    pass_steps,
    public_rows,
)
from fedbiot_pl.distillation.targets import aggregate_topk
from fedbiot_pl.distillation.topk import TopK
from fedbiot_pl.errors import ConfigError
from fedbiot_pl.federation.placement import client_seed
from fedbiot_pl.model.layer_drop import LayerLayout

ClientModel = Literal["full", "emulator"]


def cpu_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A LoRA state on the CPU (what is kept per client between its rounds)."""
    return {key: value.cpu() for key, value in state.items()}
PUBLIC_API = ("num_public_examples", "public_lengths", "public_dataloader")


class KDAlgorithm(Algorithm):
    """What both KD algorithms share: settings, the public slice, per-client LoRA, logit messages.

    Args:
        top_k: logits kept per token (FedMKT: 128).
        temperature: tau of the targets, ``q = softmax(values / tau)`` (FedMKT: 1.0; not applied to the student).
        kd_alpha: weight of the label cross-entropy in the KD fits; ``1 - kd_alpha`` weighs the
            distillation term (FedMKT's ``kd_alpha``: 0.9).
        public_examples: public examples per round (``null``: the whole public set every round, as FedMKT).
        kd_steps: a client's KD optimizer steps per round (``null``: one pass over the slice, FedMKT's epoch).
        client_model: ``full`` = the server's model with LoRA on every layer; ``emulator`` = FedBiOT's
            compressed model (``model.split.drop_rate``, ``adapter_layers``).

    Bad values do not raise here: :meth:`check` reports them with the run's other settings (the
    loop's one validation step at start-up), so that every bad value is named at once.
    """

    family: ClassVar[str] = "kd"

    def __init__(self, top_k: int = 128, temperature: float = 1.0, kd_alpha: float = 0.9,
                 public_examples: int | None = 50, kd_steps: int | None = None, client_model: ClientModel = "full",
                 ) -> None:
        issues = []
        for label, value in (("top_k", top_k), ("public_examples", public_examples), ("kd_steps", kd_steps)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                issues.append(f"{label} must be an integer >= 1{'' if label == 'top_k' else ' or null'}, "
                              f"got {value!r}.")
        if top_k is None:
            issues.append("top_k must be an integer >= 1, got None.")
        if not temperature > 0:
            issues.append(f"temperature must be > 0, got {temperature!r}.")
        if not 0.0 <= kd_alpha <= 1.0:
            issues.append(f"kd_alpha must be in [0, 1] (the weight of the label CE), got {kd_alpha!r}.")
        if client_model not in ("full", "emulator"):
            issues.append(f"client_model must be 'full' or 'emulator', got {client_model!r}.")
        self.setting_issues = issues  # reported by check(), with the run's other settings, all at once
        self.top_k, self.temperature, self.kd_alpha = top_k, float(temperature), float(kd_alpha)
        self.public_examples, self.kd_steps, self.client_model = public_examples, kd_steps, client_model
        self._clients: dict[int, dict[str, Tensor]] = {}
        self._clients_before: dict[int, dict[str, Tensor]] = {}
        self._initial: dict[str, Tensor] | None = None
        self._server: dict[str, Tensor] | None = None
        self._pending: TopK | None = None
        self._targets: TopK | None = None
        self._runtime: tuple[Any, Any, Any] | None = None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(top_k={self.top_k}, temperature={self.temperature}, kd_alpha={self.kd_alpha}, "
                f"public_examples={self.public_examples}, kd_steps={self.kd_steps}, "
                f"client_model={self.client_model!r})")

    # ------------------------------------------------------------------ layout and settings
    def layout(self, num_layers: int, request: LayoutRequest) -> LayerLayout:
        """``full``: every layer trains (as FedAvg-LoRA); ``emulator``: FedBiOT's emulator + adapter."""
        if self.client_model == "emulator":
            return compressed_layout(num_layers, request, bottom_default=0)
        if num_layers < 1:
            raise ConfigError(f"Invalid split: the model has {num_layers} decoder layers.")
        return LayerLayout(num_layers, (), (), tuple(range(num_layers)))

    def compresses(self) -> bool:
        """Clients hold the compressed model only with ``client_model: emulator``."""
        return self.client_model == "emulator"

    def server_steps(self, round_idx: int | None, align_steps: int) -> int:
        """Alignment in pre-alignment epochs only (``client_model: emulator``); KD's server step is in :meth:`apply`."""
        return align_steps if round_idx is None and self.client_model == "emulator" else 0

    def check(self, run: RunSettings) -> list[str]:
        """The algorithm's own bad settings; no proximal term; pre-alignment only when clients hold an emulator."""
        issues = [f"federated.algorithm.init_args: {issue}" for issue in self.setting_issues]
        if run.proximal_weight:
            issues.append(f"algorithm {self.name!r} shares logits, not weights: set proximal_weight to 0 "
                          f"(got {run.proximal_weight}).")
        if run.pre_alignment_rounds and self.client_model != "emulator":
            issues.append(f"algorithm {self.name!r} with client_model 'full' has no emulator to align; set "
                          f"pre_alignment_rounds to 0 (got {run.pre_alignment_rounds}).")
        return issues

    def client_module(self, views: Any, optim: ClientOptim) -> Any:
        """A :class:`~fedbiot_pl.modules.distill_module.DistillFinetuneModule` on the client's model."""
        from fedbiot_pl.modules.distill_module import DistillFinetuneModule

        return DistillFinetuneModule(views, self.kd_alpha, "compressed", optim.lr, optim.betas, optim.weight_decay,
                                     log_steps=False)

    def broadcast_part(self, round_idx: int) -> Part:
        """No LoRA goes down (the part every client trains and keeps)."""
        return "adapter"

    # ------------------------------------------------------------------ run time
    def attach(self, views: Any, data: Any, clients: Any) -> None:
        """Keep the views, the public data and the client side (its fits run the server's KD too)."""
        missing = [name for name in PUBLIC_API if not hasattr(data, name)]
        if missing:
            raise ConfigError(f"algorithm {self.name!r} needs the public set from the datamodule; "
                              f"{type(data).__name__} lacks {missing}.")
        if getattr(clients, "world_size", 1) > 1:
            raise ConfigError(f"algorithm {self.name!r} keeps every client's LoRA in one process; run it on one "
                              f"device (trainer.devices: 1), got {clients.world_size} processes.")
        self._runtime = (views, data, clients)
        if self.top_k > self.vocab_size:
            raise ConfigError(f"top_k={self.top_k} exceeds the model's vocabulary of {self.vocab_size} entries; "
                              f"set federated.algorithm.init_args.top_k <= {self.vocab_size}.")
        if self._initial is None:
            self._initial = cpu_state(views.lora_state("adapter"))

    @property
    def vocab_size(self) -> int:
        """The clients' (and server's) vocabulary."""
        return int(self._runtime[0].full.config.vocab_size)

    def public_rows(self, round_idx: int) -> list[int]:
        """Round ``round_idx``'s public rows (the same for every party)."""
        _, data, clients = self._runtime
        return public_rows(data.num_public_examples, self.public_examples, clients.seed, round_idx)

    def public_slice(self, round_idx: int) -> PublicSlice:
        """Round ``round_idx``'s public rows and their kept tokens."""
        rows = self.public_rows(round_idx)
        lengths = [max(length - 1, 0) for length in self._runtime[1].public_lengths(rows)]
        return PublicSlice(tuple(rows), tuple(lengths), self.vocab_size, self.top_k)

    def _topk(self, model: Any, rows: Sequence[int]) -> TopK:
        _, data, clients = self._runtime
        return collect_topk(model, data.public_dataloader(rows), self.top_k, self.vocab_size, clients.device)

    def _kd_batches(self, targets: TopK, steps: int | None, seed: int) -> tuple[TargetBatches, int]:
        """The public batches of ``targets``' rows with the targets attached, and the fit's optimizer steps."""
        _, data, clients = self._runtime
        batches = TargetBatches(data.public_dataloader(targets.rows.tolist(), seed=seed), targets, self.temperature)
        return batches, steps or pass_steps(len(batches), clients.fit.accumulate_grad_batches)

    # ------------------------------------------------------------------ messages
    def broadcast_message(self, views: Any, round_idx: int) -> Any:
        """The targets on the last round's slice (none in round 0); the server's LoRA is kept to restore."""
        from fedbiot_pl.federation.messages import LogitsMessage

        self._server = views.lora_state("adapter")
        self._clients_before = dict(self._clients)  # what a retried attempt starts from again
        payload = self._pending if self._pending is not None else empty_topk(self.top_k, self.vocab_size)
        return LogitsMessage(payload.tensors(), {"round": str(round_idx), "temperature": str(self.temperature)})

    def upload_reference(self, views: Any, message: Any, round_idx: int) -> PublicSlice:
        """Uploads must cover this round's public slice."""
        return self.public_slice(round_idx)

    def restore(self, views: Any, reference: Any) -> None:
        """The server's LoRA back in the views, the clients' as they were before the failed attempt."""
        views.load_lora_state(self._server)
        self._clients = dict(self._clients_before)

    def client_receive(self, views: Any, payload: bytes, client_id: int, round_idx: int) -> None:
        """Keep the broadcast targets; load the client's own LoRA (the initial one before its first round)."""
        from fedbiot_pl.federation.messages import LogitsMessage, decode_message

        self._targets = TopK.from_tensors(decode_message(payload, LogitsMessage).tensors)
        views.load_lora_state(self._clients.get(client_id, self._initial))

    def client_fits(self, data: Any, client_id: int, round_idx: int, local_steps: int) -> list[tuple[Any, int]]:
        """A KD fit on the broadcast targets (from round 1), then the private fit."""
        fits: list[tuple[Any, int]] = []
        targets = self._targets
        if targets is not None and targets.num_examples:
            seed = client_seed(self._runtime[2].seed, round_idx, client_id)
            fits.append(self._kd_batches(targets, self.kd_steps, seed))
        return fits + [(data.client_dataloader(client_id, round_idx), local_steps)]

    def upload_message(self, views: Any, client_id: int, round_idx: int) -> Any:
        """The client's top-k on this round's slice; its LoRA is kept for its next round."""
        from fedbiot_pl.federation.messages import LogitsMessage

        self._clients[client_id] = cpu_state(views.lora_state("adapter"))
        payload = self._topk(views.compressed, self.public_rows(round_idx))
        return LogitsMessage(payload.tensors(), {"round": str(round_idx)})

    def receive(self, payload: bytes, reference: Any, max_norm: float | None = None) -> tuple[Any, str | None]:
        """Decode and check a logits upload (:func:`~fedbiot_pl.federation.validation.logits_problem`)."""
        from fedbiot_pl.federation.messages import LogitsMessage
        from fedbiot_pl.federation.validation import receive_message

        return receive_message(payload, LogitsMessage, reference)

    def aggregate(self, uploads: Sequence[dict[str, Tensor]], weights: Sequence[float]) -> Any:
        """The accepted payloads and their weights (the server's step is in :meth:`apply`)."""
        return [TopK.from_tensors(upload) for upload in uploads], list(weights)

    def apply(self, views: Any, aggregate: Any) -> None:
        """The server's LoRA back in the views, then the server's step: its result is the next broadcast."""
        views.load_lora_state(self._server)
        payloads, weights = aggregate
        self._pending = self.server_step(views, payloads, weights)

    def server_step(self, views: Any, payloads: list[TopK], weights: list[float]) -> TopK:
        """The next broadcast's targets from this round's accepted payloads."""
        raise NotImplementedError

    # ------------------------------------------------------------------ state
    def resume_settings(self) -> dict[str, Any]:
        """What the checkpoint's clients, targets and layout depend on."""
        prefix = "federated.algorithm.init_args."
        return {f"{prefix}top_k": self.top_k, f"{prefix}temperature": self.temperature,
                f"{prefix}public_examples": self.public_examples, f"{prefix}client_model": self.client_model}

    def personal_states(self) -> dict[int, dict[str, Tensor]]:
        """Each client's LoRA after its last round (the initial LoRA for a client never sampled yet)."""
        if self._runtime is None:
            return dict(self._clients)
        return {client: self._clients.get(client, self._initial) for client in range(self._runtime[1].num_clients)}

    def state_dict(self) -> dict[str, Any]:
        """Clients' LoRA, the initial LoRA and the pending broadcast."""
        return {"clients": self._clients, "initial": self._initial,
                "pending": None if self._pending is None else self._pending.tensors()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`."""
        self._clients = {int(k): v for k, v in state.get("clients", {}).items()}
        self._initial = state.get("initial", self._initial)
        pending = state.get("pending")
        self._pending = None if pending is None else TopK.from_tensors(pending)


@register_algorithm
class FedKD(KDAlgorithm):
    """FedMD-style KD: the server averages the clients' top-k distributions (no server model trains)."""

    name: ClassVar[str] = "fed_kd"

    def server_step(self, views: Any, payloads: list[TopK], weights: list[float]) -> TopK:
        """Union of indices, weighted mean of q, top-k renormalised."""
        return aggregate_topk(payloads, weights, self.top_k, self.temperature)
