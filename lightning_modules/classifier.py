"""Plain supervised training on hard labels: teachers and student inits where no pretrained weights exist."""

from __future__ import annotations

from typing import Optional, Sequence

import torch.nn.functional as F

from errors import require_fraction, require_non_negative, require_positive
from lightning_modules.base import NetworkModule
from lightning_modules.metrics import check_images
from lightning_modules.optim import OptimizerName, ScheduleName
from models.loading import ModelSource, create_model, data_facts


class Classifier(NetworkModule):
    """Cross-entropy on hard labels; its checkpoints load as teacher or student weights in ``MealV2``.

    The data normalization is stored in the hyperparameters so a teacher built from this
    checkpoint later sees inputs normalized exactly as in training. Fine-tuning to the data's classes:
    ``model: {name, pretrained: true}`` (hub weights, new head) or ``model: {name, checkpoint: PATH,
    new_head: true}`` (a local file trained for other classes keeps its body, gets a new head).
    """

    def __init__(
        self,
        model: ModelSource,
        num_classes: Optional[int] = None,
        in_chans: Optional[int] = None,
        data_mean: Optional[Sequence[float]] = None,
        data_std: Optional[Sequence[float]] = None,
        optimizer: OptimizerName = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        label_smoothing: float = 0.0,
        schedule: ScheduleName = "cosine",
        milestones: Sequence[int] = (30, 60, 90),
        gamma: float = 0.1,
    ):
        super().__init__()
        source = ModelSource.coerce(model)
        model = source.to_dict()  # plain dict in the hyperparameters: weights_only-loadable checkpoints
        num_classes, in_chans, data_mean, data_std = data_facts(num_classes, in_chans, data_mean, data_std)
        require_positive(lr=lr, gamma=gamma)
        require_fraction(momentum=momentum, label_smoothing=label_smoothing)
        require_non_negative(weight_decay=weight_decay)
        self.save_hyperparameters(logger=False)  # HParamsWithResults records them, flattened, with the results
        self.model, _ = create_model(source, num_classes, in_chans)
        self.init_metrics(num_classes)

    @property
    def network(self):
        return self.model

    export_name = "model"  # <run>/model/{last,best}: teachers and inits are trained here, not students

    def training_step(self, batch, batch_idx):
        images, labels = batch
        check_images(images, self.hparams.in_chans)
        logits = self.model(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.hparams.label_smoothing)
        self.log("train/ce_loss", loss, on_step=True, on_epoch=False, prog_bar=True)  # per step
        self.log("train/ce_loss_epoch", loss, on_step=False, on_epoch=True)  # the epoch's mean
        self.train_top1(logits.detach(), labels)
        self.log("train/top1", self.train_top1, on_step=False, on_epoch=True)
        return loss

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.model.parameters()), "name": "model"}]

    def epoch_hyperparameters(self) -> tuple[dict[str, float], dict[str, float]]:
        hp = self.hparams
        return {"model": hp.lr}, {
            "weight_decay": hp.weight_decay,
            **({"momentum": hp.momentum} if hp.optimizer == "sgd" else {}),
        }
