"""ONNX beside an exported student: dynamic batch, checked by ``onnx.checker``, class names and preprocessing in its metadata.

Export any weights from the command line (an export folder, or a ``.ckpt`` of this project)::

    python -m models.onnx_export runs/.../student/last              # writes runs/.../student/last/model.onnx
    python -m models.onnx_export runs/.../checkpoints/last.ckpt --image-size 28 --out student.onnx
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

import timm
import torch
from torch import nn

from datamodules.exported import find_trained_network, read_export_config
from errors import DamagedFileError, DataError, ExportInputError, ModelLoadingError, WriteError, reason
from models.loading import ModelSource, check_model_name, read_state_dict
from storage.atomic_files import atomic_write


def exportable_model(name: str, model_args: dict, state_dict: dict[str, torch.Tensor], source: Path) -> nn.Module:
    """``name`` built with timm's ``exportable`` layers (static 'same' padding and the like), these weights, eval mode."""

    check_model_name(name)
    with timm.layers.set_layer_config(exportable=True):
        model = timm.create_model(name, **model_args)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()})
    except RuntimeError as error:
        raise ExportInputError(
            f"The weights in '{source}' do not fit a {name} with {model_args} ({reason(error)}): the config names another "
            "network than the weights hold; export again from the run's checkpoint."
        ) from None
    return model.eval()


def export_onnx(model: nn.Module, path: Path, input_size: tuple[int, int, int], metadata: dict) -> None:
    """Write ``model`` (eval mode, fp32) as ONNX with a dynamic batch: input ``images`` [N, C, H, W], output ``logits``."""
    import onnx

    batch = torch.export.Dim("batch", min=1, max=65536)
    with torch.no_grad():
        program = torch.onnx.export(
            model,
            (torch.zeros(2, *input_size),),
            dynamo=True,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            verbose=False,
        )
    proto = program.model_proto
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.checker.check_model(proto)
    atomic_write(path, lambda name: onnx.save(proto, name))


PREPROCESSING = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")


def onnx_metadata(class_names: Optional[list[str]], data_config: dict) -> dict:
    """What a client needs besides the graph, every value JSON: class names (index order) and every preprocessing
    fact (channels, size, resize rule and interpolation, crop, pixel scale, mean, std)."""
    metadata = {key: list(value) if isinstance(value, tuple) else value for key, value in data_config.items()}
    metadata["channel_order"] = "L" if metadata["input_size"][0] == 1 else "RGB"
    metadata["pixel_scale"] = 1 / 255
    if "crop_pct" in metadata:
        metadata["resize"] = (
            "decode as channel_order; resize the shorter side to floor(input_size[-1] / crop_pct) with interpolation "
            "(the longer side in proportion, truncated); centre-crop input_size[-1] x input_size[-1] (offsets "
            "rounded); multiply by pixel_scale; subtract mean and divide by std per channel; NCHW float32"
        )
    if class_names:
        metadata["label_names"] = list(class_names)
    return metadata


def export_folder_onnx(folder: Path, out: Optional[Path] = None) -> Path:
    """``model.onnx`` from an export folder's own ``model.safetensors`` and ``config.json`` (that epoch's weights)."""

    config = read_export_config(folder)
    cfg = config["pretrained_cfg"]
    model_args = config.get("model_args") or {"num_classes": config["num_classes"], "in_chans": cfg["input_size"][0]}
    weights, _ = read_state_dict(folder / "model.safetensors")
    model = exportable_model(config["architecture"], model_args, weights, folder / "model.safetensors")
    data = {k: cfg[k] for k in PREPROCESSING if k in cfg}
    out = out or folder / "model.onnx"
    export_onnx(model, out, tuple(cfg["input_size"]), onnx_metadata(config.get("label_names"), data))
    return out


def _checkpoint_model(path: Path, image_size: int) -> tuple[nn.Module, tuple[int, int, int], dict]:

    state_dict, hparams = read_state_dict(path)  # the student's (or Classifier's model's) weights, one read
    needed = ("num_classes", "in_chans", "data_mean", "data_std")
    if not (hparams.get("student") or hparams.get("model")) or any(k not in hparams for k in needed):
        raise ExportInputError(
            f"'{path}' holds no hyperparameters of this project (network, classes, normalization): give a .ckpt "
            "written by `cli.py fit`, or an export folder."
        )
    source = ModelSource.coerce(hparams.get("student") or hparams.get("model"))
    args = {"num_classes": hparams["num_classes"], "in_chans": hparams["in_chans"], **source.model_kwargs}
    size = (hparams["in_chans"], image_size, image_size)
    data = {"input_size": size, "mean": hparams["data_mean"], "std": hparams["data_std"]}
    try:  # a checkpoint inside a run: the resize and crop its export records
        cfg = find_trained_network(str(path)).config["pretrained_cfg"]
        data |= {k: cfg[k] for k in ("interpolation", "crop_pct", "crop_mode") if k in cfg}
    except DataError:
        pass
    return exportable_model(source.name, args, state_dict, path), size, data


def main(argv: Optional[list[str]] = None) -> Path:
    parser = argparse.ArgumentParser(description="Export a student (export folder or .ckpt) to ONNX.")
    parser.add_argument("weights", type=Path, help="an export folder (model.safetensors + config.json) or a .ckpt")
    parser.add_argument("--out", type=Path, help="the .onnx file (default: model.onnx in the export folder)")
    parser.add_argument("--image-size", type=int, help="input height and width (needed for a .ckpt)")
    args = parser.parse_args(argv)
    import lightning_modules  # noqa: F401  (the project's small-image backbones)

    if not args.weights.exists():
        raise ExportInputError(f"'{args.weights}' does not exist: give an export folder or a .ckpt of this project.")
    if args.weights.is_dir():
        out = export_folder_onnx(args.weights, args.out)
    else:
        if args.image_size is None:
            parser.error("--image-size is needed for a .ckpt (a checkpoint does not record the data's image size)")
        model, size, data = _checkpoint_model(args.weights, args.image_size)
        out = args.out or args.weights.with_suffix(".onnx")
        export_onnx(model, out, size, onnx_metadata(None, data))
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    try:
        main()
    except (ExportInputError, DamagedFileError, DataError, ModelLoadingError, WriteError) as error:
        raise SystemExit(f"error: {error}") from None
