"""HumanEval-X: the authors' cleaning, CodeGeeX's programs, each toolchain in the sandbox, the task and its presets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from fedbiot_pl.assets import resolve
from fedbiot_pl.cli import read_config
from fedbiot_pl.evaluation import sandbox_languages
from fedbiot_pl.evaluation.humanevalx import clean_completion, cut_at_last_stops, indent_first_line, language_of
from fedbiot_pl.evaluation.humanevalx_task import HumanEvalXPassAtK
from fedbiot_pl.evaluation.presets import HUMANEVALX_EVALUATION, HUMANEVALX_GENERATION, HUMANEVALX_K
from fedbiot_pl.evaluation.sandbox import ExecutionResult
from fedbiot_pl.evaluation.sandbox_languages import (
    check_humanevalx,
    cpp_program,
    go_program,
    missing_toolchain,
    python_program,
)
from fedbiot_pl.evaluation.tasks import eval_task
from fedbiot_pl.modules.generation_module import GenerationSettings
from fedbiot_pl.score import main as score_main

ROOT = Path(__file__).resolve().parents[1]
ROWS = [json.loads(line) for line in Path(resolve(eval_task("humanevalx").default_data)).read_text().splitlines()]
BY_ID = {row["task_id"]: row for row in ROWS}


# ---------------------------------------------------------------- cleaning (pure functions, hand-computed outputs)


@pytest.mark.parametrize(("completion", "expected"), [
    # unindented first line padded to 4; cut before the model's next function
    ("return x + 1\n\ndef helper():\n    pass", "    return x + 1\n"),
    # the LAST "\nif" cuts: the first one stays (the harness drops it later, at the first unindented line)
    ("    a = 1\nif a:\n    b = 2\nif b:\n    pass", "    a = 1\nif a:\n    b = 2"),
    # stop words in turn: "\n#" cuts first, then "\nprint" (now last) cuts again
    ("    return 1\nprint(1)\n# done", "    return 1"),
    # eight spaces become four, as the authors' pad_spaces does
    ("        return 1\n", "    return 1\n"),
    # no-break spaces are deleted first: three spaces left, padded to four
    ("\u00a0   return 1", "    return 1"),
    # "\ndefault" contains "\ndef": a plain substring match, as CodeGeeX's
    ("    x = 1\ndefault = 2", "    x = 1"),
])
def test_python_cleaning_cuts_at_the_last_stop_word_and_indents_the_first_line(completion, expected):
    assert clean_completion(completion, "python") == expected


@pytest.mark.parametrize(("language", "completion", "expected"), [
    # C++: cut at the last "\nint main()"; the function is closed: nothing added
    ("cpp", "    return a+b;\n}\n\nint main(){\n    printf(\"%d\", add(1,2));\n}\n", "    return a+b;\n}\n"),
    # C++: braces balance (the body never closed the prompt's function): close it
    ("cpp", "    return a+b;\n", "    return a+b;\n\n}"),
    # Go: cut at the last "\n//", then "\nfunc main(" is gone already; closed: nothing added
    ("go", "    return a + b\n}\n\n// Main runs it\nfunc main() {\n    fmt.Println(Add(1, 2))\n}\n",
     "    return a + b\n}\n"),
    # Go: the last of two comments cuts; balanced braces get the closing one
    ("go", "    x := 1\n// note\n    return x\n// end", "    x := 1\n// note\n    return x\n}"),
    # Java: cut at the model's own "\npublic class"; method and class closed (2 more "}"): nothing added
    ("java", "        return a + b;\n    }\n}\npublic class Main {\n    public static void main(String[] a) {}\n}",
     "        return a + b;\n    }\n}"),
    # Java: method closed, class not (1 more "}")
    ("java", "        return a + b;\n    }", "        return a + b;\n    }\n}"),
    # Java: neither closed (balanced)
    ("java", "        return a + b;", "        return a + b;\n    }\n}"),
])
def test_compiled_languages_cut_at_their_stop_words_and_close_the_braces(language, completion, expected):
    assert clean_completion(completion, language) == expected


def test_cleaning_helpers_and_unknown_languages():
    assert cut_at_last_stops("a\n//b\n//c", ("\n//",)) == "a\n//b"
    assert cut_at_last_stops("abc", ("\nx",)) == "abc"
    assert indent_first_line("x\n  y") == "    x\n  y" and indent_first_line("    x") == "    x"
    assert indent_first_line("\tx") == "    \tx"  # only spaces count, as in the authors' pad_spaces
    with pytest.raises(ValueError, match="unknown HumanEval-X language 'js'"):
        clean_completion("x", "js")


def test_language_comes_from_the_task_id_prefix_or_the_language_field():
    assert [language_of(row) for row in ROWS] == ["python"] * 2 + ["cpp"] * 2 + ["go"] * 2 + ["java"] * 2
    assert language_of({"task_id": "CPP/3"}) == "cpp" and language_of({"task_id": "toy", "language": "C++"}) == "cpp"
    with pytest.raises(ValueError, match="cannot tell the language of task_id 'JavaScript/0'"):
        language_of({"task_id": "JavaScript/0"})


# ---------------------------------------------------------------- programs as CodeGeeX's harness builds them


def test_programs_are_put_together_as_codegeex_does():
    python = python_program(BY_ID["Python/0"], "    return 0\nprint('not run')\n")
    assert python.startswith("import math\n") and "from typing import *\n" in python
    assert "    return 0\n" in python and "not run" not in python  # cut at the first unindented line
    assert python.endswith(BY_ID["Python/0"]["test"] + "\n")
    cpp = cpp_program(BY_ID["CPP/0"], "    return 0;\n}\n")
    missing = "".join(f"#include<{name}>\n" for name in ("stdlib.h", "algorithm", "math.h", "string", "climits",
                                                         "cstring", "iostream"))  # the prompt has stdio.h, vector
    assert cpp.startswith(missing + "\n/*\nReturn the sum")
    assert cpp.endswith("return 0;\n}\n\n" + BY_ID["CPP/0"]["test"])
    go = go_program(BY_ID["Go/1"], "    return len(strings.Fields(text)) + int(math.Sqrt(0))\n}\n")
    assert go.count('"strings"') == 1 and 'import (\n"math"\n    "strings"\n)\n' in go  # the block moved after setup
    assert '"github.com/stretchr/testify/assert"' not in go and 'fedbiotreflect "reflect"' in go
    assert go.rstrip().endswith("return string(want) == string(got)\n}")  # the stand-in for testify's assert
    assert '"strings"' not in go_program(BY_ID["Go/0"], "    return 0\n}\n")


# ---------------------------------------------------------------- each toolchain in the sandbox

TOOLS = {"python": None, "cpp": "g++", "go": "go", "java": "javac"}
WRONG = {"python": "    return 0\n", "cpp": "    return 0;\n}\n", "go": "    return 0\n}\n",
         "java": "        return 0;\n    }\n}"}
NOT_COMPILING = {"python": "    return (\n", "cpp": "    return undefined_name;\n}\n",
                 "go": "    return undefinedName\n}\n", "java": "        return undefinedName;\n    }\n}"}


@pytest.mark.usefixtures("private_host")
@pytest.mark.parametrize("language", TOOLS)
def test_canonical_solutions_pass_wrong_ones_fail_and_a_compile_error_fails(language):
    if TOOLS[language] and shutil.which(TOOLS[language]) is None:
        pytest.skip(f"{TOOLS[language]} is not installed (Debian: {missing_toolchain(language)})")
    rows = [row for row in ROWS if language_of(row) == language]
    completions = [clean_completion(row["canonical_solution"], language) for row in rows]
    assert completions == [row["canonical_solution"] for row in rows]  # cleaning keeps a finished solution
    results = check_humanevalx(rows * 2, [*completions, WRONG[language], NOT_COMPILING[language]], workers=2)
    assert [r.status for r in results] == ["passed", "passed", "failed", "failed"], results
    assert results[2].reason and results[3].reason
    if language != "python":  # the compiler's first error line
        assert "error" in results[3].reason or "undefined" in results[3].reason, results[3]


def test_a_missing_toolchain_is_an_error_naming_the_binary_and_the_package(monkeypatch):
    monkeypatch.setattr(sandbox_languages.shutil, "which", lambda name, *args, **kwargs: None)
    results = check_humanevalx([BY_ID["CPP/0"], BY_ID["Go/0"], BY_ID["Java/0"]], ["", "", ""])
    assert [r.status for r in results] == ["error"] * 3
    assert "needs g++, not found on PATH" in results[0].reason and "apt-get install g++" in results[0].reason
    assert "apt-get install golang-go" in results[1].reason
    assert "needs javac and java" in results[2].reason and "apt-get install default-jdk-headless" in results[2].reason


# ---------------------------------------------------------------- the task, its metric, the score command


def test_the_task_prompts_with_the_language_tag_and_records_cleaned_completions():
    task = eval_task("humanevalx")
    assert task.uses_pass_at_k and all(task.check_row(row) is None for row in ROWS)
    assert task.prompt(BY_ID["Go/0"]) == "// language: Go\n" + BY_ID["Go/0"]["prompt"]
    assert task.prompt(BY_ID["Python/1"]).startswith("# language: Python\ndef count_vowels(")
    assert task.prompt(BY_ID["CPP/1"]).startswith("// language: C++\n/*\n")
    assert task.prompt(BY_ID["Java/1"]).startswith("// language: Java\nimport java.util.*;")
    go_row = {"task_id": "Go/9", "prompt": "", "test": ""}
    assert task.check_row(go_row).startswith("lacks the string field 'test_setup'")
    assert task.check_row({"task_id": "Rust/0", "prompt": "", "test": ""}).startswith("cannot tell the language")
    assert task.clean("\u00a0return 1\ndef g():") == "return 1\ndef g():"  # the per-language cut needs the row
    record = task.prediction_record(2, BY_ID["Python/0"], "P", ["return 1\ndef g():"], ["raw"])
    assert record == {"index": 2, "task_id": "Python/0", "language": "python", "prompt": "P",
                      "completions": ["    return 1"], "raw": ["raw"]}


@pytest.mark.usefixtures("private_host")
def test_python_rows_are_cleaned_then_scored_with_pass_at_k():
    task = eval_task("humanevalx")
    rows = [BY_ID["Python/0"], BY_ID["Python/1"]]
    unindented = "return sum(x * x for x in numbers)\n\ndef unused():\n    pass"  # passes once cleaned
    completions = [[unindented, "    return -1\n"], ['    return sum(1 for c in text if c in "aeiou")\n'] * 2]
    # Python/0: 1 of 2 pass; Python/1: 0 of 2 ("AEIOU aeiou" counts upper case). pass@1 = (1/2 + 0) / 2
    assert task.score_rows(rows, completions, ks=(1, 2)) == {"pass@1": 0.25, "pass@2": 0.5}


def test_the_metric_reports_each_language_when_the_rows_mix_them(monkeypatch):
    metric = HumanEvalXPassAtK(ROWS, k=(1, 2))
    monkeypatch.setattr(metric, "execute", lambda problems, completions: [
        ExecutionResult(c == "ok", "passed" if c == "ok" else "failed", "", "none") for c in completions])
    metric.update(["Python/0", "Python/0", "CPP/0", "CPP/0", "CPP/1", "CPP/1"],
                  ["ok", "bad", "ok", "ok", "bad", "bad"], BY_ID)
    scores = {name: round(value.item(), 6) for name, value in metric.compute().items()}
    # per problem pass@1: Python/0 1/2, CPP/0 1, CPP/1 0; pass@2: 1, 1, 0
    assert scores == {"pass@1": 0.5, "pass@2": round(2 / 3, 6), "python/pass@1": 0.5, "python/pass@2": 1.0,
                      "cpp/pass@1": 0.5, "cpp/pass@2": 0.5}


@pytest.mark.usefixtures("private_host")
def test_score_command_scores_a_codegeex_samples_file(tmp_path, capsys):
    samples = tmp_path / "samples.jsonl"
    lines = [{"task_id": "Python/0", "generation": BY_ID["Python/0"]["canonical_solution"]},
             {"task_id": "Python/0", "generation": "    return 0\n"},
             {"task_id": "Python/1", "completion": BY_ID["Python/1"]["canonical_solution"]},
             {"task_id": "Python/1", "generation": BY_ID["Python/1"]["canonical_solution"]}]
    samples.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert score_main(["--task", "humanevalx", "--predictions", str(samples), "--k", "1,2", "--json",
                       "--workers", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == {"task": "humanevalx", "problems": 2, "samples": 4, "pass@1": 0.75, "pass@2": 1.0,
                      "passed": 3, "failed": 1, "timeout": 0, "error": 0}
    references = tmp_path / "problems.jsonl"
    references.write_text(json.dumps({**BY_ID["Go/0"], "test_setup": None}) + "\n")
    assert score_main(["--task", "humanevalx", "--predictions", str(samples), "--references", str(references)]) == 2
    assert "line 1: lacks the string field 'test_setup'" in capsys.readouterr().err


# ---------------------------------------------------------------- the paper's decoding preset


def test_the_paper_preset_and_its_yaml_files_agree_and_the_defaults_stay_greedy():
    assert HUMANEVALX_GENERATION == GenerationSettings(max_new_tokens=128, do_sample=True, temperature=0.1, top_p=0.75,
                                                       top_k=40, num_return_sequences=20)
    assert HUMANEVALX_K == (1, 10) and HUMANEVALX_EVALUATION.task == "humanevalx"
    generation_file = yaml.safe_load((ROOT / "configs/eval/humanevalx_generation.yaml").read_text())
    assert GenerationSettings(**generation_file) == HUMANEVALX_GENERATION
    config = read_config([ROOT / "configs/code.yaml", ROOT / "configs/eval/humanevalx.yaml"]).data.evaluation
    assert (config.task, tuple(config.k)) == ("humanevalx", HUMANEVALX_K)
    assert GenerationSettings(**vars(config.generation)) == HUMANEVALX_GENERATION
    assert GenerationSettings().do_sample is False and GenerationSettings().max_new_tokens == 256


@pytest.mark.usefixtures("private_host")
def test_humanevalx_runs_through_evaluate_split_with_the_paper_sampling():
    import dataclasses

    import torch
    from transformers import AutoTokenizer

    from fedbiot_pl.evaluation import generation
    from fedbiot_pl.model.views import ModelViews

    split = ModelViews("embedded:models/stories260K", adapter_layers=2, drop_rate=0.2).build()
    tokenizer = AutoTokenizer.from_pretrained(resolve("embedded:models/stories260K"))
    settings = dataclasses.replace(HUMANEVALX_GENERATION, max_new_tokens=8, num_return_sequences=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = generation.evaluate_split(split, tokenizer, "humanevalx", [BY_ID["Python/0"], BY_ID["CPP/0"]],
                                           ["adapemu"], settings, batch_size=2, ks=(1, 2))
    finally:
        torch.set_num_threads(threads)
    # a 260K-parameter story model writes no working code; a missing g++ counts as not passing too
    assert result.metrics["adapemu"] == {"pass@1": 0.0, "pass@2": 0.0, "python/pass@1": 0.0, "python/pass@2": 0.0,
                                         "cpp/pass@1": 0.0, "cpp/pass@2": 0.0}
    records = result.predictions["adapemu"]
    assert [(r["task_id"], r["language"]) for r in records] == [("Python/0", "python"), ("CPP/0", "cpp")]
    assert [r["prompt"].split("\n")[0] for r in records] == ["# language: Python", "// language: C++"]
    for record in records:
        assert len(record["raw"]) == 2
        assert record["completions"] == [clean_completion(raw, record["language"]) for raw in record["raw"]]


def test_a_missing_compiler_is_named_when_the_rows_are_read(monkeypatch):
    import shutil

    from fedbiot_pl.evaluation.tasks import eval_task

    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda binary: None if binary == "g++" else which(binary))
    row = {"task_id": "CPP/0", "prompt": "int f(){", "declaration": "int f(){", "canonical_solution": "return 1;}",
           "test": "int main(){}", "example_test": ""}
    assert eval_task("humanevalx").check_row(row) == (
        "cannot be run: HumanEval-X cpp needs g++, not found on PATH; install it (Debian/Ubuntu: apt-get install g++) "
        "or leave cpp rows out.")
