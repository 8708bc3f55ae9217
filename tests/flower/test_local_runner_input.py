"""`fedbiot-flower-local`'s own flags: every bad value named at once, before anything is exported or started."""

import pytest

pytest.importorskip("flwr")

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
