"""A trained network as a timm local-dir folder: ``model.safetensors`` (the sha256 of its tensors in its header) and
``config.json`` (timm's, with the data config and class names), each written whole or not at all. What
``ExportStudent`` exports after each epoch and ``zoo.py`` ships; ``timm.create_model("local-dir:<folder>",
pretrained=True)`` reads it back."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from private_apis import write_timm_config
from storage.atomic_files import atomic_write, save_safetensors


def write_timm_folder(
    model: nn.Module,
    tensors: dict[str, torch.Tensor],
    folder: Path,
    data_config: dict,
    class_names: Optional[list[str]],
) -> None:
    """``tensors`` (the model's state_dict, on the CPU, in the dtype to ship) and timm's config into ``folder``;
    an ONNX file of older weights there is removed first, never left beside new ones."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").unlink(missing_ok=True)
    save_safetensors(tensors, folder / "model.safetensors")
    atomic_write(folder / "config.json", lambda name: write_timm_config(model, name, data_config, class_names))
