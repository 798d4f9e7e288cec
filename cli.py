"""Command line: ``python cli.py {fit,validate,test} --config configs/...yaml [--ckpt_path last]``."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

import callbacks  # noqa: F401  (makes the short class names resolvable)
import datamodules  # noqa: F401
import lightning_modules  # noqa: F401
from callbacks import ExportStudent, FiniteLossGuard, NonFiniteLossError, RestoreRandomState, SoftLabelWriter
from datamodules.base import ClassificationDataModule, DataError
from lightning_modules.model_loading import ModelLoadingError

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
    "trainer.logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "default"},
    },
}
NAMED_CHECKPOINTS = {"last", "best", "hpc", "registry"}


class CheckpointError(ValueError):
    """A --ckpt_path that cannot be used."""


USER_ERRORS = (CheckpointError, DataError, ModelLoadingError, NonFiniteLossError)


def _user_error(error: BaseException):
    """The project's own one-line error inside jsonargparse's wrapping, if there is one."""
    while error is not None:
        if isinstance(error, USER_ERRORS):
            return error
        error = error.__cause__ or error.__context__
    return None


class MealCLI(LightningCLI):
    """LightningCLI whose DataModule facts (classes, channels, normalization) flow into the model."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.add_lightning_class_args(ExportStudent, "export_student")
        parser.add_lightning_class_args(FiniteLossGuard, "finite_loss_guard")
        parser.add_lightning_class_args(RestoreRandomState, "restore_random_state")
        parser.add_lightning_class_args(SoftLabelWriter, "soft_label_writer")
        parser.set_defaults(DEFAULTS)
        if "return_predictions" in {action.dest for action in parser._actions}:
            parser.set_defaults({"return_predictions": False})  # predict writes the cache; keep nothing in memory
        for source, target in (
            ("data.num_classes", "model.init_args.num_classes"),
            ("data.in_chans", "model.init_args.in_chans"),
            ("data.mean", "model.init_args.data_mean"),
            ("data.std", "model.init_args.data_std"),
        ):
            parser.link_arguments(source, target, apply_on="instantiate")

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as error:
            cause = _user_error(error)
            if cause is None or cause is error:
                raise
            raise cause from None

    def _parse_ckpt_path(self) -> None:
        """Check --ckpt_path before anything is built, and keep the given config.

        LightningCLI (2.5.5+) would overwrite the model's config with the checkpoint's hyperparameters,
        silently ignoring what the user passed (e.g. a moved teacher file or a new lr). Here the config
        wins; a checkpoint that does not fit the configured model is refused when it is loaded.
        """
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand) if subcommand else None
        if config is None or not config.get("ckpt_path"):
            return
        ckpt_path = str(config["ckpt_path"])
        if ckpt_path not in NAMED_CHECKPOINTS:
            check_checkpoint_file(ckpt_path)
        if subcommand == "fit":
            continue_logger_version(config, ckpt_path)


def check_checkpoint_file(path: str) -> None:
    """Refuse a missing, corrupt or foreign --ckpt_path in one line, before anything is built."""
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"--ckpt_path '{path}' does not exist: give a .ckpt file written by this project, or 'last'.")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"--ckpt_path '{path}' cannot be read ({reason[:200]}): it is corrupt or not a Lightning checkpoint.") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "pytorch-lightning_version" not in checkpoint:
        raise CheckpointError(f"--ckpt_path '{path}' is not a Lightning checkpoint: for plain weights use model.*.checkpoint instead.")


def continue_logger_version(config, ckpt_path: str) -> None:
    """Resume logs into the run directory the checkpoint came from, so TensorBoard curves continue."""
    logger = config.get("trainer.logger")
    if logger is None or isinstance(logger, bool) or not str(logger.get("class_path", "")).endswith("TensorBoardLogger"):
        return
    args = logger.get("init_args")
    if args is None or args.get("version") is not None:
        return
    run_root = Path(args.get("save_dir") or "runs") / (args.get("name") or "lightning_logs")
    version = _version_of(Path(ckpt_path), run_root) if ckpt_path not in NAMED_CHECKPOINTS else None
    if ckpt_path == "last":
        version = _latest_version_with_last(run_root)
    if version is not None:
        args.version = version


def _version_of(ckpt: Path, run_root: Path) -> Optional[str]:
    try:
        relative = ckpt.resolve().relative_to(run_root.resolve())
    except ValueError:
        return None
    return relative.parts[0] if len(relative.parts) >= 3 else None


def _latest_version_with_last(run_root: Path) -> Optional[str]:
    candidates = [p for p in run_root.glob("*/checkpoints/last*.ckpt")]
    if not candidates:
        return None
    return max(candidates, key=lambda p: p.stat().st_mtime).parent.parent.name


def main(args=None, run: bool = True) -> MealCLI:
    """Parse ``args`` (default: sys.argv) and run the subcommand; ``run=False`` only instantiates."""
    return MealCLI(
        model_class=None,
        datamodule_class=ClassificationDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
        auto_configure_optimizers=False,  # the optimizer knobs live in the modules
    )


if __name__ == "__main__":
    try:
        main()
    except USER_ERRORS as error:
        raise SystemExit(f"error: {error}") from None
