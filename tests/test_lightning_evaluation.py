"""Lightning's own entry points on the server module: ``validate`` (validation loss of AdapFu and
AdapEmu) and ``test`` (the evaluation task of ``train.py evaluate``), from the CLI and from Python."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

from fedbiot_pl.artifacts.run_artifacts import load_run_lora
from fedbiot_pl.assets import resolve
from fedbiot_pl.callbacks import FederatedLoop
from fedbiot_pl.cli import DEFAULT_CONFIG, config_views, main, read_config
from fedbiot_pl.datamodules import FederatedInstructionDataModule
from fedbiot_pl.errors import ConfigError
from fedbiot_pl.evaluate import main as evaluate
from fedbiot_pl.evaluate import run_views
from fedbiot_pl.evaluation.generation import evaluate_split, read_eval_records
from fedbiot_pl.evaluation.metrics import rouge_l
from fedbiot_pl.evaluation.settings import EvaluationSettings
from fedbiot_pl.model.views import ModelViews
from fedbiot_pl.modules import EmulatorAlignmentModule, GenerationSettings
from tests.toy_data import ToyFederatedData, counting_batch

DOLLY = "embedded:data/dolly/dolly_sample.jsonl"

pytestmark = pytest.mark.usefixtures("one_thread")


def cli_args(folder, *extra):
    return ["--config", str(DEFAULT_CONFIG), "--trainer.default_root_dir", str(folder),
            "--trainer.logger.init_args.save_dir", str(folder), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--data.max_task_examples", "15",
            "--data.max_public_examples", "10", "--data.val_fraction", "0.2", *extra]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One pre-alignment epoch and one round of the default recipe on 15 task rows (1 held out per client)."""
    folder = tmp_path_factory.mktemp("fit")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    main(["fit", *cli_args(folder, "--federated.rounds", "1", "--federated.pre_alignment_rounds", "1",
                           "--federated.local_steps", "1",
                           "--federated.align_steps", "1")])
    torch.set_num_threads(threads)
    run = folder / "fedbiot" / "version_0"
    return run, run / "checkpoints" / "last.ckpt"


def loaded_split(run, ckpt=None):
    split = run_views(run)[0].build()
    if ckpt is not None:
        split.load_lora_state(load_run_lora(ckpt))
    return split.eval()


@torch.no_grad()
def hand_ce(model, loader):
    """Mean of -log p(label token) over every label token of every batch, in float64."""
    total, tokens = 0.0, 0
    for batch in loader:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logprobs = torch.log_softmax(logits[:, :-1].double(), dim=-1)
        targets = batch["labels"][:, 1:]
        keep = targets != -100
        total -= float(logprobs.gather(-1, targets.clamp(min=0)[..., None])[..., 0][keep].sum())
        tokens += int(keep.sum())
    return total / tokens


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def metric_rows(folder):
    with open(Path(folder) / "metrics.csv") as file:
        return list(csv.DictReader(file))


def test_validate_reports_the_hand_computed_loss_of_both_variants(run, tmp_path):
    run_dir, ckpt = run
    cli = main(["validate", *cli_args(tmp_path), "--ckpt_path", str(ckpt)])
    got = {name: float(value) for name, value in cli.trainer.callback_metrics.items()}
    loader = cli.datamodule.val_dataloader()
    assert len(loader.dataset) == 3  # one held-out row per client
    trained, untrained = loaded_split(run_dir, ckpt), loaded_split(run_dir)
    expected = {"val/adapfu_loss": hand_ce(trained.full_with_adapter, loader),
                "val/adapemu_loss": hand_ce(trained.compressed, loader)}
    assert got == pytest.approx(expected, rel=1e-6)
    # the checkpoint's LoRA was loaded: the untrained adapter gives another loss
    assert abs(hand_ce(untrained.full_with_adapter, loader) - expected["val/adapfu_loss"]) > 1e-4
    (row,) = [r for r in metric_rows(cli.trainer.log_dir) if r.get("val/adapfu_loss")]
    assert float(row["val/adapemu_loss"]) == pytest.approx(expected["val/adapemu_loss"], rel=1e-6)


def test_fit_validates_after_every_round_without_changing_the_training(run, tmp_path):
    run_dir, ckpt = run
    rows = [r for r in metric_rows(run_dir) if r.get("val/adapfu_loss")]
    assert [r["epoch"] for r in rows] == ["0", "1"]
    # the round's validation saw the model of the round checkpoint
    split, data = loaded_split(run_dir, ckpt), FederatedInstructionDataModule(max_task_examples=15,
                                                                              max_length=512, val_fraction=0.2)
    data.setup("validate")
    expected = hand_ce(split.compressed, data.val_dataloader())
    assert float(rows[-1]["val/adapemu_loss"]) == pytest.approx(expected, rel=1e-6)
    # the same fit without validation ends with the same adapter, bit for bit
    main(["fit", *cli_args(tmp_path, "--federated.rounds", "1", "--federated.pre_alignment_rounds", "1",
                           "--federated.local_steps", "1",
                           "--federated.align_steps", "1", "--trainer.limit_val_batches", "0")])
    without = load_run_lora(tmp_path / "fedbiot" / "version_0" / "checkpoints" / "last.ckpt")
    with_validation = load_run_lora(ckpt)
    assert set(without) == set(with_validation)
    assert all(torch.equal(without[key], with_validation[key]) for key in without)


def test_test_subcommand_gives_the_numbers_of_train_py_evaluate(run, tmp_path):
    run_dir, ckpt = run
    settings = {"max-new-tokens": "24", "temperature": "0.7", "batch-size": "2", "seed": "3", "limit": "4"}
    assert evaluate(["--run", str(run_dir), "--ckpt", str(ckpt), "--task", "dolly", "--data", DOLLY, "--do-sample",
                     *[a for k, v in settings.items() for a in (f"--{k}", v)]]) == 0
    report = json.loads((run_dir / "eval" / "dolly.metrics.json").read_text())["metrics"]
    cli = main(["test", *cli_args(tmp_path), "--ckpt_path", str(ckpt), "--data.evaluation.task", "dolly",
                "--data.evaluation.data", DOLLY, "--data.evaluation.limit", "4", "--data.evaluation.batch_size", "2",
                "--data.evaluation.seed", "3", "--data.evaluation.generation.max_new_tokens", "24",
                "--data.evaluation.generation.do_sample", "true", "--data.evaluation.generation.temperature", "0.7"])
    logged = {name: float(value) for name, value in cli.trainer.callback_metrics.items()}
    assert logged == {f"test/dolly/{v}/{m}": report[v][m] for v in report for m in report[v]}
    assert logged["test/dolly/adapfu/rougeL"] > 0 and logged["test/dolly/adapemu/token_f1"] > 0  # not all zeros
    (row,) = [r for r in metric_rows(cli.trainer.log_dir) if r.get("test/dolly/adapemu/rougeL")]
    assert float(row["test/dolly/adapemu/rougeL"]) == pytest.approx(report["adapemu"]["rougeL"], rel=1e-12)
    references = [r["response"] for r in read_eval_records("dolly", DOLLY, 4)]
    for variant in ("adapfu", "adapemu"):
        ours = read_jsonl(f"{cli.trainer.log_dir}/test-dolly-{variant}.predictions.jsonl")
        theirs = read_jsonl(run_dir / "eval" / f"dolly-{variant}.predictions.jsonl")
        assert ours == theirs and len(ours) == 4  # the same sampled completions
        by_hand = sum(rouge_l(p["completions"][0], ref) for p, ref in zip(ours, references, strict=True)) / 4
        assert logged[f"test/dolly/{variant}/rougeL"] == pytest.approx(by_hand, rel=1e-12)


MC_ROWS = [{"question": "Once upon a time", "choices": ["there was a little girl", "zq xv kk pp"], "answer": 0},
           {"question": "Lily saw a", "choices": ["qq zz xx", "big red ball"], "answer": 1},
           {"question": "Tom had a dog", "choices": ["and he was happy", "zq zq xv"], "answer": 1}]  # wrong on purpose
CODE_ROWS = [{"task_id": "toy/0", "prompt": "def f():\n", "test": "def check(c):\n    assert c() is None\n",
              "entry_point": "f"},
             {"task_id": "toy/1", "prompt": "def g(x):\n", "test": "def check(c):\n    assert c(1) == 2\n",
              "entry_point": "g"}]


@pytest.mark.parametrize("task", ["gsm8k", "mc", "humaneval"])
def test_trainer_test_with_a_round_checkpoint_from_python(run, tmp_path, task):
    run_dir, ckpt = run
    data_file = None
    if task != "gsm8k":
        data_file = tmp_path / f"{task}.jsonl"
        data_file.write_text("".join(json.dumps(row) + "\n" for row in (MC_ROWS if task == "mc" else CODE_ROWS)))
    sampled = task == "humaneval"  # two samples per problem for pass@2
    generation = GenerationSettings(max_new_tokens=8, do_sample=sampled, num_return_sequences=2 if sampled else 1)
    settings = EvaluationSettings(task=task, data=data_file and str(data_file), limit=3, shots=1, batch_size=2,
                                  generation=generation, seed=5, k=[1, 2] if sampled else [1])
    module = EmulatorAlignmentModule(run_views(run_dir)[0], kl_weight=1.0)
    data = FederatedInstructionDataModule(evaluation=settings)
    trainer = L.Trainer(accelerator="cpu", default_root_dir=tmp_path, enable_progress_bar=False,
                        enable_model_summary=False)
    (logged,) = trainer.test(module, datamodule=data, ckpt_path=ckpt)
    tokenizer = AutoTokenizer.from_pretrained(resolve("embedded:models/stories260K"))
    expected = evaluate_split(loaded_split(run_dir, ckpt), tokenizer, task, data.eval_rows, shots=1, batch_size=2,
                              settings=generation, seed=5, ks=settings.k)
    assert logged == {f"test/{task}/{v}/{name}": value
                      for v, m in expected.metrics.items() for name, value in m.items()}
    for variant in ("adapfu", "adapemu"):
        got = read_jsonl(f"{trainer.log_dir}/test-{task}-{variant}.predictions.jsonl")
        assert got == expected.predictions[variant] and len(got) == len(data.eval_rows)
    if task == "mc":  # the story model prefers the fluent choice: right twice, wrong on the third row
        assert logged == {"test/mc/adapfu/accuracy": pytest.approx(2 / 3),
                          "test/mc/adapemu/accuracy": pytest.approx(2 / 3)}


def test_a_checkpoint_of_another_split_is_refused(run, tmp_path):
    run_dir, ckpt = run
    other = EmulatorAlignmentModule(
        config_views(read_config([run_dir / "config.yaml"], ["--model.split.init_args.lora_targets=[q_proj]"])),
        kl_weight=1.0)
    data = FederatedInstructionDataModule(evaluation=EvaluationSettings(limit=1))
    trainer = L.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path, enable_progress_bar=False,
                        enable_model_summary=False)
    with pytest.raises(ConfigError, match=r"does not fit this split \(8 tensors\): 0 missing \[\], 8 not in the split"):
        trainer.test(other, datamodule=data, ckpt_path=ckpt)


def test_validate_without_held_out_rows_names_val_fraction(tmp_path):
    module = EmulatorAlignmentModule(ModelViews("embedded:models/stories260K", adapter_layers=2), kl_weight=1.0)
    data = FederatedInstructionDataModule(max_task_examples=15, max_public_examples=5, max_length=512)
    trainer = L.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path, enable_progress_bar=False,
                        enable_model_summary=False)
    with pytest.raises(ConfigError, match=r"val_fraction=0.0 holds out no validation rows .*data.val_fraction > 0"):
        trainer.validate(module, datamodule=data)


def test_the_evaluate_entry_point_imports_on_its_own():
    # fedbiot_pl.evaluation.generation (imported first by fedbiot-evaluate) and fedbiot_pl.modules import each other
    done = subprocess.run([sys.executable, "-c", "import fedbiot_pl.evaluate"], check=False, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_evaluation_settings_name_each_bad_value():
    with pytest.raises(ConfigError) as error:
        EvaluationSettings(task="dolly", limit=0, variants=["adapfu", "full"], shots=9)
    message = str(error.value)
    for part in ("data=None: task 'dolly' needs an evaluation file", "limit=0", "variants=['adapfu', 'full']",
                 "shots=9"):
        assert part in message
    with pytest.raises(ConfigError, match=r"pass@5 needs generation.num_return_sequences >= 5, got 1"):
        EvaluationSettings(task="humaneval", data="problems.jsonl", k=[1, 5])
    saved = EvaluationSettings(task="mc", data="mc.jsonl", variants=["adapemu"], k=[1, 2])
    assert EvaluationSettings.of(saved.to_dict()) == saved and EvaluationSettings.of(None) == EvaluationSettings()


class ValidatedToyData(ToyFederatedData):
    def val_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(7)
        batch = counting_batch(torch.randint(0, self.vocab, (6,), generator=g), self.length, self.vocab)
        return DataLoader([{k: v[i] for k, v in batch.items()} for i in range(6)], batch_size=4, generator=g)


def test_round_checkpoints_follow_every_round_when_validation_skips_epochs(tmp_path):
    split = ModelViews("embedded:models/stories260K", adapter_layers=2, drop_rate=0.2)
    loop = FederatedLoop(rounds=2, pre_alignment_rounds=1, align_steps=1, local_steps=1,
                         client_accumulate_grad_batches=1)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="round-{epoch}", save_top_k=-1, every_n_epochs=1)
    trainer = L.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path, callbacks=[loop, checkpoint],
                        check_val_every_n_epoch=2, num_sanity_val_steps=0, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(EmulatorAlignmentModule(split, kl_weight=1.0), datamodule=ValidatedToyData(vocab=512))
    for epoch in range(3):  # Lightning alone writes epoch 1 only, at validation end, with the loop's epoch 0
        state = torch.load(tmp_path / f"round-epoch={epoch}.ckpt", weights_only=True)
        assert next(v for k, v in state["callbacks"].items() if k.startswith("FederatedLoop"))["epoch"] == epoch
    assert "val/adapfu_loss" in trainer.callback_metrics
    refused = ModelCheckpoint(dirpath=tmp_path, save_on_train_epoch_end=False)
    trainer = L.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path, callbacks=[loop, refused],
                        enable_progress_bar=False)
    with pytest.raises(ConfigError, match="save_on_train_epoch_end=False"):
        trainer.fit(EmulatorAlignmentModule(split, kl_weight=1.0), datamodule=ValidatedToyData(vocab=512))


@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_a_round_checkpoint_is_evaluated_into_its_run_folder_without_touching_the_runs_files(run, tmp_path, subcommand):
    import shutil

    run_dir, _ = run
    copy = tmp_path / "fedbiot" / "version_0"
    shutil.copytree(run_dir, copy)
    (tmp_path / "fedbiot" / "version_1").mkdir()  # a newer run: the checkpoint's folder still wins
    files = {name: (copy / name).read_bytes() for name in ("metrics.csv", "config.yaml", "hparams.yaml")}
    extra = ["--data.evaluation.limit", "1", "--data.evaluation.shots", "0",
             "--data.evaluation.generation.max_new_tokens", "4"] if subcommand == "test" else []
    cli = main([subcommand, *cli_args(tmp_path), "--ckpt_path", str(copy / "checkpoints" / "last.ckpt"), *extra])
    assert Path(cli.trainer.log_dir) == copy / "eval" / f"{subcommand}-last"
    assert {name: (copy / name).read_bytes() for name in files} == files  # the run's own records are untouched
    assert sorted(p.name for p in (tmp_path / "fedbiot").iterdir()) == ["version_0", "version_1"]  # no new run
    (row,) = metric_rows(cli.trainer.log_dir)
    prefix = "val/" if subcommand == "validate" else "test/"
    assert any(key.startswith(prefix) and value for key, value in row.items())
