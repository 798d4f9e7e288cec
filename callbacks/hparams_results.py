"""Each run's defining settings with its final top-1 (agreement, NLL, ECE) in TensorBoard's HParams tab, so runs line up."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard.summary import hparams

RESULTS = (("top1", "top1"), ("agreement", "agreement"), ("nll", "loss"), ("ece", "ece"))  # (column, logged tag)
METRICS = [f"hparams/{stage}_{name}" for stage in ("val", "test") for name, _ in RESULTS]  # the table's metric columns


class HParamsWithResults(pl.Callback):
    """After ``fit`` (and ``test``), records the settings a person compares first, in this order (numbered, as
    TensorBoard sorts setting columns by name): ``01 method``, ``02 student``, ``03 teachers``, ``04 discriminator``,
    ``05 epochs``, ``06 lr``, ``07 weight_decay``, ``08 batch_size`` (global), ``09 seed``, ``10 precision``; then ``hparams/val_top1`` and, where logged, ``hparams/val_agreement``, ``_nll`` and
    ``_ece`` (``hparams/test_...`` after ``test``): the last epoch's values.

    Every run writes the same columns (a baseline reads ``teachers: -``) and the same experiment summary, so
    TensorBoard's HParams table shows them in this order for all runs, with ``hparams/val_top1`` the first metric;
    every other setting is in the run's ``config.yaml``.
    """

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer, pl_module, "val")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer, pl_module, "test")

    def _record(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        logged = trainer.callback_metrics
        if f"{stage}/top1" not in logged or not trainer.is_global_zero:
            return
        metrics = {
            f"hparams/{stage}_{name}": float(logged[f"{stage}/{tag}"])
            for name, tag in RESULTS
            if f"{stage}/{tag}" in logged
        }
        columns = run_columns(trainer, pl_module)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                experiment, _, _ = hparams(columns, dict.fromkeys(METRICS, 0.0))  # the same in every run
                _, session_start, session_end = hparams(columns, metrics)
                writer = logger.experiment
                for summary in (experiment, session_start, session_end):
                    writer.file_writer.add_summary(summary)
                for name, number in metrics.items():
                    writer.add_scalar(name, number, trainer.global_step)
                writer.flush()
            else:
                logger.log_hyperparams(columns, metrics)


def run_columns(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, object]:
    """The settings that tell runs apart, as plain text and numbers, in the order the HParams table shows them."""
    from datamodules.base import global_seed

    hp = pl_module.hparams
    teachers = [t["name"] for t in hp.get("teachers") or []]
    network = hp.get("student") or hp.get("model") or {}
    datamodule = getattr(trainer, "datamodule", None)
    batch = getattr(datamodule, "batch_size", 0) * trainer.world_size
    columns = {
        "method": method_name(hp),
        "student": str(network.get("name", "?")),
        "teachers": " + ".join(teachers) if teachers else "-",
        "discriminator": str(hp.get("discriminator") or "none") if teachers else "-",
        "epochs": int(trainer.max_epochs or -1),
        "lr": float(hp.get("lr", 0.0)),
        "weight_decay": float(hp.get("weight_decay", 0.0)),
        "batch_size": int(batch),
        "seed": int(global_seed()),
        "precision": str(trainer.precision),
    }
    # TensorBoard's table sorts setting columns by name: numbered names keep this order on screen.
    return {f"{index:02d} {name}": value for index, (name, value) in enumerate(columns.items(), start=1)}


def method_name(hp) -> str:
    """What trains the network: hard labels, or the objective's label with its settings and weights."""
    if not hp.get("teachers"):
        return "hard labels"
    from lightning_modules.objectives import as_objective

    objective = as_objective(hp.get("objective"))
    settings = ", ".join(f"{k}={v}" for k, v in objective.describe()["init_args"].items())
    name = f"{objective.label} ({settings})" if settings else objective.label
    if hp.get("objective_weight", 1.0) != 1.0:
        name = f"{hp['objective_weight']} x {name}"
    if hp.get("hard_label_weight"):
        name += f" + {hp['hard_label_weight']} x hard labels"
    return name
