"""Write the trained network alone as timm-loadable weights (and ONNX) for the best and the last epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from timm.models._hub import save_config_for_hf  # timm's own export config writer (not re-exported)

from callbacks.atomic_files import atomic_write, save_safetensors
from callbacks.finite_loss import refuse_non_finite
from callbacks.onnx_export import export_folder_onnx


class ExportStudent(pl.Callback):
    """After each validation, saves ``<run>/<what>/{last,best}/`` = ``model.safetensors`` + ``config.json``;
    when ``fit`` ends, ``model.onnx`` beside them (``onnx: false`` skips it). ``<what>`` is ``student`` for
    MealV2 and ``model`` for Classifier (teachers and inits are trained with it).

    The folder is timm's own export format (architecture, num_classes, in_chans, input size, mean/std, and the
    data's class names as ``label_names``): ``timm.create_model("local-dir:<folder>", pretrained=True)`` (after
    ``import lightning_modules`` for the project's small-image backbones) gives the trained network back.
    "best" follows ``monitor`` (higher is better for ``mode="max"``); the CLI turns it off where val is the test set.
    """

    def __init__(
        self, dirpath: Optional[str] = None, monitor: Optional[str] = "val/top1", mode: str = "max", onnx: bool = True
    ):
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got '{mode}'.")
        self.dirpath = dirpath
        self.monitor = monitor
        self.mode = mode
        self.onnx = onnx
        self.best: Optional[float] = None
        self._written: set[Path] = set()  # folders written in this fit: they get their ONNX at its end

    def _root(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Path:
        if self.dirpath:
            return Path(self.dirpath)
        base = trainer.log_dir if trainer.logger is not None else trainer.default_root_dir
        return Path(base) / getattr(pl_module, "export_name", "student")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        root = self._root(trainer, pl_module)  # on every rank: trainer.log_dir is a collective under DDP
        config = data_config(trainer, pl_module)
        self._export(trainer, pl_module, root / "last", config)
        score = trainer.callback_metrics.get(self.monitor) if self.monitor else None
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
        refuse_non_finite(tensors, f"exported network '{folder}'", trainer)
        if trainer.is_global_zero:
            names = getattr(trainer.datamodule, "class_names", None)
            _write(model, tensors, folder, config, names)
            self._written.add(folder)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not (self.onnx and trainer.is_global_zero):
            return
        for folder in sorted(self._written):
            try:
                export_folder_onnx(folder)
            except Exception as error:  # an op ONNX lacks must not cost the finished training
                rank_zero_warn(
                    f"ONNX export of '{folder}' failed ({str(error).strip().splitlines()[0][:200]}); its safetensors "
                    f"export is complete. Retry with: python -m callbacks.onnx_export {folder}"
                )
        self._written.clear()

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best = state_dict.get("best")


def _write(model, tensors: dict, folder: Path, config: dict, class_names: Optional[list[str]]) -> None:
    (folder / "model.onnx").unlink(missing_ok=True)  # never an ONNX of older weights beside new ones
    save_safetensors(tensors, folder / "model.safetensors")
    labels = {"label_names": list(class_names)} if class_names else None
    atomic_write(
        folder / "config.json", lambda name: save_config_for_hf(model, name, model_config=labels, data_config=config)
    )


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
