"""torchmetrics metrics: hand-computed values, and merged states equal one metric that saw everything."""

from __future__ import annotations

import pytest
import torch
from torchmetrics import Metric

from fedbiot_pl.evaluation.metrics import (
    ExactMatch,
    GSM8KAccuracy,
    MultipleChoiceAccuracy,
    PassAtK,
    RougeL,
    TokenF1,
    normalize_answer,
    rouge_l,
    token_f1,
)
from fedbiot_pl.evaluation.sandbox import Limits

ADD = {
    "prompt": "def add(a, b):\n",
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n",
    "entry_point": "add",
}
NEG = {
    "prompt": "def neg(x):\n",
    "test": "def check(candidate):\n    assert candidate(4) == -4\n",
    "entry_point": "neg",
}
PROBLEMS = {"t/add": ADD, "t/neg": NEG}
# t/add: 3 samples, 2 pass; t/neg: 2 samples, 1 passes.
SAMPLES = [
    ("t/add", "    return a + b\n"), ("t/add", "    return a - b\n"), ("t/add", "    return b + a\n"),
    ("t/neg", "    return x\n"), ("t/neg", "    return -x\n"),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("The  Cat, sat!", "cat sat"), ("An apple a day", "apple day"), ("  theory  ", "theory"), ("", "")],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("the cat sat", "a cat sat down", 0.8),  # P = 2/2, R = 2/3
        ("cat cat", "cat", 2 / 3),  # overlap counts min(2, 1) = 1: P = 1/2, R = 1
        ("dog", "cat", 0.0),
        ("", "", 1.0),
        ("the", "cat", 0.0),  # the prediction normalises to nothing
    ],
)
def test_token_f1(prediction: str, reference: str, expected: float) -> None:
    assert token_f1(prediction, reference) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("the cat sat on the mat", "the cat is on the mat", 5 / 6),  # LCS "the cat on the mat"
        ("a b c d", "a c b d", 0.75),  # LCS 3 of 4 and 4
        ("a b", "a b c d e f", 0.5),  # P = 1, R = 1/3
        ("Hello, World!", "hello world", 1.0),  # punctuation separates, case ignored
        ("x y z", "a b c", 0.0),
        ("", "a", 0.0),
    ],
)
def test_rouge_l(prediction: str, reference: str, expected: float) -> None:
    assert rouge_l(prediction, reference) == pytest.approx(expected)


def test_rouge_l_equals_torchmetrics_rouge_score() -> None:
    from torchmetrics.text import ROUGEScore

    pairs = [("The quick brown fox jumps.", "A quick brown dog jumps over the fox"),
             ("It's 3 p.m. in New-York", "it is 3 pm in new york"), ("same words here", "same words here")]
    reference = ROUGEScore(rouge_keys="rougeL")
    for prediction, target in pairs:
        expected = reference([prediction], [target])["rougeL_fmeasure"].item()
        assert rouge_l(prediction, target) == pytest.approx(expected, abs=1e-6), (prediction, target)


def test_text_metrics_take_the_best_reference() -> None:
    em, f1, rouge = ExactMatch(), TokenF1(), RougeL()
    predictions, references = ["The Cat", "dog", "a"], [["kitty", "cat"], "Dog!", "b"]
    for metric in (em, f1, rouge):
        metric.update(predictions, references)
    assert em.compute().item() == pytest.approx(2 / 3)  # "a" normalises to "" != "b"
    assert f1.compute().item() == pytest.approx(2 / 3)
    assert rouge.compute().item() == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)  # "the cat" vs "cat": P 1/2, R 1


def test_gsm8k_accuracy() -> None:
    outputs = ["The answer is 18.", "I think 5", "The answer is 18.0", "nothing"]
    golds = ["Janet ... #### 18", "5", "#### 18", "#### 3"]
    exact, numeric = GSM8KAccuracy(), GSM8KAccuracy(numeric=True)
    exact.update(outputs, golds)
    numeric.update(outputs, golds)
    assert exact.compute().item() == pytest.approx(0.5)
    assert numeric.compute().item() == pytest.approx(0.75)
    cut, uncut = GSM8KAccuracy(), GSM8KAccuracy(cut_next_turn=False)
    for metric in (cut, uncut):  # the answer 7 has no trigger; the invented next turn ends with 2
        metric.update(["3 + 4 = 7\n\n### Instruction:\nAnd 1 + 1?\n\n### Response: 2"], ["#### 7"])
    assert (cut.compute().item(), uncut.compute().item()) == (1.0, 0.0)
    with pytest.raises(ValueError, match="Reference 1: .*'no gold'"):
        exact.update(["1", "2"], ["#### 1", "no gold"])
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        exact.update(["1", "2"], ["#### 1"])


def test_multiple_choice_accuracy() -> None:
    metric = MultipleChoiceAccuracy()
    scores = torch.tensor([[0.1, 0.9, 0.0], [2.0, 1.0, 3.0], [0.5, 0.5, 0.1]])
    metric.update(scores, torch.tensor([1, 0, 0]))  # right, wrong, tie -> first choice: right
    assert metric.compute().item() == pytest.approx(2 / 3)
    metric.update([[-3.0, -1.0], [-1.0, -2.0, -0.5, -9.0]], [1, 3])  # ragged lists: right, wrong
    assert metric.compute().item() == pytest.approx(3 / 5)


def test_multiple_choice_rejects_bad_answers() -> None:
    metric = MultipleChoiceAccuracy()
    with pytest.raises(ValueError, match=r"question\(s\) \[1\].*answers \[2\].*choices \[2\]"):
        metric.update([[0.0, 1.0, 2.0], [0.0, 1.0]], [0, 2])
    with pytest.raises(ValueError, match=r"\(B, C\)"):
        metric.update(torch.zeros(3), torch.zeros(3))


def test_pass_at_k_executes_and_estimates() -> None:
    metric = PassAtK(["t/add", "t/neg", "t/unused"], k=(1, 2, 3), limits=Limits(timeout_s=5), workers=2)
    task_ids, completions = zip(*SAMPLES, strict=True)
    metric.update(list(task_ids), list(completions), PROBLEMS)
    assert metric.num_samples.tolist() == [3, 2, 0] and metric.num_correct.tolist() == [2, 1, 0]
    assert [r.status for r in metric.last_results] == ["passed", "failed", "passed", "failed", "passed"]
    with pytest.warns(UserWarning, match="pass@3 left out"):
        scores = metric.compute()
    assert set(scores) == {"pass@1", "pass@2"}
    assert scores["pass@1"].item() == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert scores["pass@2"].item() == pytest.approx(1.0)


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric PassAtK was called before")
def test_pass_at_k_bad_input() -> None:
    metric = PassAtK(["t/add"])
    with pytest.raises(ValueError, match="before any update"):
        metric.compute()
    with pytest.raises(ValueError, match=r"Unknown task ids \['t/zzz'\]"):
        metric.update(["t/zzz"], ["pass"], PROBLEMS)
    with pytest.raises(ValueError, match=r"No problem given for task ids \['t/add'\]"):
        metric.update(["t/add"], ["pass"], {"t/neg": NEG})
    with pytest.raises(ValueError, match="1 task_ids but 2 completions"):
        metric.update(["t/add"], ["pass", "pass"], [ADD])
    with pytest.raises(ValueError, match="unique"):
        PassAtK(["a", "a"])


def merged_equals_single(make: type[Metric] | object, first: tuple, second: tuple) -> None:
    """Update two metrics on halves and merge them; compare with one metric updated on both halves."""
    whole, left, right = make(), make(), make()
    whole.update(*first)
    whole.update(*second)
    left.update(*first)
    right.update(*second)
    left.merge_state(right)
    expected, got = whole.compute(), left.compute()
    if isinstance(expected, dict):
        assert expected.keys() == got.keys()
        expected, got = torch.stack(list(expected.values())), torch.stack(list(got.values()))
    torch.testing.assert_close(got, expected)
    assert all(isinstance(state, torch.Tensor) for state in left.metric_state.values())


def test_merged_states_equal_one_update() -> None:
    merged_equals_single(GSM8KAccuracy, (["The answer is 1", "2"], ["#### 1", "#### 3"]), (["7"], ["7"]))
    merged_equals_single(ExactMatch, (["a cat", "dog"], ["cat", "cow"]), (["x"], ["x"]))
    merged_equals_single(TokenF1, (["a cat sat", "dog"], ["cat", "cow"]), (["x y"], ["x"]))
    merged_equals_single(RougeL, (["a b c d"], ["a c b d"]), (["x y", "z"], ["x", "z"]))
    merged_equals_single(MultipleChoiceAccuracy, (torch.tensor([[0.0, 1.0]]), [1]), ([[2.0, 1.0, 0.0]], [2]))
    task_ids, completions = zip(*SAMPLES, strict=True)
    merged_equals_single(
        lambda: PassAtK(list(PROBLEMS), k=(1, 2), workers=2),
        (list(task_ids[:2]), list(completions[:2]), PROBLEMS),
        (list(task_ids[2:]), list(completions[2:]), [PROBLEMS[t] for t in task_ids[2:]]),
    )
