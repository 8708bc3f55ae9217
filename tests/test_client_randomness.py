"""Each client fit runs in its own random context seeded from (seed, round, client)."""

import torch

from fedbiot_pl.callbacks import FederatedLoop
from fedbiot_pl.federation.messages import LoRAState
from tests.helpers import make_module, server_trainer
from tests.toy_data import ToyFederatedData


class OrderLoop(FederatedLoop):
    """Runs the round's clients in the given order (the transport's order of work) and records the uploads."""

    def __init__(self, order, **kwargs):
        super().__init__(**kwargs)
        self.order, self.uploads = order, {}

    def on_fit_start(self, trainer, pl_module):
        super().on_fit_start(trainer, pl_module)
        transport, run_client = self.runner.transport, self.runner.clients.run

        def exchange(clients, broadcast, client_fn):
            replies = {c: client_fn(c, broadcast) for c in self.order(list(clients))}
            transport.ledger.record_wire(down=len(broadcast) * len(clients))
            return [replies[c] for c in clients]

        def recorded(client_id, broadcast, round_idx, attempt=0):
            reply = run_client(client_id, broadcast, round_idx, attempt)
            self.uploads[(round_idx, client_id)] = reply.payload
            return reply

        transport.exchange, self.runner.clients.run = exchange, recorded


def fit(tmp_path, order, server_draws=0):
    loop = OrderLoop(order, rounds=2, align_steps=1, local_steps=2, client_accumulate_grad_batches=1,
                     client_lr=2e-2, export_final_adapter=False)
    module = make_module(1.0)
    module.split.lora_dropout = 0.5  # dropout masks draw from torch's generator (set before build)
    torch.manual_seed(0)
    torch.rand(server_draws)  # the server's stream at the start differs
    server_trainer(tmp_path, loop).fit(module, datamodule=ToyFederatedData(vocab=512))
    return loop


def test_a_client_upload_depends_on_seed_round_and_client_only(tmp_path):
    forward = fit(tmp_path / "a", lambda clients: clients)
    backward = fit(tmp_path / "b", lambda clients: clients[::-1])
    # round 0 starts from the same global state: every client's upload is the same bytes in either order
    assert all(forward.uploads[(0, c)] == backward.uploads[(0, c)] for c in range(3))
    assert len({forward.uploads[(0, c)] for c in range(3)}) == 3  # and the clients differ from each other


def test_client_fits_do_not_consume_the_server_random_stream(tmp_path):
    loop = OrderLoop(lambda clients: clients, rounds=1, align_steps=1, local_steps=2, client_accumulate_grad_batches=1,
                     export_final_adapter=False)
    module = make_module(1.0)
    server_trainer(tmp_path, loop).fit(module, datamodule=ToyFederatedData(vocab=512))
    clients = loop.runner.clients
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    clients.run(0, LoRAState(module.split.lora_state("all")).encode(), round_idx=5)
    assert torch.equal(torch.rand(4), expected)
