"""A site's own data file read with the server's task settings; local DP's release count and its composition."""

import json

import pytest

from fedbiot_pl.callbacks.federated_loop import privacy_spent, released_uploads
from fedbiot_pl.federation.attempts import RoundAttempt
from fedbiot_pl.privacy import LocalDP, compose


def test_every_attempt_counts_a_release_for_each_client_that_was_not_dropped():
    first = RoundAttempt(0, [0, 1, 2])
    first.drop(1, "fit raised")
    first.reject(2, "NaN")  # a rejected upload was still sent: a release
    second = RoundAttempt(1, [2, 3])
    assert released_uploads([first, second]) == {0: 1, 2: 2, 3: 1}


def test_the_spend_holds_when_releases_times_delta_reaches_one():
    dp = LocalDP(clip_norm=1.0, epsilon=1.0, delta=0.01)
    report = privacy_spent(dp, {0: 100, 1: 3})  # 100 x 0.01 = 1: basic composition says nothing
    many, few = report["per_client"]["0"], report["per_client"]["1"]
    assert many["delta"] == 0.01 and many["method"] == "zcdp"
    assert many["epsilon"] == pytest.approx(compose(dp, 100, delta_total=0.01).epsilon)
    assert few["delta"] == pytest.approx(0.03) and few["rounds"] == 3


@pytest.mark.slow
def test_a_site_file_is_read_with_the_servers_task_settings(tmp_path):
    pytest.importorskip("flwr")
    from fedbiot_pl.datamodules import FederatedInstructionDataModule
    from fedbiot_pl.flower.site import NodeSettings, site_data
    from tests.flower.test_server_app import args_of, export

    export(tmp_path / "client_model", args_of("fedavg_lora"))
    rows = [{"prompt": f"Add {i} and {i}.", "completion": f"{2 * i}"} for i in range(12)]
    for name in ("server.jsonl", "site.jsonl"):
        (tmp_path / name).write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    server = FederatedInstructionDataModule(
        task={"path": str(tmp_path / "server.jsonl"), "format": "alpaca",
              "fields": {"instruction": "prompt", "output": "completion"}},
        num_clients=2, max_length=256)
    settings = {key: value for key, value in server.hparams.items() if not key.startswith("_")}
    node = NodeSettings.of({"client-id": 1, "model-dir": str(tmp_path / "client_model"),
                            "data-path": str(tmp_path / "site.jsonl")})
    data = site_data(settings, node)  # without the server's fields, the site's columns could not be read
    assert data.client_num_examples(1) == 12
    batch = next(iter(data.client_dataloader(1, 0)))
    assert batch["input_ids"].shape[0] == server.batch_size
