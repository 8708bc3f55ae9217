"""What an algorithm is: a small object with named hooks, and the registry that finds one by name.

The round runner (:class:`~fedbiot_pl.federation.round.RoundRunner`), the loop callback, the CLI's
start-up checks, ``plan`` and ``evaluate`` ask the algorithm object; none of them reads a table of
algorithm flags. A user's own algorithm is a subclass, selected with
``federated.algorithm: {class_path: my_package.MyAlgorithm, init_args: {...}}``, or registered with
:func:`register_algorithm` and selected by its name.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from torch import Tensor

from fedbiot_pl.errors import ConfigError
from fedbiot_pl.federation.aggregation import fedavg
from fedbiot_pl.model.layer_drop import LayerLayout, layer_layout

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from fedbiot_pl.federation.grouped_round import GroupRound
    from fedbiot_pl.federation.messages import Message
    from fedbiot_pl.model.views import ModelViews

Part = Literal["emulator", "adapter", "all"]
ProximalKind = Literal["delta_w", "params"]


@dataclass(frozen=True)
class LayoutRequest:
    """The layer-layout settings of ``model.split`` (``bottom_adapter_layers=None``: the algorithm's)."""

    adapter_layers: int = 2
    drop_rate: float = 0.2
    bottom_adapter_layers: int | None = None


@dataclass(frozen=True)
class RunSettings:
    """The run settings an algorithm checks (``num_clients=None`` before the data is known)."""

    num_clients: int | None = None
    pre_alignment_rounds: int = 0
    proximal_weight: float = 0.0
    num_layers: int | None = None
    """The model's decoder layers (``None`` before the model's config is read)."""
    simulated: bool | None = None
    """Whether ``federated.devices`` simulates a device fleet (``None``: not known yet)."""


@dataclass(frozen=True)
class ClientOptim:
    """A client's optimiser (AdamW, fresh every fit as in the paper) and proximal weight."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.01
    proximal_weight: float = 0.0


class Algorithm:
    """A federated algorithm over one set of model views, as hooks the round runner calls in order.

    One round: :meth:`broadcast` (what goes down) -> per client :meth:`client_module` fitted on the
    client's data -> :meth:`upload` (what comes back) -> :meth:`aggregate` -> :meth:`apply`; then
    :meth:`server_steps` alignment steps on the server. The defaults describe LoRA averaging of the
    adapter with no server training; subclasses override what differs.
    """

    name: ClassVar[str] = ""
    """The config value that selects the algorithm (empty for unregistered user classes)."""

    family: ClassVar[str] = "params"
    """What the clients share: ``params`` (LoRA weights), ``kd`` (logits on public data) or ``split``."""

    def check(self, run: RunSettings) -> list[str]:
        """Every run setting that contradicts the algorithm, each naming the fix (empty: fine)."""
        return []

    def layout(self, num_layers: int, request: LayoutRequest) -> LayerLayout:
        """Which decoder layers the clients hold, and which of them train (adapter) or are aligned (emulator)."""
        raise NotImplementedError

    def compresses(self) -> bool:
        """Whether clients hold a compressed model (an emulator) instead of the full one."""
        return True

    def client_module(self, views: ModelViews, optim: ClientOptim) -> pl.LightningModule:
        """The LightningModule a client fits (built once per run; it shares ``views``' tensors)."""
        from fedbiot_pl.modules.adapter_module import AdapterFinetuneModule

        return AdapterFinetuneModule(views, proximal_weight=optim.proximal_weight, lr=optim.lr, betas=optim.betas,
                                     weight_decay=optim.weight_decay, log_steps=False, proximal=self.proximal())

    def proximal(self) -> ProximalKind:
        """The kind of the clients' proximal term (used when the proximal weight is > 0)."""
        return "delta_w"

    def broadcast_part(self, round_idx: int) -> Part:
        """Which LoRA goes down in round ``round_idx`` (the emulator's only while it changes)."""
        return "all" if round_idx == 0 else "adapter"

    def broadcast(self, views: ModelViews, round_idx: int) -> dict[str, Tensor]:
        """The LoRA state sent to every sampled client of round ``round_idx``."""
        return views.lora_state(self.broadcast_part(round_idx))

    def upload_part(self) -> Part:
        """Which LoRA a client trains and sends back."""
        return "adapter"

    def upload(self, views: ModelViews) -> dict[str, Tensor]:
        """What a client sends back after its fit (a detached copy)."""
        return views.lora_state(self.upload_part())

    # ------------------------------------------------------------------ messages (LoRA by default)
    def attach(self, views: ModelViews, data: Any, clients: Any) -> None:
        """Called once per fit before the first round with the views, the data and the client side.

        An algorithm that needs the public data or fits on the server keeps them (LoRA averaging needs nothing).
        """

    def data_issues(self, data: Any) -> list[str]:
        """What the algorithm needs of the (set-up) data and it lacks, each naming the fix (checked at set-up)."""
        return []

    def connect(self, transport: Any) -> None:
        """Called once after :meth:`attach` with the round's transport (split learning opens its channel here)."""

    def groups(self, round_idx: int, clients: Sequence[int], fleet: Any) -> list[GroupRound] | None:
        """A hierarchical round's device groups (:mod:`~fedbiot_pl.federation.grouped_round`); ``None``: one flat round.

        ``clients`` are the round's sampled clients; ``fleet`` the run's simulated devices (``None``: none).
        """
        return None

    def round_done(self, round_idx: int, groups: Sequence[GroupRound]) -> None:
        """Called after a hierarchical round was applied, with the groups that ran it."""

    def broadcast_message(self, views: ModelViews, round_idx: int) -> Message:
        """The message sent to every sampled client of round ``round_idx`` (:meth:`broadcast` as LoRA)."""
        from fedbiot_pl.federation.messages import LoRAState

        return LoRAState(self.broadcast(views, round_idx))

    def upload_reference(self, views: ModelViews, message: Message, round_idx: int) -> Any:
        """What an upload is checked against: the broadcast's part that the clients train."""
        return {key: message.tensors[key].cpu() for key in views.lora_parameters(self.upload_part())}

    def restore(self, views: ModelViews, reference: Any) -> None:
        """Put the global state back after an attempt with too few accepted uploads."""
        views.load_lora_state(reference)

    def client_receive(self, views: ModelViews, payload: bytes, client_id: int, round_idx: int) -> None:
        """A client takes the broadcast ``payload`` (loads the global LoRA into ``views``)."""
        from fedbiot_pl.federation.messages import LoRAState, decode_message

        views.load_lora_state(decode_message(payload, LoRAState).tensors)

    def client_fits(self, data: Any, client_id: int, round_idx: int, local_steps: int) -> list[tuple[Any, int]]:
        """The client's fits this round, in order: ``(batches, optimizer steps)`` (its private data)."""
        return [(data.client_dataloader(client_id, round_idx), local_steps)]

    def upload_message(self, views: ModelViews, client_id: int, round_idx: int) -> Message:
        """What client ``client_id`` sends back after its fits (:meth:`upload` as LoRA)."""
        from fedbiot_pl.federation.messages import LoRAState

        return LoRAState(self.upload(views))

    def receive(self, payload: bytes, reference: Any, max_norm: float | None = None) -> tuple[Any, str | None]:
        """The server decodes and checks one upload: ``(content, None)``, ``(content, why not)`` or ``(None, why)``."""
        from fedbiot_pl.federation.validation import receive_update

        return receive_update(payload, reference, max_norm)

    def report(self) -> str:
        """A text the run folder keeps as ``algorithm.txt`` once the first round is set (empty: nothing to keep)."""
        return ""

    def personal_states(self) -> dict[int, dict[str, Tensor]]:
        """Each client's own LoRA where clients keep models of their own (empty: they all hold the global one)."""
        return {}

    def resume_settings(self) -> dict[str, Any]:
        """The algorithm's own settings, by CLI name, that a resumed run must share with its checkpoint."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """The algorithm's state between rounds (kept in the loop's checkpoint; empty for LoRA averaging)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`."""

    def aggregate(self, uploads: Sequence[dict[str, Tensor]], weights: Sequence[float]) -> dict[str, Tensor]:
        """The clients' accepted uploads combined (sample-weighted FedAvg)."""
        return fedavg(uploads, weights)

    def apply(self, views: ModelViews, aggregate: dict[str, Tensor]) -> None:
        """Make ``aggregate`` the global state."""
        views.load_lora_state(aggregate)

    def server_steps(self, round_idx: int | None, align_steps: int) -> int:
        """Server (alignment) optimizer steps after round ``round_idx`` (``None``: a pre-alignment epoch)."""
        return align_steps if round_idx is None else 0

    def trains_on_server(self, pre_alignment_rounds: int) -> bool:
        """Whether the server ever takes an optimizer step in a run with these pre-alignment rounds."""
        return pre_alignment_rounds > 0 or self.server_steps(0, 1) > 0

    @property
    def label(self) -> str:
        """How configs and checkpoints name it: the registered name, else the class path.

        A subclass of a registered algorithm inherits its ``name`` but is not that algorithm, so it is
        named by its class path (what ``federated.algorithm`` takes to select it again).
        """
        cls = type(self)
        if self.name and ALGORITHMS.get(self.name) is cls:
            return self.name
        return f"{cls.__module__}.{cls.__qualname__}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


ALGORITHMS: dict[str, type[Algorithm]] = {}
"""Registered algorithms by config name (filled by :func:`register_algorithm`)."""


def register_algorithm(cls: type[Algorithm]) -> type[Algorithm]:
    """Class decorator: make ``cls`` selectable as ``federated.algorithm: <cls.name>``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no `name` to register under.")
    ALGORITHMS[cls.name] = cls
    return cls


def resolve_algorithm(value: str | Algorithm | type[Algorithm] | dict[str, Any]) -> Algorithm:
    """The algorithm object that ``value`` names.

    ``value`` is a registered name (``fedbiot``), a dotted class path (``my_package.MyAlgorithm``), a
    class, an instance, or ``{class_path, init_args}``.

    Raises:
        ConfigError: naming the value and the registered names.
    """
    if isinstance(value, Algorithm):
        return value
    if isinstance(value, type) and issubclass(value, Algorithm):
        return value()
    init_args: dict[str, Any] = {}
    if isinstance(value, dict) and "class_path" in value:
        value, init_args = value["class_path"], dict(value.get("init_args") or {})
    if isinstance(value, str) and value in ALGORITHMS:
        return _construct(ALGORITHMS[value], value, init_args)
    if isinstance(value, str) and "." in value:
        module_name, _, class_name = value.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as error:
            raise ConfigError(f"federated.algorithm {value!r} cannot be imported ({error}).") from error
        if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
            raise ConfigError(f"federated.algorithm {value!r} is not a subclass of fedbiot_pl.algorithms.Algorithm.")
        return _construct(cls, value, init_args)
    raise ConfigError(
        f"unknown algorithm {value!r}; choose one of {sorted(ALGORITHMS)} or give the class_path of a "
        "fedbiot_pl.algorithms.Algorithm subclass."
    )


def _construct(cls: type[Algorithm], value: str, init_args: dict[str, Any]) -> Algorithm:
    try:
        return cls(**init_args)
    except TypeError as error:  # an unknown or missing init_arg
        raise ConfigError(f"federated.algorithm {value!r}: {error}.") from error


def compressed_layout(num_layers: int, request: LayoutRequest, bottom_default: int) -> LayerLayout:
    """The emulator + adapter layout (:func:`~fedbiot_pl.model.layer_drop.layer_layout`)."""
    bottom = bottom_default if request.bottom_adapter_layers is None else request.bottom_adapter_layers
    return layer_layout(num_layers, request.adapter_layers, request.drop_rate, bottom)
