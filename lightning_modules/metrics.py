"""Evaluation metrics (torchmetrics) with the project's names: top-1 / top-5, NLL, calibration; batch checks."""

from __future__ import annotations

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError


def top1_accuracy(num_classes: int) -> MulticlassAccuracy:
    """Micro-averaged top-1 accuracy."""
    return MulticlassAccuracy(num_classes, top_k=1, average="micro")


def topk_accuracy(num_classes: int, prefix: str = "") -> MetricCollection:
    """``{prefix}top1`` and, where there are at least 5 classes, ``{prefix}top5`` (micro-averaged)."""
    metrics = {"top1": top1_accuracy(num_classes)}
    if num_classes >= 5:
        metrics["top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    return MetricCollection(metrics, prefix=prefix)


def calibration_error(num_classes: int) -> MulticlassCalibrationError:
    """Expected calibration error of the top-1 confidence, 15 equal-width bins (the usual reporting)."""
    return MulticlassCalibrationError(num_classes, n_bins=15, norm="l1")


def check_images(images: torch.Tensor, in_chans: int) -> None:
    """Refuse a batch the model cannot take (shape metadata only: no device sync)."""
    if images.ndim != 4 or images.shape[1] != in_chans:
        raise ValueError(
            f"Got images of shape {tuple(images.shape)} but the model takes [batch, {in_chans}, H, W]: "
            f"make the data's channels match the model's in_chans (e.g. data in_chans: {in_chans})."
        )


def log_evaluation(
    module,
    stage: str,
    logits: torch.Tensor,
    labels: torch.Tensor,
    metrics: MetricCollection,
    calibration: MulticlassCalibrationError,
) -> None:
    """``{stage}/loss`` (the NLL: hard-label cross-entropy, synced over ranks), ``{stage}/top1|top5`` and
    ``{stage}/ece`` (expected calibration error, 15 bins)."""
    logits = logits.float()
    loss = torch.nn.functional.cross_entropy(logits, labels)
    module.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True)
    metrics(logits, labels)
    module.log_dict(metrics, on_epoch=True, prog_bar=True)
    calibration(logits.softmax(-1), labels)
    module.log(f"{stage}/ece", calibration, on_epoch=True)
