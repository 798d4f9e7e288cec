"""The MEAL V2 losses against values computed by hand."""

from __future__ import annotations

import math

import torch

from lightning_modules.discriminator import Discriminator, hidden_widths
from lightning_modules.losses import (
    discriminator_loss,
    discriminator_targets,
    ensemble_soft_targets,
    soft_cross_entropy,
)


def test_soft_target_is_mean_of_probabilities_not_softmax_of_mean_logits():
    teacher_logits = torch.tensor([[[0.0, 0.0]], [[math.log(3.0), 0.0]]])  # [K=2, B=1, C=2]
    targets = ensemble_soft_targets(teacher_logits)
    torch.testing.assert_close(targets, torch.tensor([[0.625, 0.375]]))
    assert not torch.allclose(targets, teacher_logits.mean(0).softmax(-1))


def test_soft_cross_entropy_matches_hand_computation():
    targets = torch.tensor([[0.625, 0.375], [0.625, 0.375]])
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    expected = (math.log(2.0) + -(0.625 * math.log(0.75) + 0.375 * math.log(0.25))) / 2
    torch.testing.assert_close(soft_cross_entropy(logits, targets), torch.tensor(expected))


def test_soft_cross_entropy_is_fp32_under_bf16_inputs():
    logits = torch.randn(4, 10).bfloat16()
    targets = torch.randn(4, 10).softmax(-1)
    loss = soft_cross_entropy(logits, targets)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, soft_cross_entropy(logits.float(), targets))


def test_discriminator_targets_put_students_first():
    targets = discriminator_targets(2, torch.zeros(1))
    torch.testing.assert_close(targets, torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]))


def test_discriminator_loss_is_bce_averaged_over_all_entries():
    outputs = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # one student row, one teacher row

    def bce(x, y):
        p = 1 / (1 + math.exp(-x))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    expected = (bce(2.0, 1) + bce(0.0, 0) + bce(0.0, 0) + bce(1.0, 1)) / 4
    torch.testing.assert_close(discriminator_loss(outputs), torch.tensor(expected))


def test_discriminator_widths_follow_released_code_and_never_fall_below_8():
    assert hidden_widths(1000) == (125, 15)
    assert hidden_widths(100) == (12, 8)
    assert hidden_widths(10) == (8, 8)
    for classes in (10, 100, 1000):
        disc = Discriminator(classes)
        out = disc(torch.randn(6, classes))
        assert out.shape == (6, 2) and (out >= 0).all()  # ReLU after the last layer, as released
