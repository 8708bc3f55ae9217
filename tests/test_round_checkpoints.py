"""Round checkpoints are counted and named by federated round (pre-alignment epochs not counted), record their
round and validation loss, and `train.py evaluate --ckpt best` picks the round with the lowest recorded loss."""

import csv
import json
import re
import warnings

import pytest
import torch
import yaml

from fedbiot_pl.artifacts.round_selection import ROUND_KEY, select_best_round
from fedbiot_pl.callbacks import RoundCheckpoint
from fedbiot_pl.cli import DEFAULT_CONFIG, main, read_config
from fedbiot_pl.errors import ConfigError
from fedbiot_pl.evaluate import main as evaluate

PRE, ROUNDS, EVERY = 2, 4, 2  # epochs 0-1 pre-align, epochs 2-5 are rounds 1-4: round checkpoints after 2 and 4
RUN = f"""
trainer: {{enable_progress_bar: false, enable_model_summary: false, accumulate_grad_batches: 1}}
federated: {{rounds: {ROUNDS}, pre_alignment_rounds: {PRE}, local_steps: 1, align_steps: 1,
            client_accumulate_grad_batches: 1}}
data: {{task_path: "embedded:data/alpaca/alpaca_sample.json", max_task_examples: 12, max_public_examples: 6,
       batch_size: 2, max_length: 160, num_clients: 2, val_fraction: 0.25}}
checkpoint: {{every_n_rounds: {EVERY}}}
"""
OLD_CHECKPOINT_BLOCK = """
checkpoint: {dirpath: null, filename: 'round-{epoch}', monitor: null, verbose: false, save_last: true, save_top_k: -1,
             save_on_exception: false, save_weights_only: false, mode: min, auto_insert_metric_name: true,
             every_n_train_steps: null, train_time_interval: null, every_n_epochs: 1, save_on_train_epoch_end: null,
             enable_version_counter: false}
"""


# no validation loop: ClientValidation alone measures, after round 4 only (round 2 has no loss of its own)
CLIENT_VALIDATION_ONLY = """
trainer:
  limit_val_batches: 0
  callbacks: [{class_path: fedbiot_pl.callbacks.ClientValidation, init_args: {every_n_rounds: 4, variants: [adapemu]}}]
"""


def fit(root, *overlays):
    root.mkdir(parents=True, exist_ok=True)
    configs = []
    for index, text in enumerate((RUN, *overlays)):
        (root / f"run{index}.yaml").write_text(text)
        configs += ["--config", str(root / f"run{index}.yaml")]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main(["fit", "--config", str(DEFAULT_CONFIG), *configs,
              "--trainer.default_root_dir", str(root), "--trainer.logger.init_args.save_dir", str(root)])
    finally:
        torch.set_num_threads(threads)
    return root / "fedbiot" / "version_0"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return fit(tmp_path_factory.mktemp("rounds"))


def loop_state(checkpoint):
    return next(v for k, v in checkpoint["callbacks"].items() if k.startswith("FederatedLoop"))


@pytest.mark.slow
def test_round_checkpoints_are_named_and_counted_by_round_after_pre_alignment(run):
    folder = run / "checkpoints"
    assert sorted(p.name for p in folder.glob("*.ckpt")) == ["last.ckpt", "round-0002.ckpt", "round-0004.ckpt"]
    for path in folder.glob("round-*.ckpt"):
        number = int(re.fullmatch(r"round-(\d{4})\.ckpt", path.name).group(1))
        checkpoint = torch.load(path, weights_only=True)
        assert checkpoint[ROUND_KEY]["round"] == number  # the stored round is the name's
        assert checkpoint["epoch"] == PRE + number - 1  # written when round `number` (counted from 1) ended
        state = loop_state(checkpoint)
        assert state["epoch"] == PRE + number - 1 and state["history"][-1]["round"] == number - 1  # loop: from 0
        losses = checkpoint[ROUND_KEY]["validation"]
        assert set(losses) == {"val/adapfu_loss", "val/adapemu_loss"} and all(v > 0 for v in losses.values())
    last = torch.load(folder / "last.ckpt", weights_only=True)
    assert last[ROUND_KEY]["round"] == ROUNDS and last["epoch"] == PRE + ROUNDS - 1


@pytest.mark.slow
def test_evaluate_best_picks_the_round_with_the_lowest_recorded_validation_loss(run, capsys):
    # the losses each round checkpoint recorded are the ones the run logged for that round's epoch
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    logged = {int(r["epoch"]) - PRE + 1: float(r["val/adapfu_loss"]) for r in rows if r.get("val/adapfu_loss")}
    selection = select_best_round(run)
    assert {s.round: s.loss for s in selection.scores} == pytest.approx({2: logged[2], 4: logged[4]})
    expected = min((logged[2], 2), (logged[4], 4))[1]
    assert selection.best.round == expected and selection.metric == "val/adapfu_loss"

    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--run", str(run), "--ckpt", "best", "--task", "gsm8k", "--limit", "1", "--shots", "0",
              "--max-new-tokens", "4", "--variants", "adapemu"])
    assert exit_info.value.code == 0
    err = capsys.readouterr().err
    assert f"* round {expected:>6}" in err and "round-0002.ckpt" in err and "round-0004.ckpt" in err
    report = json.loads((run / "eval" / "gsm8k.metrics.json").read_text())
    assert report["checkpoint"].endswith(f"round-{expected:04d}.ckpt")
    assert report["selection"]["round"] == expected
    assert report["selection"]["scores"] == pytest.approx({"2": logged[2], "4": logged[4]})


@pytest.mark.slow
def test_a_round_records_client_validation_of_that_round_and_never_an_earlier_loss(tmp_path):
    run = fit(tmp_path, CLIENT_VALIDATION_ONLY)
    measured = json.loads((run / "client_validation.json").read_text())
    assert [entry["round"] for entry in measured] == [3]  # ClientValidation counts from 0: round 4
    records = {n: torch.load(run / "checkpoints" / f"round-{n:04d}.ckpt", weights_only=True)[ROUND_KEY]
               for n in (2, 4)}
    assert records[2] == {"round": 2, "validation": {}}
    assert records[4] == {"round": 4, "validation": {"val/adapemu_loss": measured[0]["adapemu_loss"]}}
    selection = select_best_round(run, "adapemu")
    assert selection.best.round == 4 and [s.loss for s in selection.scores] == [None, measured[0]["adapemu_loss"]]


def fake_run(tmp_path, losses):
    """Round checkpoints with hand-chosen recorded losses (``None``: that round was not validated)."""
    folder = tmp_path / "checkpoints"
    folder.mkdir(parents=True)
    for number, loss in losses.items():
        validation = {} if loss is None else {"val/adapfu_loss": loss, "val/adapemu_loss": 10 - loss}
        record = {"epoch": number, ROUND_KEY: {"round": number, "validation": validation}}
        torch.save(record, folder / f"round-{number:04d}.ckpt")
    torch.save({"epoch": 9, ROUND_KEY: {"round": 9, "validation": {"val/adapfu_loss": 0.0}}}, folder / "last.ckpt")
    torch.save({"epoch": 0}, folder / "other.ckpt")  # no round record: not a round checkpoint
    return tmp_path


def test_selection_is_the_argmin_of_the_recorded_losses(tmp_path):
    run = fake_run(tmp_path, {100: 2.0, 200: 1.5, 300: None, 400: 1.7, 500: 1.5})
    selection = select_best_round(run)
    assert selection.best.round == 200  # 1.5 at rounds 200 and 500: the earlier; last.ckpt is not a round
    assert [(s.round, s.loss) for s in selection.scores] == [(100, 2.0), (200, 1.5), (300, None), (400, 1.7),
                                                            (500, 1.5)]
    assert select_best_round(run, "adapemu").best.round == 100  # 10 - loss: the highest adapfu loss
    assert "* round    200" in selection.table() and "not validated" in selection.table()
    assert selection.as_dict()["scores"]["300"] is None


def test_selection_skips_what_it_cannot_read_and_prefers_a_rewritten_round(tmp_path):
    import os

    run = fake_run(tmp_path, {1: 2.0, 2: 1.5})
    folder = run / "checkpoints"
    (folder / "round-0003.ckpt").mkdir()  # a DeepSpeed checkpoint folder
    (folder / "round-0004.ckpt").write_bytes(b"not a checkpoint")
    record = {"epoch": 2, ROUND_KEY: {"round": 2, "validation": {"val/adapfu_loss": 3.0}}}
    torch.save(record, folder / "round-0002-v1.ckpt")
    os.utime(folder / "round-0002-v1.ckpt", (2e9, 2e9))  # written after round-0002.ckpt, by a resume
    with pytest.warns(UserWarning, match="--ckpt best leaves out round-0003.ckpt: a DeepSpeed checkpoint folder"):
        selection = select_best_round(run)
    assert [(s.round, s.loss, s.path.name) for s in selection.scores] == [
        (1, 2.0, "round-0001.ckpt"), (2, 3.0, "round-0002-v1.ckpt")]
    assert selection.best.round == 1
    config = yaml.safe_load(DEFAULT_CONFIG.read_text()) or {}
    config["checkpoint"] = {"dirpath": str(folder)}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.warns(UserWarning, match="leaves out round-0004.ckpt: .*it cannot be read"):
        assert select_best_round(elsewhere).best.round == 1  # checkpoint.dirpath of the run's config


def test_selection_errors_name_the_fix(tmp_path, capsys):
    with pytest.raises(ConfigError, match="holds no round checkpoint"):
        select_best_round(tmp_path)
    unvalidated = fake_run(tmp_path / "a", {1: None, 2: None})
    with pytest.raises(ConfigError, match="records a finite val/adapfu_loss.*data.val_fraction > 0.*ClientValidation"):
        select_best_round(unvalidated)
    folder = fake_run(tmp_path / "b", {1: None}) / "checkpoints"
    torch.save({"epoch": 2, ROUND_KEY: {"round": 2, "validation": {"val/adapemu_loss": 1.0}}},
               folder / "round-0002.ckpt")
    with pytest.raises(ConfigError, match="they record val/adapemu_loss: pick by another variant with --select-by"):
        select_best_round(folder.parent)
    (tmp_path / "config.yaml").write_text(DEFAULT_CONFIG.read_text())
    assert evaluate(["--run", str(tmp_path), "--ckpt", "best"]) == 2
    assert "holds no round checkpoint" in capsys.readouterr().err


def test_every_n_epochs_is_a_deprecated_alias_and_step_triggers_are_refused():
    with pytest.warns(FutureWarning, match="every_n_epochs is deprecated: use checkpoint.every_n_rounds"):
        assert RoundCheckpoint(every_n_epochs=100).every_n_rounds == 100
    with pytest.raises(ConfigError, match=r"every_n_epochs=100 \(deprecated\) and checkpoint.every_n_rounds=50 differ"):
        RoundCheckpoint(every_n_rounds=50, every_n_epochs=100)
    with pytest.raises(ConfigError, match="every_n_train_steps and train_time_interval are not supported"):
        RoundCheckpoint(every_n_train_steps=10)
    with pytest.raises(ConfigError, match="save_on_exception=True would write a half-trained round"):
        RoundCheckpoint(save_on_exception=True)
    with pytest.raises(ConfigError, match="save_last='link' would leave last.ckpt pointing at an older round"):
        RoundCheckpoint(save_last="link")
    assert RoundCheckpoint().every_n_rounds == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        checkpoint = RoundCheckpoint()
    assert checkpoint.format_checkpoint_name({"round": torch.tensor(100)}).endswith("round-0100.ckpt")


def test_a_run_config_written_before_the_rename_still_parses(tmp_path):
    (tmp_path / "old.yaml").write_text(OLD_CHECKPOINT_BLOCK)  # what config.yaml held: ModelCheckpoint's keys
    config = read_config([DEFAULT_CONFIG, tmp_path / "old.yaml"])
    assert config.checkpoint.every_n_epochs == 1 and config.checkpoint.filename == "round-{epoch}"
    assert read_config([DEFAULT_CONFIG]).checkpoint.every_n_rounds == 1
