"""HierFedLoRA rounds on the real stories260K: FedAvg equivalence, depth, the two-level ledger, the clock, resume."""

import pytest
import torch

from fedbiot_pl.algorithms import ClientOptim, FedAvgLoRA, HierFedLoRA, resolve_algorithm
from fedbiot_pl.callbacks import FederatedLoop
from fedbiot_pl.errors import ConfigError
from fedbiot_pl.federation.aggregation import layerwise_fedavg
from fedbiot_pl.federation.client import ClientFitSettings, LocalClients
from fedbiot_pl.federation.round import RoundRunner, RoundSettings
from fedbiot_pl.hierarchy.fleet import load_fleet
from fedbiot_pl.hierarchy.simulation import simulated_fleet
from fedbiot_pl.model.views import ModelViews
from fedbiot_pl.modules import EmulatorAlignmentModule
from tests.helpers import LORA_PER_LAYER, free_port, server_trainer
from tests.toy_data import ToyFederatedData, ToyGroupedData

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

VOCAB, LAYERS = 512, 5
MODEL = "embedded:models/stories260K"
LAYER_BYTES = 4 * LORA_PER_LAYER  # 7,168: one layer's LoRA as float32


def views_for(algorithm):
    views = ModelViews(MODEL).use_algorithm(algorithm)
    torch.manual_seed(0)  # the same LoRA initialisation in every run
    return views.build()


def layer_of(key):
    return int(key.split(".layers.")[1].split(".")[0])


def one_tier(tflops=1e-3, mem_gib=1.0, mbps=1.0, **extra):
    """A fleet of identical devices, no jitter or latency: every time below is hand-checkable."""
    return {"tiers": [{"name": "same", "share": 1.0, "tflops": tflops, "mem_gib": mem_gib, "up_mbps": mbps,
                       "down_mbps": mbps}], "num_devices": None, "jitter": 0.0, "latency_s": 0.0,
            "edge_cloud_mbps": 8.0, "edge_latency_s": 0.0, **extra}


def runner(algorithm, data, fleet=None, local_steps=2, **settings):
    algorithm = resolve_algorithm(algorithm)
    views = views_for(algorithm)
    module = algorithm.client_module(views, ClientOptim(lr=2e-2))
    fit = ClientFitSettings(local_steps=local_steps, accumulate_grad_batches=1)
    clients = LocalClients(algorithm, views, module, data, fit)
    sim = simulated_fleet(load_fleet(fleet), views, data, local_steps, 1) if fleet is not None else None
    return RoundRunner(algorithm, views, data, clients, RoundSettings(**settings), fleet=sim), views


def fit_loop(algorithm, tmp_path, rounds=2, data=None, **loop_kwargs):
    algorithm = resolve_algorithm(algorithm)
    loop = FederatedLoop(algorithm=algorithm, rounds=rounds, local_steps=2, client_lr=1e-2,
                         client_accumulate_grad_batches=1, export_final_adapter=False, **loop_kwargs)
    module = EmulatorAlignmentModule(views_for(algorithm), kl_weight=0.0, lr=1e-2)
    data = data or ToyFederatedData(num_clients=4, examples=(8, 8, 16, 12), vocab=VOCAB)
    server_trainer(tmp_path, loop).fit(module, datamodule=data)
    return loop, module


def grouped_data():
    return ToyGroupedData(({"a": 6, "b": 2}, {"a": 2, "b": 6}, {"a": 8, "b": 8}, {"a": 6, "b": 6}), vocab=VOCAB)


# ---------------------------------------------------------------- equivalences
def test_one_group_one_intra_round_full_depth_is_fedavg_lora_bit_for_bit(tmp_path):
    _, flat = fit_loop("fedavg_lora", tmp_path / "flat")
    one_group = HierFedLoRA(num_groups=1, grouping="random", depth=LAYERS, intra_rounds=1, max_intra_rounds=1)
    loop, hier = fit_loop(one_group, tmp_path / "hier")
    a, b = flat.split.lora_state("all"), hier.split.lora_state("all")
    assert all(torch.equal(a[key], b[key]) for key in a)
    start = views_for(FedAvgLoRA()).lora_state("all")
    assert max((a[k] - start[k]).abs().max().item() for k in a) > 1e-3  # both trained
    assert loop.history[1]["groups"][0]["members"] == [0, 1, 2, 3]


def test_two_groups_with_one_intra_round_at_full_depth_average_to_flat_fedavg(tmp_path):
    # one round: float32 sums in another order differ by rounding only (a second round would amplify it)
    _, flat = fit_loop("fedavg_lora", tmp_path / "flat", rounds=1)
    two = HierFedLoRA(num_groups=2, grouping="random", depth=LAYERS, intra_rounds=1, max_intra_rounds=1)
    loop, hier = fit_loop(two, tmp_path / "hier", rounds=1)
    a, b = flat.split.lora_state("all"), hier.split.lora_state("all")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)
    assert sorted(len(g["members"]) for g in loop.history[0]["groups"]) == [2, 2]


def test_intra_group_rounds_use_their_own_data_order():
    data = ToyFederatedData(num_clients=2, examples=(8, 8), vocab=VOCAB)
    run, _ = runner(HierFedLoRA(num_groups=1, grouping="random", depth=2, intra_rounds=3, max_intra_rounds=4), data)
    run.run_round(1)
    # round t, intra-group round k: the clients' loaders and seeds of round t * K_max + k
    assert data.requested == [(0, 4), (1, 4), (0, 5), (1, 5), (0, 6), (1, 6)]


# ---------------------------------------------------------------- depth
def test_a_trained_depth_trains_and_uploads_only_the_top_layers():
    views = views_for(HierFedLoRA())
    with views.trained_depth(2):
        views.set_trainable("adapter")
        trained = {layer_of(k) for k, p in views.lora_parameters("all").items() if p.requires_grad}
        assert trained == {3, 4}
        assert sum(p.numel() for p in views.lora_parameters("adapter").values()) == 2 * LORA_PER_LAYER == 3584
    assert len({layer_of(k) for k in views.lora_parameters("adapter")}) == LAYERS  # outside: every layer again
    with pytest.raises(ConfigError, match=r"depth must be an integer in \[1, 5\].*got 6"):
        with views.trained_depth(6):
            pass


def test_layers_below_every_groups_depth_never_change():
    data = ToyFederatedData(num_clients=4, examples=(8, 8, 16, 12), vocab=VOCAB)
    run, views = runner(HierFedLoRA(num_groups=2, grouping="random", depth=[2, 1], intra_rounds=[1, 2]), data)
    before = views.lora_state("all")
    run.run_round(0)
    after = views.lora_state("all")
    assert all(torch.equal(before[k], after[k]) for k in before if layer_of(k) < 3)
    assert any(not torch.equal(before[k], after[k]) for k in before if layer_of(k) == 3)


def test_layerwise_fedavg_averages_each_layer_over_the_groups_that_trained_it():
    # L = 3; group A (n = 1, depth 1) holds layer 3 = 1; group B (n = 3, depth 3) holds layers 1..3 = 2
    glob = {f"l{i}": torch.full((2,), 9.0) for i in (1, 2, 3, 4)}  # l4: trained by no group
    a = {"l3": torch.ones(2)}
    b = {f"l{i}": torch.full((2,), 2.0) for i in (1, 2, 3)}
    out = layerwise_fedavg(glob, [a, b], [1.0, 3.0])
    assert torch.equal(out["l3"], torch.full((2,), 1.75))  # (1 + 6) / 4
    assert torch.equal(out["l1"], torch.full((2,), 2.0)) and torch.equal(out["l2"], torch.full((2,), 2.0))
    assert torch.equal(out["l4"], torch.full((2,), 9.0))
    # two levels = flat FedAvg for K = 1: {1 (n=1), 5 (n=3)} -> 4 (n=4); {2 (n=2)} -> 2; cloud 10/3
    g1, g2 = {"w": torch.tensor([4.0])}, {"w": torch.tensor([2.0])}
    cloud = layerwise_fedavg({"w": torch.zeros(1)}, [g1, g2], [4, 2])["w"].item()
    assert cloud == pytest.approx((1 + 15 + 4) / 6, rel=1e-7)  # float32 rounding only
    with pytest.raises(ValueError, match="not in the global state"):
        layerwise_fedavg(glob, [{"zz": torch.ones(2)}], [1.0])


# ---------------------------------------------------------------- the ledger at both levels
def test_the_ledger_counts_device_edge_and_edge_cloud_traffic_as_the_formula_says():
    data = ToyFederatedData(num_clients=4, examples=(8, 8, 16, 12), vocab=VOCAB)
    run, _ = runner(HierFedLoRA(num_groups=2, grouping="random", depth=[2, 1], intra_rounds=[1, 2]), data)
    first = run.run_round(0).metrics
    # round 0: every device first fetches all 5 layers. Group A (depth 2, K 1): down 5, up 2 layers;
    # group B (depth 1, K 2): down 5 + 1, up 1 + 1; two devices each.
    assert first["comm/bytes_down"] == LAYER_BYTES * (2 * 5 + 2 * 6)
    assert first["comm/bytes_up"] == LAYER_BYTES * (2 * 2 + 2 * 2)
    assert first["comm/cloud_bytes_down"] == LAYER_BYTES * (5 + 5) and first["comm/cloud_bytes_up"] == LAYER_BYTES * 3
    second = run.run_round(1).metrics
    # later rounds fetch the layers changed in the last round (the top 2): the spec's plan figures
    assert second["comm/bytes_down"] + second["comm/bytes_up"] == 129_024
    assert second["comm/cloud_bytes_up"] == 21_504 and second["comm/cloud_bytes_down"] == 28_672
    assert run.ledger.cloud_bytes_up == 2 * 21_504


# ---------------------------------------------------------------- the simulated clock
def test_the_clock_charges_the_slowest_member_per_intra_round_and_the_slowest_group_per_round():
    data = ToyGroupedData(({"a": 4}, {"a": 4}, {"a": 4}, {"a": 4}), vocab=VOCAB)
    hier = HierFedLoRA(num_groups=2, grouping="random", depth=[2, 1], intra_rounds=[1, 2])
    run, _ = runner(hier, data, fleet=one_tier(), local_steps=2)
    costs, speed, bandwidth = run.fleet.costs, 1e-3 * 1e12, 1e6 / 8
    # stories260K: a step is batch 4 x length 12 tokens; one device, depth d, tau = 2 steps
    assert costs.tokens_per_step == 4 * 12

    def exchange(down_layers, depth):
        return (down_layers + depth) * LAYER_BYTES / bandwidth + 2 * costs.step_flops(depth) / speed

    edge = 8e6 / 8
    a = exchange(5, 2) + (5 + 2) * LAYER_BYTES / edge
    b = exchange(5, 1) + exchange(1, 1) + (5 + 1) * LAYER_BYTES / edge
    metrics = run.run_round(0).metrics
    assert metrics["sim/round_seconds"] == pytest.approx(max(a, b), rel=1e-12)
    assert metrics["sim/idle_fraction"] == pytest.approx(1 - (a + b) / 2 / max(a, b), rel=1e-9)
    second = run.run_round(1).metrics
    assert second["sim/seconds"] == pytest.approx(metrics["sim/round_seconds"] + second["sim/round_seconds"])


def test_flat_fedavg_gets_a_time_axis_on_the_same_fleet():
    data = ToyGroupedData(({"a": 4}, {"a": 4}), vocab=VOCAB)
    run, _ = runner("fedavg_lora", data, fleet=one_tier(), local_steps=2)
    costs, first = run.fleet.costs, run.run_round(0).metrics
    # every device: all 5 layers down and up, 2 steps at full depth
    expected = 10 * LAYER_BYTES / (1e6 / 8) + 2 * costs.step_flops(LAYERS) / 1e9
    assert first["sim/round_seconds"] == pytest.approx(expected, rel=1e-12)
    assert "comm/cloud_bytes_up" not in first


def test_a_device_short_of_memory_never_gets_a_depth_it_cannot_hold():
    data = ToyGroupedData(tuple({"a": 4} for _ in range(4)), vocab=VOCAB)
    probe, _ = runner("fedavg_lora", data, fleet=one_tier())
    costs = probe.fleet.costs
    between = (costs.memory(2) + costs.memory(3)) / 2 / 2**30  # holds depth 2, not 3
    fleet = {**one_tier(), "tiers": [
        {"name": "small", "share": 0.5, "tflops": 1e-3, "mem_gib": between, "up_mbps": 1.0, "down_mbps": 1.0},
        {"name": "big", "share": 0.5, "tflops": 1e-3, "mem_gib": 1.0, "up_mbps": 1.0, "down_mbps": 1.0}]}
    run, _ = runner(HierFedLoRA(num_groups=4, grouping="random", budget_factor=100.0), data, fleet=fleet)
    groups = run.algorithm.groups(0, [0, 1, 2, 3], run.fleet)
    small = set(run.fleet.short_of_memory(3))
    assert len(small) == 2
    for group in groups:
        assert group.depth == (2 if set(group.members) & small else LAYERS)


# ---------------------------------------------------------------- resume and bad input
def test_a_resumed_hierarchical_run_ends_like_an_uninterrupted_one(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def fit(folder, rounds, ckpt_path=None):
        algorithm = HierFedLoRA(num_groups=2, max_intra_rounds=2, budget_factor=1.5)
        loop = FederatedLoop(algorithm=algorithm, rounds=rounds, local_steps=1, client_accumulate_grad_batches=1,
                             client_lr=1e-2, export_final_adapter=False,
                             devices={**one_tier(), "jitter": 0.3, "seed": 3})
        module = EmulatorAlignmentModule(views_for(algorithm), kl_weight=0.0, lr=1e-2)
        checkpoint = ModelCheckpoint(dirpath=folder, filename="round-{epoch}", save_last=True, save_top_k=-1)
        trainer = server_trainer(folder, loop, callbacks=[checkpoint], enable_checkpointing=True, max_epochs=rounds)
        trainer.fit(module, datamodule=grouped_data(), ckpt_path=ckpt_path)
        return loop, module

    straight = fit(tmp_path / "straight", 3)
    fit(tmp_path / "cut", 1)
    resumed = fit(tmp_path / "cut", 3, ckpt_path=tmp_path / "cut" / "last.ckpt")
    assert resumed[0].ledger.state_dict() == straight[0].ledger.state_dict()
    assert resumed[0].algorithm.groups_ == straight[0].algorithm.groups_
    assert resumed[0].runner.fleet.clock.state_dict() == straight[0].runner.fleet.clock.state_dict()
    assert [e.get("groups") for e in resumed[0].history] == [e.get("groups") for e in straight[0].history]
    a, b = straight[1].split.lora_state("all"), resumed[1].split.lora_state("all")
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_impossible_settings_fail_at_start_up_naming_the_field_and_the_fix(tmp_path):
    with pytest.raises(ConfigError) as info:
        FederatedLoop(algorithm=HierFedLoRA(num_groups=0, depth="deep", priority="speed"), devices=None)
    text = str(info.value)
    assert "num_groups must be an integer >= 1, got 0" in text and "depth must be 'auto'" in text
    assert "priority must be one of" in text
    with pytest.raises(ConfigError, match="set federated.devices"):
        FederatedLoop(algorithm=HierFedLoRA())  # auto depth needs device profiles
    with pytest.raises(ConfigError, match=r"tiers\[0\].*up_mbps"):
        bad = one_tier()
        del bad["tiers"][0]["up_mbps"]
        FederatedLoop(algorithm=HierFedLoRA(), devices=bad)
    with pytest.raises(ConfigError, match="num_groups=5 exceeds the 4 devices"):
        fit_loop(HierFedLoRA(num_groups=5, grouping="random", depth=1, intra_rounds=1), tmp_path / "a")
    with pytest.raises(ConfigError, match=r"depth 6 exceeds the model's 5 decoder layers"):
        fit_loop(HierFedLoRA(num_groups=2, grouping="random", depth=6, intra_rounds=1), tmp_path / "b")
    with pytest.raises(ConfigError, match="budget_seconds"):
        fit_loop(HierFedLoRA(num_groups=2, budget_seconds=1e-9), tmp_path / "c", data=grouped_data(),
                 devices=one_tier())


def test_time_to_target_is_the_simulated_clock_when_the_metric_first_reaches_the_target(tmp_path):
    from fedbiot_pl.callbacks import TimeToTarget

    reached, never = TimeToTarget("round/client_loss", target=1e9), TimeToTarget("round/client_loss", target=-1.0)
    algorithm = HierFedLoRA(num_groups=2, depth=2, intra_rounds=1)
    loop = FederatedLoop(algorithm=algorithm, rounds=2, local_steps=1, client_accumulate_grad_batches=1,
                         export_final_adapter=False, devices=one_tier())
    module = EmulatorAlignmentModule(views_for(algorithm), kl_weight=0.0, lr=1e-2)
    server_trainer(tmp_path, loop, callbacks=[reached, never]).fit(module, datamodule=grouped_data())
    first = loop.history[0]["sim/seconds"]
    assert 0 < first < loop.history[1]["sim/seconds"]
    assert reached.seconds == first and reached.round == 0  # reached at the first round's end, not later
    assert never.seconds is None and never.state_dict() == {"seconds": None, "round": None}
    with pytest.raises(ConfigError, match="reads the simulated clock"):
        plain = FederatedLoop(algorithm="fedavg_lora", rounds=1, local_steps=1, export_final_adapter=False)
        server_trainer(tmp_path / "b", plain, callbacks=[TimeToTarget()]).fit(
            EmulatorAlignmentModule(views_for(FedAvgLoRA()), kl_weight=0.0), datamodule=grouped_data())


def _two_rank_round(rank: int, port: int, out: str) -> None:
    import os

    from fedbiot_pl.federation.ledger import CommLedger
    from fedbiot_pl.federation.transport import InProcessTransport

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    algorithm = HierFedLoRA(num_groups=2, grouping="random", depth=[2, 1], intra_rounds=[1, 2])
    views = views_for(algorithm)
    data = ToyFederatedData(num_clients=4, examples=(8, 8, 16, 12), vocab=VOCAB)
    fit = ClientFitSettings(local_steps=2, accumulate_grad_batches=1)
    clients = LocalClients(algorithm, views, algorithm.client_module(views, ClientOptim(lr=2e-2)), data, fit,
                           world_size=2)
    run = RoundRunner(algorithm, views, data, clients, RoundSettings(),
                      transport=InProcessTransport(CommLedger(), rank, 2))
    run.run_round(0)
    torch.save(views.lora_state("all"), f"{out}.{rank}")
    torch.distributed.destroy_process_group()


def test_two_ranks_sharing_the_devices_end_with_the_one_process_lora(tmp_path):
    port = free_port()
    out = str(tmp_path / "lora")
    torch.multiprocessing.spawn(_two_rank_round, args=(port, out), nprocs=2, join=True)
    data = ToyFederatedData(num_clients=4, examples=(8, 8, 16, 12), vocab=VOCAB)
    run, views = runner(HierFedLoRA(num_groups=2, grouping="random", depth=[2, 1], intra_rounds=[1, 2]), data)
    run.run_round(0)
    expected = views.lora_state("all")
    for rank in range(2):
        got = torch.load(f"{out}.{rank}")
        assert all(torch.equal(got[key], expected[key]) for key in expected), rank


# ---------------------------------------------------------------- faults, sampling, data checks
def drop_in(run, monkeypatch, dropped):
    """Clients in ``dropped`` (pairs of client, client round) fail their fit."""
    from fedbiot_pl.federation.transport import ClientReply

    real = run.clients.run

    def run_client(client_id, broadcast, round_idx, attempt=0):
        if (client_id, round_idx) in dropped:
            return ClientReply(client_id, float("nan"), b"", "fit raised RuntimeError: injected")
        return real(client_id, broadcast, round_idx=round_idx, attempt=attempt)

    monkeypatch.setattr(run.clients, "run", run_client)


def test_a_device_dropped_in_its_last_intra_round_leaves_its_group_and_the_count(monkeypatch):
    data = ToyFederatedData(num_clients=4, examples=(8, 8, 16, 12), vocab=VOCAB)
    hier = HierFedLoRA(num_groups=2, grouping="random", group_sizes=[2, 2], depth=2, intra_rounds=2,
                       max_intra_rounds=2)
    run, views = runner(hier, data)
    a, b = hier.groups(0, [0, 1, 2, 3], None)
    victim = b.members[1]
    drop_in(run, monkeypatch, {(victim, 1)})  # round 0, intra-group round 1
    result = run.run_round(0)
    assert result.metrics["round/clients"] == 3.0 and result.metrics["round/dropped"] == 1.0
    examples = {g["group"]: g["examples"] for g in result.entry["groups"]}
    assert examples == {a.index: sum(data.examples[d] for d in a.members), b.index: data.examples[b.members[0]]}


def test_a_group_with_no_accepted_upload_keeps_the_global_lora_and_a_retry_starts_from_it(monkeypatch):
    data = ToyFederatedData(num_clients=4, examples=(8, 8, 16, 12), vocab=VOCAB)
    hier = HierFedLoRA(num_groups=2, grouping="random", depth=[5, 1], intra_rounds=1)
    run, views = runner(hier, data, min_clients=3, on_too_few="retry", max_round_retries=1)
    deep, shallow = hier.groups(0, [0, 1, 2, 3], None)
    before = views.lora_state("all")
    # attempt 1: the deep group's devices fail -> 2 accepted < 3: retried; attempt 2: all fine
    drop_in(run, monkeypatch, {(d, 0) for d in deep.members})
    calls = []
    real = run.transport.exchange
    monkeypatch.setattr(run.transport, "exchange", lambda c, b, f: calls.append(list(c)) or real(c, b, f))
    with pytest.raises(Exception, match="fewer than federated.min_clients=3"):
        run.run_round(0)
    assert calls == [list(deep.members), list(shallow.members)] * 2
    after = views.lora_state("all")
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing applied, the global LoRA restored
    # with min_clients 1 the shallow group alone moves its one layer; the deep group's layers keep their value
    run.settings = RoundSettings(min_clients=1)
    run.run_round(0)
    after = views.lora_state("all")
    assert all(torch.equal(before[k], after[k]) for k in before if layer_of(k) < 4)
    assert any(not torch.equal(before[k], after[k]) for k in before if layer_of(k) == 4)


def test_with_clients_per_round_only_the_sampled_devices_train_in_their_groups():
    data = ToyFederatedData(num_clients=4, examples=(8, 8, 16, 12), vocab=VOCAB)
    hier = HierFedLoRA(num_groups=2, grouping="random", depth=2, intra_rounds=1)
    run, _ = runner(hier, data, clients_per_round=2, seed=5)
    result = run.run_round(0)
    sampled = result.entry["clients"]
    assert len(sampled) == 2
    assert sorted(m for g in result.entry["groups"] for m in g["members"]) == sorted(sampled)
    assert sorted(c for c, _ in data.requested) == sorted(sampled)


def test_greedy_grouping_without_category_counts_is_refused_at_set_up(tmp_path):
    with pytest.raises(ConfigError, match="set data.partition_key .* or use grouping: random"):
        fit_loop(HierFedLoRA(num_groups=2, depth=1, intra_rounds=1), tmp_path)  # ToyFederatedData: no report


def test_time_to_target_reads_the_round_metrics_whatever_the_callback_order(tmp_path):
    from fedbiot_pl.callbacks import TimeToTarget

    reached = TimeToTarget("round/client_loss", target=1e9)
    algorithm = HierFedLoRA(num_groups=2, depth=2, intra_rounds=1)
    loop = FederatedLoop(algorithm=algorithm, rounds=2, local_steps=1, client_accumulate_grad_batches=1,
                         export_final_adapter=False, devices=one_tier())
    module = EmulatorAlignmentModule(views_for(algorithm), kl_weight=0.0, lr=1e-2)
    trainer = server_trainer(tmp_path, reached, callbacks=[loop])  # TimeToTarget listed first
    trainer.fit(module, datamodule=grouped_data())
    assert reached.round == 0 and reached.seconds == loop.history[0]["sim/seconds"]
    assert len(loop.history) == 2 and trainer.current_epoch == 2  # every callback's set-up ran (rounds = 2)
