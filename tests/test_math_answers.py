"""GSM8K answer extraction and matching (the FedBiOT / FederatedScope ``clean_answer`` protocol)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedbiot_pl.evaluation.math_answers import extract_gold, extract_prediction, is_correct

GSM8K_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("The answer is 18.", "18"),
        ("Janet sells 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = $18.\nThe answer is 18.", "18"),
        ("The answer is 18. Later she earns 20.", "18"),  # first number after the trigger
        ("She sold 7 pies, then 9 more", "9"),  # no trigger: last number
        ("THE ANSWER IS 42", "42"),  # case-insensitive
        ("He has 1,000 apples.", "1000"),  # commas removed
        ("It costs $18.", "18"),  # trailing '.' dropped
        ("The answer is: $1,234.56.", "1234.56"),
        ("The temperature fell to -5 degrees", "-5"),
        ("x = 3.5", "3.5"),
        ("The answer is 18.0", "18.0"),  # kept as written; exact match will not accept it for 18
        ("5-3=2", "2"),  # '-3' is a number of its own
        ("no number at all", None),
        ("The answer is unknown.", None),
        # Only the span up to a second trigger counts, as in the reference's split()[1].
        ("the answer is x. the answer is 5", None),
        ("", None),
    ],
)
def test_extract_prediction(output: str, expected: str | None) -> None:
    assert extract_prediction(output) == expected


@pytest.mark.parametrize(
    ("solution", "expected"),
    [
        ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", "72"),
        ("... = 40,000 dollars\n#### 40,000", "40000"),
        ("#### -4", "-4"),
        ("####7", "7"),
        ("72", "72"),
        ("  1,200 ", "1200"),
        ("-3.5", "-3.5"),
    ],
)
def test_extract_gold(solution: str, expected: str) -> None:
    assert extract_gold(solution) == expected


@pytest.mark.parametrize("solution", ["no gold here", "", "#### none"])
def test_extract_gold_rejects_text_without_a_number(solution: str) -> None:
    with pytest.raises(ValueError, match="has no '#### <number>' line"):
        extract_gold(solution)


@pytest.mark.parametrize(
    ("output", "gold", "exact", "numeric"),
    [
        ("The answer is 18.", "#### 18", True, True),
        ("The answer is 18.0", "#### 18", False, True),
        ("The answer is 018", "#### 18", False, True),
        ("The answer is 1,000", "#### 1,000", True, True),
        ("The answer is 17", "#### 18", False, False),
        ("no number", "#### 18", False, False),
        ("The answer is 18. Or maybe 20.", "20", False, False),
    ],
)
def test_is_correct(output: str, gold: str, exact: bool, numeric: bool) -> None:
    assert is_correct(output, gold) is exact
    assert is_correct(output, gold, numeric=True) is numeric


@pytest.mark.skipif(not GSM8K_TEST.exists(), reason=f"{GSM8K_TEST} not present")
def test_training_style_solutions_score_all_of_gsm8k_test() -> None:
    """A solution whose '####' became 'The answer is' (the training format) extracts its own gold answer."""
    records = [json.loads(line) for line in GSM8K_TEST.read_text().splitlines()]
    assert len(records) == 1319
    wrong = [r["answer"] for r in records if not is_correct(r["answer"].replace("####", "The answer is"), r["answer"])]
    assert wrong == []
    assert extract_gold(records[0]["answer"]) == "18"
