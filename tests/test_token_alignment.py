import math
import random
from pathlib import Path

import pytest
import torch

from fedbiot_pl.distillation.token_alignment import (
    FILL_VALUE,
    align_sequences,
    align_topk,
    edit_distance,
    normalize_token,
    vocab_mapping,
)

SHARED = Path("/work/shared/data")
LLAMA2, GPT2 = SHARED / "tokenizers" / "llama2", SHARED / "tokenizers" / "gpt2"


def test_edit_distance_hand_computed():
    assert edit_distance("kitten", "sitting") == 3  # k->s, e->i, +g
    assert edit_distance("flaw", "lawn") == 2  # -f, +n
    assert edit_distance("", "abc") == 3
    assert edit_distance("abc", "abc") == 0
    assert edit_distance("un", "unbel") == 3  # +b +e +l
    assert edit_distance("believ", "iev") == 3  # -b -e -l
    assert edit_distance("believ", "unbel") == 5  # -u -n keeps "bel", then +i +e +v
    assert edit_distance("unbel", "believ") == 5
    assert edit_distance(" the", " cats") == 4  # t->c, h->a, e->t, +s


def test_normalize_token_maps_markers_and_byte_pieces():
    assert normalize_token("\u2581the") == " the"  # SentencePiece '▁'
    assert normalize_token("\u0120the") == " the"  # GPT-2 'Ġ'
    assert normalize_token("\u010a") == "\n"  # GPT-2 'Ċ'
    assert normalize_token("\u0120\u0120\u010a\u010a") == "  \n\n"  # every occurrence
    assert normalize_token("<0x0A>") == "\n"
    assert normalize_token("<0x41>") == "A"
    assert normalize_token("<0xE9>") == "\u00e9"  # printable Latin-1: GPT-2's piece for byte 0xE9
    assert normalize_token("<0x80>") == "\u0122"  # 0x80 is GPT-2's 34th unprintable byte -> chr(256 + 34)
    assert normalize_token("<0xAD>") == "\u0143"  # soft hyphen, GPT-2's last unprintable byte: chr(256 + 67)
    for unchanged in ("plain", "<s>", "<0xZZ>", "<0x0A0>", "</s>"):
        assert normalize_token(unchanged) == unchanged


def test_vocab_mapping_hand_vocabulary():
    target = ["\u0120the", "\u0120ca", "\u0120cat", "s", "x"]  # ' the', ' ca', ' cat', 's', 'x'
    source = ["\u2581the", "\u2581cat", "s",  # exact: 0, 2, 3
              "\u2581cats",  # ' cat' at 1 (' ca' at 2)
              "\u2581dog",  # distance 3 to ' the', ' ca' and ' cat', 4 to 's', 'x': smallest id 0
              "y",  # distance 1 to 's' and 'x': 3
              ""]  # distance 1 to 's' and 'x': 3
    assert vocab_mapping(source, target).tolist() == [0, 2, 3, 2, 0, 3, 3]
    assert vocab_mapping(source, target).dtype == torch.int64
    assert vocab_mapping(source, target, overrides={0: 4}).tolist() == [4, 2, 3, 2, 0, 3, 3]
    # equal text: the smallest id, but a regular piece before a byte piece
    assert vocab_mapping(["\u2581a"], ["x", "\u0120a", "\u2581a"]).tolist() == [1]
    assert vocab_mapping(["e", "\u2581"], ["<0x65>", "<0x20>", "x", "e", "\u2581"]).tolist() == [3, 4]
    assert vocab_mapping(["<0x65>"], ["<0x65>", "e"]).tolist() == [1]


def test_vocab_mapping_is_the_brute_force_minimum():
    rng = random.Random(0)
    words = lambda n: ["".join(rng.choice("ab c") for _ in range(rng.randint(0, 6))) for _ in range(n)]  # noqa: E731
    source, target = words(60), words(40)
    expected = []
    for s in source:
        dist = [edit_distance(s, t) for t in target]
        expected.append(dist.index(min(dist)))  # the smallest id among the nearest
    assert vocab_mapping(source, target).tolist() == expected


def test_dtw_one_to_one_hand_pair():
    # normalised: ' un' 'believ' 'able' vs ' unbel' 'iev' 'able'; edit distances (rows: source)
    #   ' un'    3 3 4       accumulated D: 3  6 10
    #   believ   5 3 4                      8  6 10
    #   able     4 4 0                     12 10  6
    # back from (2, 2): diag 6 < 10, 10, then diag 3 < 6, 8: the diagonal, cost 6
    a = align_sequences(["\u2581un", "believ", "able"], ["\u0120unbel", "iev", "able"])
    assert a.pairs == ((0, 0), (1, 1), (2, 2))
    assert a.cost == 6
    assert a.one_to_one() == [0, 1, 2]


def test_dtw_many_to_one_and_one_to_many():
    # ' the' ' cat' 's' vs ' the' ' cats': distances [[0, 4], [3, 1], [4, 4]]
    # D = [[0, 4], [3, 1], [7, 5]]; back from (2, 1): diag 3, up 1, left 7 -> (1, 1), then diag 0 -> (0, 0)
    a = align_sequences(["\u2581the", "\u2581cat", "s"], ["\u0120the", "\u0120cats"])
    assert a.pairs == ((0, 0), (1, 1), (2, 1))
    assert a.cost == 5
    assert a.sources_of() == [[0], [1, 2]]
    assert a.targets_of() == [[0], [1], [1]]
    assert a.one_to_one() == [0, None]
    # swapped sides: D is transposed; back from (1, 2): diag 3, up 7, left 1 -> (1, 1)
    b = align_sequences(["\u0120the", "\u0120cats"], ["\u2581the", "\u2581cat", "s"])
    assert b.pairs == ((0, 0), (1, 1), (1, 2))
    assert b.one_to_one() == [0, None, None]
    assert align_sequences([], ["a"]).one_to_one() == [None]


def test_dtw_ties_prefer_diagonal_then_source_step():
    # repeated identical tokens: D = [[0, 0], [0, 0]]; from (1, 1) diag, up and left tie at 0: the diagonal
    assert align_sequences(["\u2581a", "\u2581a"], ["\u0120a", "\u0120a"]).pairs == ((0, 0), (1, 1))
    # a b a vs b a b: distances [[1, 0, 1], [0, 1, 0], [1, 0, 1]], D = [[1, 1, 2], [1, 2, 1], [2, 1, 2]]
    # from (2, 2): diag 2, up 1, left 1 -> up (source step) to (1, 2); then diag 1 -> (0, 1); then left -> (0, 0)
    a = align_sequences(["a", "b", "a"], ["b", "a", "b"])
    assert a.pairs == ((0, 0), (0, 1), (1, 2), (2, 2))
    assert a.cost == 2
    assert a.sources_of() == [[0], [0], [1, 2]] and a.one_to_one() == [None, None, None]


SRC_VOCAB = ["\u2581A", "\u2581the", "\u2581cat", "s", "\u2581kat"]
TGT_VOCAB = ["\u0120A", "\u0120the", "\u0120cats", "\u0120cat", "s"]


def test_align_topk_one_to_one_and_fallback():
    mapping = vocab_mapping(SRC_VOCAB, TGT_VOCAB)
    assert mapping.tolist() == [0, 1, 3, 4, 3]  # ' kat' -> ' cat' (1), not ' cats' (2)
    source_tokens = ["\u2581A", "\u2581the", "\u2581cat", "s"]
    target_tokens, target_ids = ["\u0120A", "\u0120the", "\u0120cats"], [0, 1, 2]
    # DTW pairs (0,0) (1,1) (2,2) (3,2): ' the' is 1:1, ' cat' + 's' -> ' cats' is many:1
    values = torch.tensor([[1.0, 3.0, 2.0], [5.0, 1.0, 0.0], [4.0, 0.0, -1.0]], dtype=torch.float16)
    indices = torch.tensor([[1, 2, 4], [2, 0, 1], [3, 2, 0]], dtype=torch.uint16)
    out_v, out_i = align_topk(values, indices, source_tokens, target_tokens, target_ids, mapping)
    assert out_v.dtype == torch.float16 and out_i.dtype == torch.int64 and out_v.shape == (2, 3)
    # row 0 (predicts ' the') <- source row 0 sorted: 3.0 at 2->3, 2.0 at 4->3 (dropped), 1.0 at 1->1; refill id 0
    assert out_i[0].tolist() == [3, 1, 0]
    assert out_v[0].tolist() == [3.0, 1.0, FILL_VALUE]
    # row 1 (predicts ' cats', many:1): one-hot on the label 2, fill at ids 0, 1
    assert out_i[1].tolist() == [2, 0, 1]
    assert out_v[1].tolist() == [0.0, FILL_VALUE, FILL_VALUE]
    probs = torch.softmax(out_v.float(), dim=-1)
    e2 = math.exp(2.0)
    assert torch.allclose(probs[0], torch.tensor([e2 / (e2 + 1), 1 / (e2 + 1), 0.0]))
    assert probs[1].tolist() == [1.0, 0.0, 0.0]
    assert torch.softmax(out_v[1:], dim=-1).tolist() == [[1.0, 0.0, 0.0]]  # also exact in float16


def test_align_topk_source_ids_accept_a_mapped_pair():
    # ' kat' vs ' cat' is a 1:1 pair with different text: one-hot, unless the mapping sends 4 to 3
    values, indices = torch.tensor([[2.0, 0.0]], dtype=torch.float16), torch.tensor([[4, 1]])
    args = (["\u2581A", "\u2581kat"], ["\u0120A", "\u0120cat"], [0, 3], [0, 1, 3, 4, 3])
    v, i = align_topk(values, indices, *args)
    assert i.tolist() == [[3, 0]] and v.tolist() == [[0.0, FILL_VALUE]]
    v, i = align_topk(values, indices, *args, source_ids=[0, 4])
    assert i.tolist() == [[3, 1]] and v.tolist() == [[2.0, 0.0]]


def test_align_topk_identity_leaves_the_payload_unchanged():
    torch.manual_seed(0)
    vocab = [f"\u2581w{i}" for i in range(10)]
    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    logits = torch.randn(len(ids) - 1, 10).half()
    values, indices = logits.topk(4, dim=-1)
    tokens = [vocab[i] for i in ids]
    out_v, out_i = align_topk(values, indices, tokens, tokens, ids, torch.arange(10))
    assert torch.equal(out_v, values)
    assert torch.equal(out_i, indices)


def test_align_topk_rejects_a_payload_of_the_wrong_length():
    with pytest.raises(ValueError, match="does not fit"):
        align_topk(torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.long), ["a", "b"], ["a", "b"], [0, 1], [0, 1])
    with pytest.raises(ValueError, match="target ids"):
        align_topk(torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.long), ["a", "b"], ["a", "b"], [0], [0, 1])


def test_fill_value_is_float16_exact():
    assert torch.tensor(FILL_VALUE, dtype=torch.float16).item() == FILL_VALUE


def test_real_llama2_and_gpt2_tokenizers():
    if not (LLAMA2 / "tokenizer.json").exists() or not (GPT2 / "tokenizer.json").exists():
        pytest.skip("the shared LLaMA-2 / GPT-2 tokenizers are absent")
    transformers = pytest.importorskip("transformers")
    llama = transformers.AutoTokenizer.from_pretrained(str(LLAMA2), local_files_only=True)
    gpt2 = transformers.AutoTokenizer.from_pretrained(str(GPT2), local_files_only=True)
    gpt2_vocab = gpt2.convert_ids_to_tokens(list(range(len(gpt2))))
    # every LLaMA byte piece >= 0x80 normalises onto one of GPT-2's 256 single-byte pieces (ids 0..255)
    assert {normalize_token(f"<0x{b:02X}>") for b in range(0x80, 0x100)} <= set(gpt2_vocab[:256])

    text = "The cat sat on the mat, unbelievably.\nIt purred."
    src_ids, tgt_ids = llama(text).input_ids, gpt2(text).input_ids
    src_tokens, tgt_tokens = llama.convert_ids_to_tokens(src_ids), gpt2.convert_ids_to_tokens(tgt_ids)
    assert src_tokens[:3] == ["<s>", "\u2581The", "\u2581cat"] and "<0x0A>" in src_tokens
    assert tgt_tokens[7] == "\u0120unbelievably" and len(tgt_ids) == 14

    used = sorted(set(src_ids))  # map only the ids used here: the full 32k vocabulary takes minutes
    sub = vocab_mapping(llama.convert_ids_to_tokens(used), gpt2_vocab)
    mapping = torch.zeros(len(llama), dtype=torch.int64)
    mapping[used] = sub
    assert mapping[llama.convert_tokens_to_ids("\u2581the")] == 262  # 'Ġthe'
    assert mapping[13] == 198  # '<0x0A>' -> 'Ċ'
    assert mapping[llama.convert_tokens_to_ids("\u2581cat")] == 3797  # 'Ġcat'
    # the other direction, over the whole LLaMA-2 vocabulary: 'Ġ' -> '▁' (29871, not the letter piece 'Ġ'),
    # 'e' -> 'e' (29872, not '<0x65>'), 'Ċ' -> '<0x0A>', and ' unbelievably' -> '▁believe', the smallest id
    # at distance 6 (with '▁believed', '▁reliable', '▁unlikely', '▁medieval')
    llama_vocab = llama.convert_ids_to_tokens(list(range(len(llama))))
    back = vocab_mapping(["\u0120", "e", "\u010a", "\u0120the", "\u0120unbelievably"], llama_vocab)
    assert back.tolist() == [29871, 29872, 13, 278, 4658]
    assert llama_vocab[4658] == "\u2581believe"

    # a payload whose top-1 is each row's own next token (value 5) and whose second entry is '.' (value 1)
    dot = llama.convert_tokens_to_ids(".")
    values = torch.tensor([[5.0, 1.0]] * (len(src_ids) - 1), dtype=torch.float16)
    indices = torch.tensor([[src_ids[s + 1], dot] for s in range(len(src_ids) - 1)], dtype=torch.int32)
    out_v, out_i = align_topk(values, indices, src_tokens, tgt_tokens, tgt_ids, mapping)
    assert out_v.shape == (13, 2)
    assert out_i[:, 0].tolist() == tgt_ids[1:]  # carried over or one-hot, the top entry is the label
    one_hot = [t for t in range(13) if out_v[t, 0] == 0.0]
    # ' unbelievably' has no 1:1 partner; DTW also piles ',' '▁un' 'bel' 'iev' onto ',' (many:1)
    assert [tgt_tokens[t + 1] for t in one_hot] == [",", "\u0120unbelievably"]
    assert all(out_v[t].tolist() == [0.0, FILL_VALUE] for t in one_hot)
    carried = [t for t in range(13) if t not in one_hot]
    assert all(out_v[t, 0] == 5.0 for t in carried)
    assert out_i[4].tolist() == [2603, 13]  # 'Ġmat' then '.'
    assert out_v[7].tolist() == [5.0, FILL_VALUE]  # '.' twice: kept once, refilled at id 0
    assert out_i[7].tolist() == [13, 0]
