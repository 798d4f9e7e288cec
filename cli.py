"""Command line: ``python cli.py {fit,validate,test} --config configs/...yaml [--ckpt_path last]``."""
from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

import datamodules  # noqa: F401  (makes the short class names resolvable)
import lightning_modules  # noqa: F401
from datamodules.base import ClassificationDataModule

CHECKPOINT_DEFAULTS = {
    "checkpoint.monitor": "val/top1",
    "checkpoint.mode": "max",
    "checkpoint.save_last": True,
    "checkpoint.save_top_k": 1,
    "checkpoint.filename": "best-epoch{epoch:03d}",
    "checkpoint.auto_insert_metric_name": False,
}
LOGGER_DEFAULT = {
    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
    "init_args": {"save_dir": "runs", "name": "default"},
}


class MealCLI(LightningCLI):
    """LightningCLI whose DataModule facts (classes, channels, normalization) flow into the model."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({**CHECKPOINT_DEFAULTS, "trainer.logger": LOGGER_DEFAULT})
        for source, target in (
            ("data.num_classes", "model.init_args.num_classes"),
            ("data.in_chans", "model.init_args.in_chans"),
            ("data.mean", "model.init_args.data_mean"),
            ("data.std", "model.init_args.data_std"),
        ):
            parser.link_arguments(source, target, apply_on="instantiate")


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
    main()
