"""The Flower ``ServerApp``: the toolkit's own server loop, its clients reached through Flower's ``Grid``.

``main`` runs ``train.py fit`` with the run config's arguments (``args``, a JSON list), so alignment,
aggregation, validation, checkpoints, the run folder and ``--ckpt_path last`` resume are those of the
in-process run. Only the transport differs: before round 0 the server waits for ``min-nodes``
nodes, asks each (``query.describe``) which client it serves, how many examples it holds and which
client model it has (its sha256 must be the server's), then sends every round's train messages
through :class:`~fedbiot_pl.flower.transport.FlowerTransport`.

Run config keys (``flwr run ... --run-config``): ``args`` (JSON list of ``train.py fit`` arguments),
``workdir`` (the folder the run writes into; empty = the SuperLink's), ``model-dir`` (the server's
copy of the exported client model), ``min-nodes``, ``node-wait`` (seconds), ``round-timeout``
(seconds per attempt; 0 = none), ``secagg`` (Flower's SecAgg+: ``""`` = off, ``"{}"`` = on with the
defaults, or a JSON object of :class:`~fedbiot_pl.privacy.secagg.SecAggSettings` fields; ``max_weight``
defaults to the largest client).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from typing_extensions import override

from fedbiot_pl.cli import FedBiOTCLI
from fedbiot_pl.cli import main as cli_main
from fedbiot_pl.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FlowerOptions:
    """The run config's settings of the Flower side of a run (see the module docstring)."""

    model_dir: str
    min_nodes: int = 1
    node_wait: float = 300.0
    round_timeout: float | None = None
    secagg: dict[str, Any] | None = None

    @classmethod
    def of(cls, run_config: Mapping[str, Any]) -> FlowerOptions:
        """Read the run config, naming every bad value at once."""
        issues = []
        model_dir = str(run_config.get("model-dir") or "")
        if not os.path.isdir(model_dir):
            issues.append(f"model-dir must be the server's copy of the exported client model, got {model_dir!r}")
        numbers = {}
        for key, low in (("min-nodes", 1), ("node-wait", 0), ("round-timeout", 0)):
            value = run_config.get(key, {"min-nodes": 1, "node-wait": 300, "round-timeout": 0}[key])
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                    or value < low:
                issues.append(f"{key} must be a number >= {low}, got {value!r}")
            numbers[key] = value
        secagg, secagg_problems = parse_secagg(run_config.get("secagg"), "secagg")
        issues += secagg_problems
        if issues:
            raise ConfigError("bad run config (flwr run --run-config): " + "; ".join(issues) + ".")
        return cls(model_dir, int(numbers["min-nodes"]), float(numbers["node-wait"]),
                   float(numbers["round-timeout"]) or None, secagg)


class RemoteClientData:
    """The clients' data as the server of a deployment knows it: their number and sizes (from the handshake)."""

    def __init__(self, sizes: Mapping[int, int]) -> None:
        self.sizes = dict(sizes)
        self.num_clients = len(self.sizes)

    def client_num_examples(self, client_id: int) -> int:
        """Training examples of client ``client_id`` (its FedAvg weight)."""
        return self.sizes[client_id]

    def client_dataloader(self, client_id: int, round_idx: int = 0) -> Any:
        """Not here: the client's rows stay at its site."""
        raise ConfigError(f"client {client_id}'s data is at its site; the server cannot load it.")


def wait_for_nodes(grid: Any, min_nodes: int, timeout: float) -> list[int]:
    """The connected node ids, once there are at least ``min_nodes`` (``ConfigError`` after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= min_nodes:
            return nodes
        if time.monotonic() > deadline:
            raise ConfigError(f"{len(nodes)} Flower nodes connected within {timeout:.0f} s, fewer than min-nodes="
                              f"{min_nodes}: start one flower-supernode per client (or lower min-nodes).")
        time.sleep(1.0)


def handshake(grid: Any, nodes: list[int], config: Mapping[str, Any], timeout: float) -> dict[int, tuple[int, int]]:
    """Ask every node which client it serves: ``{client id: (node id, training examples)}``.

    Raises:
        ConfigError: a node failed (its reason), did not answer, or two nodes serve the same client.
    """
    from flwr.app import ConfigRecord, Message, RecordDict

    from fedbiot_pl.flower.wire import DESCRIBE, match_replies

    messages = [Message(RecordDict({"config": ConfigRecord(dict(config))}), dst_node_id=node,
                        message_type=DESCRIBE) for node in nodes]
    found: dict[int, tuple[int, int]] = {}
    issues = []
    replies, _ = match_replies(messages, grid.send_and_receive(messages, timeout=timeout))
    answered = set()
    for node, reply in replies:
        answered.add(node)
        if reply.has_error():
            issues.append(f"node {node}: {reply.error.reason}")
            continue
        client = reply.content["client"]
        client_id = int(client["client-id"])
        if client_id in found:
            issues.append(f"nodes {found[client_id][0]} and {node} both serve client {client_id}")
        found[client_id] = (node, int(client["num-examples"]))
    issues += [f"node {node} did not answer within {timeout:.0f} s" for node in nodes if node not in answered]
    if issues:
        raise ConfigError("the Flower handshake failed:\n  " + "\n  ".join(issues))
    return found


class FlowerCLI(FedBiOTCLI):
    """``train.py fit`` whose federated loop reaches its clients through Flower (set :attr:`grid`, :attr:`options`)."""

    grid: Any = None
    context: Any = None
    options: FlowerOptions | None = None

    @override
    def before_fit(self) -> None:
        """Refuse what cannot run over Flower, before any weight loads; give the loop the Flower transport."""
        from fedbiot_pl.callbacks import FederatedLoop
        from fedbiot_pl.flower.client_model import model_digest
        from fedbiot_pl.flower.transport import flower_issues

        super().before_fit()
        loop = next(cb for cb in self.trainer.callbacks if isinstance(cb, FederatedLoop))
        issues = flower_issues(loop.algorithm)
        if self.trainer.world_size > 1:
            issues.append(f"the ServerApp runs one process; set trainer.devices to 1 (got {self.trainer.world_size}).")
        if issues:
            raise ConfigError("cannot run over Flower:\n  " + "\n  ".join(issues))
        digest = model_digest(self.options.model_dir)
        loop.transport_factory = lambda loop, trainer, module: self._transport(loop, trainer, module, digest)

    @override
    def after_fit(self) -> None:
        """Also keep the clients' start-up and fit seconds per message (``flower_timings.json`` in the run folder)."""
        super().after_fit()
        from fedbiot_pl.artifacts.export import write_text_atomic
        from fedbiot_pl.callbacks import FederatedLoop

        loop = next(cb for cb in self.trainer.callbacks if isinstance(cb, FederatedLoop))
        timings = getattr(loop.runner.transport if loop.runner else None, "timings", None)
        if timings is not None and self.trainer.log_dir:
            write_text_atomic(os.path.join(self.trainer.log_dir, "flower_timings.json"), json.dumps(timings, indent=1))

    def _transport(self, loop: Any, trainer: Any, pl_module: Any, digest: str) -> tuple[Any, Any]:
        from fedbiot_pl.flower.client_model import read_settings
        from fedbiot_pl.flower.site import client_settings
        from fedbiot_pl.flower.transport import FlowerTransport

        views, options = pl_module.split, self.options
        check_client_model(views, read_settings(options.model_dir), options.model_dir)
        config = {"settings": client_settings(loop, trainer), "model-sha256": digest}
        nodes = wait_for_nodes(self.grid, options.min_nodes, options.node_wait)
        found = handshake(self.grid, nodes, config, options.node_wait)
        expected = trainer.datamodule.num_clients
        if sorted(found) != list(range(expected)):
            raise ConfigError(f"the Flower nodes serve clients {sorted(found)}; data.num_clients={expected} needs "
                              f"clients 0..{expected - 1}, one node each.")
        log.info("Flower nodes: %s", {client: node for client, (node, _) in sorted(found.items())})
        trained = list(views.lora_parameters(loop.algorithm.upload_part()))
        secagg = None
        if options.secagg is not None:
            secagg = secagg_settings({"timeout": options.round_timeout, **options.secagg},
                                     [size for _, size in found.values()], loop.round_settings.weighting,
                                     loop.clients_per_round)
        transport = FlowerTransport(self.grid, {c: n for c, (n, _) in found.items()}, loop.ledger, trained, config,
                                    options.round_timeout, secagg, self.context, views.lora_state("all"))
        return transport, RemoteClientData({client: size for client, (_, size) in found.items()})


def parse_secagg(text: Any, name: str) -> tuple[dict[str, Any] | None, list[str]]:
    """SecAgg+ settings from JSON ``text`` (blank: off) and what is wrong with them, each issue naming ``name``."""
    if not str(text or "").strip():
        return None, []
    try:
        given = json.loads(str(text))
        if not isinstance(given, dict):
            raise ValueError("not an object")
    except ValueError as error:
        return None, [f"{name} must be a JSON object of SecAgg+ settings (or \"{{}}\" for the defaults), got "
                      f"{text!r} ({error})"]
    return given, [f"{name}: {issue}" for issue in secagg_issues(given)]


def secagg_issues(given: dict[str, Any]) -> list[str]:
    """What is wrong with SecAgg+ settings before the nodes are known (their number and weights are checked later)."""
    from fedbiot_pl.privacy.secagg import SecAggSettings

    try:
        return SecAggSettings(**given).issues()
    except TypeError as error:
        return [f"{error}; the fields are those of fedbiot_pl.privacy.secagg.SecAggSettings"]


def secagg_settings(given: dict[str, Any], sizes: list[int], weighting: str, per_round: Any) -> Any:
    """The run's SecAgg+ settings: ``given``, ``max_weight`` the largest client weight (``ConfigError``: bad ones)."""
    from fedbiot_pl.federation.sampling import clients_per_round
    from fedbiot_pl.privacy.secagg import SecAggSettings

    weights = [1] * len(sizes) if weighting == "uniform" else list(sizes)
    try:
        settings = SecAggSettings(**{"max_weight": float(max(weights)), **given})
    except TypeError as error:
        raise ConfigError(f"secagg: {error}; the fields are those of fedbiot_pl.privacy.secagg.SecAggSettings.") \
            from error
    issues = settings.issues(clients_per_round(len(sizes), per_round), weights)
    if issues:
        raise ConfigError("secagg settings cannot work:\n  " + "\n  ".join(issues))
    return settings


def check_client_model(views: Any, settings: Any, folder: str) -> None:
    """The exported client model must be the one these views' clients hold (``ConfigError`` naming the fix)."""
    layout = views.layout
    mine = {"algorithm": views.algorithm_name, "source_model": str(views.model_name),
            "layers": list(layout.compressed), "num_layers": len(layout.compressed),
            "bottom_adapter_layers": len(layout.bottom_adapter), "top_adapter_layers": len(layout.top_adapter),
            "lora_r": views.lora_r, "lora_alpha": views.lora_alpha, "lora_dropout": views.lora_dropout,
            "lora_targets": list(views.lora_targets), "dtype": views.dtype_name,
            "attn_implementation": views.attn_implementation}
    theirs = {key: getattr(settings, key) for key in mine}
    if theirs["algorithm"] != mine["algorithm"] and not views.algorithm.compresses():
        theirs["algorithm"] = mine["algorithm"]  # FedAvg-LoRA and FedProx share the full model
    wrong = {key: (theirs[key], value) for key, value in mine.items() if theirs[key] != value}
    if wrong:
        details = ", ".join(f"{key} {a!r} (run: {b!r})" for key, (a, b) in wrong.items())
        raise ConfigError(f"the client model in {folder} was exported for other settings: {details}; export it "
                          "again with this run's config (`fedbiot-flower-export`).")


def run(grid: Any, run_config: Mapping[str, Any], context: Any = None) -> None:
    """Run ``train.py fit`` with the run config's ``args`` over ``grid`` (``context``: the ServerApp's)."""
    try:
        options = FlowerOptions.of(run_config)
        try:
            args = json.loads(str(run_config.get("args") or "[]"))
        except ValueError as error:
            raise ConfigError(f"run config args must be a JSON list of `train.py fit` arguments, got "
                              f"{run_config.get('args')!r} ({error}).") from error
        if not isinstance(args, list) or (args and args[0] != "fit"):
            raise ConfigError(f"run config args must be a JSON list of `train.py fit` arguments, got {args!r}.")
    except ConfigError as error:  # as train.py does: the message, exit code 2, no traceback
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if run_config.get("workdir"):
        os.chdir(str(run_config["workdir"]))
    bound = {"grid": grid, "options": options, "context": context}
    argv, sys.argv = sys.argv, sys.argv[:1]  # flwr-serverapp's own arguments (its token) stay out of the run log
    try:
        cli_main(args or ["fit"], cli_class=type("BoundFlowerCLI", (FlowerCLI,), bound))
    finally:
        sys.argv = argv


def _app() -> Any:
    from flwr.serverapp import ServerApp

    app = ServerApp()

    @app.main()
    def _main(grid: Any, context: Any) -> None:
        run(grid, context.run_config, context)

    return app


app = _app()
"""The ServerApp (``[tool.flwr.app.components] serverapp = "fedbiot_pl.flower.server_app:app"``)."""
