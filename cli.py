"""Command line: ``python cli.py {fit,validate,test,predict} --config configs/...yaml [--ckpt_path last]``."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info

import callbacks  # noqa: F401  (makes the short class names resolvable)
import datamodules  # noqa: F401
import lightning_modules  # noqa: F401
from callbacks import (
    ClassPredictionWriter,
    ExportStudent,
    FiniteLossGuard,
    HParamsWithResults,
    LastCheckpoint,
    RestoreRandomState,
    SaveConfigOnceTrainingStarts,
    SigtermOnEveryRank,
    SoftLabelWriter,
)
from console import (
    quiet_expected_warnings,
    restore_interrupt_handler,
    run_command,
    stop_on_interrupt_like_a_preemption,
    user_error,
)
from datamodules.base import ClassificationDataModule
from datamodules.exported import predict_from
from errors import ConfigError
from private_apis import CheckpointPathHook
from storage.atomic_files import AtomicCheckpointIO
from storage.checkpoints import resolve_ckpt_path, resume_in_its_run, tensorboard_args
from storage.run_folder import check_writable, first_process, mark, prepare_fit_folder, release_locks

DEFAULTS = {
    # best student by val/top1
    "checkpoint.monitor": "val/top1",
    "checkpoint.mode": "max",
    "checkpoint.save_top_k": 1,
    "checkpoint.filename": "best-epoch{epoch:03d}",
    "checkpoint.auto_insert_metric_name": False,
    # last.ckpt for resume, rewritten every epoch (or every_n_train_steps when set). Monitoring "step"
    # makes it save on every trigger; Lightning's save_last alone only follows saves of the same callback.
    "last_checkpoint.monitor": "step",
    "last_checkpoint.mode": "max",
    "last_checkpoint.save_top_k": 1,
    "last_checkpoint.filename": "last",
    "last_checkpoint.enable_version_counter": False,
    # every group's lr (student and discriminator), once per epoch
    "lr_monitor.logging_interval": "epoch",
    "trainer.logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "default", "default_hp_metric": False},
    },
}
# DataModule facts linked into the model: (data attribute, model argument)
LINKS = (("num_classes", "num_classes"), ("in_chans", "in_chans"), ("mean", "data_mean"), ("std", "data_std"))


class MealCLI(CheckpointPathHook, LightningCLI):
    """LightningCLI whose DataModule facts (classes, channels, normalization) flow into the model."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        parser.add_lightning_class_args(ExportStudent, "export_student")
        parser.add_lightning_class_args(FiniteLossGuard, "finite_loss_guard")
        parser.add_lightning_class_args(RestoreRandomState, "restore_random_state")
        parser.add_lightning_class_args(SigtermOnEveryRank, "sigterm_on_every_rank")
        parser.add_lightning_class_args(SoftLabelWriter, "soft_label_writer")
        parser.add_lightning_class_args(ClassPredictionWriter, "predictions")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(HParamsWithResults, "hparams_with_results")
        parser.add_argument(
            "--overwrite",
            type=bool,
            default=False,
            help="fit: replace the run already in the run directory (its checkpoints, exported student and logs)",
        )
        parser.set_defaults(DEFAULTS)
        try:
            parser.set_defaults({"return_predictions": False})  # predict's writers write; keep nothing in memory
        except KeyError:  # only the predict subcommand's parser has it
            pass
        for source, target in LINKS:
            parser.link_arguments(f"data.{source}", f"model.init_args.{target}", apply_on="instantiate")
        for key in ("monitor", "mode"):  # one notion of "best": the exported best is the best checkpoint's epoch
            parser.link_arguments(f"checkpoint.{key}", f"export_student.{key}")

    def _subcommand_config(self):
        return self.config.get(self.subcommand) if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        config = self._subcommand_config()
        args = tensorboard_args(config)
        if self.subcommand in ("validate", "test", "predict") and args is not None and not args.get("sub_dir"):
            args.sub_dir = self.subcommand  # its record sits beside the run's, never in its curves or config
        if self.subcommand == "fit":
            resume_in_its_run(config)
        accelerator = str(config.get("trainer.accelerator") or "auto")
        if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            raise ConfigError(
                f"trainer.accelerator is '{accelerator}' but torch sees no CUDA GPU on this machine "
                "(torch.cuda.is_available() is False): use --trainer.accelerator cpu (or auto), or install a CUDA build of torch."
            )

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as error:
            cause = user_error(error)
            if cause is None or cause is error:
                raise
            raise cause from None
        self._check_linked_values()
        strategy = self.trainer.strategy
        if type(strategy.checkpoint_io) is TorchCheckpointIO:  # not a user's or a TPU's own writer
            strategy.checkpoint_io = AtomicCheckpointIO()

    def _check_linked_values(self) -> None:
        """The data's classes, channels and normalization win over a model value the user set: say so instead of ignoring it."""
        config = self._subcommand_config()
        for source, target in LINKS:
            given, actual = config.get(f"model.init_args.{target}"), getattr(self.datamodule, source, None)
            if given is not None and actual is not None and _plain(given) != _plain(actual):
                raise ConfigError(
                    f"model.init_args.{target} is {_plain(given)} but the data gives {_plain(actual)}: the data's value is "
                    f"linked into the model and wins; set it on the data (data.init_args) or drop model.init_args.{target}."
                )

    def check_ckpt_path(self) -> None:
        """``--ckpt_path`` resolved and checked before anything is built; the given config wins over the checkpoint's
        hyperparameters (LightningCLI 2.5.5+ would silently replace it)."""
        subcommand = self.config.get("subcommand")
        resolve_ckpt_path(self.config.get(subcommand) if subcommand else None, subcommand)

    def before_fit(self) -> None:
        """A run directory that holds a run is resumed or replaced on request, never overwritten silently."""
        config = self.config[self.subcommand]
        if self.trainer.max_epochs is not None and (self.trainer.max_epochs == 0 or self.trainer.max_epochs < -1):
            raise ConfigError(
                f"trainer.max_epochs is {self.trainer.max_epochs}: give a positive number of epochs (or -1 for no limit)."
            )
        self._select_nothing_on_test_images()
        stop_on_interrupt_like_a_preemption()
        run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        prepare_fit_folder(
            run_dir, bool(config.get("ckpt_path")), bool(config.get("overwrite")), first_process(self.trainer)
        )

    def before_validate(self) -> None:
        self._check_record_folder()

    def before_test(self) -> None:
        self._check_record_folder()

    def before_predict(self) -> None:
        self._check_record_folder()

    def _check_record_folder(self) -> None:
        """validate, test and predict record into the run's sub-folder: say so now if it cannot be written. A run
        folder they make is the project's (marked), so a later ``fit`` of that run may write there."""
        if self.trainer.logger is not None and self.trainer.log_dir:
            record = Path(self.trainer.log_dir)
            check_writable(record)
            if record.name == self.subcommand and not (record.parent.is_dir() and any(record.parent.iterdir())):
                mark(record.parent)

    def _select_nothing_on_test_images(self) -> None:
        """Where validation scores the test images, no checkpoint or export is chosen on them: only the last is kept."""
        if not getattr(self.datamodule, "val_is_test", False):
            return
        for callback in list(self.trainer.callbacks):
            if type(callback) is ModelCheckpoint and str(callback.monitor).startswith("val/"):
                self.trainer.callbacks.remove(callback)
            elif isinstance(callback, ExportStudent):
                callback.monitor = None
        rank_zero_info(
            "Validation runs on the test images (no held-out split), so no 'best' checkpoint or export is selected: "
            "last.ckpt and the last export hold the final epoch. Hold out training images with data.init_args.val_size N."
        )


def _plain(value):
    return [round(float(v), 6) for v in value] if isinstance(value, (list, tuple)) else value


def main(args=None, run: bool = True) -> MealCLI:
    """Parse ``args`` (default: sys.argv) and run the subcommand; ``run=False`` only instantiates."""
    quiet_expected_warnings()
    if args is None:
        sys.argv[1:] = predict_from(sys.argv[1:])  # LightningCLI reads sys.argv itself
    else:
        args = predict_from(list(args))
    try:
        return _cli(args, run)
    finally:
        release_locks()
        restore_interrupt_handler()


def _cli(args, run: bool) -> MealCLI:
    return MealCLI(
        model_class=None,
        datamodule_class=ClassificationDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=SaveConfigOnceTrainingStarts,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
        auto_configure_optimizers=False,  # the optimizer knobs live in the modules
    )


if __name__ == "__main__":
    run_command(main)
