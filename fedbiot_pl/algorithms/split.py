"""Split-FedLLM: the client runs the bottom of the model (and, U-shaped, its top), the server the middle.

``splitfed_lora`` (SplitLoRA, vanilla: the server holds the head and sees the labels) and
``splitfed_lora_u`` (U-shaped: the client keeps the top ``client_top_layers`` layers, the head and
the labels). LoRA sits on every layer, as in ``fedavg_lora``. One client step, micro-batch by
micro-batch (:mod:`fedbiot_pl.split`)::

    client  h_k = bottom(input_ids)                      -> activations (+ mask, + labels: vanilla)   up
    server  vanilla: loss = middle(h_k)                  -> loss                                     down
            U:       h_{L-m} = middle(h_k)               -> activations                              down
    client  U: loss = top(h_{L-m}); backward to h_{L-m}  -> gradients (U) | the loss's scale (vanilla) up
    server  backward to h_k                              -> gradients                                down
    client  backward into the bottom; at the end of each accumulation window both sides step
            (the client's step message)

Per round the client LoRA goes down and comes back and is averaged over the clients (FedAvg); the
server's LoRA stays on the server: one copy shared by all clients (``server_mode: shared``, SplitFed
V2, SplitLoRA GPT-2) or one copy per client averaged with the client LoRA (``per_client``, SplitFed
V1, SplitLoRA Llama-3). Optimizer states persist across rounds on both sides (SplitLoRA's clients and
server keep theirs), so one client with a round per step is centralised LoRA.

Labels (vanilla) and activations cross the wire; activations and gradients can be inverted (BiSR,
PIDI), so split learning offloads compute; it is not a privacy mechanism.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from torch import Tensor

from fedbiot_pl.algorithms.base import Algorithm, ClientOptim, LayoutRequest, RunSettings, register_algorithm
from fedbiot_pl.errors import ConfigError
from fedbiot_pl.federation.aggregation import fedavg
from fedbiot_pl.model.layer_drop import LayerLayout, layer_layout
from fedbiot_pl.model.views import DTYPES
from fedbiot_pl.split.segments import client_layers, server_layers
from fedbiot_pl.split.server import cpu_copy

SERVER_MODES = ("shared", "per_client")


def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


@register_algorithm
class SplitFedLoRA(Algorithm):
    """Vanilla split learning with LoRA (SplitLoRA): the client holds layers ``[0, cut_layer)``.

    Args:
        cut_layer: ``k >= 1``, decoder layers on the client below the cut. SplitLoRA GPT-2: 3; Plato: 2.
        activation_dtype: dtype of the activations and gradients on the wire (``null``: the model's,
            exact); ``bfloat16`` halves the bytes of a float32 model.
        server_mode: ``shared`` = one server copy trained by every client in turn (SplitFed V2);
            ``per_client`` = a server copy per client, averaged each round (SplitFed V1).
        keep_optimizer_state: whether each client's AdamW state (and its server copy's) carries over to
            its next round, as SplitLoRA's; ``false`` = a fresh optimizer every fit, as the other algorithms.

    Bad values do not raise here: :meth:`check` reports them with the run's other settings.
    """

    name: ClassVar[str] = "splitfed_lora"
    family: ClassVar[str] = "split"
    u_shaped: ClassVar[bool] = False

    def __init__(self, cut_layer: int = 2, activation_dtype: str | None = None, server_mode: str = "shared",
                 keep_optimizer_state: bool = True) -> None:
        self._settings(cut_layer, 0, activation_dtype, server_mode, keep_optimizer_state)

    def _settings(self, cut_layer: int, client_top_layers: int, activation_dtype: str | None, server_mode: str,
                  keep_optimizer_state: bool) -> None:
        issues = []
        # vanilla: a client below layer 1 would hold the embeddings only and train nothing
        lows = (("cut_layer", cut_layer, 0 if self.u_shaped else 1),
                ("client_top_layers", client_top_layers, 1 if self.u_shaped else 0))
        for label, value, low in lows:
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                issues.append(f"{label} must be an integer >= {low}, got {value!r}.")
        if activation_dtype is not None and activation_dtype not in DTYPES:
            issues.append(f"activation_dtype must be one of {sorted(DTYPES)} or null (the model's), "
                          f"got {activation_dtype!r}.")
        if server_mode not in SERVER_MODES:
            issues.append(f"server_mode must be one of {list(SERVER_MODES)}, got {server_mode!r}.")
        self.setting_issues = issues  # reported by check(), with the run's other settings, all at once
        self.cut_layer, self.client_top_layers = cut_layer, client_top_layers
        self.activation_dtype, self.server_mode = activation_dtype, server_mode
        self.keep_optimizer_state = bool(keep_optimizer_state)
        self._client_states: dict[int, dict] = {}
        self._client_states_before: dict[int, dict] = {}
        self._accepted: list[int] = []
        self._fitted: set[int] = set()
        self._staged: dict[int, dict] = {}
        self._pending_state: dict[str, Any] | None = None
        self._server: Any = None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(cut_layer={self.cut_layer}, client_top_layers={self.client_top_layers}, "
                f"activation_dtype={self.activation_dtype!r}, server_mode={self.server_mode!r}, "
                f"keep_optimizer_state={self.keep_optimizer_state})")

    # ------------------------------------------------------------------ layout and settings
    def client_positions(self, num_layers: int) -> tuple[int, ...]:
        """Decoder layers the client runs: ``[0, k)`` and, U-shaped, ``[L - m, L)``."""
        return client_layers(num_layers, self.cut_layer, self.client_top_layers)

    def server_positions(self, num_layers: int) -> tuple[int, ...]:
        """Decoder layers the server runs: ``[k, L - m)``."""
        return server_layers(num_layers, self.cut_layer, self.client_top_layers)

    def layout(self, num_layers: int, request: LayoutRequest) -> LayerLayout:
        """The full model with LoRA on every layer (``adapter_layers`` and ``drop_rate`` are not used).

        Raises:
            ConfigError: the cut leaves the server no layer, naming the largest cut that fits.
        """
        layout = layer_layout(num_layers, 0, 0.0, full_model=True)
        if not self.setting_issues and self.cut_layer + self.client_top_layers >= num_layers:
            top = f" + client_top_layers {self.client_top_layers}" if self.u_shaped else ""
            raise ConfigError(f"cut_layer {self.cut_layer}{top} leaves the server none of the model's {num_layers} "
                              f"decoder layers; set cut_layer <= {num_layers - self.client_top_layers - 1}.")
        return layout

    def compresses(self) -> bool:
        """The model is cut, not compressed."""
        return False

    def server_steps(self, round_idx: int | None, align_steps: int) -> int:
        """No alignment: the server trains its segment during the clients' fits."""
        return 0

    def check(self, run: RunSettings) -> list[str]:
        """The algorithm's own bad settings; no emulator to align, no proximal term."""
        issues = [f"federated.algorithm.init_args: {issue}" for issue in self.setting_issues]
        if run.pre_alignment_rounds:
            issues.append(f"algorithm {self.name!r} has no emulator to align; set pre_alignment_rounds to 0 "
                          f"(got {run.pre_alignment_rounds}).")
        if run.proximal_weight:
            issues.append(f"algorithm {self.name!r} has no proximal term; set proximal_weight to 0 "
                          f"(got {run.proximal_weight}).")
        return issues

    # ------------------------------------------------------------------ parts
    def client_lora(self, views: Any) -> dict[str, Any]:
        """The live LoRA of the client's layers (what travels once per round)."""
        return views.lora_of_layers(self.client_positions(views.num_layers))

    def broadcast(self, views: Any, round_idx: int) -> dict[str, Tensor]:
        """The client LoRA (the server's stays on the server)."""
        return self.upload(views)

    def upload(self, views: Any) -> dict[str, Tensor]:
        """The client LoRA after a fit (a detached copy)."""
        return {key: p.detach().clone() for key, p in self.client_lora(views).items()}

    def upload_reference(self, views: Any, message: Any, round_idx: int) -> dict[str, Tensor]:
        """An upload must match the client LoRA that went down."""
        return {key: value.cpu() for key, value in message.tensors.items()}

    # ------------------------------------------------------------------ run time
    def client_module(self, views: Any, optim: ClientOptim) -> Any:
        """A :class:`~fedbiot_pl.modules.split_module.SplitClientModule`; its link is opened by :meth:`connect`."""
        from fedbiot_pl.modules.split_module import SplitClientModule

        return SplitClientModule(views, self.cut_layer, self.client_top_layers, None, optim.lr, optim.betas,
                                 optim.weight_decay, log_steps=False)

    def attach(self, views: Any, data: Any, clients: Any) -> None:
        """Keep the views and the client side; the server and the clients' optimizer states live in this process.

        Raises:
            ConfigError: several processes, or float16 mixed precision (its loss scale would reach the
                server's gradients unscaled).
        """
        if getattr(clients, "world_size", 1) > 1:
            raise ConfigError(f"algorithm {self.name!r} runs its server in this process; run it on one device "
                              f"(trainer.devices: 1), got {clients.world_size} processes.")
        if str(getattr(clients, "precision", "32-true")) == "16-mixed":
            raise ConfigError(f"algorithm {self.name!r} cannot train with float16 mixed precision (its loss scale "
                              f"would reach the server's gradients); use trainer.precision bf16-mixed or 32-true, "
                              f"got {clients.precision!r}.")
        if getattr(views, "gradient_checkpointing", False) and _transformers_major() < 5:
            raise ConfigError(f"algorithm {self.name!r} with gradient checkpointing needs transformers >= 5 (older "
                              "versions recompute a layer without the activations that came over the cut); upgrade "
                              "transformers or set model.split.gradient_checkpointing to false.")
        if not hasattr(clients.module, "link"):
            raise ConfigError(f"algorithm {self.name!r} needs its client module (a SplitClientModule), got "
                              f"{type(clients.module).__name__}.")
        self._views, self._clients = views, clients

    def connect(self, transport: Any) -> None:
        """Start the server on the views' server layers and give the client module its link over ``transport``."""
        from fedbiot_pl.model.assembly import decoder_of
        from fedbiot_pl.split.link import SplitLink
        from fedbiot_pl.split.messages import Expect
        from fedbiot_pl.split.segments import SplitSegments
        from fedbiot_pl.split.server import SplitServer

        if not callable(getattr(transport, "split_channel", None)):
            raise ConfigError(f"algorithm {self.name!r} exchanges activations every step; the transport "
                              f"{type(transport).__name__} has no split_channel().")
        views, module = self._views, self._clients.module
        layers = decoder_of(views.compressed.get_base_model()).layers
        segments = SplitSegments(views.full, layers, self.cut_layer, self.client_top_layers, side="server")
        wire = DTYPES[self.activation_dtype] if self.activation_dtype else views.full.dtype
        config = views.full.config
        expect = Expect(wire, int(config.hidden_size), int(config.vocab_size), labels=not self.u_shaped)
        hp = module.hparams  # the server's AdamW takes the clients' settings
        optim = ClientOptim(lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay)
        params = views.lora_of_layers(self.server_positions(views.num_layers))
        self._server = SplitServer(segments.middle, params, optim, expect, self.server_mode, self.keep_optimizer_state)
        if self._pending_state is not None and self._pending_state.get("server") is not None:
            self._server.load_state_dict(self._pending_state["server"])
        self._pending_state = None
        module.link = SplitLink(transport.split_channel(self._server.serve), wire)

    def broadcast_message(self, views: Any, round_idx: int) -> Any:
        """The client LoRA; the server and the clients' optimizer states are remembered for a retry."""
        if self._server is None:
            raise ConfigError(f"algorithm {self.name!r} has no server yet: connect(transport) runs first (the "
                              "RoundRunner calls attach and connect).")
        self._accepted, self._fitted, self._staged = [], set(), {}
        self._server.begin_round()
        self._client_states_before = dict(self._client_states)
        return super().broadcast_message(views, round_idx)

    def restore(self, views: Any, reference: Any) -> None:
        """Client LoRA, server LoRA and every optimizer state as before the failed attempt."""
        views.load_lora_state(reference)
        self._server.restore()
        self._client_states = dict(self._client_states_before)

    def client_receive(self, views: Any, payload: bytes, client_id: int, round_idx: int) -> None:
        """Load the client LoRA; the link carries the client's id, round and AdamW state."""
        super().client_receive(views, payload, client_id, round_idx)
        link = self._clients.module.link
        link.client, link.round = client_id, round_idx
        state = self._client_states.get(client_id) if self.keep_optimizer_state else None
        link.optimizer_state = None if state is None else cpu_copy(state)  # AdamW updates what it loads in place
        self._fitted.add(client_id)

    def upload_message(self, views: Any, client_id: int, round_idx: int) -> Any:
        """The client LoRA (its id in the header); its AdamW state is kept if the upload is accepted."""
        from fedbiot_pl.federation.messages import LoRAState

        state = self._clients.module.link.optimizer_state
        if self.keep_optimizer_state and state is not None:
            self._staged[client_id] = state
        return LoRAState(self.upload(views), {"client": str(client_id)})

    def receive(self, payload: bytes, reference: Any, max_norm: float | None = None) -> tuple[Any, str | None]:
        """Check the client LoRA as any LoRA upload; remember who was accepted (their server copies count)."""
        from fedbiot_pl.federation.messages import payload_metadata
        from fedbiot_pl.federation.validation import receive_update

        content, problem = receive_update(payload, reference, max_norm)
        if content is not None and problem is None:
            try:
                client = int(payload_metadata(payload).get("client", ""))
            except ValueError:
                client = None
            if client not in self._fitted or client in self._accepted:
                return content, (f"the upload names client {client!r}, not a client of this attempt that has not "
                                 "uploaded yet")
            self._accepted.append(client)
            if client in self._staged:
                self._client_states[client] = self._staged.pop(client)
        return content, problem

    def aggregate(self, uploads: Sequence[dict[str, Tensor]], weights: Sequence[float]) -> dict[str, Tensor]:
        """FedAvg of the client LoRA; ``per_client``: the server copies averaged with the same weights."""
        self._server.end_round(list(self._accepted), list(weights))
        return fedavg(uploads, weights)

    def state_dict(self) -> dict[str, Any]:
        """The clients' AdamW states and the server's (the LoRA is in the views' checkpoint)."""
        server = self._server.state_dict() if self._server is not None else (self._pending_state or {}).get("server")
        return {"clients": self._client_states, "server": server}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (the server's part once it runs)."""
        self._client_states = {int(k): v for k, v in state.get("clients", {}).items()}
        self._pending_state = state
        if self._server is not None and state.get("server") is not None:
            self._server.load_state_dict(state["server"])

    def resume_settings(self) -> dict[str, Any]:
        """What the checkpoint's optimizer states and server copies depend on.

        ``activation_dtype`` and ``keep_optimizer_state`` may change on a resume (they change no saved state).
        """
        prefix = "federated.algorithm.init_args."
        return {f"{prefix}cut_layer": self.cut_layer, f"{prefix}client_top_layers": self.client_top_layers,
                f"{prefix}server_mode": self.server_mode}


@register_algorithm
class SplitFedLoRAU(SplitFedLoRA):
    """U-shaped split learning: the client also holds the top ``client_top_layers`` layers, the head and the labels.

    Args:
        cut_layer: ``k``, decoder layers on the client below the cut (0: it sends the embeddings, which a
            nearest-neighbour lookup inverts).
        client_top_layers: ``m >= 1``, decoder layers on the client above the server's (TAP-LLM: 1).
        activation_dtype: as :class:`SplitFedLoRA`.
        server_mode: as :class:`SplitFedLoRA`.
        keep_optimizer_state: as :class:`SplitFedLoRA`.
    """

    name: ClassVar[str] = "splitfed_lora_u"
    u_shaped: ClassVar[bool] = True

    def __init__(self, cut_layer: int = 2, client_top_layers: int = 1, activation_dtype: str | None = None,
                 server_mode: str = "shared", keep_optimizer_state: bool = True) -> None:
        self._settings(cut_layer, client_top_layers, activation_dtype, server_mode, keep_optimizer_state)

