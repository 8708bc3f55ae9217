"""The real Flower engine on loopback: SuperLink + SuperNodes as processes, TLS and node authentication.

The run is `train.py fit`'s, over self-signed TLS with registered node keys; its final adapter must equal
the in-process run's bit for bit, and a node whose key was never registered must be refused.
"""

import json
import os

import pytest

pytest.importorskip("flwr")

from fedbiot_pl.cli import DEFAULT_CONFIG, main  # noqa: E402
from fedbiot_pl.flower.engine import LocalEngine, NodeSpec  # noqa: E402
from fedbiot_pl.flower.local import APP_DIR  # noqa: E402
from tests.flower.test_server_app import export  # noqa: E402

# The engine's processes run with OMP_NUM_THREADS=1 and the in-process reference with one intra-op thread:
# CPU kernels sum in an order that depends on the thread count, so bit-for-bit needs the same count on both sides.
pytestmark = [pytest.mark.slow, pytest.mark.flower, pytest.mark.usefixtures("one_thread")]
ARGS = ["--federated.algorithm", "fedavg_lora", "--federated.pre_alignment_rounds", "0",
        "--federated.proximal_weight", "0", "--federated.rounds", "1", "--federated.local_steps", "2",
        "--data.num_clients", "2", "--data.max_task_examples", "40", "--data.max_public_examples", "20",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--federated.plot_training", "false"]
ADAPTER = "fedbiot/version_0/final_adapter/compressed_lora.safetensors"


def test_tls_and_node_auth_run_equals_train_py_and_an_unregistered_node_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    model_dir = tmp_path / "client_model"
    export(model_dir, ARGS)
    argv = ["fit", "--config", str(DEFAULT_CONFIG), *ARGS]
    main([*argv, "--trainer.logger.init_args.save_dir", str(tmp_path / "ip")])
    nodes = [NodeSpec({"client-id": i, "model-dir": str(model_dir)}) for i in range(2)]
    nodes.append(NodeSpec({"client-id": 2, "model-dir": str(model_dir)}, register=False))  # a stranger
    run_config = {"args": json.dumps([*argv, "--trainer.logger.init_args.save_dir", str(tmp_path / "fl")]),
                  "workdir": str(tmp_path), "model-dir": str(model_dir), "min-nodes": 2, "node-wait": 120}
    with LocalEngine(tmp_path / "engine", nodes, tls=True, auth=True) as engine:
        engine.start()
        run_id = engine.submit(APP_DIR, run_config)
        status = engine.wait(run_id, timeout=900)
        logs = engine.logs(run_id)
        stranger = engine.node_log(2)
        pids = list(engine.pids.values())
    assert status == "finished:completed", logs[-4000:]
    assert (tmp_path / "fl" / ADAPTER).read_bytes() == (tmp_path / "ip" / ADAPTER).read_bytes()
    assert "2004" in stranger, stranger[-2000:]  # "Failed to activate SuperNode": its key is not registered
    for pid in pids:  # every engine process is gone
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.e2e
def test_secagg_on_loopback_is_the_in_process_mean_within_the_quantisation_bound(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = [*ARGS[:ARGS.index("--data.num_clients")], "--data.num_clients", "3",
            *ARGS[ARGS.index("--data.num_clients") + 2:]]
    model_dir = tmp_path / "client_model"
    export(model_dir, args)
    argv = ["fit", "--config", str(DEFAULT_CONFIG), *args]
    main([*argv, "--trainer.logger.init_args.save_dir", str(tmp_path / "ip")])
    nodes = [NodeSpec({"client-id": i, "model-dir": str(model_dir)}) for i in range(3)]
    run_config = {"args": json.dumps([*argv, "--trainer.logger.init_args.save_dir", str(tmp_path / "fl")]),
                  "workdir": str(tmp_path), "model-dir": str(model_dir), "min-nodes": 3, "secagg": "{}"}
    with LocalEngine(tmp_path / "engine", nodes) as engine:
        engine.start()
        run_id = engine.submit(APP_DIR, run_config)
        status = engine.wait(run_id, timeout=1200)
        logs = engine.logs(run_id)
    assert status == "finished:completed", logs[-4000:]
    secure, plain = load_file(tmp_path / "fl" / ADAPTER), load_file(tmp_path / "ip" / ADAPTER)
    error = max(float((secure[k].double() - plain[k].double()).abs().max()) for k in plain)
    assert 0 < error <= 3 * 2 * 8.0 / 2**22, error  # k (2c/Q) / sum of weights (the largest weight is 1)
    assert all(torch.isfinite(t).all() for t in secure.values())


@pytest.mark.e2e
def test_flower_local_runner_writes_train_py_fits_run_folder_bit_for_bit(tmp_path, monkeypatch):
    import subprocess
    import sys

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = ["--federated.rounds", "2", "--federated.pre_alignment_rounds", "1", "--federated.local_steps", "2",
            "--federated.align_steps", "2", "--data.max_task_examples", "60", "--data.max_public_examples", "40",
            "--trainer.enable_progress_bar", "false", "--federated.plot_training", "false"]  # fedbiot, 3 clients
    (tmp_path / "flower").mkdir()
    done = subprocess.run([sys.executable, "-m", "fedbiot_pl.flower.local", "--flower-workdir", str(tmp_path / "w"),
                           *args], cwd=tmp_path / "flower", capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-4000:]
    (tmp_path / "ip").mkdir()
    monkeypatch.chdir(tmp_path / "ip")
    main(["fit", *args])
    run = "runs/fedbiot/version_0"
    assert (tmp_path / "flower" / run / "final_adapter/compressed_lora.safetensors").read_bytes() == \
        (tmp_path / "ip" / run / "final_adapter/compressed_lora.safetensors").read_bytes()
    for name in ("metrics.csv", "config.yaml", "final_adapter/adapfu/adapter_model.safetensors", "flower_timings.json"):
        assert (tmp_path / "flower" / run / name).is_file(), name
    assert (tmp_path / "w" / "server.log").is_file() and "SuperLink" in done.stderr
