"""A Grid that delivers each message to an in-process site (the ClientApp's handlers, no engine)."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import torch

from fedbiot_pl.flower import client_app
from fedbiot_pl.flower.wire import DESCRIBE, TRAIN


class FakeGrid:
    """Nodes ``1..n`` with the given node configs; :meth:`send_and_receive` runs their handlers here."""

    def __init__(self, node_configs, corrupt=()):
        self.node_configs = {index + 1: config for index, config in enumerate(node_configs)}
        self.corrupt = set(corrupt)  # nodes whose uploads arrive as garbage
        self.sent = []
        from flwr.supercore.task_identity import TaskIdentity  # what a real Grid's process has set (private API)

        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0

    def get_node_ids(self):
        return list(self.node_configs)

    def send_and_receive(self, messages, *, timeout=None):
        from flwr.app import ConfigRecord, MetricRecord, RecordDict

        from fedbiot_pl.flower.wire import reply_content

        replies = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # what pushing a message sets (private API)
            node = message.metadata.dst_node_id
            self.sent.append((node, message.metadata.message_type))
            config = self.node_configs[node]
            if message.metadata.message_type == DESCRIBE:
                try:
                    content = RecordDict({"client": ConfigRecord(client_app.describe(message.content, config))})
                except Exception as error:  # Flower answers a handler's exception with an error reply
                    replies.append(SimpleNamespace(metadata=self._meta(node, message), content=None,
                                                   error=SimpleNamespace(reason=str(error)), has_error=lambda: True))
                    continue
            else:
                assert message.metadata.message_type == TRAIN
                with torch.random.fork_rng():  # a site is another process: its model build draws from its own RNG
                    reply, timings = client_app.run_train(message.content, config)
                content = reply_content(reply, timings.get("fit-seconds", 0.0))
                content["timings"] = MetricRecord(timings)
                if node in self.corrupt and "arrays" in content:
                    for array in content["arrays"].values():
                        array.data = b"\x93NUMPY garbage"
            replies.append(SimpleNamespace(metadata=self._meta(node, message), content=content,
                                           has_error=lambda: False))
        return replies

    @staticmethod
    def _meta(node, message):
        return SimpleNamespace(src_node_id=node, reply_to_message_id=message.metadata.message_id)
