"""The MEAL V2 discriminator on class logits, and the gradient reversal of its adversarial variant."""

from __future__ import annotations

import torch
from torch import nn

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
