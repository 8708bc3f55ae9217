"""The local Flower deployment engine (fedbiot_pl.flower.engine) on loopback, with the numpy toy app in toy_app/.

The toy ServerApp sends x = [1, 2, 3] to every node, each ClientApp replies x + client-id, the ServerApp writes the
sum to the run-config's ``out`` file: nodes with client-ids 1 and 2 give [5, 7, 9].
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from fedbiot_pl.flower.engine import LocalEngine, NodeSpec, config_arg  # noqa: E402

TOY_APP = Path(__file__).parent / "toy_app"
EXPECTED = [5.0, 7.0, 9.0]  # [1, 2, 3] + 1  plus  [1, 2, 3] + 2

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_config_arg_round_trips_through_flowers_parser(tmp_path):
    from flwr.common.config import parse_config_args

    values = {"a": 1, "b-c": 2.5, "d": True, "e": 'path with "quotes" and spaces', "f": "C:\\dir\\x", "g": "ü"}
    inline = config_arg(values)
    assert not inline.endswith(".toml")
    assert parse_config_args([inline]) == values
    both = {**values, "h": """it's "both" """}
    path = config_arg(both, tmp_path / "cfg.toml")  # no inline form: the values go to a TOML file
    assert path.endswith(".toml") and parse_config_args([path]) == both
    with pytest.raises(ValueError, match="key"):
        config_arg({"bad key": 1})


@pytest.mark.slow
@pytest.mark.e2e  # the engine with a toy app; test_loopback.py runs it with ours in the default run
@pytest.mark.flower
def test_insecure_run_then_kill_node_and_stop_leave_nothing(tmp_path):
    nodes = [NodeSpec({"client-id": 1}), NodeSpec({"client-id": 2})]
    out = tmp_path / "out.json"
    with LocalEngine(tmp_path / "engine", nodes) as engine:
        engine.start(timeout=90)
        assert set(engine.pids) == {"superlink", "node-0", "node-1"} and len(engine.node_ids) == 2
        run_id = engine.submit(TOY_APP, {"out": str(out), "num-nodes": 2})
        status = engine.wait(run_id, timeout=120, poll=1.0)
        assert status == "finished:completed", engine.logs(run_id)
        assert json.loads(out.read_text()) == {"total": EXPECTED, "nodes": 2}
        assert "toy total [5.0, 7.0, 9.0]" in engine.logs(run_id)  # the ServerApp's stdout reaches `flwr log`

        # below: the SuperExecs (the SuperLink's in a session of its own) and, in flwr 1.41, the zombies of every
        # flwr-serverapp / flwr-clientapp process (the SuperExecs never reap them)
        below = engine.descendants()
        assert "flower-superexe" in below.values(), below  # /proc truncates names to 15 characters
        pids = [*engine.pids.values(), *below]
        node0 = engine.pids["node-0"]
        engine.kill_node(0)
        assert dead(node0) and "node-0" not in engine.pids and engine.poll_node(0) is not None
        engine.stop()
        assert engine.pids == {}
        engine.stop()  # idempotent
    alive = {pid: below.get(pid) for pid in pids if not dead(pid)}
    assert not alive, alive


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.flower
def test_tls_and_node_auth_refuse_an_unregistered_node(tmp_path):
    nodes = [NodeSpec({"client-id": 1}), NodeSpec({"client-id": 2}),
             NodeSpec({"client-id": 100}, register=False)]  # its +100 would show in the sum
    out = tmp_path / "out.json"
    with LocalEngine(tmp_path / "engine", nodes, tls=True, auth=True) as engine:
        engine.start(timeout=90)  # waits for the two registered nodes only
        deadline = time.monotonic() + 60
        while engine.poll_node(2) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert engine.poll_node(2) not in (None, 0)
        log = engine.node_log(2)
        assert "[code: 2004] Failed to activate SuperNode" in log and "SuperNode ID" not in log, log
        assert sorted(engine.online_nodes()) == sorted(engine.node_ids.values()) and set(engine.node_ids) == {0, 1}
        config = (engine.flwr_home / "config.toml").read_text()
        assert "root-certificates" in config and "insecure" not in config

        run_id = engine.submit(TOY_APP, {"out": str(out), "num-nodes": 2})
        status = engine.wait(run_id, timeout=120, poll=1.0)
        assert status == "finished:completed", engine.logs(run_id)
        assert json.loads(out.read_text()) == {"total": EXPECTED, "nodes": 2}
        pids = [*engine.pids.values(), *engine.descendants()]
    assert all(dead(pid) for pid in pids)
