"""The Flower commands' own flags: every bad value named (exit code 2, no traceback) before any model loads."""

import pytest

pytest.importorskip("flwr")

from fedbiot_pl.flower.export import main as export_main  # noqa: E402
from fedbiot_pl.flower.local import main  # noqa: E402

pytestmark = pytest.mark.flower


def test_bad_flags_are_named_together_with_exit_code_2_and_nothing_written(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    code = main(["--flower-workdir", str(a_file), "--flower-round-timeout", "nan", "--flower-timeout", "0",
                 "--flower-secagg", "[1]"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"--flower-workdir {str(a_file)!r} is a file" in err
    assert "--flower-round-timeout must be a number of seconds >= 0, got nan" in err
    assert "--flower-timeout must be a number of seconds > 0, got 0.0" in err
    assert "--flower-secagg must be a JSON object of SecAgg+ settings" in err and "'[1]'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_a_negative_round_timeout_and_bad_secagg_settings_are_refused(tmp_path, capsys):
    code = main(["--flower-workdir", str(tmp_path / "w"), "--flower-round-timeout", "-1",
                 "--flower-secagg", '{"num_shares": -1}'])
    err = capsys.readouterr().err
    assert code == 2 and "--flower-round-timeout must be a number of seconds >= 0, got -1.0" in err
    assert "--flower-secagg: num_shares=-1" in err and not (tmp_path / "w").exists()


def test_export_refuses_an_out_that_is_a_file_or_a_folder_with_files(tmp_path, capsys):
    for out in (tmp_path / "a_file", tmp_path / "full"):
        (tmp_path / "full").mkdir(exist_ok=True)
        (tmp_path / "full" / "x").write_text("")
        (tmp_path / "a_file").write_text("")
        assert export_main(["--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{out} exists (a file, or a folder that is not empty); give a new folder" in err, err
        assert "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["x"]
