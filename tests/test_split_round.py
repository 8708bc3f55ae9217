"""Split-FedLLM rounds on the real stories260K: centralised equivalence, the ledger, FedAvg scope, retry, resume."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from fedbiot_pl.algorithms import SplitFedLoRA, SplitFedLoRAU, resolve_algorithm
from fedbiot_pl.callbacks import FederatedLoop
from fedbiot_pl.errors import ConfigError
from fedbiot_pl.federation.aggregation import fedavg
from fedbiot_pl.model.views import ModelViews
from fedbiot_pl.modules import AdapterFinetuneModule, EmulatorAlignmentModule
from fedbiot_pl.plan import plan
from fedbiot_pl.split.server import SplitServer
from tests.helpers import server_trainer
from tests.toy_data import ToyFederatedData

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

D, VOCAB, B, T = 64, 512, 4, 12  # stories260K's width and vocabulary; the toy data's batch and length
MODEL = "embedded:models/stories260K"


def views_for(algorithm, dropout=0.05):
    views = ModelViews(MODEL, lora_dropout=dropout).use_algorithm(algorithm)
    torch.manual_seed(0)  # the same LoRA initialisation in every run
    return views.build()


def run(algorithm, tmp_path, rounds=2, clients=3, local_steps=2, accumulate=2, dropout=0.05, data=None,
        **loop_kwargs):
    algorithm = resolve_algorithm(algorithm)
    loop = FederatedLoop(algorithm=algorithm, rounds=rounds, local_steps=local_steps, client_lr=1e-2,
                         client_accumulate_grad_batches=accumulate, export_final_adapter=False, **loop_kwargs)
    module = EmulatorAlignmentModule(views_for(algorithm, dropout), kl_weight=0.0, lr=1e-2)
    data = data or ToyFederatedData(num_clients=clients, examples=(8, 8, 16)[:clients], vocab=VOCAB)
    server_trainer(tmp_path, loop, **loop_kwargs.pop("trainer", {})).fit(module, datamodule=data)
    return loop, module


def test_one_client_with_a_round_per_step_is_centralised_lora(tmp_path):
    steps, accumulate = 4, 2
    data = ToyFederatedData(num_clients=1, examples=(8,), vocab=VOCAB)
    loop, module = run("splitfed_lora", tmp_path, rounds=steps, clients=1, local_steps=1, accumulate=accumulate,
                       dropout=0.0, data=data)
    # Centralised: the full model with LoRA on every layer, one AdamW, the same micro-batches in order.
    batches = [batch for r in range(steps) for batch in list(data.client_dataloader(0, r))[:accumulate]]
    views = views_for(resolve_algorithm("fedavg_lora"), dropout=0.0)
    central = AdapterFinetuneModule(views, lr=1e-2, log_steps=False)
    L.Trainer(max_steps=steps, accumulate_grad_batches=accumulate, logger=False, enable_progress_bar=False,
              enable_model_summary=False, enable_checkpointing=False).fit(central, DataLoader(batches, batch_size=None))
    split_state, central_state = module.split.lora_state("all"), views.lora_state("all")
    assert max((split_state[k] - central_state[k]).abs().max().item() for k in split_state) < 1e-6
    moved = max((central_state[k] - views_for(resolve_algorithm("fedavg_lora"), 0.0).lora_state("all")[k])
                .abs().max().item() for k in central_state)
    assert moved > 1e-3  # both trained: the equality is not that of two untouched models


def test_per_client_servers_with_fresh_optimizers_are_fedavg_lora_bit_for_bit(tmp_path):
    """SplitFed V1 with a fresh AdamW every fit trains and averages exactly what FedAvg-LoRA does.

    So what separates the two in a comparison is the shared server (V2) and the kept optimizer states,
    not the cut.
    """
    _, fedavg_module = run("fedavg_lora", tmp_path / "fedavg")
    _, split_module = run(SplitFedLoRA(server_mode="per_client", keep_optimizer_state=False), tmp_path / "split")
    a, b = fedavg_module.split.lora_state("all"), split_module.split.lora_state("all")
    assert all(torch.equal(a[key], b[key]) for key in a)
    _, shared = run(SplitFedLoRA(server_mode="shared", keep_optimizer_state=False), tmp_path / "shared")
    c = shared.split.lora_state("all")
    assert not all(torch.equal(a[key], c[key]) for key in a)  # V2: the clients train one server copy in turn


@pytest.mark.parametrize("name, cut, top", [("splitfed_lora", 2, 0), ("splitfed_lora_u", 1, 2)])
def test_the_ledger_of_a_real_run_is_the_traffic_formula(tmp_path, name, cut, top):
    args = {"cut_layer": cut} | ({"client_top_layers": top} if top else {})
    loop, module = run({"class_path": name, "init_args": args}, tmp_path)
    micro = 2 * 3 * 2 * 2  # rounds x clients x local steps x accumulation
    act = B * T * D * 4
    if top:
        up = {"activations": act, "mask": B * T, "gradients": act}
        down = {"activations": act, "gradients": act}
    else:
        up = {"activations": act, "mask": B * T, "labels": 4 * B * T, "loss_grad": 4}
        down = {"loss": 4, "gradients": act}
    assert loop.ledger.split_bytes == ({f"up/{k}": micro * v for k, v in up.items()}
                                       | {f"down/{k}": micro * v for k, v in down.items()})
    client_layers = set(range(cut)) | set(range(5 - top, 5))
    lora = sum(p.numel() for key, p in module.split.lora_parameters("all").items()
               if int(key.split(".layers.")[1].split(".")[0]) in client_layers)
    rounds_clients = 2 * 3
    assert loop.ledger.bytes_up == micro * sum(up.values()) + rounds_clients * 4 * lora
    assert loop.ledger.bytes_down == micro * sum(down.values()) + rounds_clients * 4 * lora
    assert [e["comm/bytes_up"] for e in loop.history] == [loop.ledger.bytes_up / 2] * 2
    # fedbiot-plan's figures for the same settings are the run's ledger
    planned = plan(MODEL, clients=3, algorithm=name, batch_size=B, seq_len=T, micro_batches=4,
                   activation_dtype="float32", **args)["per_round"]
    assert (2 * planned["upload_bytes"], 2 * planned["download_bytes"]) == (loop.ledger.bytes_up,
                                                                            loop.ledger.bytes_down)


class SpyServer(SplitServer):
    """Records the copies and weights the server averages at the end of a round."""

    ended: list = []
    start: dict = {}

    def begin_round(self):
        super().begin_round()
        SpyServer.start = self._lora()

    def end_round(self, clients, weights):
        self._close()
        copies = {c: dict(self._copies[c]) for c in clients if c in self._copies}
        SpyServer.ended.append((copies, list(weights), self._lora()))
        super().end_round(clients, weights)
        SpyServer.ended[-1] += (self._lora(),)


def test_per_client_server_copies_are_averaged_and_a_shared_server_is_not(tmp_path, monkeypatch):
    monkeypatch.setattr("fedbiot_pl.split.server.SplitServer", SpyServer)
    SpyServer.ended = []
    run(SplitFedLoRA(server_mode="per_client"), tmp_path / "v1", rounds=1)
    copies, weights, _, after = SpyServer.ended[0]
    assert sorted(copies) == [0, 1, 2] and weights == [8, 8, 16]
    expected = fedavg([copies[c] for c in (0, 1, 2)], weights)
    assert all(torch.equal(after[k], expected[k]) for k in expected)
    assert not torch.equal(copies[0][next(iter(expected))], copies[1][next(iter(expected))])
    SpyServer.ended = []
    run(SplitFedLoRA(server_mode="shared"), tmp_path / "v2", rounds=1)
    copies, _, before, after = SpyServer.ended[0]
    assert copies == {} and all(torch.equal(before[k], after[k]) for k in before)  # the last client's state
    assert not all(torch.equal(before[k], v) for k, v in SpyServer.start.items())  # and it trained


@pytest.mark.parametrize("mode", ["shared", "per_client"])
def test_a_retried_round_restarts_the_server_and_optimizers_from_before_the_attempt(tmp_path, faults, mode):
    _, clean = run(SplitFedLoRA(server_mode=mode), tmp_path / "clean")
    # round 1: every client has AdamW state from round 0, which the failed attempt must not advance
    faults([{"point": "upload", "round": 1, "client": c, "attempt": 0, "action": "nan"} for c in range(3)])
    loop, module = run(SplitFedLoRA(server_mode=mode), tmp_path / "faulty", on_too_few="retry", max_round_retries=1)
    assert loop.ledger.uploads_rejected == 3
    a, b = clean.split.lora_state("all"), module.split.lora_state("all")
    assert all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.parametrize("mode", ["shared", "per_client"])
def test_a_resumed_split_run_ends_like_an_uninterrupted_one(tmp_path, mode):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def fit(folder, rounds, ckpt_path=None):
        algorithm = SplitFedLoRAU(cut_layer=1, server_mode=mode)
        loop = FederatedLoop(algorithm=algorithm, rounds=rounds, local_steps=1, client_accumulate_grad_batches=2,
                             client_lr=1e-2, export_final_adapter=False)
        module = EmulatorAlignmentModule(views_for(algorithm), kl_weight=0.0, lr=1e-2)
        checkpoint = ModelCheckpoint(dirpath=folder, filename="round-{epoch}", save_last=True, save_top_k=-1)
        trainer = server_trainer(folder, loop, callbacks=[checkpoint], enable_checkpointing=True, max_epochs=rounds)
        trainer.fit(module, datamodule=ToyFederatedData(vocab=VOCAB), ckpt_path=ckpt_path)
        return loop, module

    straight = fit(tmp_path / "straight", 3)
    fit(tmp_path / "cut", 1)
    resumed = fit(tmp_path / "cut", 3, ckpt_path=tmp_path / "cut" / "last.ckpt")
    assert resumed[0].ledger.state_dict() == straight[0].ledger.state_dict()
    a, b = straight[1].split.lora_state("all"), resumed[1].split.lora_state("all")
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_bad_split_settings_are_named_together_with_their_fix():
    with pytest.raises(ConfigError) as error:
        FederatedLoop(algorithm={"class_path": "splitfed_lora", "init_args": {
            "cut_layer": 0, "activation_dtype": "int8", "server_mode": "v3"}}, proximal_weight=0.1)
    message = str(error.value)
    for part in ("cut_layer must be an integer >= 1, got 0", "activation_dtype must be one of",
                 "server_mode must be one of ['shared', 'per_client'], got 'v3'", "set proximal_weight to 0"):
        assert part in message
    with pytest.raises(ConfigError, match="client_top_layers must be an integer >= 1, got 0"):
        FederatedLoop(algorithm=SplitFedLoRAU(client_top_layers=0))
    with pytest.raises(ConfigError, match="cut_layer 4 \\+ client_top_layers 1 leaves the server none of the "
                                          "model's 5 decoder layers; set cut_layer <= 3"):
        ModelViews(MODEL).use_algorithm(SplitFedLoRAU(cut_layer=4))


def test_a_client_whose_lora_turns_nan_is_dropped_and_the_server_stays_finite(tmp_path, faults):
    faults([{"point": "client_step", "round": 0, "client": 1, "step": 0, "action": "nan"}])
    loop, module = run(SplitFedLoRA(server_mode="shared"), tmp_path, rounds=1)
    (fault,) = loop.history[0]["faults"]
    assert fault["client"] == 1 and "activations has non-finite values" in fault["reason"]
    # the fault fills only what the client trains; the server refused its activations and stayed finite
    assert all(bool(torch.isfinite(p).all()) for p in module.split.lora_parameters("all").values())
