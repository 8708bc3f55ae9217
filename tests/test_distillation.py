"""``fedbiot_pl.distillation`` against hand values (kd-split-spec.md §1.4).

The top-k payload and its bytes, the gathered distillation loss against its dense reference (values and
gradients, every ``alpha`` and chunk size), teacher selection, aggregation of payloads, and targets padded
onto a batch. Indices are uint16 when the vocabulary has at most 65,536 entries (the issue overrides the
spec's int32 there), and the payload carries ``rows`` (int32): metadata is ``12 P + 4`` bytes.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fedbiot_pl.distillation import (
    TopK,
    aggregate_topk,
    batch_targets,
    dense_distill_loss,
    distill_loss,
    index_dtype,
    select_targets,
    topk_of_batch,
)
from fedbiot_pl.distillation.targets import mix_topk, teacher_weights
from fedbiot_pl.distillation.topk import topk_wire_bytes

LN3 = math.log(3)  # 1.098612
Q_HAND = [0.731059, 0.268941]  # softmax([2, 1])
H_Q = 0.582203  # entropy of Q_HAND
KL_HAND = 0.516409  # KL(q || uniform over 3) = ln 3 - H(q)


def payload(values, indices, lengths, metric=None, rows=None, vocab: int = 32_000) -> TopK:
    """A hand-made payload: ``values`` (N_tok, k) logits, ``indices`` (N_tok, k), ``lengths`` per example."""
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    offsets[1:] = torch.cumsum(torch.tensor(lengths), 0).to(torch.int32)
    metric = torch.zeros(len(lengths)) if metric is None else torch.tensor(metric, dtype=torch.float32)
    rows = torch.arange(len(lengths)) if rows is None else torch.tensor(rows)
    return TopK(torch.tensor(values, dtype=torch.float32).to(torch.float16),
                torch.tensor(indices).to(index_dtype(vocab)), offsets, metric, rows.to(torch.int32))


def as_dict(probs: torch.Tensor, indices: torch.Tensor) -> dict[int, float]:
    """One row of ``(probs, indices)`` as ``{index: prob}`` (zero entries dropped)."""
    return {int(i): float(p) for p, i in zip(probs.tolist(), indices.tolist(), strict=True) if p > 1e-9}


def assert_dist(got: dict[int, float], want: dict[int, float], tol: float) -> None:
    assert sorted(got) == sorted(want), (got, want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=tol), (key, got, want)


# ------------------------------------------------------------------------------ the hand case
def hand_batch():
    """Student logits 0 over V=3 (positions 0 and 1), a teacher top-2 [2, 1] at [0, 1] for position 0."""
    targets = payload([[2.0, 1.0]], [[0, 1]], [1], vocab=3)
    probs, indices, mask = batch_targets(targets, [0], length=2)
    logits = torch.zeros(1, 2, 3, requires_grad=True)
    labels = torch.full((1, 2), -100)
    return logits, labels, probs, indices, mask


def test_hand_case_kd_is_ln3_and_kd_minus_entropy_is_the_kl():
    logits, labels, probs, indices, mask = hand_batch()
    q = probs[0, 0]
    assert q.tolist() == pytest.approx(Q_HAND, abs=1e-6)
    assert mask.tolist() == [[True, False]] and indices[0, 0].tolist() == [0, 1]
    loss, ce, kd = distill_loss(logits, labels, probs, indices, mask, alpha=0.0)
    loss.backward()
    loss, ce, kd = loss.detach(), ce.detach(), kd.detach()
    assert float(kd) == pytest.approx(LN3, abs=1e-6) and float(loss) == pytest.approx(LN3, abs=1e-6)
    assert float(ce) == 0.0  # no label token
    entropy = float(-(q * q.log()).sum())
    assert entropy == pytest.approx(H_Q, abs=1e-6)
    assert float(kd) - entropy == pytest.approx(KL_HAND, abs=1e-6)
    kl = F.kl_div(F.log_softmax(logits[0, :1].detach(), -1), F.pad(q, (0, 1))[None], reduction="sum")
    assert float(kl) == pytest.approx(KL_HAND, abs=1e-6)
    # d KD / dz = softmax(z) - q on the target position, nothing elsewhere
    assert logits.grad[0, 0].tolist() == pytest.approx([1 / 3 - Q_HAND[0], 1 / 3 - Q_HAND[1], 1 / 3], abs=1e-6)
    assert logits.grad[0, 1].tolist() == [0.0, 0.0, 0.0]
    dense = dense_distill_loss(logits.detach(), torch.tensor([[-100, 2]]), probs, indices, mask, alpha=0.0)[2]
    assert float(dense) == pytest.approx(LN3, abs=1e-6)


# ------------------------------------------------------------------------------ gathered == dense
def random_case(dtype: torch.dtype = torch.float32, seed: int = 0):
    """(3, 16, 128) logits, k = 8 teacher targets, labels with -100 (one whole row) and a mask with holes."""
    gen = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(3, 16, 128, generator=gen)).to(dtype)
    labels = torch.randint(0, 128, (3, 16), generator=gen)
    labels[torch.rand(3, 16, generator=gen) < 0.3] = -100
    labels[1] = -100  # a sequence without any label token
    values, indices = (3 * torch.randn(3, 16, 128, generator=gen)).topk(8, dim=-1)
    probs = torch.softmax(values, dim=-1)
    mask = torch.rand(3, 16, generator=gen) < 0.7
    mask[:, -1] = False
    mask[2, 3:9] = False  # a run of holes
    assert mask.any() and not mask.all() and (labels != -100).any()
    return logits, labels, probs, indices, mask


def value_and_grad(fn, logits, *args, part: int = 0, **kwargs):
    z = logits.clone().requires_grad_(True)
    out = fn(z, *args, **kwargs)
    out[part].backward()
    return [o.detach() for o in out], z.grad


@pytest.mark.parametrize("chunk_rows", [1, 7, 1000])
@pytest.mark.parametrize("alpha", [0.0, 0.9, 1.0])
def test_gathered_loss_equals_dense_loss_value_and_gradient(alpha, chunk_rows):
    logits, labels, probs, indices, mask = random_case()
    got, g_got = value_and_grad(distill_loss, logits, labels, probs, indices, mask, alpha=alpha, chunk_rows=chunk_rows)
    want, g_want = value_and_grad(dense_distill_loss, logits, labels, probs, indices, mask, alpha=alpha)
    for a, b in zip(got, want, strict=True):  # loss, ce, kd
        assert float(a) == pytest.approx(float(b), abs=1e-6)
    assert g_got.dtype == torch.float32
    torch.testing.assert_close(g_got, g_want, atol=1e-6, rtol=0)


def test_gathered_loss_accepts_uint16_indices():
    logits, labels, probs, indices, mask = random_case()
    a = distill_loss(logits, labels, probs, indices, mask)
    b = distill_loss(logits, labels, probs, indices.to(torch.uint16), mask)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_gathered_loss_equals_dense_loss_in_bf16():
    logits, labels, probs, indices, mask = random_case(torch.bfloat16)
    got, g_got = value_and_grad(distill_loss, logits, labels, probs, indices, mask, alpha=0.9, chunk_rows=7)
    want, g_want = value_and_grad(dense_distill_loss, logits, labels, probs, indices, mask, alpha=0.9)
    for a, b in zip(got, want, strict=True):
        assert float(a) == pytest.approx(float(b), rel=1e-2)
    assert g_got.dtype == torch.bfloat16
    scale = float(g_want.float().abs().max())
    assert float((g_got.float() - g_want.float()).abs().max()) <= 1e-2 * scale


def test_gathered_loss_equals_dense_loss_in_float64():
    logits, labels, probs, indices, mask = random_case(torch.float64)
    got, g_got = value_and_grad(distill_loss, logits, labels, probs, indices, mask, alpha=0.9, chunk_rows=7)
    want, g_want = value_and_grad(dense_distill_loss, logits, labels, probs, indices, mask, alpha=0.9)
    for a, b in zip(got, want, strict=True):
        assert float(a) == pytest.approx(float(b), abs=1e-6)
    assert g_got.dtype == torch.float64
    torch.testing.assert_close(g_got, g_want, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------ alpha = 1, the parts alone
def test_alpha_one_gives_exactly_the_cross_entropy_gradient():
    logits, labels, probs, indices, mask = random_case()
    _, g_alpha1 = value_and_grad(distill_loss, logits, labels, probs, indices, mask, alpha=1.0)
    (loss, ce, kd), g_ce_only = value_and_grad(distill_loss, logits, labels, alpha=1.0)  # no targets
    assert float(kd) == 0.0 and torch.equal(loss, ce)
    assert torch.equal(g_alpha1, g_ce_only)
    _, g_ce_part = value_and_grad(distill_loss, logits, labels, part=1)  # the ce output, default alpha
    assert torch.equal(g_alpha1, g_ce_part)
    # ... and that is F.cross_entropy's gradient on the shifted labels
    z = logits.clone().requires_grad_(True)
    ref = F.cross_entropy(z[:, :-1].reshape(-1, 128), labels[:, 1:].reshape(-1), ignore_index=-100)
    ref.backward()
    ref = ref.detach()
    assert float(ce) == pytest.approx(float(ref), abs=1e-6)
    torch.testing.assert_close(g_alpha1, z.grad, atol=1e-6, rtol=0)


@pytest.mark.parametrize("part", [1, 2])
def test_ce_and_kd_parts_backpropagate_alone(part):
    logits, labels, probs, indices, mask = random_case()
    _, g_got = value_and_grad(distill_loss, logits, labels, probs, indices, mask, part=part, chunk_rows=7)
    _, g_want = value_and_grad(dense_distill_loss, logits, labels, probs, indices, mask, part=part)
    assert g_got.abs().max() > 0
    torch.testing.assert_close(g_got, g_want, atol=1e-6, rtol=0)


def test_a_sum_of_the_outputs_backpropagates_through_every_part():
    logits, labels, probs, indices, mask = random_case()
    grads = []
    for fn in (distill_loss, dense_distill_loss):
        z = logits.clone().requires_grad_(True)
        loss, ce, kd = fn(z, labels, probs, indices, mask, alpha=0.3)
        (loss + 2 * ce - 0.5 * kd).backward()
        grads.append(z.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------ bytes
def test_wire_bytes_by_formula_and_of_a_real_payload():
    assert topk_wire_bytes(8, 2, 4, 32_000) == 64 + 64 + 12 + 8 + 8 == 156
    assert topk_wire_bytes(8, 2, 4, 70_000) == 8 * 4 * 6 + 12 * 2 + 4 == 220
    assert index_dtype(32_000) == index_dtype(65_536) == torch.uint16
    assert index_dtype(65_537) == index_dtype(70_000) == torch.int32
    for vocab, index_type, total in ((32_000, torch.uint16, 156), (70_000, torch.int32, 220)):
        logits = torch.randn(2, 6, vocab, generator=torch.Generator().manual_seed(0))
        attention = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])  # 4 and 6 tokens, right-padded
        labels = torch.randint(0, vocab, (2, 6)).masked_fill(attention == 0, -100)
        t = topk_of_batch(logits, attention, labels, torch.tensor([7, 3]), top_k=4)
        assert t.lengths().tolist() == [3, 5] and t.num_tokens == 8 and t.k == 4 and t.num_examples == 2
        sizes = {key: x.numel() * x.element_size() for key, x in t.tensors().items()}
        assert t.indices.dtype == index_type
        assert sizes == {"values": 64, "indices": 8 * 4 * (2 if vocab <= 65_536 else 4), "offsets": 12,
                         "metric": 8, "rows": 8}
        assert sum(sizes.values()) == topk_wire_bytes(8, 2, 4, vocab) == total


# ------------------------------------------------------------------------------ topk_of_batch
def hand_logits_batch(vocab: int = 10, padded_columns: int = 0):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, vocab + padded_columns, generator=gen)
    logits[..., vocab:] = 100.0  # a model's padded output columns: larger than every real logit
    attention = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    labels = torch.tensor([[-100, 4, 7, -100, -100], [-100, -100, 1, 2, 3]])
    return logits, attention, labels


def test_topk_of_batch_keeps_the_real_positions_that_have_a_next_token():
    logits, attention, labels = hand_logits_batch()
    t = topk_of_batch(logits, attention, labels, torch.tensor([11, 5]), top_k=3)
    kept = [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (1, 3)]  # row 0: 3 tokens -> 2; row 1: 5 tokens -> 4
    want_values, want_indices = torch.stack([logits[b, p] for b, p in kept]).topk(3, dim=-1)
    assert t.values.dtype == torch.float16 and t.indices.dtype == torch.uint16
    assert torch.equal(t.values, want_values.to(torch.float16))
    assert torch.equal(t.indices.long(), want_indices)
    assert t.offsets.dtype == torch.int32 and t.offsets.tolist() == [0, 2, 6]
    assert t.rows.dtype == torch.int32 and t.rows.tolist() == [11, 5]
    assert t.lengths().tolist() == [2, 4]
    # metric: per-row mean CE over the label tokens (position t predicts labels[t + 1])
    by_hand = [
        -(F.log_softmax(logits[0, 0], -1)[4] + F.log_softmax(logits[0, 1], -1)[7]) / 2,
        -(F.log_softmax(logits[1, 1], -1)[1] + F.log_softmax(logits[1, 2], -1)[2]
          + F.log_softmax(logits[1, 3], -1)[3]) / 3,
    ]
    reference = [F.cross_entropy(logits[0, :2], torch.tensor([4, 7])),
                 F.cross_entropy(logits[1, 1:4], torch.tensor([1, 2, 3]))]
    assert t.metric.dtype == torch.float32
    assert t.metric.tolist() == pytest.approx([float(x) for x in by_hand], abs=1e-6)
    assert t.metric.tolist() == pytest.approx([float(x) for x in reference], abs=1e-6)
    assert torch.equal(t.example(1)[0], t.values[2:6])


def test_topk_of_batch_never_keeps_a_padded_vocabulary_column():
    logits, attention, labels = hand_logits_batch(vocab=10, padded_columns=2)
    t = topk_of_batch(logits, attention, labels, torch.tensor([0, 1]), top_k=3, vocab_size=10)
    assert int(t.indices.long().max()) < 10 and float(t.values.max()) < 100
    real = topk_of_batch(logits[..., :10].contiguous(), attention, labels, torch.tensor([0, 1]), top_k=3)
    assert all(torch.equal(a, b) for a, b in zip(t.tensors().values(), real.tensors().values(), strict=True))


# ------------------------------------------------------------------------------ teacher choice
def test_teacher_weights_by_hand():
    metrics = torch.tensor([[0.5], [0.2]])  # (D=2 candidates, P=1 example)
    assert teacher_weights(metrics, "greater").tolist() == [[0.0], [1.0]]  # lower CE, higher reward
    assert teacher_weights(torch.tensor([[0.3], [0.3]]), "greater").tolist() == [[1.0], [0.0]]  # tie: own
    weighted = teacher_weights(metrics, "weighted_mean")  # softmax([e^-0.5, e^-0.2])
    assert weighted[:, 0].tolist() == pytest.approx([0.447148, 0.552852], abs=1e-6)
    assert teacher_weights(metrics, "mean").tolist() == [[0.5], [0.5]]
    with pytest.raises(ValueError, match="distill_strategy"):
        teacher_weights(metrics, "highest")


def two_candidates():
    """Candidates over 2 examples (2 and 3 tokens, k = 2); own prefers example 0, the peer example 1."""
    own = payload([[1, 0], [2, 0], [3, 0], [4, 0], [5, 0]], [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]], [2, 3],
                  metric=[0.1, 0.9], rows=[40, 41])
    peer = payload([[-1, -2], [-3, -4], [-5, -6], [-7, -8], [-9, -10]],
                   [[10, 11], [12, 13], [14, 15], [16, 17], [18, 19]], [2, 3], metric=[0.5, 0.2], rows=[40, 41])
    return own, peer


def test_select_targets_greater_copies_the_chosen_candidate_per_example():
    own, peer = two_candidates()
    before = own.values.clone()
    chosen = select_targets([own, peer], "greater")
    for got, want in zip(chosen.example(0), own.example(0), strict=True):
        assert torch.equal(got, want)
    for got, want in zip(chosen.example(1), peer.example(1), strict=True):
        assert torch.equal(got, want)
    assert chosen.metric.tolist() == pytest.approx([0.1, 0.2])
    assert torch.equal(chosen.offsets, own.offsets) and torch.equal(chosen.rows, own.rows)
    assert chosen.indices.dtype == torch.uint16 and torch.equal(own.values, before)  # the inputs unchanged


def test_select_targets_weighted_mean_by_hand():
    own = payload([[math.log(0.75), math.log(0.25)]], [[0, 1]], [1], metric=[0.5])
    peer = payload([[0.0, -60.0]], [[2, 3]], [1], metric=[0.2])  # {2: 1, 3: e^-60}
    mixed = select_targets([own, peer], "weighted_mean", top_k=3)
    w_own, w_peer = 0.447148, 0.552852
    got = as_dict(torch.softmax(mixed.values.float(), -1)[0], mixed.indices[0].long())
    assert_dist(got, {2: w_peer, 0: 0.75 * w_own, 1: 0.25 * w_own}, tol=1e-3)
    assert float(mixed.metric[0]) == pytest.approx(w_own * 0.5 + w_peer * 0.2, abs=1e-6)


# ------------------------------------------------------------------------------ mixing and aggregation
A_PROBS, A_INDEX = torch.tensor([[0.75, 0.25]]), torch.tensor([[0, 1]])  # {0: .75, 1: .25}
B_PROBS, B_INDEX = torch.tensor([[1.0]]), torch.tensor([[2]])  # {2: 1.0}


def test_mix_topk_by_hand():
    probs, indices = mix_topk([A_PROBS, B_PROBS], [A_INDEX, B_INDEX], torch.tensor([1.0, 1.0]), top_k=3)
    assert indices.tolist() == [[2, 0, 1]]  # decreasing probability
    assert_dist(as_dict(probs[0], indices[0]), {0: 0.375, 1: 0.125, 2: 0.5}, tol=1e-6)
    probs, indices = mix_topk([A_PROBS, B_PROBS], [A_INDEX, B_INDEX], torch.tensor([1.0, 1.0]), top_k=2)
    assert_dist(as_dict(probs[0], indices[0]), {2: 0.571429, 0: 0.428571}, tol=1e-6)
    # unequal weights 3 : 1
    probs, indices = mix_topk([A_PROBS, B_PROBS], [A_INDEX, B_INDEX], torch.tensor([3.0, 1.0]), top_k=3)
    assert indices.tolist() == [[0, 2, 1]]
    assert_dist(as_dict(probs[0], indices[0]), {0: 0.5625, 1: 0.1875, 2: 0.25}, tol=1e-6)
    # a shared index sums over the sources
    probs, indices = mix_topk([A_PROBS, torch.tensor([[0.5, 0.5]])], [A_INDEX, torch.tensor([[1, 3]])],
                              torch.tensor([1.0, 1.0]), top_k=3)
    assert_dist(as_dict(probs[0], indices[0]), {0: 0.375, 1: 0.375, 3: 0.25}, tol=1e-6)


def test_mix_topk_with_per_row_weights():
    weights = torch.tensor([[1.0, 1.0], [0.0, 1.0]])  # (D sources, N rows): row 0 takes the first source only
    probs, indices = mix_topk([A_PROBS.repeat(2, 1), B_PROBS.repeat(2, 1)],
                              [A_INDEX.repeat(2, 1), B_INDEX.repeat(2, 1)], weights, top_k=2)
    assert_dist(as_dict(probs[0], indices[0]), {0: 0.75, 1: 0.25}, tol=1e-6)
    assert_dist(as_dict(probs[1], indices[1]), {2: 0.571429, 0: 0.428571}, tol=1e-6)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_aggregate_topk_by_hand_through_fp16_values(tau):
    a = payload([[tau * math.log(0.75), tau * math.log(0.25)]], [[0, 1]], [1], metric=[1.0], rows=[9])
    b = payload([[0.0, -60.0 * tau]], [[2, 5]], [1], metric=[3.0], rows=[9])  # {2: 1, 5: e^-60}

    def decoded(t: TopK) -> dict[int, float]:
        return as_dict(torch.softmax(t.values.float() / tau, -1)[0], t.indices[0].long())

    assert_dist(decoded(a), {0: 0.75, 1: 0.25}, tol=1e-3)
    mean3 = aggregate_topk([a, b], [1.0, 1.0], top_k=3, temperature=tau)
    assert mean3.values.dtype == torch.float16 and mean3.indices.dtype == torch.uint16 and mean3.k == 3
    assert_dist(decoded(mean3), {0: 0.375, 1: 0.125, 2: 0.5}, tol=1e-3)
    assert float(mean3.metric[0]) == pytest.approx(2.0)
    assert torch.equal(mean3.offsets, a.offsets) and mean3.rows.tolist() == [9]
    mean2 = aggregate_topk([a, b], [1.0, 1.0], top_k=2, temperature=tau)
    assert_dist(decoded(mean2), {2: 0.571429, 0: 0.428571}, tol=1e-3)
    weighted = aggregate_topk([a, b], [3.0, 1.0], top_k=3, temperature=tau)
    assert_dist(decoded(weighted), {0: 0.5625, 1: 0.1875, 2: 0.25}, tol=1e-3)
    assert float(weighted.metric[0]) == pytest.approx(1.5)


def test_payloads_over_different_rows_cannot_be_combined():
    a = payload([[1.0, 0.0], [1.0, 0.0]], [[0, 1], [0, 1]], [1, 1], rows=[0, 1])
    other_rows = payload([[1.0, 0.0], [1.0, 0.0]], [[0, 1], [0, 1]], [1, 1], rows=[0, 2])
    other_lengths = payload([[1.0, 0.0], [1.0, 0.0]], [[0, 1], [0, 1]], [2, 0], rows=[0, 1])
    for bad in (other_rows, other_lengths):
        with pytest.raises(ValueError, match="different public rows"):
            aggregate_topk([a, bad], [1.0, 1.0], top_k=2)
        with pytest.raises(ValueError, match="different public rows"):
            select_targets([a, bad], "greater")
    with pytest.raises(ValueError, match="no payloads"):
        aggregate_topk([], [], top_k=2)


# ------------------------------------------------------------------------------ batch targets
def test_batch_targets_pads_and_masks_by_hand():
    # example 0: one target token; example 1: two
    t = payload([[2.0, 1.0], [0.0, 0.0], [1.0, 3.0]], [[0, 1], [4, 5], [6, 7]], [1, 2])
    probs, indices, mask = batch_targets(t, [1, 0], length=3)
    assert probs.shape == (2, 3, 2) and probs.dtype == torch.float32 and indices.dtype == torch.int64
    assert mask.tolist() == [[True, True, False], [True, False, False]]
    assert indices.tolist() == [[[4, 5], [6, 7], [0, 0]], [[0, 1], [0, 0], [0, 0]]]
    assert probs[0, 0].tolist() == pytest.approx([0.5, 0.5])
    assert probs[0, 1].tolist() == pytest.approx([0.119203, 0.880797], abs=1e-6)  # softmax([1, 3])
    assert probs[1, 0].tolist() == pytest.approx(Q_HAND, abs=1e-6)
    assert probs[0, 2].tolist() == probs[1, 1].tolist() == probs[1, 2].tolist() == [0.0, 0.0]
    hot, _, _ = batch_targets(t, [0], length=3, temperature=2.0)
    assert hot[0, 0].tolist() == pytest.approx(torch.softmax(torch.tensor([1.0, 0.5]), -1).tolist(), abs=1e-6)


def test_batch_targets_refuses_an_example_longer_than_the_batch():
    t = payload([[2.0, 1.0], [0.0, 0.0], [1.0, 3.0]], [[0, 1], [4, 5], [6, 7]], [1, 2])
    batch_targets(t, [1], length=3)  # 2 targets = 3 tokens: fits
    with pytest.raises(ValueError, match="public example 1 has 2 target tokens"):
        batch_targets(t, [0, 1], length=2)


# ------------------------------------------------------------------------------ the payload type
def test_topk_concat_example_and_lengths():
    a = payload([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]], [[0, 1], [2, 3], [4, 5]], [1, 2], metric=[0.1, 0.2],
                rows=[5, 6])
    b = payload([[4.0, 0.0], [5.0, 0.0], [6.0, 0.0]], [[6, 7], [8, 9], [10, 11]], [3], metric=[0.3], rows=[7])
    assert a.lengths().tolist() == [1, 2] and a.lengths().dtype == torch.int64
    c = TopK.concat([a, b])
    assert c.offsets.dtype == torch.int32 and c.offsets.tolist() == [0, 1, 3, 6]
    assert c.lengths().tolist() == [1, 2, 3] and c.num_examples == 3 and c.num_tokens == 6 and c.k == 2
    assert c.rows.tolist() == [5, 6, 7] and c.metric.tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert c.indices.dtype == torch.uint16 and c.values.dtype == torch.float16
    for got, want in zip(c.example(2), b.example(0), strict=True):
        assert torch.equal(got, want)
    values, indices = c.example(1)
    assert values[:, 0].tolist() == [2.0, 3.0] and indices.long().tolist() == [[2, 3], [4, 5]]
    back = TopK.from_tensors(c.tensors())
    assert list(c.tensors()) == ["values", "indices", "offsets", "metric", "rows"]
    assert all(torch.equal(x, y) for x, y in zip(back.tensors().values(), c.tensors().values(), strict=True))


def test_select_targets_greater_metric_is_the_chosen_one_even_without_labels():
    own, peer = two_candidates()
    own.metric[1] = float("inf")  # example 1 has no label token for the own model ...
    peer.metric[1] = float("inf")  # ... nor for the peer (both see the same public labels)
    chosen = select_targets([own, peer], "greater")
    assert not torch.isnan(chosen.metric).any() and chosen.metric[1] == float("inf")


def test_greater_compares_cross_entropies_beyond_where_exp_underflows():
    weights = teacher_weights(torch.tensor([[120.0], [110.0]]), "greater")  # exp(-110) is 0 in float32
    assert weights[:, 0].tolist() == [0.0, 1.0]


def test_mix_pads_a_row_with_too_few_distinct_indices_with_unused_ones_at_probability_0():
    probs, indices = mix_topk([torch.tensor([[0.75, 0.25]])] * 2, [torch.tensor([[0, 2]])] * 2,
                              torch.tensor([1.0, 1.0]), 3)
    assert indices.tolist() == [[0, 2, 1]]  # 1: the smallest index the row does not hold
    assert probs.tolist() == [[0.75, 0.25, 0.0]]


def test_bf16_logits_get_the_float32_gradient_rounded_once():
    torch.manual_seed(0)
    logits = (torch.randn(2, 16, 64) * 4).bfloat16().requires_grad_()  # confident rows: p_y close to 1
    labels = torch.randint(0, 64, (2, 16))
    probs = torch.softmax(torch.randn(2, 16, 8), -1)
    indices = torch.stack([torch.randperm(64)[:8] for _ in range(32)]).reshape(2, 16, 8)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[:, -1] = False
    (grad,) = torch.autograd.grad(distill_loss(logits, labels, probs, indices, mask, 0.9)[0], logits)
    reference = logits.detach().float().requires_grad_()
    (expected,) = torch.autograd.grad(dense_distill_loss(reference, labels, probs, indices, mask, 0.9)[0], reference)
    large = expected.abs() > 1e-4
    relative = (grad.float() - expected).abs()[large] / expected.abs()[large]
    assert float(relative.max()) < 0.01  # bf16 keeps 8 bits: 0.4 % at most when rounded once
