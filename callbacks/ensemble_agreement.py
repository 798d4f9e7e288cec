"""``val/agreement`` and ``test/agreement``: how often the trained network's top-1 is its teacher ensemble's."""

from __future__ import annotations

from typing import Optional

import lightning.pytorch as pl
import torch

from errors import ConfigError
from lightning_modules.losses import ensemble_soft_targets
from lightning_modules.metrics import top1_accuracy
from lightning_modules.teachers import TeacherEnsemble, build_teacher
from models.loading import ModelSource


class EnsembleAgreement(pl.Callback):
    """Top-1 agreement with the teacher ensemble (fidelity) on the val and test images, beside top-1.

    Distillation can move it when top-1 barely moves. The ensemble is a ``MealV2`` module's own teachers, or
    ``teachers`` (for a network trained without them, e.g. the hard-label baseline). Its predictions (mean of
    probabilities, fp32) are computed once per run and reused every epoch: the eval loaders do not shuffle.
    """

    def __init__(self, teachers: Optional[list[ModelSource]] = None):
        self.sources = [ModelSource.coerce(t) for t in teachers] if teachers else None
        self._ensemble: Optional[TeacherEnsemble] = None
        self._reference: dict[tuple[str, int, int], torch.Tensor] = {}  # (stage, loader, batch) -> ensemble top-1
        self._metrics: dict[str, torch.nn.Module] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        hp = pl_module.hparams
        if self.sources:
            self._ensemble = TeacherEnsemble(
                [build_teacher(s, hp.num_classes, hp.in_chans, hp.data_mean, hp.data_std) for s in self.sources]
            ).to(memory_format=torch.channels_last)  # its own inference-only copy: NHWC convolutions are faster
        elif isinstance(getattr(pl_module, "teachers", None), TeacherEnsemble):
            self._ensemble = pl_module.teachers
        else:
            raise ConfigError(
                f"EnsembleAgreement has no ensemble to compare {type(pl_module).__name__} with: list the models under "
                "its init_args.teachers (as model.init_args.teachers of MealV2), or drop the callback."
            )
        self._metrics = {stage: top1_accuracy(hp.num_classes) for stage in ("val", "test")}

    def _update(self, stage: str, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int) -> None:
        if not torch.is_tensor(outputs):
            raise ConfigError(f"EnsembleAgreement needs the {stage} step to return the logits (NetworkModule does).")
        images = batch[0]
        key = (stage, dataloader_idx, batch_idx)
        if key not in self._reference:
            self._reference[key] = self._ensemble_top1(images)
        metric = self._metrics[stage].to(outputs.device)
        metric.update(outputs.detach(), self._reference[key].to(outputs.device))

    @torch.no_grad()
    def _ensemble_top1(self, images: torch.Tensor) -> torch.Tensor:
        """The ensemble's class per image, where its weights are (the host, for a cached MealV2 run), in fp32."""
        device = next(self._ensemble.parameters()).device
        if self.sources and device != images.device:
            self._ensemble.to(images.device)  # its own copy: on the accelerator with the network
            device = images.device
        with torch.autocast(device.type, enabled=False):
            return ensemble_soft_targets(self._ensemble(images.to(device))).argmax(-1)

    def _log(self, stage: str, pl_module) -> None:
        metric = self._metrics[stage]
        if metric.update_called:
            pl_module.log(f"{stage}/agreement", metric.compute(), sync_dist=True)  # equal on all ranks (synced)
        metric.reset()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self._update("val", pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._update("test", pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._log("val", pl_module)

    def on_test_epoch_end(self, trainer, pl_module):
        self._log("test", pl_module)
