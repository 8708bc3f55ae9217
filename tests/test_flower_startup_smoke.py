"""Smoke test of ``benchmarks/flower_startup.py``: one repeat on the embedded stories260K, every item measured."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_flower_startup_measures_every_item(tmp_path: Path) -> None:
    out = tmp_path / "startup.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "flower_startup.py"), "--repeats", "1",
                           "--workdir", str(tmp_path / "work"), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["model"] == "embedded:models/stories260K" and results["repeats"] == 1
    median = results["median"]
    assert set(median) == {"import", "mmap_load", "copy_load", "views"}
    for item, figures in median.items():
        assert positive(figures["seconds"]) and positive(figures["process_seconds"]), (item, figures)
        assert len(results["runs"][item]) == 1
    for item in ("mmap_load", "copy_load", "views"):
        assert positive(median[item]["rss_mb"]), (item, median[item])
    for item in ("mmap_load", "copy_load"):
        assert positive(median[item]["rss_touched_mb"]), (item, median[item])
    assert positive(results["model_file_mb"]) and positive(results["export_seconds"])
    assert positive(results["ratio_copy_over_mmap"]["seconds"]) and positive(results["ratio_copy_over_mmap"]["rss"])
    assert (tmp_path / "work" / "client_model_stories260K_fedbiot" / "manifest.sha256").is_file()
