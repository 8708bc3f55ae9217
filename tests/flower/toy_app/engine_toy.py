"""Toy Flower app: the ServerApp sends x = [1, 2, 3] to each node, which replies x + client-id; the sum is saved."""

import json
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

server = ServerApp()
client = ClientApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config  # [tool.flwr.app.config] merged with `flwr run --run-config`
    deadline = time.monotonic() + float(cfg["timeout"])
    while len(nodes := sorted(grid.get_node_ids())) < int(cfg["num-nodes"]):
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(nodes)} of {cfg['num-nodes']} nodes connected")
        time.sleep(0.5)
    x = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    msgs = [Message(RecordDict({"arrays": ArrayRecord({"x": Array(x)})}), dst_node_id=n, message_type="train")
            for n in nodes]
    replies = list(grid.send_and_receive(msgs, timeout=float(cfg["timeout"])))
    errors = [str(r.error) for r in replies if r.has_error()]
    if errors or len(replies) != len(nodes):
        raise RuntimeError(f"{len(replies)} replies for {len(nodes)} nodes, errors: {errors}")
    total = sum(r.content["arrays"]["x"].numpy() for r in replies)
    print(f"toy total {total.tolist()}", flush=True)  # reaches `flwr log <run-id> --show`
    if cfg["out"]:
        Path(str(cfg["out"])).write_text(json.dumps({"total": total.tolist(), "nodes": len(replies)}))


@client.train()
def train(msg: Message, context: Context) -> Message:
    x = msg.content["arrays"]["x"].numpy()
    y = x + np.float32(context.node_config["client-id"])  # --node-config 'client-id=<i>'
    return Message(RecordDict({"arrays": ArrayRecord({"x": Array(y)})}), reply_to=msg)
