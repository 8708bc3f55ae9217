"""FedMKT (FATE-LLM): mutual distillation of the server's LLM and the clients (the round: :mod:`.kd`)."""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar, Literal

from fedbiot_pl.algorithms.base import register_algorithm
from fedbiot_pl.algorithms.kd import ClientModel, KDAlgorithm
from fedbiot_pl.distillation.targets import STRATEGIES, select_targets
from fedbiot_pl.distillation.topk import TopK

log = logging.getLogger(__name__)

@register_algorithm
class FedMKT(KDAlgorithm):
    """FedMKT's mutual KD: the server's LLM (full model + LoRA) also distils from the clients and answers.

    Args (besides :class:`KDAlgorithm`'s):
        server_trains: the server's LoRA distils on each round's slice (``false``: FedMKT's one-way
            "LLM2SLM", the server only answers with its own logits).
        distill_strategy: the server's teacher per example: ``greater`` (lowest CE among its own
            and the clients' logits, FedMKT's default), ``weighted_mean`` (weights softmax(exp(-CE)))
            or ``mean``.
        server_kd_steps: the server's optimizer steps per round (``null``: one pass over the slice).
    """

    name: ClassVar[str] = "fedmkt"

    def __init__(self, top_k: int = 128, temperature: float = 1.0, kd_alpha: float = 0.9,
                 public_examples: int | None = 50, kd_steps: int | None = None, client_model: ClientModel = "full",
                 server_trains: bool = True, distill_strategy: Literal["greater", "weighted_mean", "mean"] = "greater",
                 server_kd_steps: int | None = None) -> None:
        super().__init__(top_k, temperature, kd_alpha, public_examples, kd_steps, client_model)
        if distill_strategy not in STRATEGIES:
            self.setting_issues.append(f"distill_strategy must be one of {list(STRATEGIES)}, got {distill_strategy!r}.")
        if server_kd_steps is not None and (not isinstance(server_kd_steps, int) or server_kd_steps < 1):
            self.setting_issues.append(f"server_kd_steps must be an integer >= 1 or null, got {server_kd_steps!r}.")
        self.server_trains, self.distill_strategy = server_trains, distill_strategy
        self.server_kd_steps = server_kd_steps
        self._server_module: Any = None

    def __repr__(self) -> str:
        return (super().__repr__()[:-1] + f", server_trains={self.server_trains}, distill_strategy="
                f"{self.distill_strategy!r}, server_kd_steps={self.server_kd_steps})")

    def _server_model(self, views: Any) -> Any:
        return views.full_with_adapter if self.client_model == "emulator" else views.compressed

    def server_step(self, views: Any, payloads: list[TopK], weights: list[float]) -> TopK:
        """Own top-k, teacher selection, the server's KD fit, then its new top-k."""
        rows = payloads[0].rows.tolist()
        own = self._topk(self._server_model(views), rows)
        if not self.server_trains:
            return own
        targets = select_targets([own, *payloads], self.distill_strategy, self.temperature, self.top_k)
        if self._server_module is None:
            from fedbiot_pl.modules.distill_module import DistillFinetuneModule

            module = self._runtime[2].module
            self._server_module = DistillFinetuneModule(
                views, self.kd_alpha, "full_with_adapter" if self.client_model == "emulator" else "compressed",
                module.hparams.lr, tuple(module.hparams.betas), module.hparams.weight_decay, log_steps=False)
        clients = self._runtime[2]
        clients.fit_module(self._server_module, *self._kd_batches(targets, self.server_kd_steps, clients.seed))
        if not math.isfinite(self._server_module.mean_loss):  # never let a bad round poison the global model
            log.warning("the server's KD fit ended with a non-finite loss (%s): its LoRA stays as before the round, "
                        "and it answers with its own logits.", self._server_module.mean_loss)
            views.load_lora_state(self._server)
            return own
        return self._topk(self._server_model(views), rows)
