"""Writes the teachers' top-k predictions on stored crops into the DataModule's soft-label cache."""

from __future__ import annotations

import json
import time

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from errors import require_non_negative, require_positive
from lightning_modules.teachers import ensemble_warning, teacher_scores
from storage.atomic_files import atomic_write_text


class SoftLabelWriter(BasePredictionWriter):
    """With ``python cli.py predict``: each batch's crops, flips, top-k probabilities and mean logits go into the
    cache's memory maps; every ``commit_every`` images (and at the end, or when stopped by an exception or a signal)
    they are flushed and marked done. An interrupted run resumes with the images not yet marked done; shards write
    disjoint rows.

    Before writing, the ensemble's own val top-1 is printed, logged (``predict/ensemble_val_top1``) and
    recorded in ``meta.json``, so a wrong teacher file shows before hours of generation; at the end, the
    storage per image and the generation rate are printed. ``check_batches``: val batches that check scores
    (None: all), shown with a progress bar. ``commit_every``: images per flush (at most that much work is made
    again after a hard kill; flushing every batch costs a sync of seven files each time).
    """

    def __init__(self, check_batches: int | None = 50, commit_every: int = 10_000):
        super().__init__(write_interval="batch")
        require_non_negative(check_batches=check_batches)
        require_positive(commit_every=commit_every)
        self.check_batches = check_batches
        self.commit_every = commit_every
        self._started, self._images, self._since_commit = 0.0, 0, 0
        self._store = None  # the cache being written; None when predict classifies files

    def on_predict_start(self, trainer: pl.Trainer, pl_module) -> None:
        writes_cache = getattr(trainer.datamodule, "predict_mode", None) == "soft_labels"
        self._store = store = trainer.datamodule.soft_label_store if writes_cache else None
        if store is None:
            return
        scores = None  # once, on global rank 0 (every rank would score the same images), then shared
        if trainer.is_global_zero:
            loader = trainer.datamodule.val_dataloader()
            scores = teacher_scores(
                pl_module.teachers, loader, pl_module.device, self.check_batches, "Scoring the teachers on val"
            )
        scores = trainer.strategy.broadcast(scores)
        top1, total = scores["ensemble"], scores["images"]
        rank_zero_info(
            f"Soft-label cache '{store.folder}': the teacher ensemble's val top-1 is {top1:.2f}% on {total} images; "
            "if that is not what your teachers score, stop now and check their weights."
        )
        if (warning := ensemble_warning(scores)) is not None:
            rank_zero_warn(warning)
        if trainer.logger is not None:
            trainer.logger.log_metrics({"predict/ensemble_val_top1": top1}, step=0)
        if trainer.is_global_zero:
            store.meta["ensemble_val_top1"] = {"top1": round(top1, 2), "images": total}
            atomic_write_text(store.folder / "meta.json", json.dumps(store.meta))
        self._started, self._images = time.perf_counter(), 0

    def write_on_batch_end(
        self, trainer: pl.Trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ):
        store = self._store
        if store is None:
            return
        values, indices = prediction["probabilities"].topk(store.meta["top_k"], dim=-1)
        logits = prediction["logits"].gather(-1, indices)
        store.write(
            prediction["index"].cpu().numpy(),
            boxes=prediction["boxes"].cpu().numpy(),
            flips=prediction["flips"].cpu().numpy(),
            values=values.half().cpu().numpy(),
            logits=logits.half().cpu().numpy(),
            indices=indices.cpu().numpy().astype(store.arrays["indices"].dtype),
            **{name: prediction[name].cpu().numpy() for name in ("partners", "lambdas") if name in prediction},
        )
        self._images += len(prediction["index"])
        self._since_commit += len(prediction["index"])
        if self._since_commit >= self.commit_every:
            store.commit()
            self._since_commit = 0

    def on_exception(self, trainer: pl.Trainer, pl_module, exception: BaseException) -> None:
        if self._store is not None:
            self._store.commit()  # rows written whole before the exception: kept

    def on_predict_end(self, trainer: pl.Trainer, pl_module) -> None:
        store = self._store
        if store is None:
            return
        store.commit()
        if not self._images:
            return
        seconds = time.perf_counter() - self._started
        crops = store.meta["crops"]
        rank_zero_info(
            f"Soft-label cache '{store.folder}': {self._images} images x {crops} crops in {seconds:.0f} s "
            f"({self._images / seconds:.1f} images/s, {self._images * crops / seconds:.0f} crops/s on this process); "
            f"{store.bytes_per_image()} bytes per image."
        )
