"""Views of one set of weights: the full model, the compressed model (emulator + adapter) and AdapFu.

Nothing here copies the full model. The compressed model is a shell of the same Hugging Face class
whose embeddings, final norm, rotary embedding and ``lm_head`` *are* the full model's modules, and
whose decoder layers are structural copies that point at the full model's parameter tensors
(:func:`share_copy`). LoRA (peft) is injected into the compressed model only; the full model stays
the untouched teacher. ``full_with_adapter`` is a second shell: the full model's layers with the
compressed model's adapter layers (base + LoRA, the same tensors) in their places, i.e. the KL
teacher of the alignment and the AdapFu model of the evaluation.

Read hidden states with forward hooks (:mod:`fedbiot_pl.model.capture`), not ``output_hidden_states``:
transformers 5 installs its capture hooks once per model object, so on a layer shared by two of
these models they fire twice and ``hidden_states`` comes back misaligned (logits are unaffected).
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from fedbiot_pl.assets import DEFAULT_MODEL
from fedbiot_pl.errors import ConfigError
from fedbiot_pl.model.assembly import assemble, decoder_of, share_copy
from fedbiot_pl.model.layer_drop import LayerLayout, layer_layout
from fedbiot_pl.model.location import load_model_config, model_source
from fedbiot_pl.quiet import (
    GRADIENT_CHECKPOINTING_WARNING,
    expected_warnings,
    no_gguf_progress_bar,
    no_library_progress_bars,
)

Part = Literal["emulator", "adapter", "all"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_LAYER_KEY = re.compile(r"\.layers\.(\d+)\.")

if TYPE_CHECKING:
    from fedbiot_pl.algorithms.base import Algorithm


class ModelViews(nn.Module):
    """Views of one set of weights: the frozen full LLM, the compressed model and AdapFu, with their LoRA.

    (Named ``SplitModel`` before split learning joined the toolkit; that name still imports, with a
    ``DeprecationWarning``.) Which layers the clients hold is the algorithm's choice: the federated
    loop calls :meth:`use_algorithm` at set-up; used alone, the views take FedBiOT's layout.

    The constructor only reads the model's ``config.json`` and checks the settings (cheap); weights
    load in :meth:`build` (called from the LightningModules' ``configure_model``).

    Args:
        model: Hugging Face hub id, local folder, or ``embedded:models/stories260K``.
        adapter_layers: decoder layers at the top that form the adapter (the paper: 2 or 4).
        drop_rate: beta, the fraction of the lower layers dropped to form the emulator (0.2, 0.5).
        bottom_adapter_layers: adapter layers at the input side; ``null`` = the algorithm's (0 for
            FedBiOT, 2 for offsite-tuning and FedOT).
        lora_r: LoRA rank.
        lora_alpha: LoRA alpha (scaling = alpha / r).
        lora_dropout: dropout on the LoRA input.
        lora_targets: names of the linear modules that get LoRA.
        dtype: dtype of the base weights (LoRA weights stay float32).
        attn_implementation: attention kernel of the loaded model (``sdpa`` = PyTorch's
            scaled-dot-product attention; ``eager``; ``flash_attention_2`` if installed).
        gradient_checkpointing: recompute the activations of the trained layers in backward.
        gguf_file: a GGUF file inside the folder ``model`` (the same as giving ``model`` as the
            ``.gguf`` file's path).
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        adapter_layers: int = 2,
        drop_rate: float = 0.2,
        bottom_adapter_layers: int | None = None,
        lora_r: int = 8,
        lora_alpha: int = 16,
        lora_dropout: float = 0.05,
        lora_targets: list[str] | None = None,
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        attn_implementation: str = "sdpa",
        gradient_checkpointing: bool = False,
        gguf_file: str | None = None,
    ) -> None:
        super().__init__()
        if gguf_file is not None:
            if str(model).lower().endswith(".gguf"):
                raise ConfigError(f"model={model!r} is a .gguf file already; leave gguf_file ({gguf_file!r}) unset.")
            model = os.path.join(model, gguf_file)
        from fedbiot_pl.algorithms.base import LayoutRequest

        self.model_name = model
        self.lora_r, self.lora_alpha, self.lora_dropout = lora_r, lora_alpha, lora_dropout
        self.lora_targets = list(lora_targets) if lora_targets is not None else ["q_proj", "v_proj"]
        self.dtype_name = dtype
        self.attn_implementation = attn_implementation
        self.gradient_checkpointing = gradient_checkpointing
        self.layout_request = LayoutRequest(adapter_layers, drop_rate, bottom_adapter_layers)
        self.algorithm: Algorithm | None = None
        self._prebuilt: nn.Module | None = None
        self._config = None
        self._layout: LayerLayout | None = None
        self.built = False
        self._adapter_depth: int | None = None  # set inside trained_depth()
        if model != "<in-memory>":
            self._config = self._load_config()
            self._check(self._config)

    @classmethod
    def from_model(cls, full: nn.Module, algorithm: Algorithm | str | None = None, **kwargs) -> ModelViews:
        """Views of an already loaded model (tests, notebooks); ``kwargs`` as in the constructor."""
        views = cls(model="<in-memory>", **kwargs)
        views._prebuilt = full
        views._config = full.config
        views._check(full.config)
        if algorithm is not None:
            views.use_algorithm(algorithm)
        return views

    @property
    def num_layers(self) -> int:
        """Decoder layers of the full model (from its config)."""
        return int(self._config.num_hidden_layers)

    @property
    def algorithm_name(self) -> str:
        """The config name of the layout's algorithm (its class path if unregistered)."""
        algorithm = self.algorithm or self._default_algorithm()
        return algorithm.label

    def use_algorithm(self, algorithm: Algorithm | str) -> ModelViews:
        """Lay the layers out as ``algorithm`` says (before :meth:`build`; again with the same one is fine).

        Raises:
            ConfigError: the layout cannot be made on this model, naming every bad setting.
        """
        from fedbiot_pl.algorithms.base import resolve_algorithm

        algorithm = resolve_algorithm(algorithm)
        if self.built and self.algorithm is not None and type(algorithm) is not type(self.algorithm):
            raise ConfigError(f"the views were built for {self.algorithm_name!r}; build new views for "
                              f"{algorithm.label!r}.")
        num_layers = getattr(self._config, "num_hidden_layers", None)
        try:
            layout = algorithm.layout(num_layers, self.layout_request)
        except ValueError as error:
            raise ConfigError(f"Invalid {type(self).__name__} for {self.model_name!r}: {error}") from error
        if self.built and layout != self._layout:
            raise ConfigError(f"the views were built with another layout than {algorithm.label!r} makes.")
        self.algorithm, self._layout = algorithm, layout
        return self

    @property
    def layout(self) -> LayerLayout | None:
        """The layer layout (FedBiOT's until :meth:`use_algorithm` says otherwise; ``None`` without a config)."""
        if self._layout is None and self._config is not None:
            self.use_algorithm(self._default_algorithm())
        return self._layout

    @staticmethod
    def _default_algorithm() -> Algorithm:
        from fedbiot_pl.algorithms.fedbiot import FedBiOT

        return FedBiOT()

    def _load_config(self):
        return load_model_config(self.model_name)

    def _check(self, config) -> None:
        issues = []
        for name, value, low in (("lora_r", self.lora_r, 1), ("lora_alpha", self.lora_alpha, 1)):
            if value < low:
                issues.append(f"{name} must be >= {low}, got {value}.")
        if not 0.0 <= self.lora_dropout < 1.0:
            issues.append(f"lora_dropout must be in [0, 1), got {self.lora_dropout}.")
        if not self.lora_targets:
            issues.append("lora_targets is empty; name at least one linear module, e.g. [q_proj, v_proj].")
        if self.dtype_name not in DTYPES:
            issues.append(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype_name!r}.")
        num_layers = getattr(config, "num_hidden_layers", None)
        if not isinstance(num_layers, int):
            issues.append(f"the model config of {self.model_name!r} has no integer num_hidden_layers.")
        else:  # the layout settings' own ranges (the algorithm's bottom adapter is checked by use_algorithm)
            request = self.layout_request
            try:
                layer_layout(num_layers, request.adapter_layers, request.drop_rate, request.bottom_adapter_layers or 0)
            except ValueError as error:
                issues.append(str(error))
        present = self._linear_module_names(config) if self.lora_targets else None
        unknown = sorted(set(self.lora_targets) - present) if present else []
        if unknown:
            issues.append(
                f"lora_targets {unknown} are not linear modules of a {type(config).__name__.removesuffix('Config')} "
                f"decoder layer; choose from {sorted(present)}."
            )
        if issues:
            raise ConfigError(f"Invalid {type(self).__name__} for {self.model_name!r}: " + " ".join(issues))

    @staticmethod
    def _linear_module_names(config) -> set[str] | None:
        """Names of the linear modules in one decoder layer of ``config``'s model.

        Read from a one-layer instance on the meta device (no memory, no weights); ``None`` when it
        cannot be built here.
        """
        from transformers import AutoModelForCausalLM

        small = copy.deepcopy(config)
        small.num_hidden_layers = 1
        if isinstance(getattr(small, "layer_types", None), list):
            small.layer_types = small.layer_types[:1]
        try:
            with torch.device("meta"):
                layer = decoder_of(AutoModelForCausalLM.from_config(small)).layers[0]
        except Exception:  # an architecture transformers cannot build from its config: build() checks instead
            return None
        return {name.rsplit(".", 1)[-1] for name, module in layer.named_modules() if isinstance(module, nn.Linear)}

    # ------------------------------------------------------------------ building
    def build(self, device: torch.device | str | None = None) -> ModelViews:
        """Load the full model (once), assemble the compressed model and inject LoRA. Idempotent."""
        if self.built:
            return self
        from peft import LoraConfig, get_peft_model

        with no_library_progress_bars():
            full = self._prebuilt if self._prebuilt is not None else self._load_full(device)
        full.requires_grad_(False).eval()
        layout = self.layout
        full_layers = decoder_of(full).layers
        copies = []
        for index in layout.compressed:
            layer = share_copy(full_layers[index])
            layer._fedbiot_source_index = index
            copies.append(layer)
        compressed = assemble(full, copies)
        targets = set(self.lora_targets)
        present = {name.rsplit(".", 1)[-1] for name, m in copies[0].named_modules() if isinstance(m, nn.Linear)}
        if not targets <= present:
            raise ConfigError(
                f"lora_targets {sorted(targets - present)} are not linear modules of a "
                f"{type(full).__name__} decoder layer; choose from {sorted(present)}."
            )
        lora = LoraConfig(
            task_type="CAUSAL_LM", r=self.lora_r, lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout, target_modules=sorted(targets), bias="none",
        )
        self.full = full
        with expected_warnings(GRADIENT_CHECKPOINTING_WARNING):  # peft reads the deprecated attribute
            self.compressed = get_peft_model(compressed, lora)
        self.lora_config = lora
        if self.gradient_checkpointing:
            self.compressed.get_base_model().gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        # AdapFu / KL teacher: the full layers with the (shared) adapter layers in their places.
        layers = list(full_layers)
        comp_layers = decoder_of(self.compressed.get_base_model()).layers
        for position in layout.adapter_positions:
            index = layout.compressed[position]
            layers[index] = share_copy(comp_layers[position])
            layers[index]._fedbiot_source_index = index
        self.full_with_adapter = assemble(full, layers).eval()
        self._lora = self._collect_lora()
        self.built = True
        return self

    def _load_full(self, device: torch.device | str | None) -> nn.Module:
        from transformers import AutoModelForCausalLM

        path, extra = model_source(self.model_name)  # a .gguf file: its folder + gguf_file (de-quantised)
        with no_gguf_progress_bar() if extra else nullcontext():
            return AutoModelForCausalLM.from_pretrained(
                path, dtype=DTYPES[self.dtype_name], local_files_only=os.path.isdir(path),
                device_map=None if device is None else {"": device}, attn_implementation=self.attn_implementation,
                **extra,
            )

    def _collect_lora(self) -> dict[str, tuple[int, nn.Parameter]]:
        """Map each peft state-dict key to (compressed-layer position, live parameter)."""
        name = self.compressed.active_adapter
        found = {}
        for key, param in self.compressed.named_parameters():
            if "lora_" in key:
                match = _LAYER_KEY.search(key)
                found[key.replace(f".{name}.", ".")] = (int(match.group(1)), param)
        return found

    # ------------------------------------------------------------------ LoRA state exchange
    def _positions(self, part: Part) -> set[int]:
        if part == "emulator":
            return set(self.layout.emulator_positions)
        if part == "adapter":
            adapter = sorted(self.layout.adapter_positions)
            depth = self._adapter_depth
            return set(adapter if depth is None else adapter[len(adapter) - depth:])
        return set(range(len(self.layout.compressed)))

    @contextlib.contextmanager
    def trained_depth(self, depth: int) -> Iterator[ModelViews]:
        """Inside, the adapter is only its top ``depth`` layers (HierFedLoRA's fine-tuning depth).

        The client's optimizer, :meth:`set_trainable`, the upload and its check all ask for the
        ``adapter`` part, so they follow with no other change: the layers below train nothing and run
        in eval mode, and autograd stops at the lowest trained layer. Outside, nothing changes.

        Raises:
            ConfigError: ``depth`` is not in ``[1, adapter layers]``.
        """
        layers = len(self.layout.adapter_positions)
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= layers:
            raise ConfigError(f"depth must be an integer in [1, {layers}] (the adapter layers), got {depth!r}.")
        previous, self._adapter_depth = self._adapter_depth, depth
        try:
            yield self
        finally:
            self._adapter_depth = previous

    def lora_parameters(self, part: Part) -> dict[str, nn.Parameter]:
        """The live LoRA parameters of ``part``, keyed like ``peft.get_peft_model_state_dict``."""
        keep = self._positions(part)
        return {key: p for key, (pos, p) in self._lora.items() if pos in keep}

    def lora_of_layers(self, positions: Iterable[int]) -> dict[str, nn.Parameter]:
        """The live LoRA parameters of the compressed model's layers at ``positions`` (split learning's parts)."""
        keep = set(positions)
        return {key: p for key, (pos, p) in self._lora.items() if pos in keep}

    def lora_state(self, part: Part) -> dict[str, Tensor]:
        """A detached clone of ``part``'s LoRA weights (safe to keep while training goes on)."""
        return {key: p.detach().clone() for key, p in self.lora_parameters(part).items()}

    @torch.no_grad()
    def load_lora_state(self, state: dict[str, Tensor]) -> None:
        """Copy ``state`` (any subset of the LoRA keys) into the live parameters."""
        unknown = sorted(set(state) - set(self._lora))
        if unknown:
            raise KeyError(f"{len(unknown)} keys are not LoRA weights of this split, e.g. {unknown[:3]}")
        for key, value in state.items():
            param = self._lora[key][1]
            if param.shape != value.shape:
                raise ConfigError(f"{key}: expected shape {tuple(param.shape)}, got {tuple(value.shape)}")
            param.copy_(value)

    def lora_pairs(self, part: Part) -> Iterator[tuple[Tensor, Tensor, float, str]]:
        """``(A, B, scaling, name)`` for every LoRA module in ``part`` (for the proximal term)."""
        from peft.tuners.lora import LoraLayer

        keep = self._positions(part)
        adapter = self.compressed.active_adapter
        for name, module in self.compressed.named_modules():
            if isinstance(module, LoraLayer) and int(_LAYER_KEY.search(name).group(1)) in keep:
                yield module.lora_A[adapter].weight, module.lora_B[adapter].weight, module.scaling[adapter], name

    def set_trainable(self, part: Part) -> None:
        """Only ``part``'s LoRA trains: its layers in train mode, everything else frozen in eval.

        Frozen layers run in eval mode so that LoRA dropout on frozen weights adds no noise.
        """
        self.requires_grad_(False)
        self.eval()
        layers = decoder_of(self.compressed.get_base_model()).layers
        for position in self._positions(part):
            layers[position].train()
        for param in self.lora_parameters(part).values():
            param.requires_grad_(True)

    # ------------------------------------------------------------------ layers by role
    def compressed_layer(self, position: int) -> nn.Module:
        """The compressed model's decoder layer at ``position``."""
        return decoder_of(self.compressed.get_base_model()).layers[position]

    def full_with_adapter_layer(self, index: int) -> nn.Module:
        """The AdapFu model's decoder layer ``index`` (full-model numbering)."""
        return decoder_of(self.full_with_adapter).layers[index]
