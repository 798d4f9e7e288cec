"""The run's ``config.yaml``, written once the run is under way (LightningCLI's config-saving callback)."""

from __future__ import annotations

from lightning.pytorch.cli import SaveConfigCallback

from errors import WriteError


class SaveConfigOnceTrainingStarts(SaveConfigCallback):
    """``fit`` writes the run's ``config.yaml`` when training starts, after a resume's checkpoint has loaded:
    a fit that fails before (a wrong checkpoint, bad data) leaves the run's record as it was. ``validate``,
    ``test`` and ``predict`` record theirs in the logger's sub-folder; without a logger, nowhere (not the current folder)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" and trainer.logger is not None:
            self._save(trainer, pl_module, stage)

    def on_train_start(self, trainer, pl_module) -> None:
        self._save(trainer, pl_module, "fit")

    def _save(self, trainer, pl_module, stage: str) -> None:
        try:
            super().setup(trainer, pl_module, stage)
        except OSError as error:
            raise WriteError(
                f"The run's config.yaml could not be written in {trainer.log_dir}: {error.strerror or error}."
            ) from None
