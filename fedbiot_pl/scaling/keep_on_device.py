"""A Lightning strategy for one device that never moves a shared model off it."""

from __future__ import annotations

from lightning.pytorch.strategies import SingleDeviceStrategy
from typing_extensions import override


class KeepOnDeviceStrategy(SingleDeviceStrategy):
    """A single-device strategy that leaves the module where it is at set-up and teardown.

    It neither moves the module at set-up if it is already on the device, nor back to the CPU at
    teardown.

    Lightning's ``Strategy.teardown`` moves the LightningModule to the CPU after every ``fit``. The
    client module shares its (frozen, possibly multi-GB) model with the server, so that move would
    copy the whole model off the GPU after each client and back before the next one.
    """

    strategy_name = "keep_on_device"

    @override
    def model_to_device(self) -> None:
        # `.to()` walks every module even when nothing moves (2 ms a client fit on stories260K).
        module = self.model
        if any(t.device != self.root_device for t in [*module.parameters(), *module.buffers()]):
            module.to(self.root_device)

    @override
    def teardown(self) -> None:
        self.precision_plugin.teardown()
        if self.accelerator is not None:
            self.accelerator.teardown()
        self.checkpoint_io.teardown()
