"""Client faults and bad uploads: the client is dropped or its update rejected, the round goes on,
and too few accepted updates retry the round or stop the run with a clear message.

The faults are attached to the round's hook points with the ``faults`` fixture (tests/conftest.py)."""

import pytest
import torch

from fedbiot_pl.callbacks import FederatedLoop
from fedbiot_pl.federation.attempts import TooFewClientsError
from fedbiot_pl.federation.sampling import sample_clients
from tests.helpers import LORA_PER_LAYER, SpyFedBiOT, make_module, server_trainer
from tests.toy_data import ToyFederatedData

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

ADAPTER_BYTES = 2 * LORA_PER_LAYER * 4  # two adapter layers of float32 LoRA
FIRST_KEY_BYTES = 8 * 64 * 4  # the first key in sorted order: q_proj lora_A (8 x 64) of compressed layer 2


def test_failed_clients_are_dropped_and_bad_updates_rejected_while_rounds_go_on(tmp_path, faults):
    faults([
        {"point": "client_fit", "round": 0, "client": 0, "action": "raise"},
        {"point": "client_step", "round": 0, "client": 1, "step": 0, "action": "nan"},
        {"point": "client_step", "round": 0, "client": 2, "step": 0, "action": "sleep", "seconds": 2.1},
        *({"point": "upload", "round": 1, "client": c, "action": a}
          for c, a in enumerate(["nan", "inf", "missing_key", "extra_key"])),
        *({"point": "upload", "round": 2, "client": c, "action": a}
          for c, a in enumerate(["shape", "dtype", "scale", "garbage"])),
    ])
    algorithm = SpyFedBiOT()  # records every aggregation
    loop = FederatedLoop(algorithm=algorithm, rounds=3, align_steps=1, local_steps=2, client_accumulate_grad_batches=1,
                         client_time_limit=2.0, max_update_norm=1.0, export_final_adapter=False)
    data = ToyFederatedData(num_clients=5, examples=(8, 8, 8, 8, 16), vocab=512)
    module = make_module(0.0)
    server_trainer(tmp_path, loop).fit(module, datamodule=data)

    reasons = [{e["client"]: (e["outcome"], e["reason"]) for e in entry["faults"]} for entry in loop.history]
    assert reasons[0][0] == ("dropped", ("fit raised InjectedFault: injected fault at client_fit "
                                         "{'round': 0, 'client': 0, 'attempt': 0}"))
    assert reasons[0][1] == ("dropped", "non-finite mean loss nan")
    assert reasons[0][2][0] == "dropped" and "past client_time_limit=2 s" in reasons[0][2][1]
    assert [reasons[1][c][1] for c in range(4)] == [
        "NaN/Inf values in 1 tensors (base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight)",
    ] * 2 + [
        "1 missing keys (base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight)",
        "1 unexpected keys (base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight.extra)",
    ]
    assert [reasons[2][c][1].split(":")[0] for c in range(4)] == [
        "wrong shape", "wrong dtype", f"update norm {reasons[2][2][1].split()[2]} exceeds max_update_norm=1",
        "unreadable upload",
    ]
    # only the accepted updates are averaged, with their sample weights
    assert [weights for _, weights, _ in algorithm.calls] == [[8, 16], [16], [16]]
    assert [(e["round/clients"], e["round/dropped"], e["round/rejected"]) for e in loop.history] == [
        (2.0, 3.0, 0.0), (1.0, 0.0, 4.0), (1.0, 0.0, 4.0)]
    assert [e["accepted"] for e in loop.history] == [[3, 4], [4], [4]]
    # rejected uploads travelled (counted up, as sent); dropped clients sent nothing
    assert loop.ledger.uploads_rejected == 8
    assert loop.ledger.bytes_up == (2 * ADAPTER_BYTES
                                    + 3 * ADAPTER_BYTES + (ADAPTER_BYTES - FIRST_KEY_BYTES) + (ADAPTER_BYTES + 8)
                                    + (ADAPTER_BYTES + 64 * 4) + (ADAPTER_BYTES + FIRST_KEY_BYTES) + ADAPTER_BYTES
                                    + len(b"\x80\x04not safetensors") + ADAPTER_BYTES)
    final = module.split.lora_state("adapter")
    assert all(torch.isfinite(v).all() and torch.equal(v, algorithm.calls[-1][2][k]) for k, v in final.items())


def test_too_few_clients_stops_the_run_naming_every_fault_and_the_fix(tmp_path, faults):
    faults([{"point": "client_fit", "client": 1, "action": "raise"}])
    loop = FederatedLoop(rounds=2, align_steps=1, local_steps=1, client_accumulate_grad_batches=1,
                         min_clients=3, export_final_adapter=False)
    with pytest.raises(TooFewClientsError) as info:
        server_trainer(tmp_path, loop).fit(make_module(0.0), datamodule=ToyFederatedData(vocab=512))
    message = str(info.value)
    assert message.startswith("round 0: only 2 of 3 sampled clients gave an accepted update (attempt 1 of 1), "
                              "fewer than federated.min_clients=3.")
    assert "attempt 1, client 1 dropped: fit raised InjectedFault" in message
    assert "set federated.on_too_few: retry" in message and "--ckpt_path last" in message


def test_retry_resamples_deterministically_until_enough_clients_succeed(tmp_path, faults):
    first = sample_clients(4, 2, 42, 0, attempt=0)
    second = sample_clients(4, 2, 42, 0, attempt=1)
    assert first != second  # the retry draws another pair (a pure function of seed, round, attempt)
    faults([{"point": "client_fit", "round": 0, "attempt": 0, "client": first[0], "action": "raise"}])
    loop = FederatedLoop(rounds=1, align_steps=1, local_steps=1, client_accumulate_grad_batches=1,
                         clients_per_round=2, min_clients=2, on_too_few="retry", max_round_retries=1,
                         export_final_adapter=False)
    data = ToyFederatedData(num_clients=4, examples=(4, 4, 4, 4), vocab=512)
    server_trainer(tmp_path, loop).fit(make_module(0.0), datamodule=data)
    entry = loop.history[0]
    assert entry["attempts"] == 2 and entry["clients"] == second and entry["accepted"] == second
    assert [client for client, _ in data.requested] == [first[1], *second]
    assert loop.ledger.messages_down == 4 and entry["round/dropped"] == 1.0

    faults([{"point": "client_fit", "client": 0, "action": "raise"}])  # in place of the first
    always = FederatedLoop(rounds=1, align_steps=1, local_steps=1, client_accumulate_grad_batches=1,
                           min_clients=3, on_too_few="retry", max_round_retries=1, export_final_adapter=False)
    with pytest.raises(TooFewClientsError, match=r"\(attempt 2 of 2\)(.|\n)*raise federated.max_round_retries"):
        server_trainer(tmp_path, always).fit(make_module(0.0), datamodule=ToyFederatedData(vocab=512))
