"""HELM's metrics on hand-made strings with hand-computed values, its example sampling, downsampling and prompts."""

from __future__ import annotations

import pytest

from fedbiot_pl.evaluation.helm import downsample, helm_prompt, sample_examples
from fedbiot_pl.evaluation.helm_formats import Instance
from fedbiot_pl.evaluation.helm_metrics import (
    HelmScores,
    exact_match,
    f1_score,
    first_piece,
    joint_prediction,
    normalize_text,
    prefix_exact_match,
    quasi_exact_match,
    quasi_prefix_exact_match,
    reference_scores,
)
from fedbiot_pl.evaluation.metrics import token_f1
from fedbiot_pl.evaluation.tasks import eval_task

# --- metrics -------------------------------------------------------------------------------------------------


def test_normalize_text_and_exact_matches_on_hand_made_strings():
    assert normalize_text("The  Cat!") == "cat" and normalize_text("An apple, a day.") == "apple day"
    assert quasi_exact_match("cat", "The Cat!") == 1.0 and exact_match("cat", "The Cat!") == 0.0
    assert exact_match("Paris", " Paris\n") == 1.0 and exact_match("Paris", "paris") == 0.0
    assert prefix_exact_match("Yes", "Yes, it is") == 1.0 and exact_match("Yes", "Yes, it is") == 0.0
    assert quasi_prefix_exact_match("yes", "YES! of course") == 1.0 and prefix_exact_match("yes", "YES!") == 0.0
    # an empty prediction scores 0 on every metric, even against an empty gold text
    assert [f("", "") for f in (exact_match, quasi_exact_match, prefix_exact_match, f1_score)] == [0.0] * 4


def test_f1_is_over_sets_of_normalised_words():
    # {b, c, d} against {x, b, c}: 2 shared, P = R = 2/3, F1 = 2/3
    assert f1_score("b c d", "x b c") == pytest.approx(2 / 3)
    # "a" is an article and is dropped: {b, c} against {b, c, d}: P = 1, R = 2/3, F1 = 2 * 2/3 / (5/3) = 0.8
    assert f1_score("b c d", "a b c") == pytest.approx(0.8)
    # sets, not SQuAD's counts: {cat} against {cat, sat}: P = 1, R = 1/2, F1 = 2/3; SQuAD: P = 1/3, R = 1/2, F1 = 0.4
    assert f1_score("the cat sat", "cat cat cat") == pytest.approx(2 / 3)
    assert token_f1("cat cat cat", "the cat sat") == pytest.approx(0.4)
    assert f1_score("b c", "d e") == 0.0 and f1_score("the", "cat") == 0.0


def test_scores_take_the_best_reference_and_map_a_choice_letter():
    scores = reference_scores(" Plum cake ", ["A plum cake", "Plum cake"], ["exact_match", "quasi_exact_match",
                                                                         "f1_score"])
    assert scores == {"exact_match": 1.0, "quasi_exact_match": 1.0, "f1_score": 1.0}  # the second reference
    assert reference_scores("plum", ["A plum cake", "Cake"], ["exact_match", "f1_score"]) == {
        "exact_match": 0.0, "f1_score": pytest.approx(2 / 3)}  # {plum} against {plum, cake}
    choices = ["Anabolism", "Catabolism", "Tolerance", "Homeostasis"]
    assert [first_piece(c) for c in (" D. Homeostasis", "B)", "(A)", "  ", "Cat")] == ["D", "B", "(", "", "Cat"]
    assert joint_prediction(" D. Homeostasis", choices) == "Homeostasis"
    assert joint_prediction("E", choices) == "" and joint_prediction("d", choices) == ""  # no such letter
    assert joint_prediction("Cat", choices) == ""  # one token of HELM would be "Cat", not a letter
    assert eval_task("helm").score({"method": "multiple_choice_joint", "references": choices, "correct": [3],
                                    "metrics": ["exact_match", "quasi_exact_match"]}, "D") == {
        "exact_match": 1.0, "quasi_exact_match": 1.0}


def test_helm_scores_average_runs_in_a_group_then_groups():
    em, f1 = ("exact_match", "quasi_exact_match"), ("exact_match", "quasi_exact_match", "f1_score")
    metric = HelmScores([("mmlu:a", "mmlu", em, "exact_match"), ("mmlu:b", "mmlu", em, "exact_match"),
                         ("quac", "quac", f1, "f1_score"), ("boolq", "boolq", em, "quasi_exact_match")])
    metric.update(["mmlu:a", "mmlu:a", "mmlu:b", "quac"],
                  [{"exact_match": 1.0, "quasi_exact_match": 1.0}, {"exact_match": 0.0, "quasi_exact_match": 0.0},
                   {"exact_match": 0.0, "quasi_exact_match": 1.0},
                   {"exact_match": 0.0, "quasi_exact_match": 0.0, "f1_score": 0.5}])
    out = {name: float(value) for name, value in metric.compute().items()}
    # mmlu: mean of the runs' means: EM (1/2 + 0) / 2 = 1/4, QEM (1/2 + 1) / 2 = 3/4; boolq has no instance
    assert out == {"mmlu/exact_match": 0.25, "mmlu/quasi_exact_match": 0.75, "quac/exact_match": 0.0,
                   "quac/quasi_exact_match": 0.0, "quac/f1_score": 0.5, "mean/main": (0.25 + 0.5) / 2,
                   "mean/exact_match": 0.125, "mean/quasi_exact_match": 0.375}
    with pytest.raises(ValueError, match="Unknown run 'nq'"):
        metric.update(["nq"], [{}])


# --- HELM's adaptation -------------------------------------------------------------------------------------------


def test_sampling_spreads_examples_over_answers_and_downsampling_is_helms():
    train = [Instance(f"q{i}", (answer,), (0,), "train") for i, answer in enumerate(["Yes", "Yes", "No", "Yes"])]
    picked = sample_examples(train, 2, seed=0)
    assert sorted(i.references[0] for i in picked) == ["No", "Yes"]  # the commonest answer, then the next one
    assert picked[0].references == ("Yes",)
    assert sorted(i.input for i in sample_examples(train, 9, seed=3)) == ["q0", "q1", "q2", "q3"]
    assert sample_examples(train, 2, seed=5) == sample_examples(train, 2, seed=5)
    instances = [Instance(f"q{i}", ("a",), (0,), "valid") for i in range(5)]
    # np.random.seed(0); np.random.choice(5 instances, 3, replace=False) picks positions 2, 0, 1
    assert [i.input for i in downsample(instances, 3)] == ["q2", "q0", "q1"]
    assert downsample(instances, 5) == instances


def test_prompts_are_helms_generation_and_joint_formats():
    example = Instance("Sky\nQuestion: Is it blue?", ("Yes",), (0,), "train")
    row = {"input": "Grass\nQuestion: Is it red?", "references": ["No"], "correct": [0], "split": "valid",
           "method": "generation", "instructions": "", "input_prefix": "Passage: "}
    assert helm_prompt(row, []) == "Passage: Grass\nQuestion: Is it red?\nAnswer:"
    assert helm_prompt(row, [example]) == ("Passage: Sky\nQuestion: Is it blue?\nAnswer: Yes\n\n"
                                           "Passage: Grass\nQuestion: Is it red?\nAnswer:")
    mc = {"input": "2+2?", "references": ["3", "4"], "correct": [1], "split": "test", "method": "multiple_choice_joint",
          "instructions": "The following are multiple choice questions (with answers) about math.",
          "input_prefix": "Question: "}
    shot = Instance("1+1?", ("2", "5"), (0,), "train")
    assert helm_prompt(mc, [shot]) == ("The following are multiple choice questions (with answers) about math.\n\n"
                                       "Question: 1+1?\nA. 2\nB. 5\nAnswer: A\n\n"
                                       "Question: 2+2?\nA. 3\nB. 4\nAnswer:")
