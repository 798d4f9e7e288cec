"""``last.ckpt`` for resume: after ``fit`` it holds the final state, after a SIGTERM the step it stopped at."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException


class LastCheckpoint(ModelCheckpoint):
    """Saves on its triggers (every epoch, or every N steps), once more when training ends, and at the
    step where a SIGTERM (how SLURM and Kubernetes pre-empt) arrived.

    With ``every_n_train_steps`` the final step is rarely a multiple of N, and Lightning would leave a
    ``last.ckpt`` older than the finished run (and than ``best-*.ckpt``). On SIGTERM Lightning stops
    after the current batch (raising ``SIGTERMException``); the checkpoint is written at that batch's
    end, where step checkpoints are, so ``--ckpt_path last`` continues exactly.

    Saving "now" goes through ModelCheckpoint's own private steps (``_should_skip_saving_checkpoint``,
    ``_monitor_candidates``, ``_save_topk_checkpoint``) so the file name, the top-k bookkeeping and the
    once-per-step guard are exactly those of its triggers: Lightning has no public "save now" on a
    ModelCheckpoint. Pinned by tests/test_resume.py (the final step with step checkpoints, and SIGTERM).
    """

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args)
        if trainer.received_sigterm:
            self._save_now(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._save_now(trainer)

    def _save_now(self, trainer: pl.Trainer) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            exception.checkpoint = (self.best_model_path, self._last_global_step_saved)  # for cli.py's message
