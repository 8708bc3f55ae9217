"""KD-FedLLM rounds (fed_kd, fedmkt) on the real stories260K: bytes, payloads, checks, server and client models."""

import pytest
import torch

from fedbiot_pl.algorithms import FedKD, FedMKT, resolve_algorithm
from fedbiot_pl.callbacks import FederatedLoop
from fedbiot_pl.distillation.public import public_rows
from fedbiot_pl.distillation.topk import TopK
from fedbiot_pl.errors import ConfigError
from tests.helpers import make_module, server_trainer
from tests.toy_data import ToyKDData

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

K, P, LENGTHS = 8, 4, (6, 9, 12, 7, 10, 8)


class SpyKD(FedKD):
    """fed_kd that records what reaches the server step."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.steps = []

    def server_step(self, views, payloads, weights):
        self.steps.append((payloads, list(weights)))
        return super().server_step(views, payloads, weights)


def run(algorithm, tmp_path, rounds=2, **loop_kwargs):
    torch.manual_seed(0)  # the same LoRA initialisation in every run
    loop = FederatedLoop(algorithm=algorithm, rounds=rounds, local_steps=1, client_accumulate_grad_batches=1,
                         export_final_adapter=False, **loop_kwargs)
    module = make_module(0.0)
    data = ToyKDData(num_clients=3, examples=(8, 8, 8), vocab=512, public_lengths=LENGTHS)
    server_trainer(tmp_path, loop).fit(module, datamodule=data)
    return loop, module


def slice_tokens(round_idx: int, seed: int = 42) -> int:
    return sum(LENGTHS[r] - 1 for r in public_rows(len(LENGTHS), P, seed, round_idx))


def payload_bytes(tokens: int) -> int:  # fp16 value + uint16 index per kept logit; offsets, metric, rows
    return tokens * K * (2 + 2) + 12 * P + 4


def test_fed_kd_sends_only_top_k_logits_and_the_ledger_counts_the_formula(tmp_path):
    algorithm = SpyKD(top_k=K, public_examples=P)
    loop, _ = run(algorithm, tmp_path)
    for round_idx, (payloads, weights) in enumerate(algorithm.steps):
        assert len(payloads) == 3 and weights == [8, 8, 8]
        for payload in payloads:
            assert set(payload.tensors()) == {"values", "indices", "offsets", "metric", "rows"}
            assert payload.values.dtype == torch.float16 and payload.indices.dtype == torch.uint16
            assert payload.rows.tolist() == public_rows(len(LENGTHS), P, 42, round_idx)
            assert payload.num_tokens == slice_tokens(round_idx)
    up = 3 * (payload_bytes(slice_tokens(0)) + payload_bytes(slice_tokens(1)))
    down = 3 * 4 + 3 * payload_bytes(slice_tokens(0))  # round 0: an empty payload (offsets [0]); round 1: targets
    assert (loop.ledger.bytes_up, loop.ledger.bytes_down) == (up, down)
    assert [entry["comm/bytes_up"] for entry in loop.history] == [3 * payload_bytes(slice_tokens(0)),
                                                                   3 * payload_bytes(slice_tokens(1))]


def test_bad_logit_uploads_are_rejected_counted_and_never_aggregated(tmp_path, faults):
    clean = FedKD(top_k=K, public_examples=P)  # the same run without faults, for the clients' end states
    run(clean, tmp_path / "clean")
    faults([{"point": "upload", "round": 0, "client": c, "attempt": 0, "action": a}
            for c, a in enumerate(["nan", "index_range", "offsets"])]
           + [{"point": "upload", "round": 1, "client": 0, "action": "garbage"}])
    algorithm = SpyKD(top_k=K, public_examples=P)
    loop, _ = run(algorithm, tmp_path, on_too_few="retry", max_round_retries=1)
    reasons = {e["client"]: e["reason"] for e in loop.history[0]["faults"] if e["attempt"] == 0}
    assert "NaN/Inf in 1 logit values" in reasons[0]
    assert "indices outside the vocabulary [0, 512)" in reasons[1]
    assert "offsets do not match" in reasons[2]
    assert "unreadable upload" in {e["client"]: e["reason"] for e in loop.history[1]["faults"]}[0]
    assert loop.ledger.uploads_rejected == 4
    # round 0: every client rejected in attempt 1, so the retry's clean uploads are the ones aggregated
    assert [len(p) for p, _ in algorithm.steps] == [3, 2]
    for payloads, _ in algorithm.steps:
        for payload in payloads:
            assert torch.isfinite(payload.values).all() and int(payload.indices.long().max()) < 512
    # the failed attempt's training was undone: every client ends as in the run without faults
    for client, state in clean.personal_states().items():
        assert all(torch.equal(state[key], algorithm.personal_states()[client][key]) for key in state)


def test_fedmkt_server_distils_and_keeps_its_own_lora_as_the_global_model(tmp_path):
    algorithm = FedMKT(top_k=K, public_examples=P, server_kd_steps=2)
    loop, module = run(algorithm, tmp_path)
    split = module.split
    server = split.lora_state("adapter")
    clients = algorithm.personal_states()
    assert sorted(clients) == [0, 1, 2]
    initial = algorithm.state_dict()["initial"]
    lora_b = [key for key in server if "lora_B" in key]
    assert any(not torch.equal(server[key], initial[key]) for key in lora_b)  # the server trained (B starts at 0)
    for state in clients.values():  # each client trained its own LoRA, which is not the server's
        assert any(not torch.equal(state[key], server[key]) for key in lora_b)
    assert not torch.equal(clients[0][lora_b[0]], clients[1][lora_b[0]])
    one_way = FedMKT(top_k=K, public_examples=P, server_trains=False)
    _, module = run(one_way, tmp_path / "one_way")
    assert all(torch.equal(module.split.lora_state("adapter")[key], initial[key]) for key in lora_b)


def test_kd_state_survives_a_checkpoint_round_trip(tmp_path):
    algorithm = FedKD(top_k=K, public_examples=P)
    run(algorithm, tmp_path, rounds=1)
    state = algorithm.state_dict()
    again = FedKD(top_k=K, public_examples=P)
    again.load_state_dict(state)
    assert sorted(again.personal_states()) == [0, 1, 2]
    pending = zip(again._pending.tensors().values(), algorithm._pending.tensors().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pending)


def test_bad_kd_settings_are_all_named_at_once():
    with pytest.raises(ConfigError) as error:  # reported by the loop's one validation step, with its own
        FederatedLoop(algorithm=FedMKT(top_k=0, kd_alpha=1.5, temperature=0, public_examples=-1,
                                       distill_strategy="best"), local_steps=0)
    text = str(error.value)
    assert "local_steps must be an integer >= 1" in text
    for fragment in ("top_k must be an integer >= 1, got 0", "kd_alpha must be in [0, 1]", "temperature must be > 0",
                     "public_examples must be an integer >= 1 or null, got -1", "distill_strategy must be one of"):
        assert fragment in text
    with pytest.raises(ConfigError, match="shares logits, not weights: set proximal_weight to 0"):
        FederatedLoop(algorithm="fed_kd", proximal_weight=0.1)
    with pytest.raises(ConfigError, match="server_optimizer 'fedadam' steps on averaged weights"):
        FederatedLoop(algorithm="fedmkt", server_optimizer="fedadam")
    with pytest.raises(ConfigError, match="unexpected keyword argument 'topk'"):
        resolve_algorithm({"class_path": "fed_kd", "init_args": {"topk": 3}})
    assert resolve_algorithm({"class_path": "fed_kd", "init_args": {"top_k": 3}}).top_k == 3


def test_topk_payload_round_trips_through_the_message_codec():
    from fedbiot_pl.federation.messages import LogitsMessage, decode_message

    payload = TopK(torch.randn(5, 2).half(), torch.randint(0, 300, (5, 2)).to(torch.uint16),
                   torch.tensor([0, 2, 5], dtype=torch.int32), torch.rand(2), torch.tensor([3, 1], dtype=torch.int32))
    message = decode_message(LogitsMessage(payload.tensors()).encode(), LogitsMessage)
    assert all(torch.equal(message.tensors[k], v) for k, v in payload.tensors().items())
    assert LogitsMessage(payload.tensors()).tensor_bytes == 5 * 2 * 4 + 3 * 4 + 2 * 4 + 2 * 4


def test_a_resumed_kd_run_ends_like_an_uninterrupted_one(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def fit(folder, rounds, ckpt_path=None):
        torch.manual_seed(0)  # the same LoRA initialisation in every run
        algorithm = FedMKT(top_k=K, public_examples=P, server_kd_steps=1)
        loop = FederatedLoop(algorithm=algorithm, rounds=rounds, local_steps=1, client_accumulate_grad_batches=1,
                             export_final_adapter=False)
        module = make_module(0.0)
        checkpoint = ModelCheckpoint(dirpath=folder, filename="round-{epoch}", save_last=True, save_top_k=-1)
        trainer = server_trainer(folder, loop, callbacks=[checkpoint], enable_checkpointing=True, max_epochs=rounds)
        trainer.fit(module, datamodule=ToyKDData(num_clients=3, examples=(8, 8, 8), vocab=512,
                                                 public_lengths=LENGTHS), ckpt_path=ckpt_path)
        return loop, module, algorithm

    straight = fit(tmp_path / "straight", 3)
    fit(tmp_path / "cut", 1)
    resumed = fit(tmp_path / "cut", 3, ckpt_path=tmp_path / "cut" / "last.ckpt")
    assert resumed[0].ledger.state_dict() == straight[0].ledger.state_dict()
    for a, b in ((straight[1].split.lora_state("all"), resumed[1].split.lora_state("all")),
                 *((straight[2].personal_states()[c], resumed[2].personal_states()[c]) for c in range(3))):
        assert all(torch.equal(a[key], b[key]) for key in a)


def test_a_resume_must_keep_the_settings_the_checkpointed_targets_depend_on():
    from fedbiot_pl.artifacts.resume_settings import run_settings, settings_differences
    from fedbiot_pl.model.views import ModelViews

    split = ModelViews("embedded:models/stories260K")
    saved = run_settings(split, FederatedLoop(algorithm=FedKD(top_k=8)))
    assert settings_differences(saved, run_settings(split, FederatedLoop(algorithm=FedKD(top_k=8, kd_alpha=0.5)))) == []
    assert settings_differences(saved, run_settings(split, FederatedLoop(algorithm=FedKD(top_k=16)))) == [
        ("federated.algorithm.init_args.top_k", 8, 16)]


def test_logit_checks_name_each_problem_of_a_hand_made_upload():
    from fedbiot_pl.distillation.public import PublicSlice
    from fedbiot_pl.federation.validation import logits_problem

    reference = PublicSlice(rows=(3, 1), lengths=(2, 3), vocab_size=300, top_k=2)
    good = TopK(torch.zeros(5, 2).half(), torch.tensor([[0, 1]] * 5).to(torch.uint16),
                torch.tensor([0, 2, 5], dtype=torch.int32), torch.tensor([0.5, float("inf")]),
                torch.tensor([3, 1], dtype=torch.int32)).tensors()
    assert logits_problem(good, reference) is None  # +inf: an example without label tokens
    assert logits_problem({**good, "metric": torch.tensor([-200.0, 1.0])}, reference) == (
        "the per-example metric (a cross-entropy) has NaN or negative values")
    assert logits_problem({**good, "rows": torch.tensor([1, 3], dtype=torch.int32)}, reference) == (
        "rows are not the round's public slice")
    assert logits_problem({**good, "indices": good["indices"].to(torch.int32)}, reference) == (
        "indices (5, 2) torch.int32 instead of (5, 2) torch.uint16")
    assert logits_problem({**good, "offsets": torch.tensor([0, 3, 5], dtype=torch.int32)}, reference) == (
        "offsets do not match the public examples' token counts")
    assert "unexpected tensors ['extra']" in logits_problem({**good, "extra": torch.zeros(1)}, reference)
    bad_index = good["indices"].clone()
    bad_index[4, 1] = 300
    assert logits_problem({**good, "indices": bad_index}, reference) == "indices outside the vocabulary [0, 300)"


def test_kd_refuses_a_norm_bound_and_a_top_k_above_the_vocabulary(tmp_path):
    with pytest.raises(ConfigError, match="max_update_norm bounds a LoRA update's change"):
        FederatedLoop(algorithm="fed_kd", max_update_norm=1.0)
    with pytest.raises(ConfigError, match="top_k=600 exceeds the model's vocabulary of 512 entries"):
        run(FedKD(top_k=600, public_examples=P), tmp_path, rounds=1)
