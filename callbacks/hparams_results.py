"""Each run's hyperparameters with its final top-1 (agreement, NLL, ECE) in TensorBoard's HParams tab, so runs line up for comparison."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard.summary import hparams

RESULTS = (("top1", "top1"), ("agreement", "agreement"), ("nll", "loss"), ("ece", "ece"))  # (column, logged tag)


class HParamsWithResults(pl.Callback):
    """After ``fit`` (and ``test``), records the module's hyperparameters, flattened (``student/name``,
    ``teachers/0/checkpoint``, ...), with ``hparams/val_top1`` and, where logged, ``hparams/val_agreement``, ``_nll``
    and ``_ece`` (``hparams/test_...`` after ``test``): the last epoch's values.

    Each run writes only its own session (no experiment summary), so TensorBoard's HParams tab builds its
    columns from every run's hyperparameters: a baseline and a MEAL V2 run show side by side, each with its own.
    The modules save their hyperparameters with ``logger=False``: Lightning's own record would add an
    experiment summary per run and the nested values as single text columns.
    """

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer, pl_module, "val")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer, pl_module, "test")

    def _record(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        logged = trainer.callback_metrics
        if f"{stage}/top1" not in logged or not trainer.is_global_zero:
            return
        metrics = {
            f"hparams/{stage}_{name}": float(logged[f"{stage}/{tag}"])
            for name, tag in RESULTS
            if f"{stage}/{tag}" in logged
        }
        flat = flat_hparams(dict(pl_module.hparams))
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                _, session_start, session_end = hparams(flat, metrics)
                writer = logger.experiment
                writer.file_writer.add_summary(session_start)
                writer.file_writer.add_summary(session_end)
                for name, number in metrics.items():
                    writer.add_scalar(name, number, trainer.global_step)
                writer.flush()
            else:
                logger.log_hyperparams(flat, metrics)


def flat_hparams(values: dict, prefix: str = "") -> dict[str, Any]:
    """Nested hyperparameters as ``a/b/0/c`` keys holding numbers, booleans or text; private ``_...`` keys dropped."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if str(key).startswith("_"):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_hparams(value, f"{name}/"))
        elif isinstance(value, (list, tuple)) and any(isinstance(v, dict) for v in value):
            flat.update(flat_hparams(dict(enumerate(value)), f"{name}/"))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:  # None, lists of numbers, anything else: as text
            flat[name] = str(list(value) if isinstance(value, (list, tuple)) else value)
    return flat
