"""Test helper loaded by the DDP subprocesses: every rank saves its batches and student weights."""

from pathlib import Path

import lightning.pytorch as pl
import torch


class SaveRankState(pl.Callback):
    def __init__(self, dirpath: str):
        self.dirpath = dirpath
        self.batches = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append(batch[0].detach().cpu().clone())

    def on_fit_end(self, trainer, pl_module):
        Path(self.dirpath).mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in pl_module.student.state_dict().items()}
        modes = [m.training for m in pl_module.teachers.modules()]
        backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else None
        torch.save(
            {"student": state, "teacher_training": any(modes), "batches": self.batches, "backend": backend},
            Path(self.dirpath) / f"rank{trainer.global_rank}.pt",
        )
