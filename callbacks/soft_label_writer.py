"""Writes the teachers' top-k predictions on stored crops into the DataModule's soft-label cache."""
from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter


class SoftLabelWriter(BasePredictionWriter):
    """With ``python cli.py predict``: each batch's crops, flips and top-k probabilities go to disk at
    once (an interrupted run resumes with the images not yet marked done; shards write disjoint rows)."""

    def __init__(self):
        super().__init__(write_interval="batch")

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        store = getattr(trainer.datamodule, "soft_label_store", None)
        if store is None or not isinstance(prediction, dict) or "probabilities" not in prediction:
            return
        values, indices = prediction["probabilities"].topk(store.meta["top_k"], dim=-1)
        store.write(
            prediction["index"].cpu().numpy(),
            prediction["boxes"].cpu().numpy(),
            prediction["flips"].cpu().numpy(),
            values.half().cpu().numpy(),
            indices.cpu().numpy().astype(store.arrays["indices"].dtype),
        )
