"""The benchmark scripts' run loop: partial results survive a stopped fit, which is named in one line."""

import json
import subprocess

from fedbiot_pl.artifacts.benchmark_runs import run_each


def test_a_stopped_fit_keeps_the_finished_rows_and_names_the_run(tmp_path, capsys):
    def run_one(name):
        if name == "b":
            raise subprocess.CalledProcessError(3, ["train.py", "fit"])
        return {"name": name}

    assert run_each(["a", "b", "c"], run_one, tmp_path) is None
    assert json.loads((tmp_path / "results.json").read_text()) == [{"name": "a"}]
    assert capsys.readouterr().err == "b: train.py fit stopped with exit status 3\n"
    assert run_each(["a", "c"], run_one, tmp_path) == [{"name": "a"}, {"name": "c"}]
