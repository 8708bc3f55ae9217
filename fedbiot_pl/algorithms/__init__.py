"""Federated algorithms (temporary during the move)."""
from fedbiot_pl.algorithms.specs_old import *  # noqa
from fedbiot_pl.algorithms.specs_old import ALGORITHMS, Algorithm, ProximalKind, algorithm_issues, algorithm_spec, AlgorithmSpec
