"""FedOpt through the seam: ``federated.server_optimizer`` on a real round (stories260K, toy data)."""

import torch

from fedbiot_pl.callbacks import FederatedLoop
from fedbiot_pl.cli import read_config
from fedbiot_pl.federation.server_optimizers import FedAdam, ServerSGD
from tests.helpers import make_module, server_trainer
from tests.toy_data import ToyFederatedData


def fit(tmp_path, server_optimizer, rounds=2):
    torch.manual_seed(0)
    loop = FederatedLoop(rounds=rounds, align_steps=1, local_steps=2, client_accumulate_grad_batches=1, client_lr=2e-2,
                         export_final_adapter=False, server_optimizer=server_optimizer)
    module = make_module(0.0)
    server_trainer(tmp_path, loop).fit(module, datamodule=ToyFederatedData(vocab=512))
    return loop, module.split.lora_state("all")


def test_server_sgd_with_lr_1_is_fedavg_bit_for_bit_and_fedadam_moves_elsewhere(tmp_path):
    _, fedavg = fit(tmp_path / "a", None)
    _, sgd = fit(tmp_path / "b", ServerSGD(lr=1.0))
    assert all(torch.equal(fedavg[k], sgd[k]) for k in fedavg)
    loop, adam = fit(tmp_path / "c", "fedadam")
    assert isinstance(loop.server_optimizer, FedAdam)
    moved = [k for k in fedavg if "layers.3." in k and not torch.equal(fedavg[k], adam[k])]
    assert moved  # the adapter took FedAdam's step, not the plain average
    state = loop.state_dict()["server_optimizer"]
    assert state["name"] == "fedadam" and state["steps"] == 2  # one server step per round
    assert state["state"] and all(set(slots) == {"m", "v"} for slots in state["state"].values())
    fresh = FederatedLoop(server_optimizer="fedadam")
    fresh.load_state_dict(loop.state_dict())
    resumed = fresh.server_optimizer.state_dict()
    assert resumed["steps"] == 2 and resumed["keys"] == state["keys"]
    assert all(torch.equal(resumed["state"][k]["v"], state["state"][k]["v"]) for k in state["state"])


def test_the_cli_selects_a_server_optimizer_by_name_or_class_path(tmp_path):
    from fedbiot_pl.cli import DEFAULT_CONFIG

    config = read_config([DEFAULT_CONFIG], ["--federated.server_optimizer=fedyogi"])
    assert config.federated.server_optimizer == "fedyogi"
    config = read_config([DEFAULT_CONFIG], [
        "--federated.server_optimizer.class_path=fedbiot_pl.federation.server_optimizers.FedAdam",
        "--federated.server_optimizer.init_args.lr=0.5"])
    assert config.federated.server_optimizer.init_args.lr == 0.5
