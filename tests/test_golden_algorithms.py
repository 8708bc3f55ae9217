"""No behaviour change: each algorithm's seeded 2-round run of the embedded stories260K default reproduces its
golden outputs bit for bit (the final LoRA tensors, the metrics rows but the timings, the ledger).

The goldens live in tests/golden/<algorithm>/ and are written by ``python -m tests.golden.record``; see its
docstring for when regenerating them is legitimate (never to make a refactor pass).
"""

import json

import pytest

from tests.golden import ALGORITHMS, GOLDEN, Outputs, environment, first_difference, run


def environment_note() -> str:
    """Where this environment differs from the goldens' (bit-identity is only expected in theirs)."""
    recorded, here = json.loads((GOLDEN / "environment.json").read_text()), environment()
    changed = {k: (recorded.get(k), here.get(k)) for k in {*recorded, *here} if recorded.get(k) != here.get(k)}
    if not changed:
        return ""
    shown = ", ".join(f"{k} {was} -> {now}" for k, (was, now) in sorted(changed.items()))
    return (f"\n(recorded in another environment: {shown}; record the goldens at the commit before the change "
            f"under test with `python -m tests.golden.record`, then test the change)")


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_algorithm_reproduces_its_golden_outputs(algorithm, tmp_path):
    note = environment_note()
    if note:  # bit-identity is a property of one CPU and library set: elsewhere the comparison means nothing
        pytest.skip(note.strip().strip("()"))
    golden = Outputs.load(GOLDEN / algorithm)
    assert golden.lora and golden.metrics and golden.ledger, f"{algorithm}: empty golden files"
    difference = first_difference(golden, run(algorithm, tmp_path))
    assert difference is None, f"{algorithm} differs from tests/golden/{algorithm}: {difference}"
