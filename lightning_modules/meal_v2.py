"""MEAL V2: distill a frozen teacher ensemble into a student, with a discriminator on the logits.

The whole training step is `distillation_losses` below; read it top to bottom.
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence

import torch
from lightning.pytorch.utilities import rank_zero_warn

from errors import ConfigError, require_fraction, require_non_negative, require_positive
from lightning_modules.base import NetworkModule
from lightning_modules.discriminator import Discriminator, discriminator_term
from lightning_modules.losses import ensemble_soft_targets
from lightning_modules.metrics import check_images, top1_accuracy, topk_accuracy
from lightning_modules.objectives import (
    DistillationBatch,
    DistillationObjective,
    as_objective,
    hard_label_cross_entropy,
)
from lightning_modules.optim import ScheduleName
from lightning_modules.teachers import (
    TeacherEnsemble,
    build_teacher,
    ensemble_warning,
    member_and_ensemble_probabilities,
    teacher_scores,
)
from models.loading import ModelSource, create_model, data_facts, weights_digest


def cutmix_box_mask(height: int, width: int, lam: float) -> torch.Tensor:
    """CutMix's box (Yun et al. 2019, as the released code draws it): side ratios sqrt(1 - lam) around a uniform
    centre, clipped to the image; a [1, 1, H, W] boolean mask that is True inside it."""
    ratio = (1.0 - lam) ** 0.5
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(torch.randint(height, ())), int(torch.randint(width, ()))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    mask = torch.zeros(1, 1, height, width, dtype=torch.bool)
    mask[..., y0:y1, x0:x1] = True
    return mask


DiscriminatorMode = Literal["official", "adversarial", "none"]
SoftTargets = Literal["online", "cached"]


class MealV2(NetworkModule):
    """Frozen teacher ensemble -> student, trained on the teachers' averaged probabilities only.

    Args:
        teachers: the frozen ensemble; each a timm name plus its weights (hub or local file).
        student: the trainable network; a pretrained init is critical (paper, Sec. 4).
        num_classes, in_chans, data_mean, data_std: the data's; linked from the DataModule by the CLI.
        discriminator: ``official`` (student and discriminator minimize the same BCE, as released),
            ``adversarial`` (gradient reversal: the student learns to fool it), or ``none``.
        lr, d_lr: learning rates of the student and discriminator groups (d_lr defaults to lr,
            which is what the released code effectively runs).
        momentum, weight_decay: SGD; the paper uses weight decay 0 (soft labels regularize).
        schedule, milestones, gamma: per-epoch LR schedule (paper: step, [100], 0.1 over 180 epochs).
        cutmix_prob, cutmix_alpha: CutMix on the images only; targets stay the teachers' predictions.
        objective: the student's loss against the teachers (lightning_modules/objectives.py): None is MEAL V2's
            soft cross-entropy on the mean of probabilities; ``HintonKD``, ``DKD`` or ``DIST`` for comparison.
        objective_weight: the objective's weight in the loss (LS-KD's authors use 9).
        hard_label_weight: adds this weight times the hard-label cross-entropy (an ablation for MEAL V2; the usual
            companion of Hinton KD, DKD and DIST).
        soft_targets: ``online`` runs the teachers every step; ``cached`` takes the ensemble's
            probabilities and mean logits from the batch (the DataModule's soft-label cache, written by ``predict``).
        sync_batchnorm_student: under DDP, convert the student's BatchNorm to SyncBatchNorm (the
            teachers are never converted; do not use the Trainer's ``sync_batchnorm``, which would).
        teacher_check_batches: before online training starts, the teachers and their ensemble are scored on
            this many val batches, and a line warns when the ensemble is below its best teacher (0: no check).
    """

    def __init__(
        self,
        teachers: list[ModelSource],
        student: ModelSource,
        num_classes: Optional[int] = None,
        in_chans: Optional[int] = None,
        data_mean: Optional[Sequence[float]] = None,
        data_std: Optional[Sequence[float]] = None,
        discriminator: DiscriminatorMode = "official",
        lr: float = 0.01,
        d_lr: Optional[float] = None,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        schedule: ScheduleName = "step",
        milestones: Sequence[int] = (100,),
        gamma: float = 0.1,
        cutmix_prob: float = 0.0,
        cutmix_alpha: float = 1.0,
        objective: Optional[DistillationObjective] = None,
        objective_weight: float = 1.0,
        hard_label_weight: float = 0.0,
        soft_targets: SoftTargets = "online",
        sync_batchnorm_student: bool = False,
        teacher_check_batches: int = 20,
    ):
        super().__init__()
        if discriminator not in ("official", "adversarial", "none"):
            raise ValueError(f"discriminator must be 'official', 'adversarial' or 'none', got '{discriminator}'.")
        if soft_targets == "cached" and cutmix_prob > 0:
            raise ValueError(
                "CutMix needs the teachers online (cached labels belong to unmixed crops): set cutmix_prob 0."
            )
        teacher_sources = [ModelSource.coerce(t) for t in teachers]
        student_source = ModelSource.coerce(student)
        # Plain dicts in the hyperparameters keep checkpoints loadable with weights_only=True.
        teachers = [t.to_dict() for t in teacher_sources]
        student = student_source.to_dict()
        num_classes, in_chans, data_mean, data_std = data_facts(num_classes, in_chans, data_mean, data_std)
        require_positive(lr=lr, d_lr=d_lr, objective_weight=objective_weight, gamma=gamma, cutmix_alpha=cutmix_alpha)
        require_fraction(momentum=momentum, cutmix_prob=cutmix_prob)
        require_non_negative(
            weight_decay=weight_decay, hard_label_weight=hard_label_weight, teacher_check_batches=teacher_check_batches
        )
        self.objective = as_objective(objective)
        objective = self.objective.describe()  # plain data in the hyperparameters, like the model sources
        self.save_hyperparameters(logger=False)  # HParamsWithResults records them, flattened, with the results

        self.teachers = TeacherEnsemble(
            [build_teacher(source, num_classes, in_chans, data_mean, data_std) for source in teacher_sources]
        )
        self._teacher_identity = [
            {"name": source.name, "sha256": weights_digest(teacher.model)}
            for source, teacher in zip(teacher_sources, self.teachers, strict=True)
        ]
        self.student, _ = create_model(student_source, num_classes, in_chans)
        self.discriminator = Discriminator(num_classes) if discriminator != "none" else None

        self.train_agreement = top1_accuracy(num_classes)  # student top-1 == ensemble top-1
        self.init_metrics(num_classes)
        self.teacher_metrics = torch.nn.ModuleList(topk_accuracy(num_classes) for _ in range(len(self.teachers) + 1))
        self._teacher_eval_pending = True
        self._predicts = "files"  # or "soft_labels": the data's predict mode, read in setup

    @property
    def network(self) -> torch.nn.Module:
        """The student: inference, evaluation and exports (the teachers and the discriminator only serve training)."""
        return self.student

    export_name = "student"  # <run>/student/{last,best}

    # ----------------------------------------------------------------------------------------------
    # The training step
    # ----------------------------------------------------------------------------------------------
    def distillation_losses(
        self,
        images: torch.Tensor,
        labels: Optional[torch.Tensor] = None,
        cached: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        epoch: float = 0.0,
    ) -> dict:
        """All loss terms on one batch: the total under ``loss``, each term beside it, and the ``batch`` view
        (``DistillationBatch``) they were computed from.

        ``cached`` (the ensemble's probabilities and mean logits on these crops, from the soft-label cache)
        replaces the teachers: the same step. ``labels`` are read only by the terms that use them (the
        hard-label term, DKD); ``epoch`` (fractional epochs elapsed) only by those with a warm-up.
        """
        check_images(images, self.hparams.in_chans)
        if cached is None:
            teacher_logits = self.teachers(images)  # [K, B, C], no gradient, eval mode
            mean_probabilities = ensemble_soft_targets(teacher_logits)  # mean of probabilities, fp32
            mean_logits = teacher_logits.float().mean(dim=0)  # the discriminator's rows; logit objectives' targets
        else:
            mean_probabilities, mean_logits = cached
        batch = DistillationBatch(self.student(images), labels, mean_probabilities, mean_logits, epoch)

        terms = {"kd": self.hparams.objective_weight * self.objective(batch)}
        if self.discriminator is not None:
            terms["discriminator"] = discriminator_term(
                self.discriminator, batch, adversarial=self.hparams.discriminator == "adversarial"
            )
        if self.hparams.hard_label_weight > 0:
            terms["hard_label"] = self.hparams.hard_label_weight * hard_label_cross_entropy(batch)
        return {**terms, "loss": sum(terms.values()), "batch": batch}

    def training_step(self, batch, batch_idx):
        images, labels, *cached = batch  # cached: the soft-label cache's (probabilities, mean logits), checked in setup
        mixed = self.hparams.cutmix_prob > 0 and float(torch.rand(())) < self.hparams.cutmix_prob  # host RNG, no sync
        if mixed:
            images = self._cutmix(images)
        epoch = self.current_epoch + batch_idx / max(self.trainer.num_training_batches, 1)
        out = self.distillation_losses(images, labels, tuple(cached) if cached else None, epoch)

        terms = {f"{name}_loss": out[name] for name in ("kd", "discriminator", "hard_label") if name in out}
        for name, value in {**terms, "loss": out["loss"]}.items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=False, prog_bar=name == "kd_loss")  # per step
            self.log(f"train/{name}_epoch", value, on_step=False, on_epoch=True)  # the epoch's mean
        batch = out["batch"]
        predictions = batch.student_logits.detach()
        self.train_agreement(predictions, batch.mean_probabilities.argmax(dim=-1))
        self.log("train/agreement", self.train_agreement, on_step=False, on_epoch=True)
        if not mixed:
            self.train_top1(predictions, labels)
            self.log("train/top1", self.train_top1, on_step=False, on_epoch=True)
        return out["loss"]

    def _cutmix(self, images: torch.Tensor) -> torch.Tensor:
        """Paste a random box from a shuffled copy of the batch. The box and the shuffle are drawn on the host from
        torch's generator (saved in checkpoints) and applied as a mask of the images' shape, so the step keeps
        static shapes (one compiled graph on XLA whatever the box)."""
        alpha = self.hparams.cutmix_alpha
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        inside = cutmix_box_mask(images.shape[-2], images.shape[-1], lam)
        # non_blocking: a synchronous copy to a GPU would wait for the device every step
        permutation = torch.randperm(images.shape[0]).to(images.device, non_blocking=True)
        return torch.where(inside.to(images.device, non_blocking=True), images[permutation], images)

    # ----------------------------------------------------------------------------------------------
    # Set-up: the soft targets checked against the data, the cache opened for these teachers
    # ----------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        # The teachers' ceiling is measured once per run, except when fitting from the cache, where no teacher runs.
        self._teacher_eval_pending = stage != "fit" or self.hparams.soft_targets == "online"
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if stage == "fit":
            self._check_soft_targets(getattr(datamodule, "soft_labels", None))
        if stage == "predict":
            self._predicts = datamodule.predict_mode if datamodule is not None else "files"
        if (stage == "fit" and self.hparams.soft_targets == "cached") or (
            stage == "predict" and self._predicts == "soft_labels"
        ):
            datamodule.open_soft_labels(stage, self.teacher_identity())
        if self.hparams.sync_batchnorm_student and self.trainer is not None and self.trainer.world_size > 1:
            self.student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.student)

    def _check_soft_targets(self, cache) -> None:
        """Once, before training: the model's soft targets and the data's cache agree (and the cache holds what the
        objective reads)."""
        if (cache is not None) != (self.hparams.soft_targets == "cached"):
            raise ConfigError(
                "data.soft_labels is set but model.soft_targets is 'online': set model.init_args.soft_targets cached to "
                "train from the cache, or drop data.init_args.soft_labels (or set it to null) to run the teachers."
                if cache is not None
                else "model.soft_targets is 'cached' but the data has no soft-label cache: set "
                "data.init_args.soft_labels.dir (made by `python cli.py predict`, see docs/speed.md) or use soft_targets 'online'."
            )
        if cache is not None and self.objective.needs_every_class and cache.top_k < self.hparams.num_classes:
            raise ConfigError(
                f"The objective {type(self.objective).__name__} needs every class's teacher logit, but the soft-label cache "
                f"stores the top {cache.top_k} of {self.hparams.num_classes}: make a cache with "
                f"data.init_args.soft_labels.top_k {self.hparams.num_classes}, or run the teachers online."
            )

    def teacher_identity(self) -> list[dict]:
        """Each teacher's timm name and the sha256 of its weights as loaded from its source (before any callback makes
        it faster): what the soft-label cache records and checks."""
        return [dict(entry) for entry in self._teacher_identity]

    # ----------------------------------------------------------------------------------------------
    # Evaluation: the student on hard labels, and once per run the teachers' own ceiling
    # ----------------------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        """A fresh online run first checks its teachers on a few val batches (the cache's ``predict`` does too)."""
        super().on_train_start()  # the epoch's learning rates (EpochSchedule)
        batches = self.hparams.teacher_check_batches
        if self.hparams.soft_targets != "online" or batches <= 0 or self.global_step > 0:
            return
        if not self.trainer.is_global_zero:  # one rank checks; the warning is rank 0's anyway
            return
        loader = self.trainer.datamodule.val_dataloader() if self.trainer.datamodule else self.trainer.val_dataloaders
        if loader is not None and (
            warning := ensemble_warning(teacher_scores(self.teachers, loader, self.device, batches))
        ):
            rank_zero_warn(warning)

    def on_fit_start(self) -> None:
        """Training from the cache runs no teacher: keep them in host memory, not on the accelerator."""
        if self.hparams.soft_targets == "cached":
            self.teachers.to("cpu")

    @property
    def _ddp_params_and_buffers_to_ignore(self) -> list[str]:
        """DDP neither broadcasts nor reduces the frozen teachers (read by DistributedDataParallel)."""
        named = list(self.teachers.named_parameters()) + list(self.teachers.named_buffers())
        return [f"teachers.{name}" for name, _ in named]

    def evaluate(self, batch, stage: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, labels, logits = super().evaluate(batch, stage)
        if self._teacher_eval_pending and not self.trainer.sanity_checking:
            scored = member_and_ensemble_probabilities(self.teachers(images))
            for metric, probabilities in zip(self.teacher_metrics, scored, strict=True):  # [-1]: the ensemble
                metric.update(probabilities, labels)
        return images, labels, logits

    def _log_teacher_ceiling(self, stage: str) -> None:
        if not self._teacher_eval_pending or self.trainer.sanity_checking:
            return
        names = [f"teacher{k}" for k in range(len(self.teachers))] + ["ensemble"]
        for name, metric in zip(names, self.teacher_metrics, strict=True):
            for key, value in metric.compute().items():
                self.log(
                    f"{stage}/{name}_{key}", value, sync_dist=True
                )  # equal on all ranks (torchmetrics synced); avoids Lightning's DDP warning
            metric.reset()
        self._teacher_eval_pending = False

    def on_validation_epoch_end(self) -> None:
        self._log_teacher_ceiling("val")

    def on_test_epoch_end(self) -> None:
        self._log_teacher_ceiling("test")

    def predict_step(self, batch, batch_idx):
        """The data's predict mode, chosen once in ``setup``: the student's class probabilities of image files
        (``data.predict_files``), or the ensemble's soft labels on stored crops (the cache)."""
        if self._predicts == "files":
            return self.classify_files(batch)
        return self.soft_labels_on_crops(batch)

    def soft_labels_on_crops(self, batch: dict) -> dict:
        """The ensemble's probabilities and mean logits on R stored crops per image, for the soft-label cache."""
        crops = batch["images"]  # [B, R, C, H, W]
        # B crops per teacher call, as in a training batch: B x R at once leaves the CPU caches (docs/speed.md)
        teacher_logits = torch.cat([self.teachers(part) for part in crops.flatten(0, 1).split(len(crops))], dim=1)
        return {
            **{k: v for k, v in batch.items() if k != "images"},  # index, boxes, flips (and a mixed crop's partner)
            "probabilities": ensemble_soft_targets(teacher_logits).view(*crops.shape[:2], -1),
            "logits": teacher_logits.float().mean(dim=0).view(*crops.shape[:2], -1),
        }

    # ----------------------------------------------------------------------------------------------
    # Optimizer and checkpoints
    # ----------------------------------------------------------------------------------------------
    def param_groups(self) -> list[dict]:
        groups = [{"params": list(self.student.parameters()), "name": "student"}]
        if self.discriminator is not None:
            groups.append({"params": list(self.discriminator.parameters()), "name": "discriminator"})
        return groups

    def epoch_hyperparameters(self) -> tuple[dict[str, float], dict[str, float]]:
        """The discriminator's d_lr defaults to the student's lr (what the released code effectively runs)."""
        hp = self.hparams
        base_lrs = {"student": hp.lr, "discriminator": hp.d_lr if hp.d_lr is not None else hp.lr}
        return base_lrs, {"momentum": hp.momentum, "weight_decay": hp.weight_decay}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Checkpoints hold the student and the discriminator: the frozen teachers are rebuilt from their sources."""
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("teachers.")]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a checkpoint of another configuration in one line; then hand Lightning's strict loading the
        teachers as built now, so any other missing or unexpected key still fails."""
        super().on_load_checkpoint(checkpoint)
        stored = checkpoint.get("state_dict", {})
        trained_with = any(k.startswith("discriminator.") for k in stored)
        if trained_with != (self.discriminator is not None):
            mode = checkpoint.get("hyper_parameters", {}).get("discriminator", "official" if trained_with else "none")
            raise ConfigError(
                f"The checkpoint was trained with discriminator '{mode}' but model.discriminator is "
                f"'{self.hparams.discriminator}': resume with model.init_args.discriminator {mode}, or start a new run "
                "from its student (model.init_args.student.checkpoint: the .ckpt, and no --ckpt_path)."
            )
        missing = [k for k in self.state_dict() if k not in stored and not k.startswith("teachers.")]
        if missing:
            raise ConfigError(
                f"Checkpoint lacks {len(missing)} student/discriminator weights (e.g. '{missing[0]}'): "
                "it was written by another model or configuration; use the matching config or a MealV2 checkpoint."
            )
        stored.update({f"teachers.{k}": v for k, v in self.teachers.state_dict().items()})
