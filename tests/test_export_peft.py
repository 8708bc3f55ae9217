"""The exported AdapFu adapter is a plain peft adapter: stock tools load it and get AdapFu's logits."""

import json

import torch
from peft import AutoPeftModelForCausalLM

from fedbiot_pl import ModelViews
from fedbiot_pl.artifacts.export import export_adapters
from fedbiot_pl.assets import DEFAULT_MODEL, resolve


def test_exported_adapfu_loads_with_auto_peft_and_matches_adapfu_logits(tmp_path):
    split = ModelViews(DEFAULT_MODEL, adapter_layers=2, drop_rate=0.2).build()
    generator = torch.Generator().manual_seed(3)
    # Trained-looking LoRA: peft initialises B to zero, which would make any adapter look right.
    split.load_lora_state({key: torch.randn(value.shape, generator=generator) * 0.1
                           for key, value in split.lora_state("adapter").items()})
    out = export_adapters(split, tmp_path / "final_adapter")

    config = json.loads((out / "adapfu" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == resolve(DEFAULT_MODEL)  # the embedded model's real folder
    loaded = AutoPeftModelForCausalLM.from_pretrained(str(out / "adapfu")).eval()

    input_ids = torch.randint(3, 512, (2, 16), generator=generator)
    with torch.no_grad():
        expected = split.full_with_adapter(input_ids=input_ids).logits
        got = loaded(input_ids=input_ids).logits
        base = split.full(input_ids=input_ids).logits
    assert not torch.allclose(expected, base, atol=1e-4)  # the adapter changes the output...
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)  # ...and peft applies it as AdapFu does


def test_hub_ids_and_user_folders_are_written_as_given(tmp_path):
    split = ModelViews(DEFAULT_MODEL, adapter_layers=2, drop_rate=0.2).build()
    for name in ("meta-llama/Llama-2-7b-hf", "./models/my-llama"):
        split.model_name = name
        out = export_adapters(split, tmp_path / name.replace("/", "_"))
        assert json.loads((out / "adapfu" / "adapter_config.json").read_text())["base_model_name_or_path"] == name
