"""training.png: per-epoch series read from a hand-made metrics.csv, the figure drawn from them, and
the `python -m fedbiot_pl.artifacts.training_plot` command (the end-of-fit hook: test_tensorboard_logger.py)."""

import math

import numpy as np
import pytest

from fedbiot_pl.artifacts import training_plot
from fedbiot_pl.artifacts.training_plot import draw_training, main, read_metrics, training_series, write_training_plot

NAN = math.nan
# Two pre-alignment epochs (0, 1), then rounds 0-2 (epochs 2-4). Two alignment steps per epoch except
# the last; round rows and val rows are separate rows at the epoch's last step, as Lightning writes
# them. Client 1 was dropped in round 1; validation ran after rounds 0 and 2; the last row has no epoch.
HEADER = ("epoch,step,align/kl,align/l2,align/loss,client/0/loss,client/1/loss,client/10/loss,"
          "comm/bytes_down,comm/bytes_up,comm/total_bytes,round/client_loss,round/index,val/adapemu_loss,"
          "val/adapfu_loss")
ROWS = """\
0,0,2.0,0.5,2.5,,,,,,,,,,
0,1,1.0,0.3,1.3,,,,,,,,,,
1,2,0.8,0.2,1.0,,,,,,,,,,
1,3,0.6,0.2,0.8,,,,,,,,,,
2,4,0.5,0.1,0.6,,,,,,,,,,
2,5,0.5,0.3,0.8,,,,,,,,,,
2,5,,,,4.0,5.0,6.0,300,30,330,5.0,0,,
2,5,,,,,,,,,,,,7.0,7.5
3,6,0.2,0.4,0.6,,,,,,,,,,
3,7,0.2,0.2,0.4,,,,,,,,,,
3,7,,,,3.0,,5.0,300,20,650,4.0,1,,
4,8,0.1,0.05,0.15,,,,,,,,,,
4,8,,,,2.0,3.0,4.0,300,30,980,3.0,2,,
4,8,,,,,,,,,,,,6.0,6.5
,9,9.0,9.0,9.0,,,,,,,,,,
"""


@pytest.fixture
def run(tmp_path):
    (tmp_path / "metrics.csv").write_text(HEADER + "\n" + ROWS)
    return tmp_path


def close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual, dtype=float), np.asarray(expected, dtype=float))  # NaN == NaN


def test_series_per_epoch_from_a_hand_made_metrics_csv(run):
    series = training_series(read_metrics(run / "metrics.csv"))
    assert series.pre_alignment == 2  # epoch 2 - round/index 0
    assert series.rounds == [-2, -1, 0, 1, 2]
    close(series.align["l2"], [0.4, 0.2, 0.2, 0.3, 0.05])  # means of the epoch's steps
    close(series.align["kl"], [1.5, 0.7, 0.5, 0.2, 0.1])
    assert set(series.align) == {"l2", "kl"}
    close(series.client_loss, [NAN, NAN, 5.0, 4.0, 3.0])
    assert list(series.clients) == [0, 1, 10]  # numeric order
    close(series.clients[1], [NAN, NAN, 5.0, NAN, 3.0])  # dropped in round 1: a gap
    close(series.clients[10], [NAN, NAN, 6.0, 5.0, 4.0])
    assert list(series.val) == ["val/adapemu_loss", "val/adapfu_loss"]
    close(series.val["val/adapfu_loss"], [NAN, NAN, 7.5, NAN, 6.5])
    close(series.bytes_down, [NAN, NAN, 300, 600, 900])  # cumulative over the rounds
    close(series.bytes_up, [NAN, NAN, 30, 50, 80])


def test_missing_columns_pre_alignment_only_and_given_pre_alignment(run):
    pre_alignment_only = [row for row in read_metrics(run / "metrics.csv") if row.get("epoch", 9) < 2]
    series = training_series(pre_alignment_only)  # killed before round 0: every epoch is pre-alignment
    assert series.pre_alignment == 2 and series.rounds == [-2, -1]
    assert series.clients == {} and series.val == {}
    close(series.client_loss, [NAN, NAN])
    close(series.bytes_down, [NAN, NAN])

    only_kl = [{"epoch": 0.0, "step": 0.0, "align/kl": 1.0}, {"epoch": 1.0, "step": 1.0}]
    series = training_series(only_kl, pre_alignment=0)
    assert series.rounds == [0, 1] and list(series.align) == ["kl"]
    close(series.align["kl"], [1.0, NAN])
    with pytest.raises(ValueError, match="no row with an 'epoch'"):
        training_series([{"step": 0.0, "align/kl": 1.0}])


def test_figure_draws_every_series_against_the_round(run):
    series = training_series(read_metrics(run / "metrics.csv"))
    loss, align, val, comm = draw_training(series, title="run").axes
    assert [line.get_label() for line in loss.get_lines()] == ["client 0", "client 1", "client 10", "mean"]
    mean = loss.get_lines()[-1]
    close(mean.get_xdata(), [-2, -1, 0, 1, 2])
    close(mean.get_ydata(), [NAN, NAN, 5.0, 4.0, 3.0])
    assert [line.get_label() for line in align.get_lines()] == ["L2", "KL"]
    close(align.get_lines()[0].get_ydata(), series.align["l2"])
    assert [line.get_label() for line in val.get_lines()] == ["val/adapemu_loss", "val/adapfu_loss"]
    close(comm.get_lines()[0].get_ydata(), [NAN, NAN, 300, 600, 900])
    assert all(len(axes.patches) == 1 for axes in (loss, align, val, comm))  # the shaded pre-alignment epochs
    assert loss.patches[0].get_x() == -2.5 and loss.patches[0].get_width() == 2.0

    no_val = draw_training(training_series(read_metrics(run / "metrics.csv"), pre_alignment=0))
    assert "no val/ metrics logged" not in [text.get_text() for text in no_val.axes[2].texts]
    rows = [{k: v for k, v in row.items() if not k.startswith("val/")} for row in read_metrics(run / "metrics.csv")]
    figure = draw_training(training_series(rows, pre_alignment=0))
    assert [text.get_text() for text in figure.axes[2].texts] == ["no val/ metrics logged"]
    assert len(figure.axes[0].patches) == 0  # nothing to shade without pre-alignment


def test_command_redraws_a_run_folder(run, monkeypatch, capsys):
    drawn = []

    def spy(series, title=None):
        drawn.append(series)
        return draw_training(series, title)

    monkeypatch.setattr(training_plot, "draw_training", spy)
    (run / "config.yaml").write_text("federated:\n  rounds: 4\n  pre_alignment_rounds: 1\n")
    assert main([str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "training.png")
    assert (run / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert drawn[-1].pre_alignment == 1 and drawn[-1].rounds == [-1, 0, 1, 2, 3]  # the run's config wins
    from matplotlib.image import imread

    assert imread(run / "training.png").shape == (700, 1100, 4)

    out = run / "elsewhere" / "picture.png"
    assert write_training_plot(run / "metrics.csv", out, pre_alignment=2) == out and out.is_file()
    assert drawn[-1].pre_alignment == 2

    assert main([str(run / "nowhere")]) == 2
    assert "nowhere does not exist; pass a run folder written with the CSV logger" in capsys.readouterr().err
    assert main([str(run / "elsewhere")]) == 2  # a folder without metrics.csv (a TensorBoard-only run)
    assert "elsewhere/metrics.csv does not exist" in capsys.readouterr().err
