"""Write the trained network alone as timm-loadable weights (and ONNX) for the best and the last epoch."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn

from callbacks.finite_loss import refuse_non_finite
from errors import reason
from models.onnx_export import export_folder_onnx
from models.timm_folder import write_timm_folder
from storage.atomic_files import atomic_write_text


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
        run = Path(trainer.log_dir) if trainer.logger is not None else None  # for the model card; also a collective
        self._export(trainer, pl_module, root / "last", config, run)
        score = trainer.callback_metrics.get(self.monitor) if self.monitor else None
        if score is None:
            return
        score = float(score)
        if self.best is None or (score > self.best if self.mode == "max" else score < self.best):
            self.best = score
            self._export(trainer, pl_module, root / "best", config, run)

    def _export(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, folder: Path, config: dict, run: Optional[Path]
    ) -> None:
        model = pl_module.network
        tensors = {
            k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
            for k, v in model.state_dict().items()
        }
        refuse_non_finite(tensors, f"exported network '{folder}'", trainer)
        if trainer.is_global_zero:
            names = getattr(trainer.datamodule, "class_names", None)
            write_timm_folder(model, tensors, folder, config, names)
            atomic_write_text(folder / "README.md", model_card(trainer, pl_module, folder, config, names, run))
            self._written.add(folder)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not (self.onnx and trainer.is_global_zero):
            return
        for folder in sorted(self._written):
            try:
                export_folder_onnx(folder)
            except Exception as error:  # an op ONNX lacks must not cost the finished training
                rank_zero_warn(
                    f"ONNX export of '{folder}' failed ({reason(error)}); its safetensors "
                    f"export is complete. Retry with: python -m models.onnx_export {folder}"
                )
        self._written.clear()

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best = state_dict.get("best")


def data_config(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
    """The preprocessing the network was validated with: channels, size, resize interpolation, crop, normalization
    (the shorter side resized to size / crop_pct, then a centre crop: timm's eval transform)."""
    hp = pl_module.hparams
    datamodule = getattr(trainer, "datamodule", None)
    size = getattr(datamodule, "image_size", None)
    config = {"mean": tuple(hp.data_mean), "std": tuple(hp.data_std)}
    if size:
        config["input_size"] = (hp.in_chans, size, size)
    config["interpolation"] = str(getattr(datamodule, "interpolation", None) or "bilinear")
    config["crop_pct"] = float(getattr(datamodule, "crop_pct", None) or 1.0)
    config["crop_mode"] = "center"
    return config


def model_card(
    trainer: pl.Trainer, pl_module: pl.LightningModule, folder: Path, config: dict, names, run: Optional[Path]
) -> str:
    """``README.md`` beside an export: what the network is, what it takes, how it was trained, what it scored."""
    hp, metrics, datamodule = pl_module.hparams, trainer.callback_metrics, trainer.datamodule
    network = pl_module.network
    name = getattr(network, "default_cfg", {}).get("architecture") or type(network).__name__
    params = sum(p.numel() for p in network.parameters())
    channels, _, size = config.get("input_size", (hp.in_chans, None, None))
    resized = int(size / config["crop_pct"]) if size else "the input size"
    teachers = [t["name"] for t in hp.get("teachers") or []]
    how = f"MEAL V2, distilled from {' + '.join(teachers)}" if teachers else "cross-entropy on hard labels"
    val_set = getattr(datamodule, "val_set", None)
    images = f"{len(val_set):,} " if val_set is not None else ""
    which = (
        "test images (no held-out split)" if getattr(datamodule, "val_is_test", False) else "held-out training images"
    )
    top1 = metrics.get("val/top1")
    lines = [
        f"# {name} ({how})",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | `{name}`, {params:,} parameters |",
        f"| input | {channels} x {size} x {size}, {'grey (L)' if channels == 1 else 'RGB'}; shorter side resized to "
        f"{resized} ({config['interpolation']}), centre "
        f"crop {size}, pixels / 255, mean {list(config['mean'])}, std {list(config['std'])} |",
        f"| classes | {len(names) if names else hp.num_classes}: {', '.join(names) if names else 'indices'} |",
        f"| this export | `{folder.name}`: epoch {trainer.current_epoch + 1} of {trainer.max_epochs} |",
    ]
    if top1 is not None:
        lines.append(f"| val top-1 | {100 * float(top1):.2f} % on {images}{which} |")
    ceiling = [
        f"{k.split('/')[1][:-5]} {100 * float(v):.2f} %"
        for k, v in sorted(metrics.items())
        if k.startswith("val/teacher") and k.endswith("_top1")
    ]
    if "val/ensemble_top1" in metrics:
        ceiling.append(f"ensemble {100 * float(metrics['val/ensemble_top1']):.2f} %")
    if teachers:
        lines.append(
            f"| teachers | {', '.join(teachers)}" + (f"; val top-1: {', '.join(ceiling)}" if ceiling else "") + " |"
        )
    command = " ".join(sys.argv[1:]) if Path(sys.argv[0]).name == "cli.py" else None
    if command:
        lines.append(f"| trained with | `python cli.py {command}` |")
    if run is not None:
        lines.append(f"| run | `{run}` (its `config.yaml` holds every setting) |")
    lines += [
        "",
        f'Use it: `python cli.py predict --from {folder} --data.init_args.predict_files "[photos/]"`, or in Python:',
        "",
        "```python",
        "import lightning_modules  # the project's small-image backbones",
        "import timm",
        "",
        f'model = timm.create_model("local-dir:{folder}", pretrained=True).eval()',
        "```",
        "",
        "`model.onnx` (written when `fit` ends) takes `images` [N, C, H, W] prepared as above and carries the same facts "
        "in its metadata.",
        "",
    ]
    return "\n".join(lines)
