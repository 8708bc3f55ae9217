import pytest
import torch
from transformers import AutoTokenizer

from fedbiot_pl.artifacts.run_artifacts import load_run_lora
from fedbiot_pl.assets import resolve
from fedbiot_pl.evaluation.generation import build_prompts, generate, read_eval_records
from fedbiot_pl.evaluation.prompts import GSM8K_DEMOS, clean_code, code_prompt, gsm8k_prompt, strip_chat_tail
from fedbiot_pl.model.views import ModelViews
from fedbiot_pl.modules import GenerationModule, GenerationSettings
from fedbiot_pl.modules.generation_module import left_padded_batches
from tests.conftest import tiny_llama


@pytest.fixture(scope="module")
def stories():
    split = ModelViews("embedded:models/stories260K", adapter_layers=2, drop_rate=0.2).build()
    with torch.no_grad():
        for p in split.lora_parameters("all").values():
            p.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    tokenizer = AutoTokenizer.from_pretrained(resolve("embedded:models/stories260K"))
    return split, tokenizer


def test_gsm8k_prompt_has_shuffled_demos_inside_the_alpaca_template():
    prompt = gsm8k_prompt("How many apples?", shots=8, seed=0, index=5)
    assert prompt.startswith("Below is an instruction that describes a task.")
    assert prompt.endswith("### Instruction:\nHow many apples?\n\n### Response:")
    assert prompt.count("### Instruction:") == 9 and prompt.count("The answer is") == 8
    assert all(q in prompt for q, _, _ in GSM8K_DEMOS)
    assert "### Response: There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5.\n" in prompt
    assert prompt == gsm8k_prompt("How many apples?", shots=8, seed=0, index=5)  # seeded
    orders = {gsm8k_prompt("Q", seed=0, index=i) for i in range(6)}
    assert len(orders) > 1  # shuffled per question
    assert gsm8k_prompt("Q", shots=0).endswith("### Instruction:\nQ\n\n### Response:")
    with pytest.raises(ValueError, match="shots must be between 0 and 8, got 9"):
        gsm8k_prompt("Q", shots=9)


def test_code_prompt_and_python_post_processing():
    assert code_prompt("def f(x):\n") == "# language: Python\ndef f(x):\n"
    assert clean_code("    return x + 1\n\ndef g():\n    pass") == "    return x + 1"
    assert clean_code("    return x\nprint(f(2))") == "    return x"
    assert clean_code("    y = 1\n    if y:\n        return y\n") == "    y = 1\n    if y:\n        return y"
    with pytest.raises(ValueError, match="unknown code language 'cobol'"):
        clean_code("x", "cobol")
    assert strip_chat_tail(" 42.\n\n### Instruction:\nmore") == "42."


def test_untrained_adapfu_is_exactly_the_full_model(batch):
    full = tiny_llama().eval()
    split = ModelViews.from_model(full, adapter_layers=2, drop_rate=0.5).build()
    split.eval()
    with torch.no_grad():
        expected = full(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got = split.full_with_adapter(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("variant", ["adapfu", "adapemu"])
def test_batched_left_padded_generation_equals_one_prompt_at_a_time(stories, variant):
    split, tokenizer = stories
    module = GenerationModule(split, tokenizer, variant, GenerationSettings(max_new_tokens=12))
    prompts = ["Once upon a time", "Lily saw a big red ball and"]
    batch = left_padded_batches(tokenizer, prompts, [0, 1], batch_size=2)[0]
    assert batch["attention_mask"][0].tolist()[0] == 0  # the shorter prompt is padded on the left
    together = module.generate(batch["input_ids"], batch["attention_mask"])
    alone = [module.generate(b["input_ids"], b["attention_mask"])[0]
             for b in left_padded_batches(tokenizer, prompts, [0, 1], batch_size=1)]
    assert together == alone and all(len(c[0]) > 0 for c in together)
    no_cache = GenerationModule(split, tokenizer, variant, GenerationSettings(max_new_tokens=12, use_cache=False))
    assert no_cache.generate(batch["input_ids"], batch["attention_mask"]) == together


def test_generate_through_trainer_predict_keeps_order_and_samples(stories):
    split, tokenizer = stories
    prompts = ["Once upon a time", "Tom", "The dog"]
    settings = GenerationSettings(max_new_tokens=8, do_sample=True, temperature=0.9, num_return_sequences=3)
    torch.manual_seed(0)
    out = generate(split, tokenizer, prompts, "adapemu", settings, batch_size=2)
    assert [len(c) for c in out] == [3, 3, 3]
    greedy = generate(split, tokenizer, prompts, "adapemu", GenerationSettings(max_new_tokens=8), batch_size=2)
    module = GenerationModule(split, tokenizer, "adapemu", GenerationSettings(max_new_tokens=8))
    b = left_padded_batches(tokenizer, ["Tom"], [0], 1)[0]
    assert greedy[1] == module.generate(b["input_ids"], b["attention_mask"])[0]


def test_eval_records_and_prompts_and_bad_rows(tmp_path):
    rows = read_eval_records("gsm8k", "embedded:data/gsm8k/test_sample.jsonl", limit=3)
    assert len(rows) == 3 and "####" in rows[0]["answer"]
    prompts = build_prompts("gsm8k", rows, shots=2, seed=1)
    assert prompts[0].endswith(f"### Instruction:\n{rows[0]['question']}\n\n### Response:")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q2"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl: row 2 lacks the string field\(s\) \['answer'\]"):
        read_eval_records("gsm8k", str(bad))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_eval_records("gsm8k", str(tmp_path / "none.jsonl"))


def test_run_lora_round_trip_from_export_and_errors(tmp_path, stories):
    from fedbiot_pl.artifacts.export import export_adapters

    split, _ = stories
    export_adapters(split, tmp_path / "final_adapter")
    state = load_run_lora(tmp_path / "final_adapter")
    live = split.lora_state("all")
    assert set(state) == set(live) and all(torch.equal(state[k], live[k]) for k in state)
    with pytest.raises(FileNotFoundError, match="pass a round checkpoint"):
        load_run_lora(tmp_path / "missing")


def test_choice_logliks_equal_a_hand_sum_and_mc_accuracy(tmp_path, stories):
    import json

    from fedbiot_pl.data.tokenization import encode_prompt
    from fedbiot_pl.evaluation.generation import choice_logliks, evaluate_split

    split, tokenizer = stories
    split.eval()
    model = split.compressed
    prompt, choice = "Once upon a time", " there was a girl"
    (score,) = choice_logliks(model, tokenizer, prompt, [choice])
    prefix, ids = encode_prompt(tokenizer, prompt), encode_prompt(tokenizer, prompt + choice)
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    expected = sum(float(logprobs[t - 1, ids[t]]) for t in range(len(prefix), len(ids)))
    assert abs(score - expected) < 1e-4
    rows_file = tmp_path / "mc.jsonl"
    rows = [{"question": "Once upon a time", "choices": ["there was a little girl", "zq xv kk pp"], "answer": 0},
            {"question": "Lily saw a", "choices": ["qq zz xx", "big red ball"], "answer": 1}]
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = evaluate_split(split, tokenizer, "mc", read_eval_records("mc", str(rows_file)), ["adapfu", "adapemu"])
    # a story model prefers the fluent continuation: both answers right, for both variants
    assert result.metrics == {"adapfu": {"accuracy": 1.0}, "adapemu": {"accuracy": 1.0}}
    rows_file.write_text(json.dumps({"question": "q", "choices": ["a"], "answer": 0}) + "\n")
    with pytest.raises(ValueError, match="row 1 needs `choices`"):
        read_eval_records("mc", str(rows_file))


def test_generate_leaves_the_shared_model_where_it_is(stories, monkeypatch):
    # Lightning's default teardown calls `.cpu()` on the module: on a GPU that would move the split being trained
    split, tokenizer = stories
    moved = []
    monkeypatch.setattr(GenerationModule, "cpu", lambda self: moved.append(self) or self)
    out = generate(split, tokenizer, ["Tom"], "adapemu", GenerationSettings(max_new_tokens=2), batch_size=1)
    assert len(out) == 1 and moved == []
