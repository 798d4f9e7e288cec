"""Distillation objectives: how the student learns from the ensemble's targets, one small class each.

Every objective gets the same two views of the teachers on a batch, online or from the soft-label cache:
the mean of their probabilities and the mean of their logits. ``MealV2`` takes one as ``objective``
(``class_path`` + ``init_args`` in a config); its discriminator term stays a ``MealV2`` switch, as it has
weights and an optimizer group of its own. A new objective is one class here, one overlay and one test.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_modules.losses import soft_cross_entropy


class DistillationObjective:
    """The student's loss against the teachers: ``(student_logits, mean_probabilities, mean_logits) -> loss``."""

    needs_every_class = False  # True: the cache must store every class (top_k = classes) to serve it

    def __call__(
        self, student_logits: torch.Tensor, mean_probabilities: torch.Tensor, mean_logits: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict:
        """Plain data for the checkpoint's hyperparameters and the HParams tab."""
        return {"class_path": f"{type(self).__module__}.{type(self).__qualname__}", "init_args": dict(vars(self))}


def as_objective(value) -> DistillationObjective:
    """An objective from what a config or a checkpoint's hyperparameters hold: None (MEAL V2's), an instance,
    or ``{class_path, init_args}``."""
    if value is None:
        return SoftCrossEntropy()
    if isinstance(value, DistillationObjective):
        return value
    if isinstance(value, dict) and "class_path" in value:
        import importlib

        module, _, name = value["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module or __name__), name)
        return cls(**value.get("init_args", {}))
    raise TypeError(f"objective must be a DistillationObjective or {{class_path, init_args}}, got {value!r}")


class SoftCrossEntropy(DistillationObjective):
    """MEAL V2's: cross-entropy of the student against the mean of the teachers' probabilities (no temperature)."""

    def __call__(self, student_logits, mean_probabilities, mean_logits):
        return soft_cross_entropy(student_logits, mean_probabilities)


class HintonKD(DistillationObjective):
    """Hinton et al.'s knowledge distillation from the ensemble: KL(softmax(mean logits / T) || softmax(student / T)),
    times T^2 so its gradients keep their scale as T changes. Combine with hard labels through
    ``MealV2.hard_label_weight``. From the cache it needs every class's logit (top_k = number of classes)."""

    needs_every_class = True

    def __init__(self, temperature: float = 4.0):
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        self.temperature = temperature

    def __call__(self, student_logits, mean_probabilities, mean_logits):
        t = self.temperature
        targets = F.softmax(mean_logits.float() / t, dim=-1)
        log_student = F.log_softmax(student_logits.float() / t, dim=-1)
        return F.kl_div(log_student, targets, reduction="batchmean") * t * t
