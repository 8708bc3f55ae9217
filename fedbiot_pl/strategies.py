"""Lightning strategies for the many short client fits of a federated round."""

from __future__ import annotations

import torch
from lightning.pytorch.strategies import SingleDeviceStrategy
from typing_extensions import override


class KeepOnDeviceStrategy(SingleDeviceStrategy):
    """A single-device strategy whose ``teardown`` leaves the module where it is.

    Lightning's ``Strategy.teardown`` moves the LightningModule to the CPU after every ``fit``. The
    client module shares its (frozen, possibly multi-GB) model with the server, so that move would
    copy the whole model off the GPU after each client and back before the next one.
    """

    strategy_name = "keep_on_device"

    @override
    def teardown(self) -> None:
        self.precision_plugin.teardown()
        if self.accelerator is not None:
            self.accelerator.teardown()
        self.checkpoint_io.teardown()


def client_device_kwargs(root_device: torch.device) -> dict:
    """Trainer kwargs that put a client fit on the server fit's device."""
    accelerator = "cuda" if root_device.type == "cuda" else root_device.type
    return {"accelerator": accelerator, "strategy": KeepOnDeviceStrategy(device=root_device)}
