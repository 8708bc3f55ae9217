import logging

import torch
from lightning.pytorch.trainer.connectors import callback_connector

from fedbiot_pl.federation.client_trainer import KeepOnDeviceStrategy, build_client_trainer, client_fit_context


def test_client_fit_context_is_scoped_and_restores_everything():
    original = callback_connector._load_external_callbacks
    level = logging.getLogger("lightning.pytorch").level
    with client_fit_context():
        assert callback_connector._load_external_callbacks is not original
        assert logging.getLogger("lightning.pytorch").level == logging.WARNING
        trainer = build_client_trainer(torch.device("cpu"), "32-true", max_steps=3, accumulate_grad_batches=2)
    assert callback_connector._load_external_callbacks is original
    assert logging.getLogger("lightning.pytorch").level == level
    assert isinstance(trainer.strategy, KeepOnDeviceStrategy)
    assert trainer.max_steps == 3 and trainer.accumulate_grad_batches == 2
    assert trainer.logger is None and trainer.checkpoint_callback is None and not trainer.progress_bar_callback


def test_keep_on_device_strategy_does_not_move_the_model_at_teardown(monkeypatch):
    strategy = KeepOnDeviceStrategy(device=torch.device("cpu"))
    moved = []
    module = torch.nn.Linear(2, 2)
    monkeypatch.setattr(module, "cpu", lambda: moved.append("cpu"))
    monkeypatch.setattr(module, "to", lambda *a, **k: moved.append("to"))
    strategy._lightning_module = module
    strategy.model = module
    strategy.model_to_device()  # already on the device: no walk
    strategy.teardown()
    assert moved == []
