"""Client validation loss of AdapEmu and AdapFu after every federated round."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch import Callback
from torch import Tensor, nn
from typing_extensions import override

from fedbiot_pl.artifacts.export import atomic_write
from fedbiot_pl.callbacks.federated_loop import round_due
from fedbiot_pl.modules.generation_module import Variant


@torch.no_grad()
def token_loss_sum(model: nn.Module, loaders: list[Any], device: torch.device) -> tuple[float, int]:
    """Cross-entropy of ``model`` summed over every label token of every batch of ``loaders``, and the token count."""
    total, tokens = torch.zeros((), dtype=torch.float64), 0
    for loader in loaders:
        for batch in loader:
            labels = batch["labels"].to(device)
            count = int((labels[:, 1:] != -100).sum())
            if count == 0:  # no label token: nothing to score (its mean loss would be NaN)
                continue
            out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                        labels=labels, use_cache=False)
            total += out.loss.double().cpu() * count
            tokens += count
    return float(total), tokens


def _mean(total: float, tokens: int) -> float:
    if tokens == 0:
        raise ValueError("the client validation data has no label tokens; set data.val_fraction > 0.")
    return total / tokens


def token_mean_loss(model: nn.Module, loaders: list[Any], device: torch.device) -> float:
    """Cross-entropy of ``model`` averaged over every label token of every batch of ``loaders``."""
    return _mean(*token_loss_sum(model, loaders, device))


def personal_mean_loss(split: Any, states: dict[int, dict[str, Tensor]], loaders: list[Any],
                       device: torch.device) -> float:
    """Token-weighted CE of each client's own model (``states``; else the views' LoRA) on the client's rows."""
    current = split.lora_state("all")
    total, tokens = 0.0, 0
    try:
        for client_id, loader in enumerate(loaders):
            split.load_lora_state(states.get(client_id, current))
            client_total, client_tokens = token_loss_sum(split.compressed, [loader], device)
            total, tokens = total + client_total, tokens + client_tokens
    finally:
        split.load_lora_state(current)
    return _mean(total, tokens)


class ClientValidation(Callback):
    """After every ``every_n_rounds`` rounds, the loss on the clients' held-out rows.

    Uses the datamodule's ``client_val_dataloader(client_id)`` (set ``data.val_fraction > 0``) and
    logs ``val/<variant>_loss`` (token-weighted over all clients) for AdapEmu (the compressed model
    the clients train) and AdapFu (the adapter in the full model); where the server module's own
    validation loop has just computed them on the same rows (``fit`` validates every epoch when the
    data has a validation split) it takes those values instead of computing and logging them twice.
    Where clients keep models of their own (the KD algorithms), AdapEmu is each client's own model on
    its own held-out rows (logged as ``val/clients_own_loss``), and AdapFu the server's model. Each
    entry of :attr:`history`
    also holds the bytes communicated so far (the :class:`FederatedLoop`'s ledger), so that a run's
    loss can be plotted against its communication; it is written to ``<log_dir>/client_validation.json``.

    Args:
        every_n_rounds: validate after rounds ``n, 2n, ...`` and after the last round.
        variants: ``adapemu`` and/or ``adapfu``.
    """

    def __init__(self, every_n_rounds: int = 1, variants: list[Variant] | None = None) -> None:
        variants = list(variants or ["adapemu", "adapfu"])
        bad = [v for v in variants if v not in ("adapemu", "adapfu")]
        if every_n_rounds < 1 or bad or not variants:
            raise ValueError(
                f"every_n_rounds must be >= 1 (got {every_n_rounds}) and variants a non-empty subset of "
                f"['adapemu', 'adapfu'] (got {variants})."
            )
        self.every_n_rounds, self.variants = every_n_rounds, variants
        self.history: list[dict[str, float]] = []

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loop, round_idx = round_due(trainer, self.every_n_rounds)
        if loop is None:
            raise RuntimeError("ClientValidation needs a FederatedLoop among the Trainer's callbacks.")
        if round_idx is None:
            return
        data, split = trainer.datamodule, pl_module.split
        models = {"adapemu": split.compressed, "adapfu": split.full_with_adapter}
        entry = {"round": float(round_idx), "total_bytes": float(loop.ledger.bytes_down + loop.ledger.bytes_up)}
        split.eval()  # the next epoch's on_train_epoch_start sets the trained part's modes again
        # The module's validation loop just measured every held-out row (no limit_val_batches): reuse it.
        validated = (getattr(pl_module, "validated_epoch", None) == trainer.current_epoch
                     and isinstance(trainer.limit_val_batches, float) and trainer.limit_val_batches == 1.0)
        personal = loop.algorithm.personal_states()
        loaders = None
        for variant in self.variants:
            key = f"val/{variant}_loss"
            own_models = variant == "adapemu" and bool(personal)
            if validated and not own_models and key in trainer.callback_metrics:  # the module's validation logged it
                entry[f"{variant}_loss"] = float(trainer.callback_metrics[key])
                continue
            loaders = loaders or [data.client_val_dataloader(c) for c in range(data.num_clients)]
            if own_models:  # KD: each client's rows scored with its own model, not the module's val/adapemu_loss
                key = "val/clients_own_loss"
                entry[f"{variant}_loss"] = personal_mean_loss(split, personal, loaders, pl_module.device)
            else:
                entry[f"{variant}_loss"] = token_mean_loss(models[variant], loaders, pl_module.device)
            pl_module.log(key, entry[f"{variant}_loss"], on_epoch=True)
        self.history.append(entry)
        if trainer.is_global_zero and trainer.log_dir:
            text = json.dumps(self.history, indent=2)
            atomic_write(Path(trainer.log_dir) / "client_validation.json", lambda tmp: Path(tmp).write_text(text))

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])
