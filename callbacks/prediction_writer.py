"""Writes what ``predict`` says about image files: a CSV and a JSON of file, top-k class names and probabilities."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from errors import ConfigError
from storage.atomic_files import atomic_write_text
from storage.run_folder import foreign_files, is_marked

MARKER = ".meal_v2_predictions"  # beside the predictions this project wrote: only those are ever replaced


class ClassPredictionWriter(BasePredictionWriter):
    """With ``python cli.py predict --data.init_args.predict_files [...]`` (a Classifier, an exported student as a
    Classifier, or MealV2's student): ``predictions.csv`` and ``predictions.json`` with each file's ``top_k`` class
    names and probabilities, in ``output_dir`` (default: the run's ``predict/`` folder). Class names are the data's.
    """

    def __init__(self, output_dir: Optional[str] = None, top_k: int = 5):
        super().__init__(write_interval="batch")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}.")
        self.output_dir, self.top_k = output_dir, top_k
        self._rows: list[dict] = []
        self._active = False  # predict classifies files (not writing the soft-label cache)

    def on_predict_start(self, trainer: pl.Trainer, pl_module) -> None:
        self._rows = []
        self._active = getattr(trainer.datamodule, "predict_mode", None) == "files"
        folder = self._folder(trainer)
        if not self._active or is_marked(folder.parent):  # a run's own predict/ record is the project's
            return
        if theirs := foreign_files(folder, MARKER, ("predictions.csv", "predictions.json")):  # before any image
            raise ConfigError(
                f"'{folder}' holds {theirs[0]}, which this project did not write: it is left alone; give "
                "--predictions.output_dir another folder."
            )

    def _folder(self, trainer: pl.Trainer) -> Path:
        return Path(self.output_dir) if self.output_dir else Path(trainer.log_dir or trainer.default_root_dir)

    def write_on_batch_end(
        self, trainer: pl.Trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ):
        if not self._active:
            return
        names = trainer.datamodule.class_names
        values, indices = prediction["probabilities"].topk(min(self.top_k, len(names)), dim=-1)
        for path, row_values, row_indices in zip(prediction["paths"], values.tolist(), indices.tolist(), strict=True):
            top = [
                {"class": names[i], "probability": round(v, 6)} for i, v in zip(row_indices, row_values, strict=True)
            ]
            self._rows.append({"file": path, "top": top})

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        if not self._active:
            return
        rows = self._gathered(trainer)
        if not trainer.is_global_zero or not rows:
            return
        folder = self._folder(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MARKER).touch()
        k = len(rows[0]["top"])
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["file", *[f"{kind}{i}" for i in range(1, k + 1) for kind in ("class", "probability")]])
        for row in rows:
            writer.writerow(
                [row["file"], *[value for top in row["top"] for value in (top["class"], top["probability"])]]
            )
        atomic_write_text(folder / "predictions.csv", text.getvalue())
        atomic_write_text(folder / "predictions.json", json.dumps(rows, indent=1))
        rank_zero_info(f"Predictions for {len(rows)} images: {folder / 'predictions.csv'} (and .json)")

    def _gathered(self, trainer: pl.Trainer) -> list[dict]:
        """Every rank's rows, once per file (a distributed sampler pads the last batch with repeats), sorted by file."""
        rows = self._rows
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            parts: list = [None] * trainer.world_size
            torch.distributed.all_gather_object(parts, rows)
            rows = [row for part in parts for row in part]
        return sorted({row["file"]: row for row in rows}.values(), key=lambda row: row["file"])
