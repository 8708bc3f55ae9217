"""Record the golden outputs of the five algorithms (``tests/golden/<algorithm>/``).

    python -m tests.golden.record                  # all five (about 40 s on 2 cores)
    python tests/golden/record.py fedprox fedot    # only these

``tests/test_golden_algorithms.py`` re-runs the same seeded 2-round runs and requires bit-identical LoRA
tensors, metrics rows and ledger. The golden files are the proof that a refactor changed no behaviour, so
regenerating them is legitimate only for a deliberate behaviour change (a fixed bug, a new default, a
changed recipe or setting in ``tests/golden/__init__.py``, a new PyTorch version that changes the CPU
kernels' results), explained in its commit message and recorded in a commit of its own, separate from
any refactor, so that the diff of the golden files shows exactly what the change moved. Never regenerate
to make a refactor's failing golden test pass.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tests` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.golden import ALGORITHMS, GOLDEN, environment, run


def record(algorithms: list[str]) -> None:
    (GOLDEN / "environment.json").write_text(json.dumps(environment(), indent=1, sort_keys=True) + "\n")
    for algorithm in algorithms:
        with tempfile.TemporaryDirectory() as folder:
            outputs = run(algorithm, Path(folder))
        outputs.save(GOLDEN / algorithm)
        print(f"recorded {GOLDEN / algorithm}: {len(outputs.lora)} LoRA tensors, {len(outputs.metrics)} metrics rows",
              file=sys.stderr)


if __name__ == "__main__":
    names = sys.argv[1:] or list(ALGORITHMS)
    unknown = sorted(set(names) - set(ALGORITHMS))
    if unknown:
        sys.exit(f"unknown algorithm(s) {unknown}; choose from {list(ALGORITHMS)}")
    record(names)
