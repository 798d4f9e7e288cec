"""Optimizer and learning-rate schedule shared by the LightningModules.

The schedule is a pure function of the configuration and the epoch (as timm's schedulers are), applied
when training starts (after a checkpoint's optimizer state is restored) and at every epoch end for the next: a resumed run follows the schedule it is given (a longer ``max_epochs``, a new
``lr``), not the one stored in its checkpoint, and what the config records is what ran.
"""

from __future__ import annotations

import math
from typing import Literal, Optional, Sequence

import torch

OptimizerName = Literal["sgd", "adamw"]
ScheduleName = Literal["step", "cosine", "constant"]


def build_optimizer(
    param_groups: list[dict], name: OptimizerName, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """SGD with momentum (the paper) or AdamW; each group carries a ``name`` and its base ``lr``."""
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"Unknown optimizer '{name}': use 'sgd' or 'adamw'.")


def check_schedule(schedule: ScheduleName, milestones: Sequence[int], max_epochs: Optional[int]) -> None:
    if schedule not in ("step", "cosine", "constant"):
        raise ValueError(f"Unknown schedule '{schedule}': use 'step', 'cosine' or 'constant'.")
    if schedule == "cosine" and (not max_epochs or max_epochs < 1):
        raise ValueError("schedule 'cosine' needs trainer.max_epochs: set it in the config.")


def schedule_factor(
    schedule: ScheduleName, epoch: int, max_epochs: Optional[int], milestones: Sequence[int], gamma: float
) -> float:
    """The lr multiplier of ``epoch``: step decay by ``gamma`` at each milestone reached, or cosine to zero."""
    if schedule == "step":
        return gamma ** sum(epoch >= m for m in milestones)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(epoch, max_epochs) / max_epochs))
    return 1.0


class EpochSchedule:
    """LightningModule mixin: each epoch's optimizer values follow the config, via ``epoch_hyperparameters()``.

    Applied when training starts (after a checkpoint's optimizer state is restored, fresh or resumed) and at
    every epoch end for the next epoch (so callbacks such as LearningRateMonitor read what the epoch runs).
    """

    def epoch_hyperparameters(self) -> tuple[dict[str, float], dict[str, float]]:
        """(base lr of each optimizer group by ``name``, other values written into every group, e.g. momentum)."""
        raise NotImplementedError

    def apply_schedule(self, epoch: int) -> None:
        hp = self.hparams
        base_lrs, group_values = self.epoch_hyperparameters()
        factor = schedule_factor(hp.schedule, epoch, self.trainer.max_epochs, hp.milestones, hp.gamma)
        set_epoch_hyperparameters(self.optimizers(use_pl_optimizer=False), base_lrs, factor, **group_values)

    def on_train_start(self) -> None:
        self.apply_schedule(self.current_epoch)

    def on_train_epoch_end(self) -> None:
        self.apply_schedule(self.current_epoch + 1)


def set_epoch_hyperparameters(
    optimizer: torch.optim.Optimizer, base_lrs: dict[str, float], factor: float, **group_values
) -> None:
    """Write this epoch's lr (base lr of the group's ``name`` x factor) and the configured values into every group.

    Runs after a checkpoint's optimizer state is restored, so the config wins over the stored groups.
    """
    for group in optimizer.param_groups:
        group["lr"] = base_lrs[group["name"]] * factor
        for key, value in group_values.items():
            if key in group:
                group[key] = value
