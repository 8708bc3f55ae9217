import copy

import lightning as L
import torch

from fedbiot_pl.model.losses import kl_teacher_student, normalized_l2
from fedbiot_pl.model.views import ModelViews
from fedbiot_pl.modules import AdapterFinetuneModule, EmulatorAlignmentModule
from tests.conftest import tiny_llama
from tests.toy_data import ToyFederatedData


def lean_trainer(steps: int) -> L.Trainer:
    return L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_model_summary=False, enable_progress_bar=False, num_sanity_val_steps=0)


def snapshot(split: ModelViews) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in split.named_parameters()}


def changed(before, split) -> set[str]:
    return {n for n, p in split.named_parameters() if not torch.equal(before[n], p)}


def layer_outputs(model, batch):
    """Every decoder layer's output (via forward hooks) and the model output."""
    outputs = []
    layers = model.get_base_model().model.layers if hasattr(model, "get_base_model") else model.model.layers
    handles = [layer.register_forward_hook(lambda m, a, o: outputs.append(o.detach().clone())) for layer in layers]
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    for handle in handles:
        handle.remove()
    return outputs, out


def randomize_lora(split: ModelViews, std: float = 0.1) -> None:
    with torch.no_grad():
        for p in split.lora_parameters("all").values():
            p.normal_(0, std)


def test_alignment_losses_match_a_hand_composed_reference(batch):
    full = tiny_llama().eval()
    split = ModelViews.from_model(full, adapter_layers=2, drop_rate=0.5).build()
    randomize_lora(split)
    split.set_trainable("emulator")
    split.eval()  # no dropout, so both paths are deterministic
    module = EmulatorAlignmentModule(split, kl_weight=1.0)
    losses = module.alignment_losses(batch["input_ids"], batch["attention_mask"])
    mask = batch["attention_mask"]
    # Independent references: a deep copy of the untouched full model, and plain forward hooks
    # (not output_hidden_states, whose v5 capture hooks double up on modules shared by two models).
    original = copy.deepcopy(full)
    student_out, student = layer_outputs(split.compressed, batch)
    original_out, _ = layer_outputs(original, batch)
    with torch.no_grad():
        teacher_logits = split.full_with_adapter(input_ids=batch["input_ids"], attention_mask=mask).logits
    # emulator = compressed layers 0, 1 standing in for full layers 0..3
    expected_l2 = normalized_l2(student_out[1], original_out[3], mask)
    expected_kl = kl_teacher_student(student.logits, teacher_logits, mask)
    torch.testing.assert_close(losses["l2"], expected_l2)
    torch.testing.assert_close(losses["kl"], expected_kl)
    assert losses["kl"] > 0 and losses["l2"] > 0


def test_alignment_losses_vanish_when_nothing_is_dropped(batch):
    split = ModelViews.from_model(tiny_llama(), adapter_layers=2, drop_rate=0.0).build()
    split.set_trainable("emulator")
    split.eval()
    losses = EmulatorAlignmentModule(split, kl_weight=1.0).alignment_losses(batch["input_ids"], batch["attention_mask"])
    assert losses["l2"].item() == 0.0 and losses["kl"].item() == 0.0


def test_kl_weight_zero_skips_the_logits(batch):
    split = ModelViews.from_model(tiny_llama(), adapter_layers=2, drop_rate=0.5).build()
    split.set_trainable("emulator")
    calls = []
    split.full.lm_head.register_forward_hook(lambda *a: calls.append(1))
    losses = EmulatorAlignmentModule(split, kl_weight=0.0).alignment_losses(batch["input_ids"], batch["attention_mask"])
    assert set(losses) == {"l2"} and calls == []


def test_alignment_fit_changes_only_the_emulator_lora():
    split = ModelViews.from_model(tiny_llama(), adapter_layers=2, drop_rate=0.5).build()
    randomize_lora(split)  # B != 0 everywhere so that every LoRA tensor gets a gradient
    before = snapshot(split)
    lean_trainer(3).fit(EmulatorAlignmentModule(split, kl_weight=1.0, lr=1e-2), ToyFederatedData().train_dataloader())
    assert changed(before, split) == {
        n for n, _ in split.named_parameters()
        if n.startswith("compressed.") and "lora_" in n and any(f".layers.{i}." in n for i in (0, 1))
    }


def test_client_fit_changes_only_the_adapter_lora():
    split = ModelViews.from_model(tiny_llama(), adapter_layers=2, drop_rate=0.5).build()
    randomize_lora(split)
    before = snapshot(split)
    data = ToyFederatedData()
    lean_trainer(3).fit(AdapterFinetuneModule(split, proximal_weight=1.0, lr=1e-2), data.client_dataloader(0))
    expected = {n for n, _ in split.named_parameters() if n.startswith("compressed.") and "lora_" in n
                and any(f".layers.{i}." in n for i in (2, 3))}
    assert changed(before, split) == expected


def test_proximal_term_has_the_hand_computed_gradient():
    split = ModelViews.from_model(tiny_llama(), adapter_layers=2, drop_rate=0.5).build()
    randomize_lora(split)
    module = AdapterFinetuneModule(split, proximal_weight=1.0)
    module.on_fit_start()  # anchors A_t, B_t at the current adapter
    split.set_trainable("adapter")
    a, b, scaling, _ = next(iter(split.lora_pairs("adapter")))
    a0, b0 = a.detach().clone(), b.detach().clone()
    with torch.no_grad():
        b.add_(0.05)
    from fedbiot_pl.model.losses import lora_proximal

    lora_proximal(module._anchor).backward()
    delta = scaling * (b @ a - b0 @ a0)
    torch.testing.assert_close(a.grad, 2 * scaling * b.T @ delta, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(b.grad, 2 * scaling * delta @ a.T, rtol=1e-4, atol=1e-6)
    assert a.grad.abs().sum() > 0


def test_client_module_mean_loss_and_lora_only_checkpoint(tmp_path):
    split = ModelViews.from_model(tiny_llama(), adapter_layers=2, drop_rate=0.5).build()
    module = AdapterFinetuneModule(split, lr=1e-2)
    trainer = lean_trainer(4)
    trainer.fit(module, ToyFederatedData().client_dataloader(0))
    assert module._loss_count == 4 and module.mean_loss > 0
    assert all(p.grad is None for p in split.lora_parameters("adapter").values())
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    state = torch.load(tmp_path / "c.ckpt", weights_only=True)["state_dict"]
    assert state and all("lora_" in k for k in state)
