"""Distillation losses: KL at temperature against hand-computed values, teacher signal modes, mixing."""

from __future__ import annotations

import math

import pytest
import torch

from avdet.distill.losses import distillation_loss, mix_images, teacher_targets


def softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_kl_loss_equals_hand_computed_value():
    teacher = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    student = torch.tensor([[0.0, 1.0, 0.0], [1.0, -1.0, 2.0]])
    temperature = 4.0
    expected = 0.0
    for t_row, s_row in zip(teacher.tolist(), student.tolist(), strict=True):
        p = softmax([v / temperature for v in t_row])
        q = softmax([v / temperature for v in s_row])
        expected += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    expected = expected / 2 * temperature**2  # batch mean, times T^2
    targets = teacher_targets(teacher, temperature, "soft")
    loss = distillation_loss(student, targets, temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert expected > 0.01
    # Identical outputs: zero loss; the gradient reaches the student.
    same = teacher.clone().requires_grad_(True)
    assert distillation_loss(same, targets, temperature).item() == pytest.approx(0.0, abs=1e-6)
    student.requires_grad_(True)
    distillation_loss(student, targets, temperature).backward()
    assert student.grad.abs().sum() > 0


def test_topk_keeps_the_k_largest_renormalised():
    logits = torch.tensor([[3.0, 1.0, 2.0, -1.0, 0.0]])
    targets = teacher_targets(logits, temperature=2.0, signal="topk", topk=2)
    p = softmax([3.0 / 2, 2.0 / 2])
    torch.testing.assert_close(targets, torch.tensor([[p[0], 0.0, p[1], 0.0, 0.0]]))
    # k larger than the number of classes is the soft signal.
    torch.testing.assert_close(
        teacher_targets(logits, 2.0, "topk", topk=10), teacher_targets(logits, 2.0, "soft")
    )
    # The loss against top-k targets ignores the dropped classes: a student matching the kept
    # ones (and putting almost nothing elsewhere) has a near-zero loss.
    student = torch.tensor([[3.0, -50.0, 2.0, -50.0, -50.0]])
    assert distillation_loss(student, targets, 2.0).item() == pytest.approx(0.0, abs=1e-6)


def test_argmax_is_one_hot_whatever_the_temperature():
    logits = torch.tensor([[0.1, 0.3, 0.2], [5.0, -1.0, 4.9]])
    for temperature in (1.0, 8.0):
        torch.testing.assert_close(
            teacher_targets(logits, temperature, "argmax"),
            torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]),
        )
    # KL to a one-hot is cross-entropy at T, times T^2.
    student = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    targets = teacher_targets(logits, 8.0, "argmax")
    q0, q1 = softmax([1 / 8, 2 / 8, 0.0]), softmax([0.0, 0.0, 0.0])
    expected = (-math.log(q0[1]) - math.log(q1[0])) / 2 * 64
    assert distillation_loss(student, targets, 8.0).item() == pytest.approx(expected, rel=1e-5)


def test_bad_signal_and_topk_are_errors():
    with pytest.raises(ValueError, match="DISTILL.SIGNAL must be one of"):
        teacher_targets(torch.zeros(1, 3), 1.0, "hard")
    with pytest.raises(ValueError, match="DISTILL.TOPK must be positive"):
        teacher_targets(torch.zeros(1, 3), 1.0, "topk", topk=0)


def test_mixup_is_a_convex_combination_with_the_reversed_batch():
    torch.manual_seed(0)
    images = torch.rand(4, 3, 8, 8)
    mixed = mix_images(images, cutmix_alpha=0.0, mixup_alpha=1.0)
    # mixed = lam * x + (1 - lam) * flip(x): solve for lam from one pixel, check all of them.
    a, b = images[0, 0, 0, 0], images[3, 0, 0, 0]
    lam = (mixed[0, 0, 0, 0] - b) / (a - b)
    assert 0.0 <= lam <= 1.0
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.flip(0))


def test_cutmix_pastes_one_box_from_the_reversed_batch():
    torch.manual_seed(1)
    images = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 16, 16).clone()
    fractions = []
    for _ in range(20):
        mixed = mix_images(images, cutmix_alpha=1.0)
        pasted = mixed[0, 0] == 3.0  # image 0 gets pixels of image 3
        assert torch.all((mixed[0] == 0.0) | (mixed[0] == 3.0))
        if pasted.any():  # one axis-aligned box
            rows, cols = pasted.any(1).nonzero(), pasted.any(0).nonzero()
            box = pasted[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
            assert box.all()
        fractions.append(pasted.float().mean().item())
    assert 0.05 < sum(fractions) / len(fractions) < 0.95
    # No alpha: untouched; both: either mode, the output still has the input's shape.
    assert mix_images(images) is images
    assert mix_images(images, 0.25, 0.25).shape == images.shape
