"""The terms of the student's loss, one small class or function each, all reading one view of the batch.

``DistillationBatch`` is that view: the student's logits, the labels, the epochs elapsed, and the ensemble's mean
probabilities and mean logits on the same crops (online or from the soft-label cache alike). ``MealV2`` sums its
``objective`` (one of the classes below, ``class_path`` + ``init_args`` in a config), the discriminator term (its
weights live in the module, see discriminator.py) and ``hard_label_weight`` times ``hard_label_cross_entropy``.
A new method is one class here, one overlay in configs/ and one test against a hand computation.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.nn.functional as F

from errors import ConfigError, require_positive
from lightning_modules.losses import soft_cross_entropy


@dataclass(frozen=True)
class DistillationBatch:
    """What every loss term sees of one training batch."""

    student_logits: torch.Tensor  # [B, C], the student's, in the autocast dtype
    labels: Optional[torch.Tensor]  # [B] hard labels (read only by the terms that use them)
    mean_probabilities: torch.Tensor  # [B, C] mean of the teachers' softmax, fp32
    mean_logits: torch.Tensor  # [B, C] mean of the teachers' logits, fp32
    epoch: float = 0.0  # epochs elapsed when the step started, fractional (epoch + batch / batches)

    def require_labels(self, term: str) -> torch.Tensor:
        if self.labels is None:
            raise ValueError(f"{term} needs the hard labels: pass them to MealV2.distillation_losses.")
        return self.labels


class DistillationObjective:
    """The student's loss against the teachers: ``DistillationBatch -> scalar``. A subclass keeps each ``__init__``
    argument as an attribute of the same name (``describe`` reads them back) and sets ``label`` (its name in the
    HParams tab) and ``needs_every_class`` (True: it reads the mean logits, so a cache must store every class)."""

    label = "?"
    needs_every_class = False

    def __call__(self, batch: DistillationBatch) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict:
        """Plain data for the checkpoint's hyperparameters and the HParams tab: the class and its arguments."""
        arguments = inspect.signature(type(self)).parameters.values()
        return {
            "class_path": f"{type(self).__module__}.{type(self).__qualname__}",
            "init_args": {p.name: getattr(self, p.name) for p in arguments if p.kind is p.POSITIONAL_OR_KEYWORD},
        }


def as_objective(value) -> DistillationObjective:
    """An objective from what a config or a checkpoint's hyperparameters hold: None (MEAL V2's), an instance,
    or ``{class_path, init_args}``."""
    if value is None:
        return SoftCrossEntropy()
    if isinstance(value, DistillationObjective):
        return value
    if isinstance(value, dict) and "class_path" in value:
        module, _, name = value["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module or __name__), name)
        return cls(**value.get("init_args", {}))
    raise TypeError(f"objective must be a DistillationObjective or {{class_path, init_args}}, got {value!r}")


def hard_label_cross_entropy(batch: DistillationBatch) -> torch.Tensor:
    """Cross-entropy of the student on the one-hot labels, fp32 (MEAL V2 leaves it out; KD, DKD and DIST add it)."""
    return F.cross_entropy(batch.student_logits.float(), batch.require_labels("The hard-label term"))


class SoftCrossEntropy(DistillationObjective):
    """MEAL V2's: cross-entropy of the student against the mean of the teachers' probabilities (no temperature)."""

    label = "MEAL V2"

    def __call__(self, batch):
        return soft_cross_entropy(batch.student_logits, batch.mean_probabilities)


class HintonKD(DistillationObjective):
    """Hinton et al. (2015) from the ensemble: T^2 KL(softmax(mean logits / T) || softmax(student / T)); the T^2
    keeps the gradients' scale as T changes. Its usual hard-label term is ``MealV2.hard_label_weight``."""

    label = "Hinton KD"
    needs_every_class = True

    def __init__(self, temperature: float = 4.0):
        require_positive(temperature=temperature)
        self.temperature = temperature

    def __call__(self, batch):
        t = self.temperature
        targets = F.softmax(batch.mean_logits.float() / t, dim=-1)
        log_student = F.log_softmax(batch.student_logits.float() / t, dim=-1)
        return F.kl_div(log_student, targets, reduction="batchmean") * t * t


class LogitStandardizedKD(HintonKD):
    """Logit Standardization KD (Sun et al., CVPR 2024): Hinton KD with every row of teacher and student logits
    z-scored first, (z - mean) / (std + 1e-7) with the sample std as the reference code takes it, so the student
    matches the teacher's logit relations, not their scale. Published with base temperature 2, weighed 9 beside
    0.1 x the hard-label cross-entropy on CIFAR-100 (``MealV2.objective_weight``, ``hard_label_weight``)."""

    label = "LS-KD"

    def __init__(self, temperature: float = 2.0):
        super().__init__(temperature)

    def __call__(self, batch):
        def standardize(logits: torch.Tensor) -> torch.Tensor:
            logits = logits.float()
            return (logits - logits.mean(-1, keepdim=True)) / (logits.std(-1, keepdim=True) + 1e-7)

        return super().__call__(
            replace(batch, student_logits=standardize(batch.student_logits), mean_logits=standardize(batch.mean_logits))
        )


class DKD(DistillationObjective):
    """Decoupled KD (Zhao et al., CVPR 2022): ``(alpha TCKD + beta NCKD) T^2``, scaled by min(epoch / warm-up, 1).

    TCKD is the KL between the teacher's and the student's two-way split (target class, the rest); NCKD the KL
    between their softmaxes over the non-target classes alone. The published CIFAR-100 setting is alpha 1, beta 8,
    T 4, warm-up 20 epochs (of 240), beside the hard-label cross-entropy (``MealV2.hard_label_weight`` 1). The
    warm-up rises per step here (the reference code steps it once per epoch).
    """

    label = "DKD"
    needs_every_class = True

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, warmup_epochs: float = 20.0):
        require_positive(temperature=temperature)
        if alpha < 0 or beta < 0 or warmup_epochs < 0:
            raise ConfigError(f"alpha, beta and warmup_epochs must be >= 0, got {alpha}, {beta}, {warmup_epochs}.")
        self.alpha, self.beta, self.temperature, self.warmup_epochs = alpha, beta, temperature, warmup_epochs

    def __call__(self, batch):
        t = self.temperature
        labels = batch.require_labels("DKD")
        student = batch.student_logits.float() / t
        teacher = batch.mean_logits.float() / t
        target = F.one_hot(labels, student.shape[-1]).bool()
        tckd = _binary_kl(*_target_and_rest(teacher, target), *_target_and_rest(student, target)).mean()
        # Non-target softmax: the target logit pushed far below the others (exp underflows to exactly 0).
        log_q = F.log_softmax(teacher.masked_fill(target, -1e4), dim=-1)
        log_p = F.log_softmax(student.masked_fill(target, -1e4), dim=-1)
        nckd = (log_q.exp() * (log_q - log_p)).sum(-1).mean()
        warmup = min(batch.epoch / self.warmup_epochs, 1.0) if self.warmup_epochs > 0 else 1.0
        return warmup * (self.alpha * tckd + self.beta * nckd) * t * t


def _target_and_rest(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) and log p(any other class) of softmax(logits), computed in log space (no log of 1 - p)."""
    log_all = torch.logsumexp(logits, dim=-1)
    log_target = (logits * target).sum(-1) - log_all
    log_rest = torch.logsumexp(logits.masked_fill(target, float("-inf")), dim=-1) - log_all
    return log_target, log_rest


def _binary_kl(log_q1, log_q0, log_p1, log_p0) -> torch.Tensor:
    """KL((q1, q0) || (p1, p0)) per row, from log-probabilities."""
    return log_q1.exp() * (log_q1 - log_p1) + log_q0.exp() * (log_q0 - log_p0)


class DIST(DistillationObjective):
    """DIST (Huang et al., NeurIPS 2022): match relations, not values. With p = softmax(z / tau), inter-class:
    1 - mean over rows of Pearson(p_S[i], p_T[i]); intra-class: 1 - mean over classes of Pearson(p_S[:, c], p_T[:, c])
    across the batch; loss ``tau^2 (beta inter + gamma intra)``. CIFAR-100 setting: beta = gamma = 2, tau 4, beside
    the hard-label cross-entropy (``MealV2.hard_label_weight`` 1); ImageNet: beta = gamma = 1, tau 1."""

    label = "DIST"
    needs_every_class = True

    def __init__(self, beta: float = 2.0, gamma: float = 2.0, tau: float = 4.0):
        require_positive(tau=tau)
        self.beta, self.gamma, self.tau = beta, gamma, tau

    def __call__(self, batch):
        student = F.softmax(batch.student_logits.float() / self.tau, dim=-1)
        teacher = F.softmax(batch.mean_logits.float() / self.tau, dim=-1)
        inter = 1 - _pearson(student, teacher).mean()
        intra = 1 - _pearson(student.T, teacher.T).mean()
        return self.tau**2 * (self.beta * inter + self.gamma * intra)


def _pearson(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``."""
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + eps)
