"""Channels-last memory format for every convolution in the module (students and teachers)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch


class ChannelsLast(pl.Callback):
    """Converts the LightningModule to ``torch.channels_last`` at setup.

    Convolutions then run NHWC kernels (about 1.5x faster on CPUs with oneDNN, and the layout tensor
    cores want on GPUs); inputs are converted by the first convolution, so data loaders stay as they are.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pl_module.to(memory_format=torch.channels_last)
