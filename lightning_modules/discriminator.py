"""The MEAL V2 discriminator on class logits, and the gradient reversal of its adversarial variant."""

from __future__ import annotations

import torch
from torch import nn

from lightning_modules.losses import discriminator_loss

MIN_HIDDEN = 8


def hidden_widths(num_classes: int, reduction: int = 8) -> tuple[int, int]:
    """C/8 and C/64 (integer division, as released: 125 and 15 at C=1000), never below 8 units."""
    first = max(num_classes // reduction, MIN_HIDDEN)
    return first, max(first // reduction, MIN_HIDDEN)


class Discriminator(nn.Module):
    """C -> C/8 -> C/64 -> 2 with ReLU after every layer, the last included (released code's 1x1 convs)."""

    def __init__(self, num_classes: int, reduction: int = 8):
        super().__init__()
        first, second = hidden_widths(num_classes, reduction)
        self.layers = nn.Sequential(
            nn.Linear(num_classes, first),
            nn.ReLU(),
            nn.Linear(first, second),
            nn.ReLU(),
            nn.Linear(second, 2),
            nn.ReLU(),
        )

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.layers(logits)


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -grad


def reverse_gradient(x: torch.Tensor) -> torch.Tensor:
    """Identity forward, negated gradient backward: one backward pass gives a min-max game."""
    return _ReverseGradient.apply(x)


def discriminator_term(discriminator: Discriminator, batch, adversarial: bool) -> torch.Tensor:
    """MEAL V2's discriminator BCE on ``[student logits; mean teacher logits]`` of a ``DistillationBatch``.

    ``adversarial``: the student's rows pass a gradient reversal, so the student learns to fool the discriminator
    (the paper's text); otherwise student and discriminator minimize the same BCE (the released code)."""
    student_rows = reverse_gradient(batch.student_logits) if adversarial else batch.student_logits
    rows = torch.cat([student_rows, batch.mean_logits.to(student_rows.dtype)], dim=0)
    return discriminator_loss(discriminator(rows))
