"""The ``helm`` task: the raw-format readers on the packaged samples, bad input, and the task end to end
(scores of a perfect and a wrong model, ``max_eval_instances``, ``evaluate_split``, ``trainer.test``, ``evaluate``).

HELM's metrics, sampling and prompts on hand-made values: ``tests/test_helm_scoring.py``."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from fedbiot_pl.assets import resolve
from fedbiot_pl.errors import ConfigError
from fedbiot_pl.evaluation import generation
from fedbiot_pl.evaluation import helm_formats as formats
from fedbiot_pl.evaluation import helm_qa_formats as qa_formats
from fedbiot_pl.evaluation.helm import suite_rows
from fedbiot_pl.evaluation.settings import EvaluationSettings
from fedbiot_pl.evaluation.tasks import eval_task

SUITE = "embedded:data/helm/suite.jsonl"
SAMPLES = Path(resolve("embedded:data/helm"))
GROUPS = ["boolq", "narrative_qa", "quac", "natural_qa_openbook_longans", "natural_qa_closedbook", "hellaswag",
          "openbookqa", "truthful_qa", "mmlu"]


def write_suite(folder: Path, *entries: dict) -> Path:
    suite = folder / "suite.jsonl"
    suite.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    return suite


# --- readers of the raw formats --------------------------------------------------------------------------------


def test_multiple_choice_and_yes_no_readers_on_the_samples():
    (first, *_) = formats.boolq(SAMPLES / "boolq_dev.jsonl", "valid")
    assert first.input.endswith("\nQuestion: Is mercury the closest planet to the sun?")
    assert (first.references, first.correct) == (("Yes",), (0,))
    *_, gravity = formats.mmlu(SAMPLES / "mmlu_astronomy_test.csv", "test")
    assert gravity.input.startswith("Which force keeps the planets") and gravity.correct == (3,)  # letter D
    assert gravity.references == ("Magnetism", "Friction", "Static electricity", "Gravity")
    (tea, *_) = formats.hellaswag(SAMPLES / "hellaswag_train.jsonl", "train")
    assert tea.input == "Making tea: A man fills a kettle with water and sets it on the stove. When it whistles, he"
    assert formats.openbookqa(SAMPLES / "openbookqa_test.jsonl", "test")[2].correct == (3,)
    truthful = formats.truthful_qa(SAMPLES / "truthfulqa.csv")
    assert [i.split for i in truthful] == ["train"] + ["valid"] * 4  # int(5 * 0.2) = 1 train question
    # incorrect answers then the best, each with a period, rotated left by ord("I") % 3 = 1
    assert truthful[1].references == ("It is green until it meets the air.", "It is dark red.", "It is blue.")
    assert truthful[1].correct == (1,)


def test_open_qa_readers_on_the_samples():
    nq = qa_formats.natural_qa(SAMPLES / "nq_dev.jsonl", "openbook_longans", random.Random(0))
    assert len(nq) == 5 and [i.split for i in nq] == ["train", "valid", "train", "valid", "train"]  # Piano skipped
    everest, honey, _, photosynthesis, _ = nq
    assert everest.references == ("8,849\xa0metres",)  # &nbsp; unescaped, tags dropped
    assert honey.input.startswith("Passage: Honey bees collect nectar") and "<" not in honey.input
    assert photosynthesis.references == ("carbon dioxide", "carbon dioxide (CO2)")  # every short answer, once
    closed = qa_formats.natural_qa(SAMPLES / "nq_dev.jsonl", "closedbook", random.Random(0))
    assert closed[0].input == "How high is mount everest?"
    quac = qa_formats.quac(SAMPLES / "quac_val.json", "valid", random.Random(0))
    wright = quac[1]  # three questions: the third is asked, the second is not shown (as in HELM's code)
    assert wright.input.endswith("Question: When did they fly?\nAnswer: On 17 December 1903\n\n"
                                 "Question: What did they eat that morning?")
    assert "Where?" not in wright.input and wright.input.startswith("Title: Wright brothers\n\nBackground: ")
    assert wright.references == ("CANNOTANSWER", "Not enough information", "Cannot answer", "Do not know")
    stories = qa_formats.narrative_qa(SAMPLES / "narrativeqa_qaps.csv", SAMPLES / "narrativeqa_summaries.csv",
                                      random.Random(0))
    assert [i.split for i in stories] == ["train", "valid", "test"]  # one question per story
    assert all(i.input.endswith("?") and i.correct == (0, 1) for i in stories)
    assert stories[2].input.startswith("Two sisters, Ana and Lu,")


def test_the_nq_reader_takes_helms_cached_instances_too(tmp_path):
    cached = tmp_path / "nq-dev-00.jsonl.gz-instances.jsonl"
    cached.write_text(json.dumps({"title": "T", "document": "D", "question": "who is it", "long_answers": ["L", "M"],
                                  "short_answers": ["Ann", "Bo"]}) + "\n" + json.dumps(
        {"title": "T", "document": "D", "question": "why", "long_answers": [], "short_answers": []}) + "\n")
    (only,) = qa_formats.natural_qa(cached, "openbook_wiki", random.Random(0))
    assert only.split == "train" and only.input == "Title: T\n\nPassage: D\n\nQuestion: Who is it?"
    assert len(only.references) == 1 and only.references[0] in ("Ann", "Bo")  # train: the drawn short answer


# --- bad input -----------------------------------------------------------------------------------------------------


def test_bad_suites_and_raw_files_name_the_value_file_line_and_fix(tmp_path):
    (tmp_path / "dev.jsonl").write_text('{"question": "is it", "passage": "P", "answer": true}\n{"question": "q"}\n')
    (tmp_path / "mmlu_x_test.csv").write_text("Q1,a,b,c,d,A\nQ2,a,b,c,d,F\n")
    boolq = {"scenario": "boolq", "path": "dev.jsonl"}
    cases = [
        ({"scenario": "squad", "path": "dev.jsonl"}, r"suite.jsonl line 1: scenario 'squad' is unknown; use one of "
                                                     r"boolq, narrative_qa, quac"),
        (boolq, r"dev.jsonl line 2: field 'passage' is missing; BoolQ needs a string there"),
        ({"scenario": "mmlu", "path": "mmlu_x_test.csv"},
         r"mmlu_x_test.csv line 2: answer 'F' is not a choice letter; use one of A, B, C, D"),
        ({**boolq, "mode": "closedbook"}, r"line 1: key\(s\) \['mode'\] are not read for boolq; its keys are"),
        ({"scenario": "boolq", "path": "nope.jsonl"}, r"line 1: path file 'nope.jsonl' does not exist .*fix the path"),
        ({"scenario": "natural_qa", "path": "dev.jsonl", "mode": "open"},
         r"line 1: mode 'open' is not a NaturalQuestions mode; use one of closedbook, openbook_longans"),
        ({**boolq, "max_eval_instances": 0}, r"line 1: max_eval_instances=0; it must be an int >= 1 \(default 100\)"),
        ({"scenario": "narrative_qa", "path": "dev.jsonl"}, r"line 1: summaries=None; it must be a file name"),
    ]
    for entry, message in cases:
        with pytest.raises(ConfigError, match=message):
            suite_rows(write_suite(tmp_path, entry))
    with pytest.raises(ConfigError, match=r"line 2: run 'boolq' is already listed at .*line 1"):
        suite_rows(write_suite(tmp_path, boolq, boolq))
    (tmp_path / "dev.jsonl").write_text('{"question": "is it", "passage": "P", "answer": "yes"}\n')
    with pytest.raises(ConfigError, match=r"dev.jsonl line 1: field 'answer' is 'yes'; BoolQ needs true or false"):
        suite_rows(write_suite(tmp_path, boolq))
    (tmp_path / "suite.jsonl").write_text("boolq dev.jsonl\n")
    with pytest.raises(ConfigError, match=r"suite.jsonl line 1: not valid JSON .*one JSON object per line"):
        suite_rows(tmp_path / "suite.jsonl")


# --- the task end to end -------------------------------------------------------------------------------------------


def oracle(row: dict) -> str:
    """A perfect completion: the right letter, or the first correct reference, then a new line."""
    if row["method"] == "multiple_choice_joint":
        letter = "ABCDEFGH"[row["correct"][0]]
        return f" {letter}. {row['references'][row['correct'][0]]}\nQuestion: next"
    return f" {row['references'][row['correct'][0]]}\n\nPassage: more"


def test_the_packaged_suite_through_the_task_with_a_perfect_and_a_wrong_model():
    task = eval_task("helm")
    assert task.default_data == SUITE and generation.DEFAULT_DATA["helm"] == SUITE
    assert EvaluationSettings(task="helm").data_path == SUITE
    rows = generation.read_eval_records("helm", SUITE)
    assert len(rows) == 24 and list(dict.fromkeys(row["group"] for row in rows)) == GROUPS
    prompts = generation.build_prompts("helm", rows, shots=8, seed=0)  # GSM8K's 8 shots: HELM's 5 at most
    assert all(p.endswith("Answer:") for p in prompts)
    assert prompts[0].count("Answer:") == 4  # BoolQ: its 3 train questions, then the instance
    assert generation.build_prompts("helm", rows[:1], shots=0)[0].count("Answer:") == 1
    perfect = generation.score("helm", rows, [[task.clean(oracle(row))] for row in rows])
    assert perfect["mean/main"] == 1.0 and perfect["boolq/quasi_prefix_exact_match"] == 1.0
    assert {name.split("/")[0] for name in perfect} == {*GROUPS, "mean"}
    assert perfect["quac/f1_score"] == 1.0 and "quac/prefix_exact_match" not in perfect
    wrong = generation.score("helm", rows, [["Z"] for _ in rows])
    assert wrong["mean/main"] == 0.0 and wrong["mmlu/exact_match"] == 0.0
    record = task.prediction_record(0, rows[0], prompts[0], ["Yes"], [" Yes\n"])
    assert (record["run"], record["gold"]) == ("boolq", ["Yes"]) and record["id"].startswith("id")
    assert generation.read_eval_records("helm", SUITE, limit=2) == rows[:2]


def sample_suite(folder: Path, **counts: int) -> Path:
    """The packaged suite with absolute paths and other instance counts."""
    lines = [json.loads(line) for line in (SAMPLES / "suite.jsonl").read_text().splitlines()]
    for entry in lines:
        for key in ("path", "train", "summaries"):
            if key in entry:
                entry[key] = str(SAMPLES / entry[key])
        entry.update(counts)
    return write_suite(folder, *lines)


def test_max_eval_instances_caps_each_scenario(tmp_path):
    rows = generation.read_eval_records("helm", str(sample_suite(tmp_path, max_eval_instances=1,
                                                                 max_train_instances=1)))
    assert [row["group"] for row in rows] == GROUPS
    capped, one, bare = (generation.build_prompts("helm", rows, shots=shots) for shots in (8, 1, 0))
    assert capped == one  # max_train_instances=1 caps the 8 shots
    for row, shot, zero in zip(rows, one, bare, strict=True):  # one answered example before the instance
        instance = zero.removeprefix(f"{row['instructions']}\n\n" if row["instructions"] else "")
        assert shot.startswith(zero[: len(zero) - len(instance)]) and shot.endswith("\n" + instance)
        assert len(shot) > len(zero) + 10


@pytest.fixture(scope="module")
def small_suite(tmp_path_factory) -> Path:
    """One instance of each sample scenario, no examples: short prompts for the story model."""
    return sample_suite(tmp_path_factory.mktemp("helm"), max_eval_instances=1, max_train_instances=0)


@pytest.mark.usefixtures("one_thread")
def test_evaluate_split_and_trainer_test_give_the_same_helm_scores(small_suite, tmp_path):
    import lightning as L
    from transformers import AutoTokenizer

    from fedbiot_pl.datamodules import FederatedInstructionDataModule
    from fedbiot_pl.model.views import ModelViews
    from fedbiot_pl.modules import EmulatorAlignmentModule, GenerationSettings

    decoding = GenerationSettings(max_new_tokens=3)
    settings = EvaluationSettings(task="helm", data=str(small_suite), batch_size=4, generation=decoding)
    data = FederatedInstructionDataModule(evaluation=settings)
    module = EmulatorAlignmentModule(ModelViews("embedded:models/stories260K", adapter_layers=2, drop_rate=0.2))
    trainer = L.Trainer(accelerator="cpu", default_root_dir=tmp_path, enable_progress_bar=False,
                        enable_model_summary=False, logger=L.pytorch.loggers.CSVLogger(tmp_path))
    (logged,) = trainer.test(module, datamodule=data)
    rows = data.eval_rows
    assert len(rows) == 9
    tokenizer = AutoTokenizer.from_pretrained(resolve("embedded:models/stories260K"))
    expected = generation.evaluate_split(module.split, tokenizer, "helm", rows, settings=decoding, batch_size=4)
    assert logged == {f"test/helm/{v}/{name}": pytest.approx(value)
                      for v, metrics in expected.metrics.items() for name, value in metrics.items()}
    task = eval_task("helm")
    for variant, metrics in expected.metrics.items():
        records = expected.predictions[variant]
        assert [r["run"] for r in records] == [row["run"] for row in rows]
        by_hand = [task.score(row, r["completions"][0]) for row, r in zip(rows, records, strict=True)]
        main = [scores[row["main"]] for row, scores in zip(rows, by_hand, strict=True)]  # one instance per group
        assert metrics["mean/main"] == pytest.approx(sum(main) / len(main))
        assert metrics["boolq/exact_match"] == by_hand[0]["exact_match"]


@pytest.mark.usefixtures("one_thread")
def test_train_py_evaluate_runs_the_default_suite_and_names_a_bad_one(tmp_path, capsys):
    import shutil

    from safetensors.torch import save_file

    from fedbiot_pl.cli import DEFAULT_CONFIG
    from fedbiot_pl.evaluate import main as evaluate

    shutil.copy(DEFAULT_CONFIG, tmp_path / "config.yaml")  # a run folder of the default recipe
    save_file({}, tmp_path / "untrained.safetensors")  # no LoRA weights: the adapters as initialised
    common = ["--run", str(tmp_path), "--ckpt", str(tmp_path / "untrained.safetensors"), "--task", "helm",
              "--variants", "adapemu", "--max-new-tokens", "2", "--shots", "0"]
    assert evaluate(common) == 0
    report = json.loads((tmp_path / "eval" / "helm.metrics.json").read_text())
    assert report["data"] == SUITE and report["rows"] == 24
    assert {name.split("/")[0] for name in report["metrics"]["adapemu"]} == {*GROUPS, "mean"}
    predictions = (tmp_path / "eval" / "helm-adapemu.predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 24 and json.loads(predictions[-1])["run"].startswith("mmlu:subject=astronomy")
    bad = write_suite(tmp_path, {"scenario": "mmlu", "path": "missing_test.csv"})
    capsys.readouterr()
    assert evaluate([*common, "--data", str(bad)]) == 2
    assert "suite.jsonl line 1: path file 'missing_test.csv' does not exist" in capsys.readouterr().err
