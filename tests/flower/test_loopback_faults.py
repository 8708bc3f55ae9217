"""Faults of a real Flower deployment on loopback (LocalEngine: SuperLink and SuperNodes as processes).

1. A SuperNode is SIGKILLed while its client fits: the round drops that client and goes on with the others,
   and the result is the in-process run's in which that client's fit fails.
2. The ServerApp is SIGKILLed in round 2 of 3; a new run with ``--ckpt_path last`` continues the run folder
   from its last round checkpoint and ends bit for bit as an uninterrupted in-process ``train.py fit``.
3. Two uploads arrive damaged (NaN in a tensor; array bytes numpy cannot read): both are rejected and counted,
   and the round goes on with the third client.

Each Flower message starts a fresh ClientApp process (seconds of imports), so the runs are FedAvg-LoRA with one
local step and few rounds. ``faulty_app/`` wraps fedbiot-pl's ClientApp with damage the run config names.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from fedbiot_pl.cli import main as train_main  # noqa: E402
from fedbiot_pl.flower.engine import EngineError, LocalEngine, NodeSpec  # noqa: E402
from fedbiot_pl.flower.export import export_for_args  # noqa: E402
from fedbiot_pl.flower.local import APP_DIR  # noqa: E402

FAULTY_APP = Path(__file__).parent / "faulty_app"
FIT = ["--federated.algorithm", "fedavg_lora", "--federated.proximal_weight", "0",
       "--federated.pre_alignment_rounds", "0", "--federated.local_steps", "1",
       "--trainer.enable_progress_bar", "false", "--data.max_task_examples", "60", "--data.max_public_examples", "40"]
RUN = Path("runs/fedbiot/version_0")
ADAPTER = RUN / "final_adapter/compressed_lora.safetensors"
SUMMARY = RUN / "final_adapter/federated_summary.json"
RUN_TIMEOUT = 900.0

pytestmark = [pytest.mark.slow, pytest.mark.flower, pytest.mark.e2e, pytest.mark.timeout(1800),
              pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def client_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The clients' model of the FIT settings (every test runs FedAvg-LoRA on the same model)."""
    folder = tmp_path_factory.mktemp("flower-model") / "client_model"
    export_for_args(FIT, folder)
    return folder


def start_engine(tmp_path: Path, model: Path, clients: int) -> LocalEngine:
    nodes = [NodeSpec({"client-id": client, "model-dir": str(model)}) for client in range(clients)]
    engine = LocalEngine(tmp_path / "engine", nodes, env={"OMP_NUM_THREADS": "1"})
    engine.start()
    return engine


def submit(engine: LocalEngine, app: Path, args: list[str], workdir: Path, model: Path, **config: object) -> int:
    """``train.py fit <args>`` as a Flower run writing into ``workdir``, waiting for every node."""
    workdir.mkdir(parents=True, exist_ok=True)
    run_config = {"args": json.dumps(["fit", *args]), "workdir": str(workdir), "model-dir": str(model),
                  "min-nodes": len(engine.nodes), **config}
    return engine.submit(app, run_config)


def tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def diagnostics(engine: LocalEngine, *run_ids: int) -> str:
    """The runs' logs (``flwr log``), the nodes' and the SuperLink's, each's tail: for assertion messages."""
    parts = []
    for run_id in run_ids:
        try:
            text = engine.logs(run_id)
        except (EngineError, OSError) as error:
            text = f"(no log: {error})"
        parts.append(f"--- run {run_id} (flwr log) ---\n{tail(text)}")
    for index in range(len(engine.nodes)):
        parts.append(f"--- node {index} ---\n{tail(engine.node_log(index), 30)}")
    if engine.superlink_log.exists():
        parts.append(f"--- superlink ---\n{tail(engine.superlink_log.read_text(errors='replace'), 20)}")
    return "\n" + "\n".join(parts)


def train_messages(node_log: str, run_id: int, event: str = "Receiving") -> int:
    """Train messages of ``run_id`` that a node received (``event="Sending"``: answered), from its log."""
    count, current = 0, None
    for line in node_log.splitlines():
        found = re.search(r"\[RUN (\d+)\]", line)
        if found:
            current = int(found.group(1))
        elif f"{event}: train message" in line and current == run_id:
            count += 1
    return count


def wait_until(condition: Callable[[], bool], engine: LocalEngine, run_id: int, what: str,
               timeout: float = RUN_TIMEOUT) -> None:
    """Poll ``condition`` every 0.2 s; fail (with the logs) on timeout or when the run ends first."""
    deadline, checked = time.monotonic() + timeout, time.monotonic()
    while not condition():
        now = time.monotonic()
        if now > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s" + diagnostics(engine, run_id))
        if now - checked > 30:  # a `flwr list` costs 2 s: rarely
            checked = now
            status = engine.status(run_id)
            if status.startswith("finished:"):
                pytest.fail(f"{what}: the run ended {status} first" + diagnostics(engine, run_id))
        time.sleep(0.2)


def finish(engine: LocalEngine, run_id: int) -> None:
    """Wait for the run; it must complete."""
    try:
        status = engine.wait(run_id, timeout=RUN_TIMEOUT)
    except TimeoutError as error:
        pytest.fail(f"{error}" + diagnostics(engine, run_id))
    assert status == "finished:completed", f"run {run_id} ended {status}" + diagnostics(engine, run_id)


def in_process(folder: Path, args: list[str], monkeypatch: pytest.MonkeyPatch) -> Path:
    """``train.py fit <args>`` in this process, in ``folder``; the folder."""
    folder.mkdir()
    monkeypatch.chdir(folder)
    train_main(["fit", *args])
    return folder


def test_supernode_killed_mid_round_drops_its_client(tmp_path, client_model, monkeypatch, faults):
    args = [*FIT, "--data.num_clients", "3", "--federated.rounds", "1", "--federated.min_clients", "2"]
    flower = tmp_path / "flower"
    monkeypatch.chdir(tmp_path)
    started = time.monotonic()
    with start_engine(tmp_path, client_model, 3) as engine:
        # Client 2's fit sleeps, so the node is surely killed while its ClientApp works on the train message.
        sleep = [{"point": "client_fit", "client": 2, "round": 0, "action": "sleep", "seconds": 600}]
        run_id = submit(engine, FAULTY_APP, args, flower, client_model, **{"round-timeout": 120},
                        faults=json.dumps(sleep))
        wait_until(lambda: train_messages(engine.node_log(2), run_id) >= 1, engine, run_id,
                   "node 2 receiving round 0's train message")
        engine.kill_node(2)
        finish(engine, run_id)
        logs = diagnostics(engine, run_id)
        assert train_messages(engine.node_log(2), run_id, "Sending") == 0, "node 2 answered before the kill" + logs
        assert all(train_messages(engine.node_log(i), run_id, "Sending") == 1 for i in (0, 1)), logs
    print(f"Flower run with a killed node: {time.monotonic() - started:.0f} s")

    summary = json.loads((flower / SUMMARY).read_text())
    (entry,) = summary["rounds"]
    assert entry["clients"] == [0, 1, 2] and entry["accepted"] == [0, 1], (entry, logs)
    assert [(e["client"], e["outcome"]) for e in entry["faults"]] == [(2, "dropped")], (entry, logs)
    assert "Node Unavailable" in entry["faults"][0]["reason"], entry  # the SuperLink answers for the dead node

    # In process, client 2's fit fails in round 0: the same round, the same adapter.
    faults([{"point": "client_fit", "client": 2, "round": 0, "action": "raise"}])
    local = in_process(tmp_path / "in-process", args, monkeypatch)
    assert json.loads((local / SUMMARY).read_text())["rounds"][0]["accepted"] == [0, 1]
    assert (flower / ADAPTER).read_bytes() == (local / ADAPTER).read_bytes(), logs


def test_server_killed_then_resumed_matches_uninterrupted_run(tmp_path, client_model, monkeypatch):
    args = [*FIT, "--data.num_clients", "2", "--federated.rounds", "3"]
    flower = tmp_path / "flower"
    monkeypatch.chdir(tmp_path)
    started = time.monotonic()
    with start_engine(tmp_path, client_model, 2) as engine:
        first = submit(engine, APP_DIR, args, flower, client_model, **{"round-timeout": 300})
        # Round 2's train messages go out after round 1's last.ckpt: kill the ServerApp in round 2.
        wait_until(lambda: train_messages(engine.node_log(0), first) >= 2, engine, first,
                   "node 0 receiving round 2's train message")
        assert (flower / RUN / "checkpoints/last.ckpt").is_file()
        servers = [pid for pid, name in engine.descendants().items() if name == "flwr-serverapp"]
        assert len(servers) == 1, engine.descendants()
        os.kill(servers[0], signal.SIGKILL)
        engine.stop_run(first)  # what an operator does after a crash: the SuperLink forgets its messages
        assert engine.status(first).startswith("finished:")

        second = submit(engine, APP_DIR, [*args, "--ckpt_path", "last"], flower, client_model,
                        **{"round-timeout": 300})
        finish(engine, second)
        logs = diagnostics(engine, first, second)
        resumed = [train_messages(engine.node_log(i), second) for i in range(2)]
        assert resumed[0] == resumed[1] and 1 <= resumed[0] < 3, (resumed, logs)  # continued, not restarted
        assert "Restored all states from the checkpoint" in engine.logs(second), logs
    print(f"Flower runs, killed and resumed: {time.monotonic() - started:.0f} s")

    assert sorted(p.name for p in (flower / "runs/fedbiot").iterdir()) == ["version_0"]
    assert [entry["accepted"] for entry in json.loads((flower / SUMMARY).read_text())["rounds"]] == [[0, 1]] * 3
    local = in_process(tmp_path / "in-process", args, monkeypatch)
    assert (flower / ADAPTER).read_bytes() == (local / ADAPTER).read_bytes(), logs


def test_corrupted_uploads_are_rejected_and_counted(tmp_path, client_model, monkeypatch, faults):
    args = [*FIT, "--data.num_clients", "3", "--federated.rounds", "1", "--federated.min_clients", "1"]
    flower = tmp_path / "flower"
    monkeypatch.chdir(tmp_path)
    started = time.monotonic()
    with start_engine(tmp_path, client_model, 3) as engine:
        # Client 1 uploads a NaN; client 2's upload leaves its site intact and arrives with unreadable arrays.
        run_id = submit(engine, FAULTY_APP, args, flower, client_model, **{"round-timeout": 300},
                        faults=json.dumps([{"point": "upload", "client": 1, "action": "nan"}]),
                        garble=json.dumps([[2, 0]]))
        finish(engine, run_id)
        logs = diagnostics(engine, run_id)
    print(f"Flower run with damaged uploads: {time.monotonic() - started:.0f} s")

    summary = json.loads((flower / SUMMARY).read_text())
    assert summary["ledger"]["uploads_rejected"] == 2 and summary["faults"]["uploads_rejected"] == 2, (summary, logs)
    (entry,) = summary["rounds"]
    assert entry["accepted"] == [0], (entry, logs)
    reasons = {e["client"]: (e["outcome"], e["reason"]) for e in entry["faults"]}
    assert sorted(reasons) == [1, 2] and {outcome for outcome, _ in reasons.values()} == {"rejected"}, reasons
    assert "NaN" in reasons[1][1] and "unreadable" in reasons[2][1], reasons

    # In process, the same two uploads damaged (client 2's replaced by bytes that are no update): the same adapter.
    faults([{"point": "upload", "client": 1, "action": "nan"}, {"point": "upload", "client": 2, "action": "garbage"}])
    local = in_process(tmp_path / "in-process", args, monkeypatch)
    assert json.loads((local / SUMMARY).read_text())["ledger"]["uploads_rejected"] == 2
    assert (flower / ADAPTER).read_bytes() == (local / ADAPTER).read_bytes(), logs
