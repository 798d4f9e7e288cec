"""One printed line per epoch: progress for runs that share a console, where progress bars would interleave."""

from __future__ import annotations

import time

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_only


class EpochLine(pl.Callback):
    """Prints ``<run> epoch e/E: val/top1 x%, t s`` after each epoch's validation (and the run's name at its start)."""

    def __init__(self):
        self._started = 0.0

    @staticmethod
    def _label(trainer: pl.Trainer) -> str:
        return trainer.logger.name if trainer.logger is not None else "fit"

    @rank_zero_only
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.perf_counter()
        print(f"{self._label(trainer)}: started, {trainer.max_epochs} epochs", flush=True)

    @rank_zero_only
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        top1 = trainer.callback_metrics.get("val/top1")
        score = f"val/top1 {100 * float(top1):.2f}%" if top1 is not None else "no validation"
        elapsed = time.perf_counter() - self._started
        print(
            f"{self._label(trainer)}: epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: {score}, {elapsed:.0f} s",
            flush=True,
        )
