"""The frozen teacher ensemble: eval mode by construction, no gradients, per-teacher input normalization."""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from typing import Optional

import torch
from torch import nn

from lightning_modules.losses import ensemble_soft_targets
from models.loading import ModelSource, create_model, expected_normalization


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


def build_teacher(
    source: ModelSource, num_classes: int, in_chans: int, data_mean: Sequence[float], data_std: Sequence[float]
) -> FrozenTeacher:
    """A frozen teacher from its source, fed the data's normalization re-mapped to its own."""
    model, hparams = create_model(source, num_classes, in_chans, keep_pretrained_head=True)
    mean, std = expected_normalization(source, model, hparams, data_mean, data_std)
    return FrozenTeacher(model, data_mean, data_std, mean, std)


class TeacherEnsemble(nn.Module):
    """Frozen teachers. ``train(True)`` is ignored, so no Trainer or parent module can unfreeze BatchNorm."""

    def __init__(self, teachers: Sequence[FrozenTeacher]):
        super().__init__()
        if not teachers:
            raise ValueError("MEAL V2 needs at least one teacher: add an entry under model.teachers.")
        self.members = nn.ModuleList(teachers)
        self._last: Optional[tuple] = None  # (weak reference to the last evaluated batch, the teachers' logits)
        super().train(False)

    def train(self, mode: bool = True) -> "TeacherEnsemble":
        return super().train(False)

    def __iter__(self) -> Iterator[FrozenTeacher]:
        return iter(self.members)

    def __len__(self) -> int:
        return len(self.members)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of every teacher, stacked: [K, B, C]. In evaluation (inference mode) the same batch asked again
        (validation's teacher ceiling, then ``EnsembleAgreement``) gets its answer without running them twice."""
        if not torch.is_inference_mode_enabled():
            return torch.stack([teacher(images) for teacher in self.members])
        if self._last is None or self._last[0]() is not images:
            self._last = (weakref.ref(images), torch.stack([teacher(images) for teacher in self.members]))
        return self._last[1]


def member_and_ensemble_probabilities(teacher_logits: torch.Tensor) -> torch.Tensor:
    """[K + 1, B, C]: each teacher's probabilities, then the ensemble's (mean of probabilities): what every teacher
    accuracy of the project scores (the checks before training and generation, validation's ceiling, the zoo)."""
    return torch.cat([teacher_logits.float().softmax(-1), ensemble_soft_targets(teacher_logits)[None]])


@torch.no_grad()
def teacher_scores(
    teachers: TeacherEnsemble, batches, device, max_batches: Optional[int] = None, progress: Optional[str] = None
) -> dict[str, float]:
    """Top-1 (%) of each teacher (``teacher0``, ...) and of their ensemble (mean of probabilities) on labelled batches;
    ``progress``: a progress bar with this title."""
    correct = torch.zeros(len(teachers) + 1, dtype=torch.long)
    total = 0
    if progress is not None:
        from rich.progress import track

        count = len(batches) if max_batches is None else min(len(batches), max_batches)
        batches = track(batches, description=progress, total=count, transient=True)
    for index, (images, labels) in enumerate(batches):
        if max_batches is not None and index >= max_batches:
            break
        images, labels = images.to(device), labels.to(device)
        probabilities = member_and_ensemble_probabilities(teachers(images))
        correct += (probabilities.argmax(-1) == labels).sum(-1).cpu()
        total += len(labels)
    names = [f"teacher{k}" for k in range(len(teachers))] + ["ensemble"]
    return {name: 100 * int(c) / max(total, 1) for name, c in zip(names, correct, strict=True)} | {"images": total}


def ensemble_warning(scores: dict[str, float]) -> Optional[str]:
    """One line when the ensemble scores below its best teacher: the teachers disagree badly or one is broken."""
    teachers = {k: v for k, v in scores.items() if k.startswith("teacher")}
    best = max(teachers, key=teachers.get)
    if len(teachers) < 2 or scores["ensemble"] >= teachers[best]:
        return None
    listed = ", ".join(f"{k} {v:.2f}%" for k, v in teachers.items())
    return (
        f"The teacher ensemble scores {scores['ensemble']:.2f}% top-1 on {scores['images']} val images, below its best "
        f"teacher ({listed}): one teacher may be broken (wrong weights, normalization or classes) or much weaker; "
        "check each teacher (python cli.py validate shows val/teacher{k}_top1) before distilling."
    )
