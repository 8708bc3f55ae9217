"""The Flower ``ClientApp``: a site answers the handshake and runs the simulation's own client fit.

``flower-supernode --node-config 'client-id=0 model-dir="/models/client_model" [data-path="..."]'``
serves one client. Flower starts a fresh process for every message, so each handler builds what it
needs from the node config and the message alone (no module state): the client model views on the
memory-mapped exported model, the site's data, and the algorithm's client module; then
:meth:`~fedbiot_pl.federation.client.LocalClients.run`, the function the in-process round calls,
fits and encodes the upload.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from fedbiot_pl.federation.transport import ClientReply

_IMPORTED = time.time()


def process_seconds() -> float:
    """Seconds since this process started (Flower's process start and Python's imports included)."""
    try:
        import psutil

        return time.time() - psutil.Process().create_time()
    except Exception:  # psutil missing or not allowed: the time since this module was imported
        return time.time() - _IMPORTED


def run_train(content: Any, node_config: Any) -> tuple[ClientReply, dict[str, float]]:
    """One train message's client fit: the same function as the in-process round's, on this site's model.

    Returns:
        The reply (the upload, or why the client dropped) and the timings: ``startup-seconds`` (process
        start to the start of the fit: imports, model map, data), ``setup-seconds`` (of which: the model map,
        the views and the data) and ``fit-seconds``.
    """
    from fedbiot_pl.flower.wire import broadcast_from_content

    reply, timings, _ = fit_client(content["config"], lambda: broadcast_from_content(content), node_config)
    return reply, timings


def fit_client(config: Any, broadcast: Any, node_config: Any) -> tuple[ClientReply, dict[str, float], int]:
    """The client fit of a round's ``config`` on the bytes ``broadcast()`` returns (plain or secure aggregation).

    Returns:
        The reply, the timings (:func:`run_train`) and the client's FedAvg weight (its training examples, or 1
        with ``weighting: uniform``; 0 when the site could not fit).
    """
    from fedbiot_pl.algorithms import ClientOptim, resolve_algorithm
    from fedbiot_pl.errors import ConfigError
    from fedbiot_pl.federation.client import ClientFitSettings, LocalClients
    from fedbiot_pl.flower.client_model import client_views, model_digest
    from fedbiot_pl.flower.site import NodeSettings, site_data

    entered = time.perf_counter()
    client = int(config["client-id"])
    try:
        node = NodeSettings.of(node_config)
        if node.client_id != client:
            raise ConfigError(f"a message for client {client} reached the node of client {node.client_id}.")
        digest = model_digest(node.model_dir)
        if digest != config["model-sha256"]:
            raise ConfigError(f"the client model in {node.model_dir} (sha256 {digest[:16]}...) is not the server's "
                              f"({str(config['model-sha256'])[:16]}...); copy the server's exported model here.")
        settings = json.loads(str(config["settings"]))
        algorithm = resolve_algorithm(settings["algorithm"])
        views = client_views(node.model_dir, algorithm, node.device)
        optim = settings["optim"]
        module = algorithm.client_module(views, ClientOptim(optim["lr"], tuple(optim["betas"]), optim["weight_decay"],
                                                            optim["proximal_weight"]))
        data = site_data(settings["data"], node)
        clients = LocalClients(algorithm, views, module, data, ClientFitSettings(**settings["fit"]), node.device,
                               settings["precision"], settings["seed"])
        payload = broadcast()
        weight = 1 if settings.get("weighting") == "uniform" else data.client_num_examples(client)
    except Exception as error:  # the site cannot fit: the server drops it with the reason
        return ClientReply(client, math.nan, b"", f"site of client {client}: {type(error).__name__}: {error}"), {}, 0
    timings = {"startup-seconds": process_seconds(), "setup-seconds": time.perf_counter() - entered}
    started = time.perf_counter()
    reply = clients.run(client, payload, round_idx=int(config["server-round"]), attempt=int(config["attempt"]))
    timings["fit-seconds"] = time.perf_counter() - started
    return reply, timings, weight


def secure_train(message: Any, node_config: Any) -> Any:
    """A SecAgg+ fit: the same client fit; the change goes back masked (:mod:`fedbiot_pl.privacy.secagg`).

    Raises:
        RuntimeError: the client could not fit (the server counts it as dropped, with this reason).
    """
    from fedbiot_pl.federation.messages import decode_update
    from fedbiot_pl.flower.wire import join_held
    from fedbiot_pl.privacy.secagg import secagg_fit_reply, secagg_fit_request

    request = secagg_fit_request(message)
    config = {**request.config, "client-id": int(node_config.get("client-id", -1))}
    reply, timings, weight = fit_client(config, lambda: join_held(config["held"], request.arrays), node_config)
    if reply.dropped is not None:
        raise RuntimeError(reply.dropped)
    metrics = {"client-id": reply.client, "train-loss": float(reply.loss), **timings}
    return secagg_fit_reply(message, request, decode_update(reply.payload), weight, metrics)


def describe(content: Any, node_config: Any) -> dict[str, Any]:
    """The handshake: which client this node serves, its training examples and its model's verified sha256."""
    from fedbiot_pl import __version__
    from fedbiot_pl.flower.client_model import verify_client_model
    from fedbiot_pl.flower.site import NodeSettings, site_data

    node = NodeSettings.of(node_config)
    config = content["config"]
    digest = verify_client_model(node.model_dir, str(config["model-sha256"]))  # every file, once per run
    data = site_data(json.loads(str(config["settings"]))["data"], node)
    return {"client-id": node.client_id, "num-examples": data.client_num_examples(node.client_id),
            "model-sha256": digest, "version": __version__}


def _app() -> Any:
    from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    from fedbiot_pl.flower.wire import reply_content
    from fedbiot_pl.privacy.secagg import is_secagg_message, secagg_mod

    app = ClientApp()

    @app.query("describe")
    def _describe(msg: Message, context: Any) -> Message:
        return Message(RecordDict({"client": ConfigRecord(describe(msg.content, context.node_config))}),
                       reply_to=msg)

    @app.train(mods=[secagg_mod])  # acts on SecAgg+ messages only
    def _train(msg: Message, context: Any) -> Message:
        if is_secagg_message(msg):
            return secure_train(msg, context.node_config)
        reply, timings = run_train(msg.content, context.node_config)
        content = reply_content(reply, timings.get("fit-seconds", 0.0))
        content["timings"] = MetricRecord(timings)
        return Message(content, reply_to=msg)

    return app


app = _app()
"""The ClientApp (``[tool.flwr.app.components] clientapp = "fedbiot_pl.flower.client_app:app"``)."""
