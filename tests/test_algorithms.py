"""The baselines are settings of the same split, modules and loop: what each one trains and sends."""

import lightning as L
import pytest
import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

from fedbiot_pl import hooks
from fedbiot_pl.algorithms import ALGORITHMS, LayoutRequest, RunSettings
from fedbiot_pl.callbacks import FederatedLoop
from fedbiot_pl.model.layer_drop import layer_layout
from fedbiot_pl.model.losses import lora_param_proximal
from fedbiot_pl.model.views import ModelViews
from fedbiot_pl.modules import AdapterFinetuneModule, EmulatorAlignmentModule
from tests.conftest import tiny_llama
from tests.helpers import LORA_PER_LAYER
from tests.toy_data import ToyFederatedData

STORIES = "embedded:models/stories260K"
# stories260K: q_proj 64->64 and v_proj 64->32 (4 KV heads x 8), r = 8


def run(algorithm: str, tmp_path, rounds: int = 2, pre_alignment_rounds: int = 0, data=None, split=None,
        module_kwargs=None, **loop_kwargs):
    split = split or ModelViews(STORIES, adapter_layers=2, drop_rate=0.2).use_algorithm(algorithm)
    module = EmulatorAlignmentModule(split, lr=1e-2, **({"kl_weight": 1.0} | (module_kwargs or {})))
    loop_kwargs = {"local_steps": 3, "client_accumulate_grad_batches": 1, "client_lr": 2e-2, "align_steps": 2,
                   "export_final_adapter": False} | loop_kwargs
    loop = FederatedLoop(algorithm=algorithm, rounds=rounds, pre_alignment_rounds=pre_alignment_rounds, **loop_kwargs)
    data = data or ToyFederatedData(vocab=512)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=tmp_path, callbacks=[loop])
    module.split.build()
    before = {k: v.clone() for k, v in module.split.state_dict().items()}
    trainer.fit(module, datamodule=data)
    return module, loop, before, trainer


def changed_lora_layers(split: ModelViews, before: dict) -> set[int]:
    """Compressed-model positions whose LoRA moved."""
    after = split.state_dict()
    return {int(k.split(".layers.")[1].split(".")[0]) for k in after
            if k.startswith("compressed.") and "lora_" in k and not torch.equal(after[k], before[k])}


def base_unchanged(split: ModelViews, before: dict) -> bool:
    after = split.state_dict()
    return all(torch.equal(after[k], before[k]) for k in after if "lora_" not in k)


def test_layouts_per_algorithm():
    fedot = ALGORITHMS["fedot"]().layout(32, LayoutRequest(2, 0.2))
    # the reference's FedOT/offsite-tuning split: layers 0,1 and 30,31 adapt, 22 of layers 2..29 emulate
    assert fedot.bottom_adapter == (0, 1) and fedot.top_adapter == (30, 31) and len(fedot.emulator) == 22
    full = ALGORITHMS["fedavg_lora"]().layout(32, LayoutRequest(2, 0.2))
    assert full == layer_layout(32, 2, 0.2, full_model=True)
    assert full.emulator == () and full.adapter_positions == tuple(range(32)) and full.compressed == tuple(range(32))
    split = ModelViews(STORIES).use_algorithm("offsite_tuning")
    assert split.layout.compressed == (0, 1, 2, 3, 4) and split.layout.emulator == (2,)
    assert ModelViews(STORIES, bottom_adapter_layers=1).use_algorithm("fedot").layout.bottom_adapter == (0,)
    with pytest.raises(ValueError, match="unknown algorithm 'fedsgd'.*fedavg_lora"):
        ModelViews(STORIES).use_algorithm("fedsgd")


@pytest.mark.parametrize(
    ("algorithm", "trained", "down_layers", "bytes_up_layers"),
    [
        ("fedbiot", {0, 1, 2, 3}, (4, 4), 2),       # emulator 0,2 (server) + adapter 3,4 (clients)
        ("fedot", {0, 1, 3, 4}, (5, 4), 4),          # bottom 0,1 + top 3,4; the emulator (layer 2) never moves
        ("fedavg_lora", {0, 1, 2, 3, 4}, (5, 5), 5),  # every layer, the full model on every client
        ("fedprox", {0, 1, 2, 3, 4}, (5, 5), 5),
    ],
)
def test_each_algorithm_trains_only_its_parameters(tmp_path, algorithm, trained, down_layers, bytes_up_layers):
    kwargs = {"proximal_weight": 0.5} if algorithm == "fedprox" else {}
    module, loop, before, trainer = run(algorithm, tmp_path, **kwargs)
    split = module.split
    assert changed_lora_layers(split, before) == trained
    assert base_unchanged(split, before)
    # LoRA layers sent down in rounds 0 and 1 (FedOT's fixed emulator LoRA goes out in round 0 only)
    assert loop.ledger.bytes_down == 3 * sum(down_layers) * LORA_PER_LAYER * 4
    assert loop.ledger.bytes_up == 2 * 3 * bytes_up_layers * LORA_PER_LAYER * 4


class EmulatorWatch(FederatedLoop):
    """Records the emulator LoRA before every client fit (at the ``client_fit`` hook point)."""

    seen: list[dict]

    def on_fit_start(self, trainer, pl_module):
        super().on_fit_start(trainer, pl_module)
        self._detach = hooks.attach("client_fit", lambda **_: self.seen.append(pl_module.split.lora_state("emulator")))

    def on_fit_end(self, trainer, pl_module):
        self._detach()
        super().on_fit_end(trainer, pl_module)


def test_fedot_without_alignment_never_changes_the_emulator(tmp_path):
    split = ModelViews(STORIES).use_algorithm("fedot")
    split.build()
    initial = split.lora_state("emulator")
    loop = EmulatorWatch(algorithm="fedot", rounds=3, local_steps=3, client_accumulate_grad_batches=1,
                         client_lr=2e-2, export_final_adapter=False)
    loop.seen = []
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=tmp_path, callbacks=[loop])
    trainer.fit(EmulatorAlignmentModule(split, kl_weight=1.0, lr=1e-2), datamodule=ToyFederatedData(vocab=512))
    assert len(loop.seen) == 9
    for state in [*loop.seen, split.lora_state("emulator")]:
        assert all(torch.equal(state[k], initial[k]) for k in initial)
    assert loop.history[-1]["round/client_loss"] < loop.history[0]["round/client_loss"]


def test_fedot_one_shot_distillation_aligns_only_before_the_rounds(tmp_path):
    split = ModelViews(STORIES).use_algorithm("fedot")
    split.build()
    initial = split.lora_state("emulator")
    loop = EmulatorWatch(algorithm="fedot", rounds=2, pre_alignment_rounds=2, align_steps=2, local_steps=2,
                         client_accumulate_grad_batches=1, export_final_adapter=False)
    loop.seen = []
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=tmp_path, callbacks=[loop])
    module = EmulatorAlignmentModule(split, kl_weight=0.0, l2_weight=0.9, ce_weight=0.1, lr=1e-2)
    trainer.fit(module, datamodule=ToyFederatedData(vocab=512))
    distilled = loop.seen[0]
    assert any(not torch.equal(distilled[k], initial[k]) for k in initial)  # pre-alignment moved it
    for state in [*loop.seen, split.lora_state("emulator")]:  # ... and nothing after
        assert all(torch.equal(state[k], distilled[k]) for k in distilled)


def test_alignment_loss_weights_combine_l2_kl_and_ce(batch):
    split = ModelViews.from_model(tiny_llama(), adapter_layers=2, drop_rate=0.5, lora_dropout=0.0).build()
    parts = EmulatorAlignmentModule(split, kl_weight=1.0, l2_weight=1.0, ce_weight=1.0).alignment_losses(
        batch["input_ids"], batch["attention_mask"], batch["labels"]
    )
    weighted = EmulatorAlignmentModule(split, kl_weight=0.3, l2_weight=0.5, ce_weight=0.2)
    weighted.alignment_enabled = True
    total = weighted.training_step(batch, 0)
    torch.testing.assert_close(total, 0.5 * parts["l2"] + 0.3 * parts["kl"] + 0.2 * parts["ce"])
    # the CE term is the compressed model's own causal-LM loss
    out = split.compressed(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    torch.testing.assert_close(parts["ce"], out.loss)
    weighted.alignment_enabled = False
    assert weighted.training_step(batch, 0) is None
    with pytest.raises(ValueError, match="all 0"):
        EmulatorAlignmentModule(split, kl_weight=0.0, l2_weight=0.0)


def test_fedavg_lora_on_one_client_equals_plain_lora_finetuning(tmp_path):
    torch.manual_seed(0)
    full = tiny_llama(num_layers=4)
    reference = tiny_llama(num_layers=4)
    reference.load_state_dict(full.state_dict())
    split = ModelViews.from_model(full, algorithm="fedavg_lora", lora_dropout=0.0,
                                  lora_targets=["q_proj", "v_proj", "down_proj"])
    split.build()
    with torch.no_grad():  # give B a non-zero start so that every factor gets gradients from step one
        for param in split.lora_parameters("all").values():
            param.normal_(0, 0.02)
    initial = split.lora_state("all")
    data = ToyFederatedData(num_clients=1, examples=(16,), vocab=128)
    rounds, steps, lr = 2, 3, 1e-2
    run("fedavg_lora", tmp_path, rounds=rounds, data=data, split=split, local_steps=steps, client_lr=lr,
        client_betas=(0.9, 0.95), client_weight_decay=0.01)

    peft_model = get_peft_model(reference, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.0,
                                                      target_modules=["down_proj", "q_proj", "v_proj"]))
    set_peft_model_state_dict(peft_model, initial)
    params = [p for n, p in peft_model.named_parameters() if "lora_" in n]
    peft_model.train()
    for round_idx in range(rounds):  # a fresh AdamW per round, as every client fit has
        optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
        for _step, batch in zip(range(steps), data.client_dataloader(0, round_idx), strict=False):
            peft_model(**batch, use_cache=False).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    expected = get_peft_model_state_dict(peft_model)
    got = split.lora_state("all")
    assert set(got) == set(expected)
    for key in got:
        assert not torch.equal(got[key], initial[key]), key
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6)


def test_fedprox_term_is_half_the_squared_distance_of_the_factors():
    a, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0], [4.0]])
    a0, b0 = torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0], [1.0]])
    # 1/2 * ((1)^2 + (2^2 + 3^2)) = 7
    assert lora_param_proximal([(a, b, a0, b0, 2.0)]).item() == pytest.approx(7.0)
    split = ModelViews.from_model(tiny_llama(), algorithm="fedprox").build()
    module = AdapterFinetuneModule(split, proximal_weight=1.0, proximal="params")
    module.on_fit_start()
    with torch.no_grad():
        for param in split.lora_parameters("adapter").values():
            param.add_(0.1)
    numel = sum(p.numel() for p in split.lora_parameters("adapter").values())
    term = lora_param_proximal(module._anchor)
    torch.testing.assert_close(term, torch.tensor(0.5 * numel * 0.01), rtol=1e-5, atol=0)


def test_settings_that_contradict_the_algorithm_fail_with_the_fix():
    with pytest.raises(ValueError, match="no proximal term.*fedprox"):
        FederatedLoop(algorithm="fedavg_lora", proximal_weight=0.1)
    with pytest.raises(ValueError, match="needs proximal_weight > 0"):
        FederatedLoop(algorithm="fedprox")
    with pytest.raises(ValueError, match="no emulator to align"):
        FederatedLoop(algorithm="fedavg_lora", pre_alignment_rounds=2)
    assert ALGORITHMS["offsite_tuning"]().check(RunSettings(num_clients=3))[0] \
        .startswith("algorithm 'offsite_tuning' trains one client")


def test_loop_refuses_a_split_made_for_another_algorithm_and_offsite_tuning_with_many_clients(tmp_path):
    with pytest.raises(ValueError, match="views were built for 'fedbiot'; build new views for 'fedot'"):
        run("fedot", tmp_path, split=ModelViews(STORIES))
    with pytest.raises(ValueError, match="set data.num_clients to 1"):
        run("offsite_tuning", tmp_path)
