"""SecAgg+ (Flower 1.41) driven from our own ServerApp main: in process, and on the real engine on loopback.

Every client uploads ``broadcast + noise(seed)``; the secure mean must equal the exact weighted mean within
:meth:`SecAggSettings.error_bound` (stochastic quantisation), with dropouts and refused uploads left out.
"""

from __future__ import annotations

import copy
import json
import textwrap
import uuid
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr")

from fedbiot_pl.errors import ConfigError  # noqa: E402
from fedbiot_pl.privacy.secagg import (  # noqa: E402
    SecAggHalted,
    SecAggSettings,
    is_secagg_message,
    secagg_fit_reply,
    secagg_fit_request,
    secagg_fit_round,
    secagg_mod,
)

pytestmark = pytest.mark.flower

SHAPES = {"m.0.lora_A.weight": (4, 32), "m.0.lora_B.weight": (32, 4), "m.1.lora_A.weight": (4, 32)}


def broadcast() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {k: 0.1 * torch.randn(s, generator=g) for k, s in SHAPES.items()}


def local_update(client: int, arrays: dict[str, torch.Tensor], scale: float = 0.05) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + client)
    return {k: v + scale * torch.randn(v.shape, generator=g) for k, v in arrays.items()}


def exact_mean(weights: dict[int, int], arrays: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    ups = {c: local_update(c, arrays) for c in weights}
    total = sum(weights.values())
    return {k: sum(w * ups[c][k].double() for c, w in weights.items()) / total for k in arrays}


def make_client_app(behaviour: dict[int, str]):
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train(mods=[secagg_mod])
    def train(message, context):
        assert is_secagg_message(message)
        client = int(context.node_config["client-id"])
        request = secagg_fit_request(message)
        assert request.config == {"lr": 0.5} and list(request.arrays) == list(SHAPES)
        if behaviour.get(client) == "crash":
            raise RuntimeError("site crashed")
        scale = 50.0 if behaviour.get(client) == "huge" else 0.05
        upload = local_update(client, request.arrays, scale)
        if behaviour.get(client) == "misshapen":  # (32,) against (4, 32): it would broadcast in a subtraction
            upload["m.0.lora_A.weight"] = upload["m.0.lora_A.weight"][0]
        return secagg_fit_reply(message, request, upload, int(context.node_config["n"]), {"client-id": client})

    return app


class InProcessGrid:
    """Delivers each message to a ClientApp here, one persistent Context per node; copies content like a wire."""

    def __init__(self, client_app, node_configs: dict[int, dict]):
        from flwr.app import Context, RecordDict
        from flwr.supercore.task_identity import TaskIdentity  # a real Grid's process has these set (private API)

        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
        self.app = client_app
        self.contexts = {n: Context(1, n, cfg, RecordDict(), {}) for n, cfg in node_configs.items()}
        self.sent: list[tuple[int, str]] = []

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None):
        from flwr.app import Error, Message

        replies = []
        for message in messages:
            meta = message.metadata
            incoming = Message(
                copy.deepcopy(message.content), meta.dst_node_id, meta.message_type, group_id=meta.group_id
            )
            message_id = uuid.uuid4().hex  # what pushing a message sets on it, in place (private API)
            message.metadata.__dict__["_message_id"] = incoming.metadata.__dict__["_message_id"] = message_id
            self.sent.append((meta.dst_node_id, meta.message_type))
            try:
                reply = self.app(incoming, self.contexts[meta.dst_node_id])
                reply = Message(copy.deepcopy(reply.content), reply_to=incoming)
            except Exception as err:  # the engine turns a ClientApp exception into an error reply
                reply = Message(Error(code=1, reason=repr(err)), reply_to=incoming)
            replies.append(reply)
        return replies


def run_round(weights: dict[int, int], behaviour=None, wrap=lambda grid: grid, **settings):
    from flwr.app import Context, RecordDict

    nodes = {100 + c: {"client-id": c, "n": n} for c, n in weights.items()}
    grid = InProcessGrid(make_client_app(behaviour or {}), nodes)
    context = Context(1, 0, {}, RecordDict(), {})
    config = SecAggSettings(**{"max_weight": float(max(weights.values())), **settings})
    result = secagg_fit_round(wrap(grid), context, list(nodes), broadcast(), {"lr": 0.5}, 3, config)
    return result, grid, config


def max_error(mean: dict[str, torch.Tensor], exact: dict[str, torch.Tensor]) -> float:
    return max(float((mean[k].double() - exact[k]).abs().max()) for k in exact)


def test_secure_mean_is_the_weighted_mean_within_the_quantisation_bound():
    weights = {0: 100, 1: 300, 2: 600}
    result, grid, settings = run_round(weights)
    bound = settings.error_bound(list(weights.values()))  # 3 * 16 / 2**22 / (1/6 + 1/2 + 1) = 6.9e-6
    assert bound == pytest.approx(3 * 16 / 2**22 / (100 / 600 + 300 / 600 + 1), rel=1e-6)
    error = max_error(result.mean, exact_mean(weights, broadcast()))
    assert error <= bound
    assert error > 1e-8  # it really went through the integer pipeline
    assert {k: (v.dtype, v.shape) for k, v in result.mean.items()} == {
        k: (torch.float32, torch.Size(s)) for k, s in SHAPES.items()
    }
    assert result.num_examples == {100: 100, 101: 300, 102: 600} and result.dropped == [] and not result.failures
    assert result.metrics[101] == {"client-id": 1}
    assert result.messages_sent == result.replies == 4 * 3 == len(grid.sent)
    assert {t for _, t in grid.sent} == {"train"}


def test_a_smaller_clipping_range_gives_a_finer_mean():
    weights = {0: 200, 1: 200, 2: 200}
    result, _, settings = run_round(weights, clipping_range=0.5)
    assert settings.step == 2**-22
    assert max_error(result.mean, exact_mean(weights, broadcast())) <= settings.error_bound([200] * 3) == 2**-22


def test_a_client_that_fails_in_the_fit_is_dropped_and_unmasked_from_the_shares():
    weights = {0: 100, 1: 300, 2: 600, 3: 50, 4: 250}
    result, grid, settings = run_round(weights, {0: "crash", 3: "crash"}, num_shares=5, reconstruction_threshold=3)
    live = {c: n for c, n in weights.items() if c not in (0, 3)}
    assert sorted(result.dropped) == [100, 103] and len(result.failures) == 2  # flwr lists each one twice
    assert all("site crashed" in failure for failure in result.failures)
    assert max_error(result.mean, exact_mean(live, broadcast())) <= settings.error_bound(list(live.values()))
    assert result.messages_sent == 5 + 5 + 5 + 3


def test_an_update_that_would_be_clipped_is_refused_not_clipped():
    weights = {0: 100, 1: 100, 2: 100, 3: 100}
    result, _, settings = run_round(weights, {2: "huge"}, clipping_range=1.0)
    assert result.dropped == [102] and "clipping_range=1" in result.failures[0]
    live = {c: n for c, n in weights.items() if c != 2}
    assert max_error(result.mean, exact_mean(live, broadcast())) <= settings.error_bound(list(live.values()))


def test_an_upload_of_another_shape_is_refused_even_where_it_would_broadcast():
    weights = {0: 100, 1: 100, 2: 100, 3: 100}
    result, _, _ = run_round(weights, {1: "misshapen"})
    assert result.dropped == [101] and "shape (32,), broadcast (4, 32)" in result.failures[0]


def test_a_counting_grid_given_by_the_caller_keeps_counting_and_the_result_counts_this_round():
    from fedbiot_pl.flower.wire import CountingGrid

    counting = []

    def wrap(grid):
        counting.append(CountingGrid(grid))
        counting[0].sent, counting[0].received = 5, 4  # what it counted before this round
        return counting[0]

    result, grid, _ = run_round({0: 1, 1: 2, 2: 3}, wrap=wrap)
    (outer,) = counting
    assert result.messages_sent == result.replies == 4 * 3 == len(grid.sent)
    assert (outer.sent, outer.received) == (5 + 12, 4 + 12) and outer.down > 0 and outer.up > 0


def test_too_many_dropouts_halt_with_an_error():
    with pytest.raises(SecAggHalted, match="halted"):
        run_round({0: 1, 1: 1, 2: 1}, {0: "crash", 1: "crash"}, num_shares=3, reconstruction_threshold=2)


def test_settings_issues_name_every_problem():
    bad = SecAggSettings(
        num_shares=2, reconstruction_threshold=0, clipping_range=0.0, quantization_range=2**31,
        modulus_range=3 * 2**20, max_weight=-1, timeout=0,
    )
    issues = bad.issues()
    assert len(issues) == 7
    for name in ("num_shares=2", "reconstruction_threshold=0", "clipping_range=0.0", "quantization_range=2147483648",
                 "modulus_range=3145728", "max_weight=-1", "timeout=0"):
        assert sum(name in issue for issue in issues) == 1, name
    ok = SecAggSettings()
    assert ok.issues(3, [100, 300, 600]) == [] and ok.max_nodes == 1023
    assert "at least 2 nodes" in ok.issues(1)[0]
    assert "at most 1023 nodes" in ok.issues(1024)[0]
    assert "set max_weight=1200" in ok.issues(2, [1200, 5])[0]
    assert "must be less than num_shares" in SecAggSettings(num_shares=3, reconstruction_threshold=3).issues()[0]
    assert "neighbours" in SecAggSettings(num_shares=5, reconstruction_threshold=4).issues(3)[0]
    assert "use an odd number" in SecAggSettings(num_shares=4, reconstruction_threshold=2).issues(5)[0]  # flwr halts
    assert SecAggSettings(num_shares=1.0, reconstruction_threshold=0.5).shares_and_threshold(3) == (3, 2)
    with pytest.raises(ConfigError, match="at least 2 nodes"):
        run_round({0: 10})


APP_PYPROJECT = """
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "secagg-loopback"
version = "1.0.0"
dependencies = ["flwr>=1.41"]

[tool.flwr.app]
publisher = "fedbiot-pl"

[tool.flwr.app.components]
serverapp = "secagg_loopback:server"
clientapp = "secagg_loopback:client"

[tool.flwr.app.config]
out = ""
num-nodes = 3
"""

APP_CODE = '''
import json, time
from pathlib import Path

import torch
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedbiot_pl.privacy.secagg import (
    SecAggSettings, is_secagg_message, secagg_fit_reply, secagg_fit_request, secagg_fit_round, secagg_mod,
)

server = ServerApp()  # one assignment per app: `flwr run` looks for them without importing the module
client = ClientApp()
SHAPES = {"m.0.lora_A.weight": (4, 32), "m.0.lora_B.weight": (32, 4)}
N = {0: 100, 1: 300, 2: 600}


def update(c, arrays):
    g = torch.Generator().manual_seed(1000 + c)
    return {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in arrays.items()}


@server.main()
def main(grid, context):
    deadline = time.monotonic() + 60
    while len(nodes := sorted(grid.get_node_ids())) < int(context.run_config["num-nodes"]):
        assert time.monotonic() < deadline, "nodes missing"
        time.sleep(0.5)
    g = torch.Generator().manual_seed(0)
    base = {k: 0.1 * torch.randn(s, generator=g) for k, s in SHAPES.items()}
    settings = SecAggSettings(max_weight=600.0, timeout=120.0)
    result = secagg_fit_round(grid, context, nodes, base, {"lr": 0.5}, 1, settings)
    clients = {n: int(m["client-id"]) for n, m in result.metrics.items()}
    ups = {c: update(c, base) for c in clients.values()}
    total = sum(N[c] for c in clients.values())
    exact = {k: sum(N[c] * ups[c][k].double() for c in ups) / total for k in base}
    error = max(float((result.mean[k].double() - exact[k]).abs().max()) for k in base)
    out = {"error": error, "bound": settings.error_bound([N[c] for c in clients.values()]),
           "messages": result.messages_sent, "replies": result.replies, "dropped": result.dropped,
           "clients": sorted(clients.values()), "seconds": result.seconds}
    print("secagg", json.dumps(out), flush=True)
    Path(str(context.run_config["out"])).write_text(json.dumps(out))


@client.train(mods=[secagg_mod])
def train(message, context):
    assert is_secagg_message(message)
    c = int(context.node_config["client-id"])
    request = secagg_fit_request(message)
    return secagg_fit_reply(message, request, update(c, request.arrays), N[c], {"client-id": c})
'''


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(420)
def test_one_secure_round_on_the_real_engine(tmp_path, monkeypatch):
    from fedbiot_pl.flower.engine import LocalEngine, NodeSpec

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    app = tmp_path / "app"
    app.mkdir()
    (app / "pyproject.toml").write_text(textwrap.dedent(APP_PYPROJECT))
    (app / "secagg_loopback.py").write_text(APP_CODE)
    out = tmp_path / "out.json"
    nodes = [NodeSpec({"client-id": c}) for c in range(3)]
    with LocalEngine(tmp_path / "engine", nodes) as engine:
        engine.start(timeout=120)
        run_id = engine.submit(app, {"out": str(out)})
        status = engine.wait(run_id, timeout=360, poll=2.0)
        assert status == "finished:completed", engine.logs(run_id)
    result = json.loads(Path(out).read_text())
    print("secagg loopback:", result)  # error, bound, messages, seconds (pytest -s)
    assert result["clients"] == [0, 1, 2] and result["dropped"] == []
    assert result["messages"] == result["replies"] == 12
    assert 0 < result["error"] <= result["bound"], result
