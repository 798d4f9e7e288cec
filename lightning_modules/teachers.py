"""The frozen teacher ensemble: eval mode by construction, no gradients, per-teacher input normalization."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn


class FrozenTeacher(nn.Module):
    """One teacher plus the affine map from the data's normalization to the one its weights expect."""

    def __init__(
        self,
        model: nn.Module,
        data_mean: Sequence[float],
        data_std: Sequence[float],
        teacher_mean: Sequence[float],
        teacher_std: Sequence[float],
    ):
        super().__init__()
        self.model = model
        data_mean, data_std = torch.tensor(data_mean), torch.tensor(data_std)
        teacher_mean, teacher_std = torch.tensor(teacher_mean), torch.tensor(teacher_std)
        self.renormalize = not (torch.allclose(data_mean, teacher_mean) and torch.allclose(data_std, teacher_std))
        # x_teacher = (x * std_d + mean_d - mean_t) / std_t
        self.register_buffer("scale", (data_std / teacher_std).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", ((data_mean - teacher_mean) / teacher_std).view(1, -1, 1, 1), persistent=False)
        for param in self.model.parameters():
            param.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """fp32 logits, whatever dtype and memory format the teacher itself runs in."""
        images = images.float()
        if self.renormalize:
            images = images * self.scale + self.shift
        weight = next(self.model.parameters(), None)
        if weight is not None and weight.dtype != images.dtype:
            images = images.to(weight.dtype)
        return self.model(images).float()


class TeacherEnsemble(nn.Module):
    """Frozen teachers. ``train(True)`` is ignored, so no Trainer or parent module can unfreeze BatchNorm."""

    def __init__(self, teachers: Sequence[FrozenTeacher]):
        super().__init__()
        if not teachers:
            raise ValueError("MEAL V2 needs at least one teacher: add an entry under model.teachers.")
        self.members = nn.ModuleList(teachers)
        super().train(False)

    def train(self, mode: bool = True) -> "TeacherEnsemble":
        return super().train(False)

    def __iter__(self) -> Iterator[FrozenTeacher]:
        return iter(self.members)

    def __len__(self) -> int:
        return len(self.members)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of every teacher, stacked: [K, B, C]."""
        return torch.stack([teacher(images) for teacher in self.members])
