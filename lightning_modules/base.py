"""What ``Classifier`` and ``MealV2`` share: the trained network's evaluation, inference on image files,
and the optimizer over named parameter groups with the per-epoch schedule."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from errors import ConfigError
from lightning_modules.metrics import calibration_error, check_images, log_evaluation, top1_accuracy, topk_accuracy
from lightning_modules.optim import EpochSchedule, build_optimizer, check_schedule


class NetworkModule(EpochSchedule, L.LightningModule):
    """A LightningModule around one trained ``network`` (what is evaluated, exported and deployed).

    Subclasses build the network, set ``export_name`` (the run's export folder), and give ``param_groups()``
    and ``epoch_hyperparameters()``; their hyperparameters hold ``in_chans``, ``lr``, ``momentum``,
    ``weight_decay``, ``schedule``, ``milestones`` and, optionally, ``optimizer`` (default SGD).
    """

    export_name = "model"

    def init_metrics(self, num_classes: int) -> None:
        self.train_top1 = top1_accuracy(num_classes)
        self.val_metrics = topk_accuracy(num_classes, "val/")
        self.test_metrics = topk_accuracy(num_classes, "test/")
        self.val_calibration = calibration_error(num_classes)
        self.test_calibration = calibration_error(num_classes)

    @property
    def network(self) -> nn.Module:
        raise NotImplementedError

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A checkpoint of another head or input (other classes, channels) is refused in one line, not with
        torch's size-mismatch listing."""
        current = self.state_dict()
        for key, tensor in checkpoint.get("state_dict", {}).items():
            if key in current and tuple(tensor.shape) != tuple(current[key].shape):
                stored = checkpoint.get("hyper_parameters", {})
                facts = ", ".join(
                    f"{name} {stored[name]} there, {self.hparams[name]} here"
                    for name in ("num_classes", "in_chans")
                    if name in stored and name in self.hparams and stored[name] != self.hparams[name]
                )
                raise ConfigError(
                    f"The checkpoint does not fit this model: '{key}' is {list(tensor.shape)} there, "
                    f"{list(current[key].shape)} here ({facts or 'another network'}): use data with the classes and "
                    "channels it was trained on, or start from its weights with new_head: true."
                )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Inference: the network's logits."""
        return self.network(images)

    def evaluate(self, batch, stage: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``{stage}/loss``, ``{stage}/top1|top5`` and ``{stage}/ece`` of the network on a labelled batch;
        returns the images, labels and logits."""
        images, labels = batch
        check_images(images, self.hparams.in_chans)
        logits = self(images)
        val = stage == "val"
        metrics = (self.val_metrics, self.val_calibration) if val else (self.test_metrics, self.test_calibration)
        log_evaluation(self, stage, logits, labels, *metrics)
        return images, labels, logits

    def validation_step(self, batch, batch_idx):
        """Returns the logits, for callbacks that compare them (``EnsembleAgreement``)."""
        return self.evaluate(batch, "val")[2]

    def test_step(self, batch, batch_idx):
        return self.evaluate(batch, "test")[2]

    def classify_files(self, batch: dict) -> dict:
        """Class probabilities of image files (``data.predict_files``), for ``ClassPredictionWriter``."""
        check_images(batch["images"], self.hparams.in_chans)
        return {"paths": batch["paths"], "probabilities": self(batch["images"]).float().softmax(-1)}

    def predict_step(self, batch, batch_idx):
        return self.classify_files(batch)

    def param_groups(self) -> list[dict]:
        """The optimizer's parameter groups, each named (the schedule and the lr monitor address them by name)."""
        raise NotImplementedError

    def configure_optimizers(self):
        hp = self.hparams
        check_schedule(hp.schedule, hp.milestones, self.trainer.max_epochs)
        return build_optimizer(self.param_groups(), hp.get("optimizer", "sgd"), hp.lr, hp.momentum, hp.weight_decay)
