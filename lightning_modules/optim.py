"""Optimizer and learning-rate schedule shared by the LightningModules."""
from __future__ import annotations

from typing import Literal, Optional

import torch

OptimizerName = Literal["sgd", "adamw"]
ScheduleName = Literal["step", "cosine", "constant"]


def build_optimizer(
    param_groups: list[dict], name: OptimizerName, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """SGD with momentum (the paper) or AdamW; each group may carry its own ``lr``."""
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"Unknown optimizer '{name}': use 'sgd' or 'adamw'.")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: ScheduleName,
    milestones: list[int],
    gamma: float,
    max_epochs: Optional[int],
) -> Optional[torch.optim.lr_scheduler.LRScheduler]:
    """Per-epoch schedule: step decay at ``milestones`` (paper: x0.1 after epoch 100) or cosine to zero."""
    if schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=gamma)
    if schedule == "cosine":
        if not max_epochs or max_epochs < 1:
            raise ValueError("schedule 'cosine' needs trainer.max_epochs: set it in the config.")
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs)
    if schedule == "constant":
        return None
    raise ValueError(f"Unknown schedule '{schedule}': use 'step', 'cosine' or 'constant'.")


def lightning_optimizer_config(optimizer: torch.optim.Optimizer, scheduler) -> dict:
    """What ``configure_optimizers`` returns: the optimizer and, if any, its per-epoch schedule."""
    if scheduler is None:
        return {"optimizer": optimizer}
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
