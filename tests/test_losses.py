import math

import torch

from fedbiot_pl.model.losses import kl_teacher_student, lora_delta_sq, lora_proximal, normalized_l2


def test_normalized_l2_hand_computed():
    teacher = torch.tensor([[[1.0, 2.0], [3.0, 0.0]]])
    student = torch.tensor([[[0.0, 2.0], [3.0, 2.0]]])
    # squared errors 1, 0, 0, 4 -> mean 1.25; teacher squares 1, 4, 9, 0 -> mean 3.5
    assert math.isclose(normalized_l2(student, teacher).item(), 1.25 / 3.5, rel_tol=1e-6)
    mask = torch.tensor([[1, 0]])  # only the first position: errors 1, 0 / squares 1, 4
    assert math.isclose(normalized_l2(student, teacher, mask).item(), 0.5 / 2.5, rel_tol=1e-6)


def test_normalized_l2_is_computed_in_float32():
    teacher = torch.randn(2, 3, 4).bfloat16()
    assert normalized_l2(teacher + 1, teacher).dtype == torch.float32


def test_kl_hand_computed():
    # one position, 2-way vocab: p_T = (0.5, 0.5) from zero logits, p_S = softmax(log 3, 0) = (0.75, 0.25)
    teacher = torch.zeros(1, 1, 2)
    student = torch.tensor([[[math.log(3.0), 0.0]]])
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert math.isclose(kl_teacher_student(student, teacher).item(), expected, rel_tol=1e-6)


def test_kl_averages_over_kept_positions_only():
    teacher = torch.zeros(1, 2, 2)
    student = torch.tensor([[[math.log(3.0), 0.0], [0.0, 0.0]]])
    per_position = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert math.isclose(kl_teacher_student(student, teacher).item(), per_position / 2, rel_tol=1e-6)
    mask = torch.tensor([[1, 0]])
    assert math.isclose(kl_teacher_student(student, teacher, mask).item(), per_position, rel_tol=1e-6)
    assert kl_teacher_student(teacher, teacher).item() == 0.0


def test_lora_delta_sq_equals_the_materialised_norm():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 10, generator=g), torch.randn(6, 4, generator=g)
    a0, b0 = torch.randn(4, 10, generator=g), torch.randn(6, 4, generator=g)
    s = 2.0
    expected = (s * b @ a - s * b0 @ a0).pow(2).sum()
    torch.testing.assert_close(lora_delta_sq(a, b, a0, b0, s), expected, rtol=1e-5, atol=1e-4)
    assert lora_delta_sq(a, b, a, b, s).abs().item() < 1e-3


def test_lora_proximal_hand_computed_and_has_gradient():
    # B A = [[1*2]] = 2, anchor B0 A0 = [[1*1]] = 1, s = 2 -> (2*2 - 2*1)^2 = 4
    a = torch.tensor([[2.0]], requires_grad=True)
    b = torch.tensor([[1.0]], requires_grad=True)
    value = lora_proximal([(a, b, torch.tensor([[1.0]]), torch.tensor([[1.0]]), 2.0)])
    assert math.isclose(value.item(), 4.0, rel_tol=1e-6)
    value.backward()
    # d/da (s b a - s)^2 = 2 (s b a - s) s b = 2 * 2 * 2 = 8; d/db = 2 (s b a - s) s a = 16
    assert math.isclose(a.grad.item(), 8.0, rel_tol=1e-6)
    assert math.isclose(b.grad.item(), 16.0, rel_tol=1e-6)
