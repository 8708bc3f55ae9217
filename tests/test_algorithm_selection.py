"""``federated.algorithm`` by registered name, by class path (with init_args), or as an object."""

import pytest

from fedbiot_pl.algorithms import ALGORITHMS, FedAvgLoRA, FedProx, resolve_algorithm
from fedbiot_pl.callbacks import FederatedLoop
from fedbiot_pl.cli import DEFAULT_CONFIG, config_views, read_config
from fedbiot_pl.errors import ConfigError


class Scaled(FedAvgLoRA):
    """A user's algorithm with a setting of its own."""

    def __init__(self, factor: float = 1.0) -> None:
        self.factor = factor


def test_every_form_resolves_to_the_same_kind_of_object():
    assert list(ALGORITHMS) == ["fedbiot", "fedot", "offsite_tuning", "fedavg_lora", "fedprox", "fed_kd", "fedmkt",
                               "splitfed_lora", "splitfed_lora_u", "hierfedlora"]
    assert type(resolve_algorithm("fedprox")) is FedProx
    assert type(resolve_algorithm("fedbiot_pl.algorithms.FedProx")) is FedProx
    made = resolve_algorithm({"class_path": f"{__name__}.Scaled", "init_args": {"factor": 0.5}})
    assert type(made) is Scaled and made.factor == 0.5 and made.label == f"{__name__}.Scaled"
    same = FedProx()
    assert resolve_algorithm(same) is same
    with pytest.raises(ConfigError, match="'no.such.Algo' cannot be imported"):
        resolve_algorithm("no.such.Algo")
    with pytest.raises(ConfigError, match="is not a subclass of fedbiot_pl.algorithms.Algorithm"):
        resolve_algorithm("fedbiot_pl.errors.ConfigError")


def test_the_cli_passes_a_class_path_with_init_args_to_the_loop_and_the_views():
    config = read_config([DEFAULT_CONFIG], [f"--federated.algorithm={__name__}.Scaled",
                                            "--federated.algorithm.init_args.factor=0.25",
                                            "--federated.proximal_weight=0"])
    assert config.federated.algorithm.init_args.factor == 0.25
    views = config_views(config)
    assert type(views.algorithm) is Scaled and views.algorithm.factor == 0.25 and views.layout.emulator == ()
    loop = FederatedLoop(algorithm=config.federated.algorithm.as_dict())
    assert type(loop.algorithm) is Scaled and loop.algorithm_name == f"{__name__}.Scaled"
