"""The wire records: LoRA through Flower's ArrayRecord and back, bit for bit; bf16 refused; bad uploads caught."""

import math

import pytest
import torch

pytest.importorskip("flwr")

from fedbiot_pl.errors import ConfigError  # noqa: E402
from fedbiot_pl.federation.messages import LoRAState, decode_message, encode_update, payload_metadata  # noqa: E402
from fedbiot_pl.federation.transport import ClientReply  # noqa: E402
from fedbiot_pl.federation.validation import receive_update  # noqa: E402
from fedbiot_pl.flower.wire import (  # noqa: E402
    broadcast_from_content,
    content_bytes,
    from_array_record,
    reply_content,
    reply_from_content,
    to_array_record,
    train_content,
)

KEYS = ["base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight",
        "base_model.model.model.layers.3.self_attn.q_proj.lora_B.weight",
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]


def lora():
    generator = torch.Generator().manual_seed(0)
    return {KEYS[0]: torch.randn(8, 64, generator=generator), KEYS[1]: torch.randn(64, 8, generator=generator) * 1e-7,
            KEYS[2]: torch.tensor([[1.0, -0.0, float.fromhex("0x1.fffffep+127"), 1e-45]])}


def test_array_record_round_trip_is_bit_exact_and_keeps_order():
    state = lora()
    back = from_array_record(to_array_record(state))
    assert list(back) == list(state)
    for key in state:  # -0.0, the largest float32 and a subnormal survive
        assert torch.equal(back[key], state[key])
        assert back[key].view(torch.int32).tolist() == state[key].view(torch.int32).tolist()


def test_bfloat16_is_refused_naming_the_tensor():
    with pytest.raises(ConfigError, match=r"float32 LoRA; 1 tensors are not, e\.g\. x \(torch\.bfloat16\)"):
        to_array_record({"x": torch.zeros(2, dtype=torch.bfloat16), "y": torch.zeros(2)})


def test_train_content_splits_trained_arrays_from_held_bytes_and_rebuilds_the_broadcast():
    state = lora()
    content = train_content(state, {"kind": "lora"}, KEYS[:2], {"server-round": 3, "settings": "{}"})
    assert list(content["arrays"].keys()) == KEYS[:2]  # what Flower's DP and clipping mods act on
    assert content["config"]["server-round"] == 3
    message = decode_message(broadcast_from_content(content), LoRAState)
    assert set(message.tensors) == set(KEYS)
    assert all(torch.equal(message.tensors[key], state[key]) for key in KEYS)
    # Flower's count: 4-byte floats of the arrays plus their headers, and the config's bytes
    assert content_bytes(content) > 4 * (8 * 64 * 2 + 4)


def test_reply_round_trip_and_what_the_server_check_makes_of_it():
    state = {key: value for key, value in lora().items() if key in KEYS[:2]}
    reply = ClientReply(2, 1.25, LoRAState(state).encode())
    back = reply_from_content(2, reply_content(reply, seconds=3.0))
    assert (back.client, back.loss, back.dropped) == (2, 1.25, None)
    assert payload_metadata(back.payload)["kind"] == "lora"
    update, problem = receive_update(back.payload, state)
    assert problem is None and all(torch.equal(update[key], state[key]) for key in state)


def test_a_dropped_client_keeps_its_reason():
    back = reply_from_content(1, reply_content(ClientReply(1, math.nan, b"", "fit raised ValueError: x"), 0.0))
    assert back.dropped == "fit raised ValueError: x" and back.payload == b""


def test_garbage_arrays_become_an_upload_the_server_rejects():
    state = {KEYS[0]: lora()[KEYS[0]]}
    content = reply_content(ClientReply(0, 1.0, encode_update(state, {"kind": "lora"})), 0.0)
    for array in content["arrays"].values():
        array.data = b"\x93NUMPY not an array"
    back = reply_from_content(0, content)
    assert back.dropped is None and back.payload.startswith(b"unreadable")
    update, problem = receive_update(back.payload, state)
    assert update is None and "not a safetensors payload" in problem
