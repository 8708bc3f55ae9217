import copy

import pytest
import torch
from peft import get_peft_model_state_dict
from transformers import GPT2Config, GPT2LMHeadModel

from fedbiot_pl.model.views import ModelViews, decoder_of
from tests.conftest import TINY_FAMILIES, tiny_llama


def _logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
def test_beta_zero_compressed_model_equals_full_model(family, batch):
    full = TINY_FAMILIES[family]().eval()
    split = ModelViews.from_model(full, adapter_layers=2, drop_rate=0.0).build()
    split.eval()
    expected = _logits(full, batch)
    torch.testing.assert_close(_logits(split.compressed, batch), expected, rtol=0, atol=0)
    # untrained LoRA (B = 0): AdapFu is exactly the full model
    torch.testing.assert_close(_logits(split.full_with_adapter, batch), expected, rtol=0, atol=0)


@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
def test_compressed_model_equals_the_full_model_with_layers_deleted(family, batch):
    full = TINY_FAMILIES[family]().eval()
    split = ModelViews.from_model(full, adapter_layers=2, drop_rate=0.5).build()
    split.eval()
    assert split.layout.compressed == (0, 3, 4, 5)
    # Independent reference: the reference code's construction (deep copy, then keep layers).
    reference = copy.deepcopy(full)
    keep = list(split.layout.compressed)
    decoder_of(reference).layers = torch.nn.ModuleList([decoder_of(reference).layers[i] for i in keep])
    for position, layer in enumerate(decoder_of(reference).layers):
        layer.self_attn.layer_idx = position
    reference.config.num_hidden_layers = len(keep)
    if isinstance(getattr(reference.config, "layer_types", None), list):
        reference.config.layer_types = [full.config.layer_types[i] for i in keep]
    torch.testing.assert_close(_logits(split.compressed, batch), _logits(reference, batch), rtol=0, atol=0)
    assert split.compressed.config.num_hidden_layers == 4
    assert [layer.self_attn.layer_idx for layer in decoder_of(split.compressed.get_base_model()).layers] == [0, 1, 2, 3]


@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
def test_generation_with_kv_cache_matches_no_cache(family):
    split = ModelViews.from_model(TINY_FAMILIES[family](), adapter_layers=2, drop_rate=0.5).build()
    split.eval()
    with torch.no_grad():
        for p in split.lora_parameters("all").values():
            p.normal_(0, 0.2)  # a non-trivial adapter
    prompt = torch.tensor([[5, 17, 33, 2, 9]])
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    for model in (split.compressed, split.full_with_adapter):
        cached = model.generate(input_ids=prompt, use_cache=True, **kwargs)
        uncached = model.generate(input_ids=prompt, use_cache=False, **kwargs)
        assert cached.shape == (1, 17)
        torch.testing.assert_close(cached, uncached)


def test_no_weight_is_copied():
    full = tiny_llama()
    split = ModelViews.from_model(full, adapter_layers=2, drop_rate=0.5).build()
    full_ptrs = {p.data_ptr() for p in full.parameters()}
    base = [p for n, p in split.compressed.named_parameters() if "lora_" not in n]
    assert base and all(p.data_ptr() in full_ptrs for p in base)
    lora = sum(p.numel() for p in split.lora_parameters("all").values())
    # ModelViews.parameters() deduplicates shared tensors: the full model plus LoRA, nothing more.
    assert sum(p.numel() for p in split.parameters()) == sum(p.numel() for p in full.parameters()) + lora
    # The full model itself carries no LoRA.
    assert not any("lora_" in n for n, _ in full.named_parameters())


def test_lora_state_keys_match_peft_and_are_clones():
    split = ModelViews.from_model(tiny_llama(), adapter_layers=2, drop_rate=0.5).build()
    assert set(split.lora_state("all")) == set(get_peft_model_state_dict(split.compressed))
    emulator, adapter = split.lora_state("emulator"), split.lora_state("adapter")
    assert set(emulator).isdisjoint(adapter) and len(emulator) == len(adapter) == 8  # 2 layers x q,v x A,B
    assert all(".layers.2." in k or ".layers.3." in k for k in adapter)
    key = next(iter(adapter))
    live = split.lora_parameters("adapter")[key]
    with torch.no_grad():
        live.add_(1.0)
    assert not torch.equal(adapter[key], live)  # a clone, not an alias
    split.load_lora_state({key: adapter[key]})
    assert torch.equal(live, adapter[key])


def test_load_lora_state_rejects_unknown_keys_and_shapes():
    split = ModelViews.from_model(tiny_llama(), adapter_layers=2, drop_rate=0.5).build()
    with pytest.raises(KeyError, match="not LoRA weights"):
        split.load_lora_state({"nope": torch.zeros(1)})
    key = next(iter(split.lora_state("adapter")))
    with pytest.raises(ValueError, match="expected shape"):
        split.load_lora_state({key: torch.zeros(3)})


def test_set_trainable_selects_exactly_one_part():
    split = ModelViews.from_model(tiny_llama(), adapter_layers=2, drop_rate=0.5).build()
    for part in ("emulator", "adapter"):
        split.set_trainable(part)
        trainable = {id(p) for p in split.parameters() if p.requires_grad}
        assert trainable == {id(p) for p in split.lora_parameters(part).values()}
    assert not split.full.training


def test_unsupported_architecture_and_bad_targets_are_clear_errors():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=32, n_head=4, vocab_size=64))
    with pytest.raises(ValueError, match="GPT2LMHeadModel is not supported"):
        ModelViews.from_model(gpt2, adapter_layers=1, drop_rate=0.0).build()
    with pytest.raises(ValueError, match=r"lora_targets \['qkv'\] are not linear modules"):
        ModelViews.from_model(tiny_llama(), lora_targets=["q_proj", "qkv"]).build()
    with pytest.raises(ValueError, match="adapter_layers \\+ bottom_adapter_layers = 6") as info:
        ModelViews.from_model(tiny_llama(), adapter_layers=6, lora_r=0)
    assert "lora_r must be >= 1, got 0" in str(info.value)  # every problem at once


def test_real_pretrained_model_from_a_local_folder():
    split = ModelViews("embedded:models/stories260K", adapter_layers=2, drop_rate=0.2)
    assert split.layout.emulator == (0, 2) and split.layout.top_adapter == (3, 4)
    split.build()
    assert type(split.full).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in split.full.parameters()) == 260_032


def test_bad_split_of_a_folder_fails_before_loading_weights():
    with pytest.raises(ValueError, match="smaller than the model's 5 decoder layers"):
        ModelViews("embedded:models/stories260K", adapter_layers=5)
