"""Image files classified by a trained network alone: its preprocessing and class names come from its export."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from datamodules.base import ClassificationDataModule
from datamodules.image_folder import eval_transform
from errors import DataError

REEXPORT = "export the run again (python -m models.onnx_export RUN/checkpoints/last.ckpt --image-size N)"


def read_export_config(folder: Path) -> dict:
    """An export folder's timm ``config.json``, or a one-line error saying what is wrong with it."""
    path = folder / "config.json"
    if not path.is_file():
        raise DataError(f"'{folder}' has no config.json: an export folder holds model.safetensors + config.json.")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"'{path}' cannot be read ({type(error).__name__}): it is damaged; {REEXPORT}.") from None
    cfg = config.get("pretrained_cfg") if isinstance(config, dict) else None
    missing = [k for k in ("architecture", "num_classes") if not isinstance(config, dict) or k not in config]
    if not isinstance(cfg, dict) or "input_size" not in cfg or missing:
        what = ", ".join(missing) or "pretrained_cfg.input_size"
        raise DataError(f"'{path}' lacks {what} (not a timm export config): {REEXPORT}.")
    channels, names = cfg["input_size"][0], config.get("label_names")
    contradictions = [
        *(
            [f"{len(names)} label_names for {config['num_classes']} classes"]
            if names and len(names) != config["num_classes"]
            else []
        ),
        *(
            f"{len(cfg[k])} {k} values for {channels} channels"
            for k in ("mean", "std")
            if len(cfg.get(k) or [0] * channels) != channels
        ),
    ]
    if contradictions:
        raise DataError(f"'{path}' contradicts itself ({contradictions[0]}): it was edited or damaged; {REEXPORT}.")
    return config


@dataclass
class TrainedNetwork:
    """What predicting with a trained network needs: its weights file, its export config, and its run folder."""

    weights: Path
    config: dict
    run: Optional[Path]

    @property
    def architecture(self) -> str:
        return self.config["architecture"]


def find_trained_network(path: str) -> TrainedNetwork:
    """An export folder (or its ``model.safetensors``), a run folder, or a checkpoint of a run: the weights to use
    and the export config that records how the network's inputs were made."""
    given = Path(path)
    if given.is_file() and given.suffix == ".safetensors":
        given = given.parent
    if given.is_dir() and (given / "model.safetensors").is_file():
        return TrainedNetwork(given / "model.safetensors", read_export_config(given), _run_of(given))
    if given.is_dir() and (given / "checkpoints").is_dir():
        checkpoints = sorted(
            given.glob("checkpoints/*.ckpt"), key=lambda p: (p.name != "last.ckpt", -p.stat().st_mtime)
        )
        if not checkpoints:
            raise DataError(f"Run folder '{given}' holds no checkpoint yet: train it first, or give an export folder.")
        return TrainedNetwork(checkpoints[0], _export_config_of_run(given), given)
    if given.is_file() and given.suffix == ".ckpt":
        run = _run_of(given)
        if run is None:
            raise DataError(
                f"'{given}' is not inside a run folder, so how its images were prepared is unknown: give its run "
                "folder or an export folder (student/last), or use --config with the run's config.yaml."
            )
        return TrainedNetwork(given, _export_config_of_run(run), run)
    raise DataError(
        f"'{path}' is not a trained network: give an export folder (model.safetensors + config.json), a run folder "
        "(runs/NAME/VERSION) or a .ckpt inside one."
    )


def _run_of(path: Path) -> Optional[Path]:
    return next((p for p in list(path.parents)[:3] if (p / "checkpoints").is_dir()), None)


def _export_config_of_run(run: Path) -> dict:
    for folder in (run / "student/last", run / "model/last"):
        if (folder / "config.json").is_file():
            return read_export_config(folder)
    raise DataError(f"Run folder '{run}' has no export (student/last or model/last) recording its preprocessing.")


class FilesToClassify(ClassificationDataModule):
    """``predict`` only: image files for a trained network (``network``: an export folder, a run folder or a
    checkpoint of one), decoded as its channels, resized and centre-cropped with its interpolation and crop_pct,
    normalized with its mean and std, its classes named as exported: nothing of the training data is needed.

    ``image_size``: leave it unset; a value other than the network's input size is refused.
    """

    def __init__(
        self,
        network: str,
        predict_files: list[str],
        image_size: Optional[int] = None,
        batch_size: int = 64,
        num_workers: Optional[int] = 0,
    ):
        super().__init__(batch_size, num_workers, None, predict_files)
        self.network = find_trained_network(network)
        cfg = self.network.config["pretrained_cfg"]
        channels, size = int(cfg["input_size"][0]), int(cfg["input_size"][-1])
        if image_size is not None and image_size != size:
            raise DataError(
                f"data.init_args.image_size is {image_size} but '{network}' was trained on {size} px inputs: drop "
                "image_size (the network's own size is used)."
            )
        self.image_size, self._in_chans = size, channels
        self._mean, self._std = tuple(cfg.get("mean", (0.0,) * channels)), tuple(cfg.get("std", (1.0,) * channels))
        self.crop_pct = float(cfg.get("crop_pct") or 1.0)
        self.interpolation = str(cfg.get("interpolation") or "bilinear")
        self._classes = int(self.network.config["num_classes"])
        self._names = self.network.config.get("label_names")

    @property
    def num_classes(self) -> int:
        return self._classes

    @property
    def class_names(self) -> list[str]:
        return list(self._names) if self._names else super().class_names

    def setup(self, stage: str) -> None:
        if stage != "predict":
            raise DataError(
                "FilesToClassify only classifies files (predict): to validate or train, use the run's config.yaml."
            )

    def file_transform(self) -> Callable:
        """The export's own evaluation transform (size, interpolation, crop_pct, normalization)."""
        return eval_transform(self.image_size, self.interpolation, self._mean, self._std, self.crop_pct)


def predict_from(args: list[str]) -> list[str]:
    """``predict --from PATH`` (an export folder, a run folder, or a checkpoint in one) is shorthand for the network
    alone as a ``Classifier`` and ``FilesToClassify`` with that network's preprocessing and class names: no training
    data and no teacher. Predictions go to the run's ``predict/`` folder, or ``./predictions`` for a lone export."""
    at = next((i for i, a in enumerate(args) if a == "--from" or a.startswith("--from=")), None)
    if not args or args[0] != "predict" or at is None:
        return args
    path = args[at].split("=", 1)[1] if "=" in args[at] else (args[at + 1] if at + 1 < len(args) else "")
    rest = args[:at] + args[at + (1 if "=" in args[at] else 2) :]
    network = find_trained_network(path)
    output = network.run / "predict" if network.run is not None else Path("predictions")
    expanded = ["--model", "Classifier", "--model.model.name", network.architecture]
    expanded += ["--model.model.checkpoint", str(network.weights), "--data", "FilesToClassify", "--data.network", path]
    expanded += ["--trainer.logger", "false", "--predictions.output_dir", str(output)]
    return [rest[0], *expanded, *rest[1:]]
