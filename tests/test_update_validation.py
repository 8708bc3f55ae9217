import math

import pytest
import torch

from fedbiot_pl.federation.ledger import CommLedger
from fedbiot_pl.federation.messages import decode_update, encode_update
from fedbiot_pl.federation.validation import update_norm, update_problem
from fedbiot_pl.testing.faults import corrupt_update

REFERENCE = {"a.lora_A.weight": torch.zeros(2, 3), "a.lora_B.weight": torch.ones(4, 2)}


def shifted(delta_a: float, delta_b: float) -> dict[str, torch.Tensor]:
    return {"a.lora_A.weight": REFERENCE["a.lora_A.weight"] + delta_a,
            "a.lora_B.weight": REFERENCE["a.lora_B.weight"] + delta_b}


def test_a_good_update_passes_and_its_norm_is_the_change_from_the_broadcast():
    update = shifted(1.0, 0.5)  # 6 entries change by 1, 8 by 0.5: sqrt(6 + 8 * 0.25) = sqrt(8)
    assert update_norm(update, REFERENCE) == pytest.approx(math.sqrt(8.0))
    assert update_problem(update, REFERENCE) is None
    assert update_problem(update, REFERENCE, max_norm=2.9) is None  # sqrt(8) = 2.83


@pytest.mark.parametrize(
    ("action", "reason"),
    [
        ("missing_key", "1 missing keys (a.lora_A.weight)"),
        ("extra_key", "1 unexpected keys (a.lora_A.weight.extra)"),
        ("shape", "wrong shape: a.lora_A.weight (3, 3) instead of (2, 3)"),
        ("dtype", "wrong dtype: a.lora_A.weight torch.float64 instead of torch.float32"),
        ("nan", "NaN/Inf values in 1 tensors (a.lora_A.weight)"),
        ("inf", "NaN/Inf values in 1 tensors (a.lora_A.weight)"),
    ],
)
def test_every_kind_of_bad_update_is_named(action, reason):
    assert update_problem(corrupt_update(shifted(0.1, 0.1), {"action": action}), REFERENCE) == reason


def test_norm_bound_and_several_problems_at_once():
    # B changes by 1e6 in 8 entries: norm sqrt(8) * 1e6
    assert update_problem(shifted(0.0, 1e6), REFERENCE, max_norm=100.0) == (
        "update norm 2.828e+06 exceeds max_update_norm=100"
    )
    both = {"a.lora_A.weight": torch.full((2, 3), float("nan")), "b.extra": torch.zeros(1)}
    assert update_problem(both, REFERENCE) == (
        "1 missing keys (a.lora_B.weight); 1 unexpected keys (b.extra); NaN/Inf values in 1 tensors (a.lora_A.weight)"
    )


def test_updates_travel_as_safetensors_and_garbage_is_refused():
    update = shifted(0.25, -1.0)
    payload = encode_update(update)
    assert payload[8:9] == b"{"  # safetensors: 8-byte header length, then the JSON header
    decoded = decode_update(payload)
    assert all(torch.equal(decoded[key], update[key]) for key in update)
    with pytest.raises(ValueError, match="not a safetensors payload"):
        decode_update(corrupt_update(update, {"action": "garbage"}))


def test_ledger_counts_rejected_and_undecodable_uploads():
    ledger = CommLedger()
    ledger.record_up(REFERENCE)  # 6 + 8 float32
    ledger.record_up_bytes(17)
    ledger.uploads_rejected += 1
    assert (ledger.bytes_up, ledger.messages_up) == (14 * 4 + 17, 2)
    restored = CommLedger()
    restored.load_state_dict({"bytes_up": 5, "messages_up": 1})  # an older checkpoint without the new counter
    assert restored.uploads_rejected == 0 and restored.bytes_up == 5
