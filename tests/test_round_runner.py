"""The round as a plain object: no server Trainer, no callback, called directly as a benchmark would."""

import pytest
import torch

from fedbiot_pl.algorithms import ClientOptim, FedAvgLoRA, FedBiOT
from fedbiot_pl.federation.aggregation import fedavg
from fedbiot_pl.federation.attempts import TooFewClientsError
from fedbiot_pl.federation.client import ClientFitSettings, LocalClients
from fedbiot_pl.federation.messages import LoRAState, decode_message
from fedbiot_pl.federation.round import RoundRunner, RoundSettings
from fedbiot_pl.model.views import ModelViews
from tests.toy_data import ToyFederatedData

STORIES = "embedded:models/stories260K"


def runner(algorithm, **settings):
    views = ModelViews(STORIES).use_algorithm(algorithm).build()
    data = ToyFederatedData(vocab=512)
    module = algorithm.client_module(views, ClientOptim(lr=2e-2))
    clients = LocalClients(algorithm, views, module, data, ClientFitSettings(local_steps=2, accumulate_grad_batches=1))
    return RoundRunner(algorithm, views, data, clients, RoundSettings(**settings)), views, data


def test_one_round_without_a_trainer_aggregates_what_the_clients_sent(monkeypatch):
    algorithm = FedBiOT()
    run, views, data = runner(algorithm)
    sent = {}
    exchange = run.transport.exchange

    def spy(clients, broadcast, client_fn):
        replies = exchange(clients, broadcast, client_fn)
        sent.update({r.client: decode_message(r.payload, LoRAState).tensors for r in replies})
        sent["broadcast"] = broadcast
        return replies

    monkeypatch.setattr(run.transport, "exchange", spy)
    steps = []
    result = run.run_round(0, server_step=steps.append, align_steps=3)
    # the global adapter is the example-weighted average of exactly the bytes that came back
    expected = fedavg([sent[c] for c in (0, 1, 2)], [8, 8, 16])
    adapter = views.lora_state("adapter")
    assert all(torch.equal(adapter[k].cpu(), expected[k]) for k in expected)
    assert steps == [3]  # FedBiOT aligns after every round
    assert result.metrics["round/clients"] == 3.0 and result.entry["clients"] == [0, 1, 2]
    # the ledger: tensor bytes as the paper counts them, wire bytes as they travelled
    ledger = run.ledger
    assert ledger.bytes_down == 3 * sum(t.numel() * 4 for t in views.lora_parameters("all").values())
    assert ledger.wire_bytes_down == 3 * len(sent["broadcast"]) > ledger.bytes_down
    assert ledger.wire_bytes_up > ledger.bytes_up == 3 * sum(t.numel() * 4 for t in expected.values())


def test_fedavg_takes_no_server_steps_and_too_few_clients_stop_with_the_reasons(monkeypatch):
    run, views, _ = runner(FedAvgLoRA(), min_clients=2)
    steps = []
    run.run_round(0, server_step=steps.append, align_steps=3)
    assert steps == []
    before = views.lora_state("adapter")
    monkeypatch.setattr(run.clients.module, "training_step", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(TooFewClientsError, match="only 0 of 3 sampled clients") as info:
        run.run_round(1)
    assert "fit raised RuntimeError: boom" in str(info.value)
    after = views.lora_state("adapter")  # the failed clients left nothing behind
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_subclass_of_a_registered_algorithm_is_named_by_its_class_path():
    class Tweaked(FedAvgLoRA):
        pass

    assert FedAvgLoRA().label == "fedavg_lora" and FedBiOT().label == "fedbiot"
    assert Tweaked().label == f"{__name__}.test_a_subclass_of_a_registered_algorithm_is_named_by_its_class_path" \
        ".<locals>.Tweaked"
    assert Tweaked.name == "fedavg_lora"  # inherited: the label, not the name, goes into configs and checkpoints
