import csv
import json
from pathlib import Path

import pytest
from peft import PeftConfig

from fedbiot_pl.cli import DEFAULT_CONFIG, main

ROOT = Path(__file__).resolve().parents[1]
# configs/eval/*_generation.yaml hold decoding settings for `train.py evaluate --generation`, not run configs
CONFIGS = sorted(p for p in ROOT.glob("configs/**/*.yaml") if not p.name.endswith("_generation.yaml"))


def test_configs_folder_holds_the_default_and_the_paper_recipes():
    names = {p.relative_to(ROOT / "configs").as_posix() for p in CONFIGS}
    assert "default.yaml" in names
    assert {f"llama2-7b/{task}-adpt{k}-beta{b}.yaml" for task in ("gsm8k", "code", "dolly") for k in (2, 4)
            for b in (0.2, 0.5)} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_parses_against_the_cli(config, capsys):
    # configs/algorithms/ and configs/eval/ hold overlays: they go on top of a task recipe
    overlay = config.parent.name in ("algorithms", "eval")
    base = ["--config", str(ROOT / "configs" / "default.yaml")] if overlay else []
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *base, "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "class_path: fedbiot_pl.ModelViews" in printed and "federated:" in printed


def test_cli_defaults_write_atomically_and_resume_in_place(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(DEFAULT_CONFIG), "--print_config"])
    printed = capsys.readouterr().out
    assert "class_path: fedbiot_pl.artifacts.checkpoint_io.AtomicCheckpointIO" in printed
    assert "class_path: fedbiot_pl.artifacts.csv_logger.AtomicCSVLogger" in printed
    assert "enable_version_counter: false" in printed  # a resumed round rewrites round-NNNN.ckpt, no -v1
    assert "filename: round-{round:04d}" in printed and "every_n_rounds: 1" in printed
    for setting in ("min_clients: 1", "on_too_few: stop", "max_round_retries: 2", "client_time_limit: null",
                    "max_update_norm: null"):
        assert setting in printed


def test_unknown_key_is_rejected_by_name(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(DEFAULT_CONFIG), "--federated.roundz", "3"])
    assert exit_info.value.code != 0
    assert "roundz" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_run_writes_metrics_config_checkpoints_and_a_peft_adapter(tmp_path):
    main([
        "fit", "--config", str(DEFAULT_CONFIG),
        "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false",
        "--federated.rounds", "2", "--federated.pre_alignment_rounds", "1", "--federated.local_steps", "2",
        "--federated.align_steps", "1", "--data.max_task_examples", "15", "--data.max_public_examples", "10",
    ])
    run = tmp_path / "fedbiot" / "version_0"
    assert (run / "config.yaml").exists()
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    client_rows = [r for r in rows if r.get("round/client_loss")]
    assert len(client_rows) == 2 and all(float(r["client/0/loss"]) > 0 for r in client_rows)
    assert any(r.get("align/l2") for r in rows) and any(r.get("align/kl") for r in rows)
    assert float(client_rows[0]["comm/bytes_down"]) == 3 * 4 * 1792 * 4  # 3 clients, 4 layers of LoRA, fp32
    checkpoints = {p.name for p in (run / "checkpoints").iterdir()}
    # named by round, counted from 1 after the pre-alignment epoch (which writes only last.ckpt)
    assert sorted(name for name in checkpoints if name.endswith(".ckpt")) == ["last.ckpt", "round-0001.ckpt",
                                                                               "round-0002.ckpt"]
    adapter = PeftConfig.from_pretrained(str(run / "final_adapter" / "adapfu"))
    assert adapter.layers_to_transform == [3, 4] and adapter.r == 8
    split = json.loads((run / "final_adapter" / "split.json").read_text())
    assert split["emulator"] == [0, 2] and split["top_adapter"] == [3, 4]

    # Evaluate the run's last checkpoint with both variants (`python train.py evaluate ...`).
    generation = tmp_path / "generation.yaml"
    generation.write_text("max_new_tokens: 8\ndo_sample: true\ntemperature: 0.8\ntop_p: 0.95\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--run", str(run), "--task", "gsm8k", "--limit", "3", "--generation", str(generation),
              "--shots", "1", "--batch-size", "2"])
    assert exit_info.value.code == 0
    report = json.loads((run / "eval" / "gsm8k.metrics.json").read_text())
    assert report["checkpoint"].endswith("last.ckpt") and report["rows"] == 3
    assert set(report["metrics"]) == {"adapfu", "adapemu"}
    assert all(0.0 <= m["accuracy"] <= 1.0 for m in report["metrics"].values())
    predictions = [json.loads(line) for line in (run / "eval" / "gsm8k-adapemu.predictions.jsonl").open()]
    assert [p["index"] for p in predictions] == [0, 1, 2] and all(len(p["completions"]) == 1 for p in predictions)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--run", "nowhere"], "nowhere/config.yaml does not exist"),
        (["--run", ".", "--variants", "adapfu,full"], "--variants takes adapfu and/or adapemu"),
        (["--run", ".", "--task", "humaneval", "--k", "10", "--data", "x.jsonl"], "pass@10 needs --num-samples >= 10"),
        (["--run", "tests", "--generation", "tests/gen.yaml"], "tests/config.yaml does not exist"),
    ],
)
def test_evaluate_bad_input_exits_2_naming_the_value(args, message, capsys):
    from fedbiot_pl.evaluate import main as evaluate

    assert evaluate(args) == 2
    assert message in capsys.readouterr().err
