"""``last.ckpt`` for resume, which after ``fit`` always holds the final state."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint


class LastCheckpoint(ModelCheckpoint):
    """Saves on its triggers (every epoch, or every N steps) and once more when training ends.

    With ``every_n_train_steps`` the final step is rarely a multiple of N, and Lightning would leave a
    ``last.ckpt`` older than the finished run (and than ``best-*.ckpt``).
    """

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))
