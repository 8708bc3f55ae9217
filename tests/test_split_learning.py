"""Split-FedLLM: the cut is exact, the wire carries what it must (and no more), the server checks it."""

import re

import pytest
import torch

from fedbiot_pl.algorithms import ClientOptim
from fedbiot_pl.federation.ledger import CommLedger
from fedbiot_pl.federation.messages import decode_message
from fedbiot_pl.federation.transport import InProcessChannel
from fedbiot_pl.model.assembly import decoder_of
from fedbiot_pl.model.views import ModelViews
from fedbiot_pl.split.link import SplitLink, SplitServerError
from fedbiot_pl.split.messages import BackwardUp, Expect, ForwardUp
from fedbiot_pl.split.segments import SplitSegments, client_layers, server_layers
from fedbiot_pl.split.server import SplitServer
from tests.conftest import TINY_FAMILIES, padded_batch

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# (cut_layer, client_top_layers) on 6 layers: every vanilla cut, U-shaped cuts from the embeddings to the top
CUTS = [(k, 0) for k in range(1, 6)] + [(0, 1), (1, 2), (2, 1), (3, 2), (4, 1), (0, 5)]


def lora_views(family="llama", dropout=0.1, checkpointing=False):
    views = ModelViews.from_model(TINY_FAMILIES[family](), "fedavg_lora", lora_dropout=dropout,
                                  lora_targets=["q_proj", "v_proj", "o_proj", "gate_proj"],
                                  gradient_checkpointing=checkpointing).build()
    views.set_trainable("all")
    with torch.no_grad():  # B = 0 at init would make most gradients trivially equal
        for param in views.lora_parameters("all").values():
            param.normal_(0, 0.1)
    return views


class Spy:
    """A channel that keeps every request and reply it carried (decoded)."""

    def __init__(self, channel):
        self.channel, self.requests, self.replies = channel, [], []

    def request(self, payload):
        reply = self.channel.request(payload)
        self.requests.append(decode_message(payload))
        self.replies.append(decode_message(reply))
        return reply


def split_pair(views, cut, top, wire=None, ledger=None):
    """The client's segments and link to an in-process server over a counting channel."""
    layers = decoder_of(views.compressed.get_base_model()).layers
    client = SplitSegments(views.full, layers, cut, top, side="client").train()
    middle = SplitSegments(views.full, layers, cut, top, side="server").middle
    config = views.full.config
    expect = Expect(wire or torch.float32, config.hidden_size, config.vocab_size, labels=top == 0)
    server = SplitServer(middle, views.lora_of_layers(server_layers(len(layers), cut, top)),
                         optim=ClientOptim(),
                         expect=expect)
    spy = Spy(InProcessChannel(ledger or CommLedger(), server.serve))
    return client, SplitLink(spy, wire), spy, server


def client_loss(client, link, batch):
    mask = batch["attention_mask"]
    hidden = client.bottom(mask, input_ids=batch["input_ids"])
    if client.top is None:
        return link.exchange(hidden, mask, batch["labels"])
    return client.top(mask, hidden=link.exchange(hidden, mask), labels=batch["labels"])


def unsplit_grads(views, batch, seed=7, scale=1.0):
    torch.manual_seed(seed)
    loss = views.compressed(**batch, use_cache=False).loss
    (loss * scale).backward()
    grads = {key: p.grad.clone() for key, p in views.lora_parameters("all").items()}
    for param in views.lora_parameters("all").values():
        param.grad = None
    return loss.detach(), grads


@pytest.mark.parametrize("family, checkpointing", [(f, False) for f in sorted(TINY_FAMILIES)] + [("llama", True)])
def test_split_loss_and_every_lora_gradient_equal_the_unsplit_model_bit_for_bit(family, checkpointing):
    views = lora_views(family, checkpointing=checkpointing)  # LoRA dropout 0.1, a right-padded row, the same seed
    batch = padded_batch()
    loss, grads = unsplit_grads(views, batch, scale=0.5)
    cuts = CUTS if family == "llama" and not checkpointing else [(2, 0), (1, 2)]
    for cut, top in cuts:
        client, link, _, _ = split_pair(views, cut, top)
        torch.manual_seed(7)
        split_loss = client_loss(client, link, batch)
        (split_loss * 0.5).backward()  # a scale, as Lightning's accumulation: it must reach the server
        assert torch.equal(split_loss.detach(), loss), (cut, top)
        got = {key: p.grad for key, p in views.lora_parameters("all").items()}
        assert all(got[key] is not None and torch.equal(got[key], grads[key]) for key in grads), (cut, top)
        for param in views.lora_parameters("all").values():
            param.grad = None


def test_without_the_same_seed_dropout_differs_so_the_exactness_test_can_fail():
    views = lora_views()
    batch = padded_batch()
    _, grads = unsplit_grads(views, batch, seed=7)
    client, link, _, _ = split_pair(views, 2, 0)
    torch.manual_seed(8)
    client_loss(client, link, batch).backward()
    assert not all(torch.equal(p.grad, grads[key]) for key, p in views.lora_parameters("all").items())


def test_a_bfloat16_wire_halves_the_bytes_and_keeps_gradients_within_one_percent():
    views = lora_views(dropout=0.0)
    batch = padded_batch()
    _, grads = unsplit_grads(views, batch)
    ledger = CommLedger()
    client, link, _, _ = split_pair(views, 2, 1, wire=torch.bfloat16, ledger=ledger)
    client_loss(client, link, batch).backward()
    for key, param in views.lora_parameters("all").items():
        error = (param.grad - grads[key]).norm() / grads[key].norm()
        assert error < 1e-2, key
    b, t, d = 2, 12, 32
    assert ledger.split_bytes["up/activations"] == ledger.split_bytes["down/gradients"] == 2 * b * t * d


def test_every_crossing_is_counted_by_name_and_the_u_shape_sends_no_labels():
    views = lora_views()
    batch = padded_batch()
    b, t, d = 2, 12, 32
    for top, expected_up, expected_down in (
        (0, {"activations": 4 * b * t * d, "mask": b * t, "labels": 4 * b * t, "loss_grad": 4},
         {"loss": 4, "gradients": 4 * b * t * d}),
        (1, {"activations": 4 * b * t * d, "mask": b * t, "gradients": 4 * b * t * d},
         {"activations": 4 * b * t * d, "gradients": 4 * b * t * d}),
    ):
        ledger = CommLedger()
        client, link, spy, server = split_pair(views, 2, top, ledger=ledger)
        client_loss(client, link, batch).backward()
        assert ledger.split_bytes == ({f"up/{k}": v for k, v in expected_up.items()}
                                      | {f"down/{k}": v for k, v in expected_down.items()})
        assert ledger.bytes_up == sum(expected_up.values()) and ledger.split_requests == 2
        assert ledger.wire_bytes_up == sum(len(m.encode()) for m in spy.requests)
        if top:  # U-shaped: no labels leave the client, and the server's part has no head
            assert all("labels" not in m.tensors for m in spy.requests)
            assert not any("lm_head" in name for name, _ in server.segment.named_modules())
        else:
            assert torch.equal(spy.requests[0].tensors["labels"], batch["labels"].int())


def test_the_server_refuses_a_bad_request_by_name_and_changes_nothing():
    views = lora_views()
    _, link, spy, server = split_pair(views, 2, 0)
    before = {key: p.detach().clone() for key, p in server.params.items()}
    good = {"activations": torch.zeros(2, 4, 32), "mask": torch.ones(2, 4, dtype=torch.uint8),
            "labels": torch.zeros(2, 4, dtype=torch.int32)}
    cases = {
        "activations must be (batch, tokens, 32) torch.float32": {**good, "activations": torch.zeros(2, 4, 31)},
        "activations has non-finite values": {**good, "activations": torch.full((2, 4, 32), float("nan"))},
        "mask must be 0/1 uint8": {**good, "mask": torch.full((2, 4), 2, dtype=torch.uint8)},
        "labels must be int32 of shape (2, 4) in [0, 128)": {**good,
                                                              "labels": torch.full((2, 4), 500, dtype=torch.int32)},
        "expected tensors ['activations', 'labels', 'mask']": {k: v for k, v in good.items() if k != "labels"},
    }
    for why, tensors in cases.items():
        with pytest.raises(SplitServerError, match=re.escape(why)):
            link._request(ForwardUp(tensors))
        assert server._pending is None and server._session is None  # no session opened, no graph kept
    with pytest.raises(SplitServerError, match="without its forward"):
        link._request(BackwardUp({"loss_grad": torch.tensor(1.0)}))
    link._request(ForwardUp(good))
    pending = server._pending
    for bad in (torch.ones(2), torch.tensor(1.0, dtype=torch.float64)):
        with pytest.raises(SplitServerError, match="expected loss_grad of shape"):
            link._request(BackwardUp({"loss_grad": bad}))
        assert server._pending is pending  # the graph waits for a good backward
    assert all(p.grad is None for p in server.params.values())
    link._request(BackwardUp({"loss_grad": torch.tensor(1.0)}))  # a good one: gradients, then a step
    assert all(p.grad is not None for p in server.params.values())
    link.step()
    assert not all(torch.equal(before[key], p) for key, p in server.params.items())


def test_layer_ranges_of_both_parties_cover_the_model_once():
    assert client_layers(5, 2) == (0, 1) and server_layers(5, 2) == (2, 3, 4)
    assert client_layers(30, 2, 1) == (0, 1, 29) and server_layers(30, 2, 1) == tuple(range(2, 29))
    assert client_layers(5, 0, 2) == (3, 4) and server_layers(5, 0, 2) == (0, 1, 2)
