"""``last.ckpt`` for resume: after ``fit`` it holds the final state, after a SIGTERM the step it stopped at."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from private_apis import last_saved_step, save_checkpoint_now


class LastCheckpoint(ModelCheckpoint):
    """Saves on its triggers (every epoch, or every N steps), once more when training ends, and at the
    step where a SIGTERM (how SLURM and Kubernetes pre-empt) arrived.

    With ``every_n_train_steps`` the final step is rarely a multiple of N, and Lightning would leave a
    ``last.ckpt`` older than the finished run (and than ``best-*.ckpt``). On SIGTERM Lightning stops
    after the current batch (raising ``SIGTERMException``); the checkpoint is written at that batch's
    end, where step checkpoints are, so ``--ckpt_path last`` continues exactly.

    Saving "now" goes through ModelCheckpoint's own steps (``private_apis.save_checkpoint_now``), so the file
    name, the top-k bookkeeping and the once-per-step guard are exactly those of its triggers.
    """

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args)
        if trainer.received_sigterm:
            save_checkpoint_now(self, trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        save_checkpoint_now(self, trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            exception.checkpoint = (self.best_model_path, last_saved_step(self))  # for cli.py's message
