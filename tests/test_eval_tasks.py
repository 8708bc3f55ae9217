"""The evaluation-task registry: the built-in tasks, unknown names, and a user-registered task scored end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from torchmetrics import Metric

from fedbiot_pl.errors import ConfigError
from fedbiot_pl.evaluation import generation
from fedbiot_pl.evaluation.metrics import ExactMatch, normalize_answer
from fedbiot_pl.evaluation.prompts import qa_prompt
from fedbiot_pl.evaluation.settings import EvaluationSettings
from fedbiot_pl.evaluation.tasks import EVAL_TASKS, EvalTask, eval_task, register_task, unregister_task
from fedbiot_pl.score import main as score_main

BUILT_IN = ["gsm8k", "humaneval", "dolly", "mc"]


class ExactAnswer(EvalTask):
    """A toy task: the first line of the completion must be the answer (SQuAD exact match)."""

    name = "toy-exact"
    fields = ("q", "a")
    reference_field = "a"
    match_field = "q"

    def prompt(self, row: dict[str, Any], index: int = 0, shots: int = 8, seed: int = 0) -> str:
        """Question and answer cue."""
        return f"Q: {row['q']}\nA:"

    def clean(self, completion: str) -> str:
        """The first line."""
        return completion.strip().split("\n")[0]

    def metrics(self, rows: Sequence[dict[str, Any]], ks: Sequence[int] = (1,), timeout: float = 10.0,
                workers: int | None = 2) -> dict[str, Metric]:
        """``exact_match``."""
        return {"exact_match": ExactMatch()}


ROWS = [{"q": "Capital of France?", "a": "Paris"}, {"q": "2+2?", "a": "4"}, {"q": "Sky colour?", "a": "blue"}]
PREDICTIONS = ["Paris.", "five", "The blue"]  # "paris" == "paris"; "five" != "4"; "blue" == "blue" (article dropped)


@pytest.fixture
def toy() -> Iterator[EvalTask]:
    task = register_task(ExactAnswer())
    yield task
    unregister_task(task.name)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_the_registry_lists_the_four_built_in_tasks():
    assert list(EVAL_TASKS)[:4] == BUILT_IN
    assert all(eval_task(name).name == name for name in BUILT_IN)
    assert [name for name in BUILT_IN if eval_task(name).uses_pass_at_k] == ["humaneval"]
    assert [name for name in BUILT_IN if not eval_task(name).generates] == ["mc"]
    assert {name: generation.DEFAULT_DATA[name] for name in BUILT_IN if name in generation.DEFAULT_DATA} == {
        "gsm8k": "embedded:data/gsm8k/test_sample.jsonl"}
    assert generation.DEFAULT_DATA["humanevalx"] == "embedded:data/humanevalx/humanevalx_sample.jsonl"
    with pytest.raises(TypeError):
        EVAL_TASKS["x"] = ExactAnswer()  # type: ignore[index]  # read-only: register_task adds


def test_an_unknown_task_names_itself_and_the_choices(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown evaluation task 'mmlu': choose one of gsm8k, humaneval, dolly, mc"):
        eval_task("mmlu")
    with pytest.raises(ConfigError, match="'mmlu'"):
        generation.read_eval_records("mmlu", str(write_jsonl(tmp_path / "rows.jsonl", ROWS)))
    with pytest.raises(ConfigError, match=r"task='mmlu': must be one of gsm8k, humaneval, dolly, mc\b"):
        EvaluationSettings(task="mmlu", data="rows.jsonl")


def test_registering_refuses_a_taken_name_or_a_non_task(toy):
    with pytest.raises(ConfigError, match="'toy-exact' is already registered"):
        register_task(ExactAnswer())
    assert register_task(ExactAnswer(), replace=True) is not toy
    with pytest.raises(ConfigError, match="takes an EvalTask instance"):
        register_task("gsm8k")  # type: ignore[arg-type]
    nameless = EvalTask()
    with pytest.raises(ConfigError, match="name must be a non-empty string"):
        register_task(nameless)


def test_a_registered_task_is_scored_through_generation_and_the_score_command(toy, tmp_path, capsys):
    # generation's path: rows -> prompts -> cleaned completions -> metrics -> records
    rows_file = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    rows = generation.read_eval_records("toy-exact", str(rows_file))
    assert rows == ROWS
    assert generation.build_prompts("toy-exact", rows) == ["Q: Capital of France?\nA:", "Q: 2+2?\nA:",
                                                           "Q: Sky colour?\nA:"]
    raw = [" Paris.\nQ: next", "five", "The blue\n\n"]
    cleaned = [[generation.postprocess("toy-exact", c)] for c in raw]
    assert cleaned == [[p] for p in PREDICTIONS]
    assert generation.score("toy-exact", rows, cleaned) == {"exact_match": pytest.approx(2 / 3)}
    metrics = generation.task_metrics("toy-exact", rows)
    generation.update_task_metrics("toy-exact", metrics, rows[:2], cleaned[:2])
    assert generation.compute_task_metrics(metrics) == {"exact_match": pytest.approx(1 / 2)}
    assert generation.prediction_record("toy-exact", 0, rows[0], "Q", ["Paris."], [raw[0]]) == {
        "index": 0, "prompt": "Q", "completions": ["Paris."], "raw": [raw[0]]}
    with pytest.raises(ValueError, match=r"bad.jsonl: row 2 lacks the string field\(s\) \['a'\] that toy-exact"):
        generation.read_eval_records("toy-exact", str(write_jsonl(tmp_path / "bad.jsonl", [ROWS[0], {"q": "?"}])))
    # the settings of trainer.test take it by name
    assert EvaluationSettings(task="toy-exact", data=str(rows_file)).data_path == str(rows_file)
    with pytest.raises(ConfigError, match="data=None: task 'toy-exact' needs an evaluation file"):
        EvaluationSettings(task="toy-exact")
    # the score command's path: a predictions file with the gold field, then one matched to references
    with_gold = write_jsonl(tmp_path / "gold.jsonl",
                            [{"prediction": p, "a": r["a"]} for p, r in zip(PREDICTIONS, ROWS, strict=True)])
    assert score_main(["--task", "toy-exact", "--predictions", str(with_gold), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"task": "toy-exact", "samples": 3,
                                                   "exact_match": pytest.approx(2 / 3)}
    matched = write_jsonl(tmp_path / "matched.jsonl", [{"q": "Sky colour? ", "prediction": "blue"},
                                                       {"id": 1, "prediction": "4"}, {"id": 0, "prediction": "Rome"}])
    assert score_main(["--task", "toy-exact", "--predictions", str(matched), "--references", str(rows_file),
                       "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["exact_match"] == pytest.approx(2 / 3)


def test_a_registered_task_runs_through_evaluate_split(toy):
    import torch
    from transformers import AutoTokenizer

    from fedbiot_pl.assets import resolve
    from fedbiot_pl.model.views import ModelViews
    from fedbiot_pl.modules import GenerationSettings

    split = ModelViews("embedded:models/stories260K", adapter_layers=2, drop_rate=0.2).build()
    tokenizer = AutoTokenizer.from_pretrained(resolve("embedded:models/stories260K"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = generation.evaluate_split(split, tokenizer, "toy-exact", ROWS[:2], ["adapemu"],
                                           GenerationSettings(max_new_tokens=4), batch_size=2)
    finally:
        torch.set_num_threads(threads)
    assert result.task == "toy-exact" and set(result.metrics["adapemu"]) == {"exact_match"}
    records = result.predictions["adapemu"]
    assert [r["prompt"] for r in records] == ["Q: Capital of France?\nA:", "Q: 2+2?\nA:"]
    assert all(r["completions"] == [toy.clean(r["raw"][0])] for r in records)
    expected = sum(float(normalize_answer(r["completions"][0]) == normalize_answer(row["a"]))
                   for r, row in zip(records, ROWS[:2], strict=True)) / 2
    assert result.metrics["adapemu"]["exact_match"] == pytest.approx(expected)


def test_gsm8k_reference_cleaning_and_score_of_a_hand_made_row():
    task = eval_task("gsm8k")
    row = {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = 7\n#### 7"}
    assert task.reference(row) == "3 + 4 = 7\n#### 7"
    # the whole completion is kept; each metric decides where the answer ends
    assert task.clean(" 3 + 4 = 7. The answer is 7.\n\n### Instruction:\nMore?") == (
        "3 + 4 = 7. The answer is 7.\n\n### Instruction:\nMore?")
    assert task.prompt(row, shots=0).endswith(f"### Instruction:\n{row['question']}\n\n### Response:")
    assert task.score_rows([row, row], [["The answer is 7."], ["The answer is 8."]]) == {
        "accuracy": 0.5, "accuracy_uncut": 0.5}
    # no "The answer is": the cut reads 7 (right); the authors' uncut reading takes the invented turn's 2
    invented = "3 + 4 = 7\n\n### Instruction:\nWhat is 1 + 1?\n\n### Response: 2"
    assert task.score_rows([row], [[invented]]) == {"accuracy": 1.0, "accuracy_uncut": 0.0}
    assert task.check_row({"question": "Q"}) == "lacks the string field(s) ['answer'] that gsm8k evaluation needs."
    task.check_reference(row["answer"])
    with pytest.raises(ValueError):
        task.check_reference("seven")
    assert task.record_fields(row) == {}


def test_humaneval_reference_cleaning_and_record_of_a_hand_made_row():
    task = eval_task("humaneval")
    row = {"task_id": "toy/0", "prompt": "def f():\n", "test": "def check(c):\n    assert c() == 1\n",
           "entry_point": "f"}
    assert task.reference(row) is row  # the problem: prompt, test and entry point
    assert task.prompt(row) == "# language: Python\ndef f():\n"
    assert task.clean("    return 1\n\ndef g():\n    pass") == "    return 1"
    record = task.prediction_record(3, row, "P", ["    return 1"], ["    return 1\nprint(f())"])
    assert list(record) == ["index", "task_id", "prompt", "completions", "raw"] and record["task_id"] == "toy/0"
    assert task.check_row({**row, "test": None}) == ("lacks the string field(s) ['test'] that humaneval evaluation "
                                                     "needs.")
    assert set(task.metrics([row], ks=[1, 2])) == {"pass@k"}


def test_dolly_reference_cleaning_and_score_of_a_hand_made_row():
    task = eval_task("dolly")
    row = {"instruction": "Where is the Eiffel Tower?", "context": "A tower in France.", "response": "In Paris."}
    assert task.reference(row) == "In Paris."
    assert task.prompt(row) == qa_prompt("Where is the Eiffel Tower?", "A tower in France.")
    assert task.clean("In Paris.\n### Response: again") == "In Paris."
    # "in paris" against "in paris": every overlap is 1
    assert task.score_rows([row], [["in paris"]]) == {"rougeL": 1.0, "token_f1": 1.0, "exact_match": 1.0}
    # "paris" against "in paris": F1 = ROUGE-L = 2 * (1 * 1/2) / (1 + 1/2) = 2/3, no exact match
    assert task.score_rows([row], [["Paris"]]) == {"rougeL": pytest.approx(2 / 3), "token_f1": pytest.approx(2 / 3),
                                                   "exact_match": 0.0}


def test_mc_reference_choices_and_record_of_a_hand_made_row(tmp_path, capsys):
    task = eval_task("mc")
    row = {"question": "Is the sky green?", "context": "", "choices": ["yes", "no"], "answer": 1}
    assert task.reference(row) == 1 and task.choices(row) == [" yes", " no"]
    assert task.prompt(row) == qa_prompt("Is the sky green?")
    assert task.check_row(row) is None
    assert task.check_row({**row, "choices": ["yes"]}).startswith("needs `choices` (a list of >= 2 strings)")
    assert task.check_row({**row, "answer": 2}).startswith("needs `choices`")
    assert task.choice_record(4, [-3.0, -1.0]) == {"index": 4, "scores": [-3.0, -1.0], "choice": 1}
    assert generation.choice_record(4, [-3.0, -1.0]) == task.choice_record(4, [-3.0, -1.0])
    metrics = task.metrics([row])
    task.update_choices(metrics, row, [-3.0, -1.0])
    task.update_choices(metrics, row, [-1.0, -3.0])
    assert generation.compute_task_metrics(metrics) == {"accuracy": 0.5}
    assert not task.scores_files
    with pytest.raises(SystemExit):
        score_main(["--task", "mc", "--predictions", str(tmp_path / "p.jsonl")])
    assert "invalid choice: 'mc'" in capsys.readouterr().err


def test_evaluation_imports_neither_the_score_command_nor_the_client_trainers():
    code = ("import sys, fedbiot_pl.evaluation.generation, fedbiot_pl.evaluation.settings; print(sorted(m for m in "
            "('fedbiot_pl.score', 'fedbiot_pl.federation.client_trainer') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
