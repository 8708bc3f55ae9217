import json

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from fedbiot_pl.callbacks import FederatedLoop
from tests.helpers import LORA_PER_LAYER, SpyFedBiOT, make_module, server_trainer
from tests.toy_data import ToyFederatedData


class RecordingLoop(FederatedLoop):
    """Snapshots the emulator LoRA around every client fit (wrapping the runner's client side)."""

    emulator_changes: list[bool]

    def on_fit_start(self, trainer, pl_module):
        super().on_fit_start(trainer, pl_module)
        clients, split = self.runner.clients, pl_module.split
        run_client = clients.run

        def recorded(*args, **kwargs):
            before = split.lora_state("emulator")
            reply = run_client(*args, **kwargs)
            after = split.lora_state("emulator")
            self.emulator_changes.append(any(not torch.equal(before[k], after[k]) for k in before))
            return reply

        clients.run = recorded


def test_round_trains_clients_aggregates_and_counts_bytes(tmp_path):
    algorithm = SpyFedBiOT()
    calls = algorithm.calls
    loop = RecordingLoop(algorithm=algorithm, rounds=4, pre_alignment_rounds=1, align_steps=2, local_steps=3,
                         client_accumulate_grad_batches=1, client_lr=2e-2, proximal_weight=0.1)
    loop.emulator_changes = []
    module, data = make_module(), ToyFederatedData(vocab=512)
    server_trainer(tmp_path, loop).fit(module, datamodule=data)

    losses = [entry["round/client_loss"] for entry in loop.history]
    assert len(losses) == 4 and losses[-1] < 0.8 * losses[0], losses
    # clients never touch the emulator; every round sampled all 3 clients with its own data order
    assert loop.emulator_changes == [False] * 12
    assert sorted(data.requested) == [(c, r) for c in range(3) for r in range(4)]
    # sample-weighted FedAvg of the uploads, and the global adapter is its result
    assert [weights for _, weights, _ in calls] == [[8, 8, 16]] * 4
    states, _, averaged = calls[-1]
    for key, value in averaged.items():
        torch.testing.assert_close(value, (states[0][key] * 8 + states[1][key] * 8 + states[2][key] * 16) / 32)
    final = module.split.lora_state("adapter")
    assert all(torch.equal(final[k], averaged[k]) for k in final)
    # down: emulator + adapter LoRA (4 layers) to 3 clients; up: adapter LoRA (2 layers) from 3 clients
    assert loop.ledger.bytes_down == 4 * 3 * (4 * LORA_PER_LAYER * 4)
    assert loop.ledger.bytes_up == 4 * 3 * (2 * LORA_PER_LAYER * 4)
    # epochs = pre-alignment + rounds, with align_steps optimizer steps each
    assert module.trainer.current_epoch == 5 and module.trainer.global_step == 5 * 2
    summary = json.loads((tmp_path / "final_adapter" / "federated_summary.json").read_text())
    assert summary["ledger"]["bytes_up"] == loop.ledger.bytes_up
    assert (tmp_path / "final_adapter" / "adapfu" / "adapter_model.safetensors").exists()


def test_fraction_of_clients_per_round(tmp_path):
    loop = FederatedLoop(rounds=3, align_steps=1, local_steps=1, client_accumulate_grad_batches=1,
                         clients_per_round=0.5, seed=3, export_final_adapter=False)
    data = ToyFederatedData(num_clients=4, examples=(4, 4, 4, 4), vocab=512)
    server_trainer(tmp_path, loop).fit(make_module(0.0), datamodule=data)
    assert [len(entry["clients"]) for entry in loop.history] == [2, 2, 2]
    assert [sorted(c for c, r in data.requested if r == i) for i in range(3)] == [e["clients"] for e in loop.history]


def test_resume_from_a_round_checkpoint_runs_only_the_remaining_rounds(tmp_path):
    def run(rounds, ckpt_path=None):
        loop = FederatedLoop(rounds=rounds, align_steps=1, local_steps=2, client_accumulate_grad_batches=1,
                             export_final_adapter=False)
        data = ToyFederatedData(vocab=512)
        checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_epochs=1)
        trainer = server_trainer(tmp_path, loop, callbacks=[checkpoint], enable_checkpointing=True)
        module = make_module()
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
        return loop, data, module

    first, _, module = run(2)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert saved["state_dict"] and all("lora_" in key for key in saved["state_dict"])
    resumed, data, resumed_module = run(3, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert {r for _, r in data.requested} == {2}
    assert resumed.ledger.bytes_down == first.ledger.bytes_down * 3 // 2
    assert [entry["round"] for entry in resumed.history] == [0, 1, 2]


def test_bad_settings_are_reported_together():
    with pytest.raises(ValueError) as info:
        FederatedLoop(rounds=0, local_steps=0, weighting="median")
    message = str(info.value)
    assert "rounds must be an integer >= 1, got 0" in message
    assert "local_steps must be an integer >= 1, got 0" in message
    assert "weighting must be 'examples' or 'uniform', got 'median'" in message


def test_loop_needs_client_data_and_no_max_steps(tmp_path):
    class PublicOnly(L.LightningDataModule):
        def train_dataloader(self):
            return ToyFederatedData(vocab=512).train_dataloader()

    loop = FederatedLoop(rounds=1)
    with pytest.raises(ValueError) as info:
        server_trainer(tmp_path, loop, max_steps=10).fit(make_module(), datamodule=PublicOnly())
    assert "PublicOnly lacks" in str(info.value) and "set trainer.max_steps to -1 (got 10)" in str(info.value)
    with pytest.raises(ValueError, match="the public data has 16 batches, fewer than align_steps x"):
        server_trainer(tmp_path, FederatedLoop(rounds=1, align_steps=17)).fit(
            make_module(), datamodule=ToyFederatedData(vocab=512))
    with pytest.raises(ValueError, match="clients_per_round=5 must be between 1 and num_clients=3"):
        server_trainer(tmp_path, FederatedLoop(rounds=1, clients_per_round=5)).fit(
            make_module(), datamodule=ToyFederatedData(vocab=512))


def test_periodic_evaluation_runs_every_n_rounds(tmp_path):
    from lightning.pytorch.loggers import CSVLogger
    from transformers import AutoTokenizer

    from fedbiot_pl.assets import resolve
    from fedbiot_pl.callbacks import PeriodicEvaluation

    data = ToyFederatedData(vocab=512)
    data.tokenizer = AutoTokenizer.from_pretrained(resolve("embedded:models/stories260K"))
    loop = FederatedLoop(rounds=3, pre_alignment_rounds=1, align_steps=1, local_steps=1,
                         client_accumulate_grad_batches=1, export_final_adapter=False)
    from fedbiot_pl.modules import GenerationSettings

    evaluation = PeriodicEvaluation(every_n_rounds=2, limit=2, generation=GenerationSettings(max_new_tokens=4),
                                    shots=0, variants=["adapemu"])
    trainer = server_trainer(tmp_path, loop, callbacks=[evaluation])
    trainer.loggers = [CSVLogger(tmp_path, name="run")]
    trainer.fit(make_module(), datamodule=data)
    written = sorted(p.name for p in (tmp_path / "run" / "version_0" / "eval").iterdir())
    # rounds 0, 1, 2 after one pre-alignment epoch: after round 1 (every 2nd) and after the last round
    assert written == ["round-1-gsm8k-adapemu.predictions.jsonl", "round-2-gsm8k-adapemu.predictions.jsonl"]
    assert 0.0 <= float(trainer.callback_metrics["eval/gsm8k/adapemu/accuracy"]) <= 1.0


@pytest.mark.parametrize(("val_rows", "limit"), [(0, 0), (6, 1.0)])
def test_no_validation_split_means_no_validation_loop(tmp_path, val_rows, limit):
    # An empty val_dataloader would make Lightning warn "Total length of `list` across ranks is zero".
    data = ToyFederatedData(vocab=512)
    data.num_val_rows = val_rows
    trainer = server_trainer(tmp_path, FederatedLoop(rounds=1, local_steps=1, align_steps=1))
    trainer.fit(make_module(), datamodule=data)
    assert trainer.limit_val_batches == limit
