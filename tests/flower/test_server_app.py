"""The ServerApp and ClientApp in one process (a Grid that calls the sites' handlers): the in-process run, bit for bit.

The ServerApp runs `train.py fit`'s own loop with the Flower transport; every train message goes through
the ClientApp's handler, which fits on the exported client model (memory-mapped) with the site's data.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("flwr")

from fedbiot_pl.cli import DEFAULT_CONFIG, config_views, main, read_config  # noqa: E402
from fedbiot_pl.flower import server_app  # noqa: E402
from fedbiot_pl.flower.client_model import export_client_model  # noqa: E402
from fedbiot_pl.model.location import load_tokenizer  # noqa: E402
from tests.flower.fake_grid import FakeGrid  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.flower]
COMMON = ["--federated.rounds", "2", "--federated.local_steps", "2", "--federated.align_steps", "2",
          "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
          "--data.max_task_examples", "60", "--data.max_public_examples", "40", "--federated.plot_training", "false"]
ALGORITHMS = {
    "fedbiot": ["--federated.pre_alignment_rounds", "1"],
    "fedavg_lora": ["--federated.pre_alignment_rounds", "0", "--federated.proximal_weight", "0"],
    # 2 of 3 clients a round: a client first sampled in round 1 must still hold round 0's (aligned) emulator LoRA
    "fedot": ["--federated.pre_alignment_rounds", "1", "--federated.proximal_weight", "0",
              "--federated.clients_per_round", "2"],
}


def args_of(algorithm, *extra):
    return ["--federated.algorithm", algorithm, *ALGORITHMS[algorithm], *COMMON, *extra]


def export(folder, args):
    config = read_config([DEFAULT_CONFIG], args)
    views = config_views(config).build()
    return export_client_model(views, load_tokenizer(config.data.tokenizer), folder)


def run_flower(tmp_path, args, grid_kwargs=None, nodes=3):
    model_dir = tmp_path / "client_model"
    if not model_dir.exists():
        export(model_dir, args)
    grid = FakeGrid([{"client-id": i, "model-dir": str(model_dir)} for i in range(nodes)], **(grid_kwargs or {}))
    argv = ["fit", "--config", str(DEFAULT_CONFIG), *args, "--trainer.logger.init_args.save_dir", str(tmp_path / "fl")]
    server_app.run(grid, {"args": json.dumps(argv), "model-dir": str(model_dir), "min-nodes": nodes,
                          "node-wait": 5})
    return tmp_path / "fl" / "fedbiot" / "version_0", grid


@pytest.mark.parametrize("algorithm", ["fedbiot", "fedavg_lora"])  # fedot: the resume test below
def test_flower_apps_give_the_in_process_adapter_bit_for_bit(tmp_path, algorithm):
    args = args_of(algorithm)
    main(["fit", "--config", str(DEFAULT_CONFIG), *args, "--trainer.logger.init_args.save_dir", str(tmp_path / "ip")])
    run, grid = run_flower(tmp_path, args)
    name = "final_adapter/compressed_lora.safetensors"
    assert (run / name).read_bytes() == (tmp_path / "ip" / "fedbiot" / "version_0" / name).read_bytes()
    trains = 4 if algorithm == "fedot" else 6
    assert [kind for _, kind in grid.sent] == ["query.describe"] * 3 + ["train"] * trains
    summary = json.loads((run / "final_adapter" / "federated_summary.json").read_text())
    reference = json.loads((tmp_path / "ip" / "fedbiot" / "version_0" / "final_adapter" /
                            "federated_summary.json").read_text())
    # the paper's tensor bytes are the simulation's; the wire bytes are Flower's records (more: headers, config)
    assert summary["ledger"]["bytes_down"] == reference["ledger"]["bytes_down"] > 0
    assert summary["ledger"]["wire_bytes_down"] > summary["ledger"]["bytes_down"]
    timings = json.loads((run / "flower_timings.json").read_text())
    assert len(timings) == trains and all(t["fit-seconds"] > 0 and t["startup-seconds"] > 0 for t in timings)


def test_a_corrupted_upload_is_rejected_counted_and_the_round_goes_on(tmp_path):
    args = args_of("fedavg_lora", "--federated.rounds", "1", "--federated.min_clients", "2")
    run, _ = run_flower(tmp_path, args, {"corrupt": [2]})  # node 2 serves client 1
    summary = json.loads((run / "final_adapter" / "federated_summary.json").read_text())
    assert summary["ledger"]["uploads_rejected"] == 1
    assert summary["faults"]["uploads_rejected"] == 1
    (entry,) = summary["rounds"]
    (event,) = entry["faults"]
    assert (event["client"], event["outcome"]) == (1, "rejected") and "not a safetensors payload" in event["reason"]
    assert entry["accepted"] == [0, 2] and entry["round/rejected"] == 1.0
    lora = load_file(run / "final_adapter" / "compressed_lora.safetensors")
    assert all(torch.isfinite(t).all() for t in lora.values())


def test_a_site_with_another_client_model_is_refused_at_the_handshake(tmp_path, capsys):
    args = args_of("fedavg_lora", "--federated.rounds", "1")
    export(tmp_path / "client_model", args)
    other = tmp_path / "other_model"
    export(other, args_of("fedavg_lora", "--model.split.lora_r", "4"))
    grid = FakeGrid([{"client-id": i, "model-dir": str(tmp_path / ("other_model" if i == 1 else "client_model"))}
                     for i in range(3)])
    argv = ["fit", "--config", str(DEFAULT_CONFIG), *args, "--trainer.logger.init_args.save_dir", str(tmp_path / "fl")]
    with pytest.raises(SystemExit) as exit_info:
        server_app.run(grid, {"args": json.dumps(argv), "model-dir": str(tmp_path / "client_model"), "min-nodes": 3})
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "the Flower handshake failed" in err and "node 2" in err and "copy the server's exported client model" in err


def test_algorithms_without_a_lora_exchange_are_refused_before_any_weight_loads(tmp_path, capsys):
    grid = FakeGrid([])
    argv = ["fit", "--config", str(DEFAULT_CONFIG), "--federated.algorithm", "splitfed_lora",
            "--federated.pre_alignment_rounds", "0", "--federated.proximal_weight", "0",
            "--trainer.logger.init_args.save_dir", str(tmp_path / "fl")]
    (tmp_path / "cm").mkdir()
    (tmp_path / "cm" / "manifest.sha256").write_text("")
    with pytest.raises(SystemExit):
        server_app.run(grid, {"args": json.dumps(argv), "model-dir": str(tmp_path / "cm")})
    assert "'splitfed_lora' does not run over Flower yet" in capsys.readouterr().err


def test_secagg_round_gives_the_in_process_mean_within_the_quantisation_bound(tmp_path):
    from flwr.app import Context, RecordDict

    from fedbiot_pl.flower.client_app import app as client_app
    from fedbiot_pl.privacy.secagg import SecAggSettings
    from tests.flower.test_secagg import InProcessGrid

    args = args_of("fedavg_lora", "--federated.rounds", "1")
    save = "--trainer.logger.init_args.save_dir"
    main(["fit", "--config", str(DEFAULT_CONFIG), *args, save, str(tmp_path / "ip")])
    export(tmp_path / "client_model", args)
    grid = InProcessGrid(client_app, {10 + i: {"client-id": i, "model-dir": str(tmp_path / "client_model")}
                                      for i in range(3)})
    argv = ["fit", "--config", str(DEFAULT_CONFIG), *args, save, str(tmp_path / "fl")]
    server_app.run(grid, {"args": json.dumps(argv), "model-dir": str(tmp_path / "client_model"), "min-nodes": 3,
                          "secagg": "{}"}, Context(1, 0, {}, RecordDict(), {}))
    name = "fedbiot/version_0/final_adapter/compressed_lora.safetensors"
    secure, plain = load_file(tmp_path / "fl" / name), load_file(tmp_path / "ip" / name)
    summary = json.loads((tmp_path / "fl" / "fedbiot/version_0/final_adapter/federated_summary.json").read_text())
    (entry,) = summary["rounds"]
    assert entry["accepted"] == [0, 1, 2] and entry["faults"] == []
    # 4 SecAgg+ stages per client (setup, keys, masked vectors, unmask) after the 3 handshakes
    assert sum(kind == "train" for _, kind in grid.sent) == 12
    # k (2c/Q) / sum of weights, the largest weight being 1 (SecAggSettings.error_bound); c = 8, Q = 2**22
    bound = SecAggSettings(max_weight=1.0).error_bound([1])
    assert bound == pytest.approx(2 * 8.0 / 2**22)
    error = max(float((secure[k].double() - plain[k].double()).abs().max()) for k in plain)
    assert 0 < error <= 3 * bound, error  # stochastic rounding: never bit-equal, always within the bound
    assert summary["ledger"]["wire_bytes_up"] > 2 * summary["ledger"]["bytes_up"]  # masked int64 + 4 stages


def test_a_resumed_fedot_run_still_sends_round_0s_emulator_lora(tmp_path):
    # FedOT broadcasts the (aligned) emulator LoRA in round 0 only; a server resumed after round 0 must still
    # give it to every client: the resumed Flower run equals the uninterrupted in-process run bit for bit.
    args = args_of("fedot")
    save = "--trainer.logger.init_args.save_dir"
    main(["fit", "--config", str(DEFAULT_CONFIG), *args, save, str(tmp_path / "ip")])
    first = [arg if arg != "2" or args[i - 1] != "--federated.rounds" else "1" for i, arg in enumerate(args)]
    run_flower(tmp_path, first)  # stops after round 0 (its last.ckpt)
    run, _ = run_flower(tmp_path, [*args, "--ckpt_path", "last"])
    name = "final_adapter/compressed_lora.safetensors"
    assert (run / name).read_bytes() == (tmp_path / "ip" / "fedbiot" / "version_0" / name).read_bytes()
