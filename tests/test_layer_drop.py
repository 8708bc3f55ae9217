import pytest

from fedbiot_pl.model.layer_drop import layer_layout, uniform_keep


def test_llama2_7b_adapter2_beta02_matches_reference_table():
    # 32 layers, 2 adapter layers: layers 0..29 compressed with beta 0.2 keep 24 (paper's table).
    layout = layer_layout(32, adapter_layers=2, drop_rate=0.2)
    assert layout.emulator == (0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13, 15, 16, 17, 18, 20, 21, 22, 23, 25, 26, 27, 29)
    assert layout.top_adapter == (30, 31)
    assert layout.compressed == layout.emulator + (30, 31)
    assert list(layout.adapter_positions) == [24, 25]
    assert list(layout.teacher_span) == list(range(30))


@pytest.mark.parametrize(
    ("n", "beta", "expected"),
    [
        (30, 0.5, [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 29]),
        (28, 0.2, [0, 1, 2, 3, 5, 6, 7, 9, 10, 11, 12, 14, 15, 16, 18, 19, 20, 21, 23, 24, 25, 27]),
        (28, 0.5, [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 27]),
        (3, 0.2, [0, 2]),  # stories260K: round(2.4) = 2
        (4, 0.0, [0, 1, 2, 3]),
        (5, 0.7, [0, 4]),  # round(1.5) = 2 (Python rounds half to even)
        (3, 0.6, [0]),
    ],
)
def test_uniform_keep(n, beta, expected):
    assert uniform_keep(n, beta) == expected


def test_bottom_adapter_layout_for_fedot():
    layout = layer_layout(8, adapter_layers=2, drop_rate=0.5, bottom_adapter_layers=2)
    assert layout.bottom_adapter == (0, 1)
    assert layout.emulator == (2, 5)  # layers 2..5, keep round(4 * 0.5) = 2 -> first and last
    assert layout.top_adapter == (6, 7)
    assert layout.adapter_positions == (0, 1, 4, 5)
    assert list(layout.emulator_positions) == [2, 3]


def test_invalid_split_lists_every_problem():
    with pytest.raises(ValueError) as info:
        layer_layout(4, adapter_layers=4, drop_rate=1.0)
    message = str(info.value)
    assert "must be smaller than the model's 4 decoder layers" in message
    assert "drop_rate must be in [0, 1), got 1.0" in message


def test_drop_rate_that_keeps_nothing_is_an_error():
    with pytest.raises(ValueError, match="keeps round"):
        uniform_keep(1, 0.6)
