"""Each run's hyperparameters with its final top-1 in TensorBoard's HParams tab, so runs line up for comparison."""

from __future__ import annotations

import lightning.pytorch as pl


class HParamsWithResults(pl.Callback):
    """After ``fit`` (and ``test``), records the module's hyperparameters with ``hparams/val_top1``
    (``hparams/test_top1``): the last epoch's values, under their own names so the val/test curves stay as logged."""

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer, pl_module, "val")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer, pl_module, "test")

    def _record(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        value = trainer.callback_metrics.get(f"{stage}/top1")
        if trainer.logger is None or value is None:
            return
        trainer.logger.log_hyperparams(pl_module.hparams, {f"hparams/{stage}_top1": float(value)})
