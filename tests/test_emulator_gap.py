"""EmulatorGap's measure: token-weighted KL and losses, checked against hand values."""

import math
from types import SimpleNamespace

import torch
from torch import nn

from fedbiot_pl.callbacks.emulator_gap import emulator_gap


class Fixed(nn.Module):
    """Returns the logits and the loss it was given for each batch, in order."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs = iter(outputs)

    def forward(self, **inputs):
        logits, loss = next(self.outputs)
        return SimpleNamespace(logits=logits, loss=torch.tensor(loss))


def batch(mask, labels):
    mask = torch.tensor(mask)
    return {"input_ids": torch.zeros_like(mask), "attention_mask": mask, "labels": torch.tensor(labels)}


def test_gap_weights_batches_by_their_tokens():
    # batch 1: 1 sequence, 2 real tokens of 3, 2 label tokens after the shift; batch 2: 1 real token, 1 label
    b1 = batch([[1, 1, 0]], [[-100, 5, 6]])
    b2 = batch([[1, 0, 0]], [[-100, 7, -100]])
    two = torch.log(torch.tensor([0.5, 0.5]))
    teacher_logits = two.expand(1, 3, 2)
    # student: (0.8, 0.2) everywhere; KL((.5,.5) || (.8,.2)) = .5 ln(.5/.8) + .5 ln(.5/.2)
    student_logits = torch.log(torch.tensor([0.8, 0.2])).expand(1, 3, 2)
    kl = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)
    full = Fixed([(teacher_logits, 1.0), (teacher_logits, 4.0)])
    compressed = Fixed([(student_logits, 2.0), (student_logits, 8.0)])
    gap = emulator_gap(full, compressed, [[b1], [b2]], torch.device("cpu"))
    assert math.isclose(gap["kl"], kl, rel_tol=1e-6)  # the same KL at every real token
    assert math.isclose(gap["adapfu_loss"], (1.0 * 2 + 4.0 * 1) / 3, rel_tol=1e-6)  # 2 and 1 label tokens
    assert math.isclose(gap["adapemu_loss"], (2.0 * 2 + 8.0 * 1) / 3, rel_tol=1e-6)


def test_identical_models_have_no_gap():
    logits = torch.randn(2, 4, 5)
    b = batch([[1, 1, 1, 1], [1, 1, 0, 0]], [[-100, 1, 2, 3], [-100, 4, -100, -100]])
    gap = emulator_gap(Fixed([(logits, 3.0)]), Fixed([(logits, 3.0)]), [[b]], torch.device("cpu"))
    assert gap["kl"] == 0.0 and gap["adapfu_loss"] == gap["adapemu_loss"] == 3.0


def test_setup_names_the_missing_validation_split_and_loop():
    import pytest

    from fedbiot_pl.callbacks import EmulatorGap, FederatedLoop
    from fedbiot_pl.errors import ConfigError

    def trainer(callbacks, val_fraction):
        data = SimpleNamespace(val_fraction=val_fraction, client_val_dataloader=lambda c: [])
        return SimpleNamespace(callbacks=callbacks, datamodule=data)

    with pytest.raises(ConfigError, match="EmulatorGap needs a FederatedLoop"):
        EmulatorGap().setup(trainer([], 0.1), None, "fit")
    with pytest.raises(ConfigError, match=r"set data.val_fraction > 0 \(got 0.0\)"):
        EmulatorGap().setup(trainer([FederatedLoop(rounds=1)], 0.0), None, "fit")
    EmulatorGap().setup(trainer([FederatedLoop(rounds=1)], 0.1), None, "fit")  # fine
