"""The MEAL V2 losses as plain functions: soft targets, soft cross-entropy, discriminator BCE."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ensemble_soft_targets(teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean of the teachers' softmax probabilities (not the softmax of the mean logits).

    teacher_logits: [K, B, C] -> probabilities [B, C] in fp32.
    """
    return teacher_logits.float().softmax(dim=-1).mean(dim=0)


def soft_cross_entropy(student_logits: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    """Batch mean of -sum_c p_c log_softmax(s)_c, in fp32 whatever the autocast dtype."""
    log_probs = F.log_softmax(student_logits.float(), dim=-1)
    return -(soft_targets.float() * log_probs).sum(dim=-1).mean()


def discriminator_targets(batch_size: int, like: torch.Tensor) -> torch.Tensor:
    """[1, 0] for the B student rows stacked above [0, 1] for the B teacher rows."""
    student = torch.tensor([1.0, 0.0], dtype=torch.float32, device=like.device).expand(batch_size, 2)
    return torch.cat([student, student.flip(-1)], dim=0)


def discriminator_loss(discriminator_outputs: torch.Tensor) -> torch.Tensor:
    """BCE with logits over all 2B x 2 entries; rows are student outputs first, then teachers'."""
    targets = discriminator_targets(discriminator_outputs.shape[0] // 2, discriminator_outputs)
    return F.binary_cross_entropy_with_logits(discriminator_outputs.float(), targets)
