"""One site's side of a Flower run: the client settings the server sends, and the site's data.

The server sends every hyper-parameter of a client fit in each message (:func:`client_settings`);
the site adds only what is its own, from its node config: which client it is, where its data and
the client model are, and the device. Two ways to find the data:

* ``data-path``: the site's own file (one client; the server's data settings say how to read it);
* no ``data-path``: the site takes client ``client-id``'s shard of the server's task data (one
  machine, CI, and the runs that must equal ``train.py fit``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedbiot_pl.errors import ConfigError

NODE_KEYS = ("client-id", "model-dir", "data-path", "device")


def client_settings(loop: Any, trainer: Any) -> str:
    """The settings of every client fit of a run, as JSON (the train messages' ``settings``)."""
    data = {key: value for key, value in trainer.datamodule.hparams.items() if not key.startswith("_")}
    return json.dumps({
        "algorithm": loop.algorithm.label,
        "optim": asdict(loop.client_optim),
        "fit": asdict(loop.client_fit),
        "seed": loop.seed,
        "weighting": loop.round_settings.weighting,
        "precision": str(trainer.precision),
        "data": data,
    }, default=str, sort_keys=True)


@dataclass(frozen=True)
class NodeSettings:
    """What a site's node config says (``flower-supernode --node-config``)."""

    client_id: int
    model_dir: Path
    data_path: str | None = None
    device: str = "cpu"

    @classmethod
    def of(cls, node_config: Any) -> NodeSettings:
        """Read a node config, naming every missing or bad key at once."""
        issues = []
        client_id = node_config.get("client-id")
        if isinstance(client_id, bool) or not isinstance(client_id, int) or client_id < 0:
            issues.append(f"client-id must be an integer >= 0, got {client_id!r}")
        model_dir = node_config.get("model-dir")
        if not model_dir or not Path(str(model_dir)).is_dir():
            issues.append(f"model-dir must be the folder of the exported client model, got {model_dir!r}")
        data_path = node_config.get("data-path") or None
        if data_path is not None and not Path(str(data_path)).is_file():
            issues.append(f"data-path {data_path!r} is not a file")
        if issues:
            raise ConfigError("bad node config (flower-supernode --node-config): " + "; ".join(issues) + ".")
        return cls(int(client_id), Path(str(model_dir)), data_path, str(node_config.get("device") or "cpu"))


class SiteData:
    """The data of the one client a site serves, in the shape the client fit asks for.

    The client's batch order depends on (seed, client id, round) as in the simulation, whichever file
    holds its rows.

    Args:
        datamodule: the set-up datamodule holding the client's rows.
        client_id: the run's id of this client.
        local_id: the client's index inside ``datamodule``.
    """

    def __init__(self, datamodule: Any, client_id: int, local_id: int) -> None:
        self.datamodule, self.client_id, self.local_id = datamodule, client_id, local_id
        self.num_clients = datamodule.num_clients

    def _check(self, client_id: int) -> None:
        if client_id != self.client_id:
            raise ConfigError(f"this site serves client {self.client_id}, not client {client_id}.")

    def client_num_examples(self, client_id: int) -> int:
        """Training examples of the site's client."""
        self._check(client_id)
        return self.datamodule.client_num_examples(self.local_id)

    def client_dataloader(self, client_id: int, round_idx: int = 0) -> Any:
        """The site's client's batches in round ``round_idx`` (ordered by the run's client id)."""
        from fedbiot_pl.datamodules.client_shards import loader_seed

        self._check(client_id)
        dm = self.datamodule
        if self.local_id == client_id:
            return dm.client_dataloader(client_id, round_idx)
        return dm._loader(dm._client_examples(self.local_id), dm.batch_size,
                          loader_seed(dm.seed, 1, client_id, round_idx))


def site_data(data_settings: dict[str, Any], node: NodeSettings) -> SiteData:
    """The site's data: its own file (``data-path``) or its shard of the server's task data.

    The tokenizer is the one shipped with the client model.
    """
    from fedbiot_pl.datamodules import FederatedInstructionDataModule

    settings = {**data_settings, "tokenizer": str(node.model_dir)}
    if node.data_path is None:
        num_clients = int(settings.get("num_clients") or 0)
        if not node.client_id < num_clients:
            raise ConfigError(f"client-id {node.client_id} is not one of the run's {num_clients} clients "
                              f"(data.num_clients); give this node client-id in [0, {num_clients - 1}].")
        datamodule = FederatedInstructionDataModule(**settings)
        local_id = node.client_id
    else:  # one client: all rows of the site's file (also as the public data, which a site never uses)
        task = settings.get("task")  # the server's reading of the task (format, fields, ...) on the site's file
        source = {**task, "path": node.data_path} if isinstance(task, dict) else None
        settings.update(task=source, task_path=None if source else node.data_path, public=source,
                        public_path=None if source else node.data_path,
                        max_public_examples=None, num_clients=1, partition="iid", partition_key=None, exclude_keys=None)
        datamodule = FederatedInstructionDataModule(**settings)
        local_id = 0
    datamodule.setup("fit")
    return SiteData(datamodule, node.client_id, local_id)
