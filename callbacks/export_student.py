"""Write the student alone as timm-loadable weights for the best and the last epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import lightning.pytorch as pl
import torch
from safetensors.torch import save
from timm.models._hub import save_config_for_hf  # timm's own export config writer (not re-exported)

from callbacks.atomic_files import atomic_write
from callbacks.finite_loss import refuse_non_finite


class ExportStudent(pl.Callback):
    """After each validation, saves ``<run>/student/{last,best}/`` = ``model.safetensors`` + ``config.json``.

    The folder is timm's own export format (architecture, num_classes, in_chans, input size, mean/std):
    ``timm.create_model("local-dir:<folder>", pretrained=True)`` or
    ``timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=<folder>/model.safetensors), num_classes=N)``
    gives the trained student back. "best" follows ``monitor`` (higher is better for ``mode="max"``).
    """

    def __init__(self, dirpath: Optional[str] = None, monitor: str = "val/top1", mode: str = "max"):
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got '{mode}'.")
        self.dirpath = dirpath
        self.monitor = monitor
        self.mode = mode
        self.best: Optional[float] = None

    def _root(self, trainer: pl.Trainer) -> Path:
        if self.dirpath:
            return Path(self.dirpath)
        base = trainer.log_dir if trainer.logger is not None else trainer.default_root_dir
        return Path(base) / "student"

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        root = self._root(trainer)  # on every rank: trainer.log_dir is a collective under DDP
        config = data_config(trainer, pl_module)
        self._export(trainer, pl_module, root / "last", config)
        score = trainer.callback_metrics.get(self.monitor)
        if score is None:
            return
        score = float(score)
        if self.best is None or (score > self.best if self.mode == "max" else score < self.best):
            self.best = score
            self._export(trainer, pl_module, root / "best", config)

    def _export(self, trainer: pl.Trainer, pl_module: pl.LightningModule, folder: Path, config: dict) -> None:
        model = pl_module.network
        tensors = {
            k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
            for k, v in model.state_dict().items()
        }
        refuse_non_finite(tensors, f"exported student '{folder}'", trainer)
        if trainer.is_global_zero:
            _write(model, tensors, folder, config)

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best = state_dict.get("best")


def _write(model, tensors: dict, folder: Path, config: dict) -> None:
    atomic_write(folder / "model.safetensors", lambda name: Path(name).write_bytes(save(tensors)))
    atomic_write(folder / "config.json", lambda name: save_config_for_hf(model, name, data_config=config))


def data_config(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
    """The preprocessing the student was trained with: channels, size, crop, normalization."""
    hp = pl_module.hparams
    datamodule = getattr(trainer, "datamodule", None)
    size = getattr(datamodule, "image_size", None)
    config = {"mean": tuple(hp.data_mean), "std": tuple(hp.data_std)}
    if size:
        config["input_size"] = (hp.in_chans, size, size)
    crop_pct = getattr(datamodule, "crop_pct", None)
    if crop_pct:
        config["crop_pct"] = crop_pct
    return config
