"""Top-1 / top-5 accuracy (torchmetrics) with the project's metric names, evaluation logging, batch checks."""

from __future__ import annotations

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy


def top1_accuracy(num_classes: int) -> MulticlassAccuracy:
    """Micro-averaged top-1 accuracy."""
    return MulticlassAccuracy(num_classes, top_k=1, average="micro")


def topk_accuracy(num_classes: int, prefix: str = "") -> MetricCollection:
    """``{prefix}top1`` and, where there are at least 5 classes, ``{prefix}top5`` (micro-averaged)."""
    metrics = {"top1": top1_accuracy(num_classes)}
    if num_classes >= 5:
        metrics["top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    return MetricCollection(metrics, prefix=prefix)


def check_images(images: torch.Tensor, in_chans: int) -> None:
    """Refuse a batch the model cannot take (shape metadata only: no device sync)."""
    if images.ndim != 4 or images.shape[1] != in_chans:
        raise ValueError(
            f"Got images of shape {tuple(images.shape)} but the model takes [batch, {in_chans}, H, W]: "
            f"make the data's channels match the model's in_chans (e.g. data in_chans: {in_chans})."
        )


def log_evaluation(module, stage: str, logits: torch.Tensor, labels: torch.Tensor, metrics: MetricCollection) -> None:
    """``{stage}/loss`` (hard-label cross-entropy, synced over ranks) and ``{stage}/top1|top5``."""
    loss = torch.nn.functional.cross_entropy(logits.float(), labels)
    module.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True)
    metrics(logits, labels)
    module.log_dict(metrics, on_epoch=True, prog_bar=True)
