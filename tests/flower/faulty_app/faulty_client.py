"""A ClientApp for the loopback fault tests: fedbiot-pl's own ClientApp, with damage the run config asks for.

Every message goes to :data:`fedbiot_pl.flower.client_app.app` unchanged; around a train message's fit the
run config's ``faults`` (:mod:`fedbiot_pl.testing.faults`, e.g. a NaN upload or a long sleep of one client) are
attached, and for each ``[client, round]`` in ``garble`` the reply's first array gets bytes that numpy cannot
read (an upload damaged on the wire). Flower puts this FAB's folder on the ClientApp process's ``sys.path``.
"""

from __future__ import annotations

import json
from typing import Any

from flwr.app import Array, Message
from flwr.clientapp import ClientApp

from fedbiot_pl.flower.client_app import app as fedbiot_client
from fedbiot_pl.testing.faults import attach_faults

GARBAGE = b"\x93NUMPY garbled on the wire"

app = ClientApp()


@app.query("describe")
def _describe(msg: Message, context: Any) -> Message:
    return fedbiot_client(msg, context)


@app.train()
def _train(msg: Message, context: Any) -> Message:
    faults = json.loads(str(context.run_config.get("faults", "[]")))
    detach = attach_faults(faults) if faults else None
    try:
        reply = fedbiot_client(msg, context)
    finally:
        if detach is not None:
            detach()
    config = msg.content["config"]
    where = [int(config["client-id"]), int(config["server-round"])]
    if where in json.loads(str(context.run_config.get("garble", "[]"))) and "arrays" in reply.content:
        arrays = reply.content["arrays"]
        key = next(iter(arrays))
        array = arrays[key]
        arrays[key] = Array(dtype=array.dtype, shape=array.shape, stype=array.stype, data=GARBAGE)
    return reply
