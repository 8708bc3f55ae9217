"""Precision at scale: bf16 base weights, float32 LoRA, float32 losses; gradient checkpointing and the
attention kernel change no numbers (tiny random LLaMA, CPU)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from fedbiot_pl.model.views import ModelViews
from fedbiot_pl.modules import AdapterFinetuneModule, EmulatorAlignmentModule
from tests.conftest import tiny_llama

SPLIT = {"adapter_layers": 2, "drop_rate": 0.5, "lora_dropout": 0.0}


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny random LLaMA saved like a hub checkpoint, so ModelViews loads it through from_pretrained."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama().save_pretrained(folder)
    return str(folder)


def loaded(folder: str, **kwargs) -> ModelViews:
    split = ModelViews(folder, **{**SPLIT, **kwargs}).build()
    torch.manual_seed(3)
    with torch.no_grad():
        for p in split.lora_parameters("all").values():
            p.normal_(0, 0.2)
    return split


def ce64(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy in float64 (the reference)."""
    return F.cross_entropy(logits[:, :-1].double().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)


def kl64(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    log_s = torch.log_softmax(student[mask.bool()].double(), -1)
    log_t = torch.log_softmax(teacher[mask.bool()].double(), -1)
    return (log_t.exp() * (log_t - log_s)).sum(-1).mean()


def test_bfloat16_split_has_bf16_base_weights_and_float32_lora(tiny_folder):
    split = loaded(tiny_folder, dtype="bfloat16")
    base = {n: p.dtype for n, p in split.named_parameters() if "lora_" not in n}
    lora = {n: p.dtype for n, p in split.named_parameters() if "lora_" in n}
    assert set(base.values()) == {torch.bfloat16} and len(base) > 0
    assert set(lora.values()) == {torch.float32} and len(lora) > 0


def test_client_cross_entropy_is_computed_in_float32_from_bf16_logits(tiny_folder, batch):
    split = loaded(tiny_folder, dtype="bfloat16")
    split.set_trainable("adapter")
    module = AdapterFinetuneModule(split, log_steps=False)
    module.on_fit_start()
    loss = module.training_step(batch, 0)
    with torch.no_grad():
        logits = split.compressed(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    reference = ce64(logits, batch["labels"])
    assert abs(loss.item() - reference.item()) < 1e-5
    # The tolerance is meaningful: the same cross-entropy taken in bf16 misses it by far more.
    in_bf16 = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100)
    assert abs(in_bf16.item() - reference.item()) > 1e-4


def test_alignment_kl_and_l2_are_computed_in_float32(tiny_folder, batch):
    split = loaded(tiny_folder, dtype="bfloat16")
    split.set_trainable("emulator")
    module = EmulatorAlignmentModule(split, kl_weight=1.0)
    losses = module.alignment_losses(batch["input_ids"], batch["attention_mask"])
    assert {v.dtype for v in losses.values()} == {torch.float32}
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        student = split.compressed(**inputs).logits
        teacher = split.full_with_adapter(**inputs).logits
    assert student.dtype == teacher.dtype == torch.bfloat16
    reference = kl64(student, teacher, batch["attention_mask"])
    assert abs(losses["kl"].item() - reference.item()) < 1e-6
    mask = batch["attention_mask"].bool()
    in_bf16 = F.kl_div(torch.log_softmax(student[mask], -1), torch.log_softmax(teacher[mask], -1),
                       reduction="sum", log_target=True) / mask.sum()
    assert abs(in_bf16.item() - reference.item()) > 1e-5


def test_a_bf16_fit_keeps_lora_and_its_optimizer_state_in_float32(tiny_folder, batch):
    split = loaded(tiny_folder, dtype="bfloat16")
    module = AdapterFinetuneModule(split, log_steps=False)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", precision="32-true", logger=False, enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=False)
    before = split.lora_state("adapter")
    trainer.fit(module, train_dataloaders=DataLoader([batch, batch], batch_size=None))
    assert {p.dtype for p in split.lora_parameters("all").values()} == {torch.float32}
    assert any(not torch.equal(before[k], v) for k, v in split.lora_state("adapter").items())
    state = trainer.optimizers[0].state
    assert state and {s["exp_avg"].dtype for s in state.values()} == {torch.float32}
    assert {p.dtype for n, p in split.named_parameters() if "lora_" not in n} == {torch.bfloat16}


@pytest.mark.parametrize("part", ["adapter", "emulator"])
def test_gradient_checkpointing_gives_the_same_gradients(batch, part):
    grads = []
    for checkpointing in (False, True):
        split = ModelViews.from_model(tiny_llama(), gradient_checkpointing=checkpointing, **SPLIT).build()
        torch.manual_seed(3)
        with torch.no_grad():
            for p in split.lora_parameters("all").values():
                p.normal_(0, 0.2)
        split.set_trainable(part)
        base = split.compressed.get_base_model()
        assert base.is_gradient_checkpointing == checkpointing
        if part == "adapter":
            loss = AdapterFinetuneModule(split, log_steps=False).training_step(batch, 0)
        else:
            losses = EmulatorAlignmentModule(split, kl_weight=1.0).alignment_losses(
                batch["input_ids"], batch["attention_mask"])
            loss = losses["l2"] + losses["kl"]
        loss.backward()
        grads.append({k: p.grad.clone() for k, p in split.lora_parameters(part).items()})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    assert any(g.abs().sum() > 0 for g in grads[0].values())
    for key, value in grads[0].items():
        torch.testing.assert_close(grads[1][key], value, atol=1e-6, rtol=1e-5)


def test_sdpa_and_eager_attention_give_the_same_logits(tiny_folder, batch):
    mask = batch["attention_mask"].bool()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    logits = {}
    for kernel in ("sdpa", "eager"):
        split = loaded(tiny_folder, attn_implementation=kernel)
        assert split.full.config._attn_implementation == kernel
        with torch.no_grad():
            logits[kernel] = (split.compressed(**inputs).logits[mask], split.full_with_adapter(**inputs).logits[mask])
    for sdpa, eager in zip(logits["sdpa"], logits["eager"], strict=True):
        torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=1e-5)
