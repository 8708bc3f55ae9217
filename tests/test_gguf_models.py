"""A .gguf file is accepted wherever a model is named (issue 13, item 1).

The real 30-layer SmolLM2-135M-Instruct GGUF lives in the shared data folder; its tests skip without it.
"""

import importlib.util
from pathlib import Path

import pytest
import torch

from fedbiot_pl.errors import ConfigError, MissingPathError
from fedbiot_pl.model.location import load_model_config, load_tokenizer, looks_local, model_source

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
GGUF = SHARED / "models" / "smollm2-135m-instruct-gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf"
needs_gguf = pytest.mark.skipif(not GGUF.is_file(), reason=f"the shared GGUF model is not at {GGUF}")


def test_a_gguf_path_is_its_folder_plus_gguf_file_and_a_missing_one_is_named(tmp_path, monkeypatch):
    assert looks_local("SmolLM2.gguf")
    with pytest.raises(MissingPathError, match=r"model='nowhere/m.gguf': .*does not exist; .*a \.gguf file"):
        model_source("nowhere/m.gguf")
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    assert model_source(str(model)) == (str(tmp_path), {"gguf_file": "m.gguf"})
    assert model_source("embedded:models/stories260K")[1] == {}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # as without the gguf package
    with pytest.raises(ConfigError, match=r"needs the gguf package: pip install 'fedbiot-pl\[gguf\]'"):
        model_source(str(model))


@pytest.mark.slow
@needs_gguf
def test_config_tokenizer_views_and_plan_read_the_real_gguf_model():
    from fedbiot_pl.model.views import ModelViews
    from fedbiot_pl.plan import plan

    config = load_model_config(str(GGUF))
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    tokenizer = load_tokenizer(str(GGUF))
    assert tokenizer.eos_token == "<|im_end|>" and len(tokenizer("The capital of France")["input_ids"]) > 2
    views = ModelViews(str(GGUF), adapter_layers=2, drop_rate=0.5)
    assert views.layout.top_adapter == (28, 29) and len(views.layout.emulator) == 14  # 28 lower layers, beta 0.5
    planned = plan(str(GGUF), algorithm="fedbiot", adapter_layers=2, drop_rate=0.5)
    assert planned["model"]["num_layers"] == 30 and planned["layers"]["adapter"] == [28, 29]


@pytest.mark.slow
@needs_gguf
def test_the_gguf_model_builds_and_adapfu_with_fresh_lora_is_the_full_model():
    from fedbiot_pl.model.views import ModelViews

    torch.manual_seed(0)
    views = ModelViews(str(GGUF), adapter_layers=2, drop_rate=0.5, lora_dropout=0.0).build()
    assert len(views.full.model.layers) == 30 and len(views.compressed.get_base_model().model.layers) == 16
    ids = load_tokenizer(str(GGUF))("Paris is the capital of", return_tensors="pt")["input_ids"]
    with torch.no_grad():  # peft starts B at 0: AdapFu (full layers + adapter LoRA) is the full model
        assert torch.equal(views.full_with_adapter(input_ids=ids).logits, views.full(input_ids=ids).logits)


def test_a_folder_plus_gguf_file_is_the_same_model_and_gives_the_tokenizer_too():
    from fedbiot_pl.cli import DEFAULT_CONFIG, read_config
    from fedbiot_pl.model.views import ModelViews

    config = read_config([DEFAULT_CONFIG], ["--model.split.init_args.model=models/smol",
                                            "--model.split.init_args.gguf_file=smol.gguf"])
    assert config.data.tokenizer == "models/smol/smol.gguf"  # the clients' tokenizer is the file's
    assert read_config([DEFAULT_CONFIG]).data.tokenizer == "embedded:models/stories260K"
    with pytest.raises(ConfigError, match=r"model='m\.gguf' is a \.gguf file already; leave gguf_file"):
        ModelViews("m.gguf", gguf_file="other.gguf")


@pytest.mark.slow
@needs_gguf
def test_folder_plus_gguf_file_reads_the_real_model():
    from fedbiot_pl.model.views import ModelViews

    views = ModelViews(str(GGUF.parent), gguf_file=GGUF.name, adapter_layers=4, drop_rate=0.2)
    assert views.model_name == str(GGUF) and views.layout.top_adapter == (26, 27, 28, 29)
