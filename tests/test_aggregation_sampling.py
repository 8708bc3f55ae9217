import pytest
import torch

from fedbiot_pl.federation.aggregation import fedavg
from fedbiot_pl.federation.ledger import CommLedger
from fedbiot_pl.federation.messages import payload_bytes
from fedbiot_pl.federation.sampling import clients_per_round, sample_clients


def test_fedavg_is_the_weighted_mean():
    states = [{"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 6.0])}]
    out = fedavg(states, [1, 3])
    torch.testing.assert_close(out["w"], torch.tensor([(1 + 9) / 4, (2 + 18) / 4]))


def test_fedavg_keeps_dtype_and_averages_keys_separately():
    states = [{"a": torch.ones(2, dtype=torch.bfloat16), "b": torch.zeros(1)},
              {"a": torch.zeros(2, dtype=torch.bfloat16), "b": torch.ones(1)}]
    out = fedavg(states, [1, 1])
    assert out["a"].dtype == torch.bfloat16
    torch.testing.assert_close(out["a"].float(), torch.full((2,), 0.5))
    torch.testing.assert_close(out["b"], torch.tensor([0.5]))


@pytest.mark.parametrize(
    ("states", "weights", "match"),
    [
        ([], [], "at least one"),
        ([{"w": torch.ones(1)}], [1, 2], "1 states but 2 weights"),
        ([{"w": torch.ones(1)}, {"v": torch.ones(1)}], [1, 1], "different keys"),
        ([{"w": torch.ones(1)}, {"w": torch.ones(2)}], [1, 1], "shape"),
        ([{"w": torch.ones(1)}], [0], "positive sum"),
    ],
)
def test_fedavg_rejects_bad_input(states, weights, match):
    with pytest.raises(ValueError, match=match):
        fedavg(states, weights)


def test_client_sampling():
    assert sample_clients(5, None, seed=0, round_idx=3) == [0, 1, 2, 3, 4]
    picked = sample_clients(10, 3, seed=0, round_idx=1)
    assert len(picked) == 3 and picked == sorted(set(picked)) and all(0 <= c < 10 for c in picked)
    assert picked == sample_clients(10, 3, seed=0, round_idx=1)  # pure function of (seed, round)
    rounds = {tuple(sample_clients(10, 3, seed=0, round_idx=r)) for r in range(20)}
    assert len(rounds) > 10  # rounds differ
    assert clients_per_round(10, 0.25) == 3  # ceil(2.5)
    assert clients_per_round(3, 0.01) == 1


@pytest.mark.parametrize("bad", [0, 11, 1.5, 0.0, True])
def test_client_sampling_rejects_bad_counts(bad):
    with pytest.raises(ValueError, match="clients_per_round"):
        clients_per_round(10, bad)


def test_ledger_counts_bytes():
    state = {"a": torch.zeros(2, 3), "b": torch.zeros(4, dtype=torch.bfloat16)}
    assert payload_bytes(state) == 6 * 4 + 4 * 2
    ledger = CommLedger()
    assert ledger.record_down(state, clients=3) == 96
    assert ledger.record_up(state) == 32
    restored = CommLedger()
    restored.load_state_dict(ledger.state_dict())
    assert restored == CommLedger(bytes_down=96, bytes_up=32, messages_down=3, messages_up=1)
