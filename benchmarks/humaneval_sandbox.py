"""Run all HumanEval canonical solutions through the sandbox and time it.

    python benchmarks/humaneval_sandbox.py                       # workers = CPU count, 3 repeats
    python benchmarks/humaneval_sandbox.py --workers 1,2,4 --repeats 5 --json out.json

Each repeat executes every problem's ``prompt + canonical_solution + test + check(entry_point)`` with
:func:`fedbiot_pl.evaluation.sandbox.check_completions`; the wall time of that call is the figure reported
(median over repeats). Per-program wall times are recorded by wrapping ``sandbox.run_program``.
Every program that does not pass is listed with its status and reason.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import time
from pathlib import Path

from fedbiot_pl.evaluation import sandbox
from fedbiot_pl.evaluation.sandbox import Language, Limits, check_completions, python_language

DEFAULT_PROBLEMS = Path(__file__).resolve().parents[2] / "shared" / "data" / "humaneval" / "HumanEval.jsonl.gz"


def load_problems(path: Path) -> list[dict[str, str]]:
    """HumanEval problems from a ``.jsonl`` or ``.jsonl.gz`` file."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def timed_run_program(durations: list[float]):
    """A stand-in for ``sandbox.run_program`` that records each call's wall time."""
    original = sandbox.run_program

    def run(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            durations.append(time.perf_counter() - start)

    return original, run


def one_repeat(problems: list[dict[str, str]], workers: int, limits: Limits, language: Language) -> dict:
    """Run every canonical solution once; wall time, passes, failures and per-program times."""
    durations: list[float] = []
    original, timed = timed_run_program(durations)
    sandbox.run_program = timed
    try:
        start = time.perf_counter()
        results = check_completions(problems, [p["canonical_solution"] for p in problems], language, limits,
                                    workers)
        wall = time.perf_counter() - start
    finally:
        sandbox.run_program = original
    failures = [{"task_id": p["task_id"], "status": r.status, "reason": r.reason}
                for p, r in zip(problems, results, strict=True) if not r.passed]
    return {"wall_s": wall, "passed": sum(r.passed for r in results), "failures": failures,
            "program_median_s": statistics.median(durations), "program_max_s": max(durations),
            "network": sorted({r.network for r in results})}


def main(argv: list[str] | None = None) -> int:
    """Benchmark; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=Path, default=DEFAULT_PROBLEMS)
    parser.add_argument("--workers", default=str(os.cpu_count() or 1), help="comma-separated worker counts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=10.0, help="wall-clock limit per program [s]")
    parser.add_argument("--no-site", action="store_true", help="run python -I -S (no site-packages)")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    args = parser.parse_args(argv)
    if not args.problems.exists():
        print(f"humaneval_sandbox: error: {args.problems} not found; pass --problems HumanEval.jsonl.gz",
              file=sys.stderr)
        return 2
    problems = load_problems(args.problems)
    limits = Limits(timeout_s=args.timeout)
    language = python_language(site=not args.no_site)
    print(f"{len(problems)} problems, command {language.command('main.py')}, isolation {sandbox.isolation()}, "
          f"euid {os.geteuid()}, "
          f"load average {os.getloadavg()[0]:.2f}, limits {limits}")
    report = {}
    for workers in [int(w) for w in args.workers.split(",")]:
        runs = [one_repeat(problems, workers, limits, language) for _ in range(args.repeats)]
        walls = [run["wall_s"] for run in runs]
        report[workers] = runs
        print(f"workers {workers}: wall median {statistics.median(walls):.2f} s (all: "
              f"{', '.join(f'{w:.2f}' for w in walls)}), passed {[run['passed'] for run in runs]} of "
              f"{len(problems)}, per program median {statistics.median(r['program_median_s'] for r in runs):.3f} s, "
              f"max {max(r['program_max_s'] for r in runs):.3f} s, load average {os.getloadavg()[0]:.2f}")
        for failure in {json.dumps(f) for run in runs for f in run["failures"]}:
            print("  not passed:", failure)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
