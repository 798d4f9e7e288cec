"""Every use of a private Lightning, timm or torch API in the project, in one place.

Each is here because the library has no public way to do the same; each has a test that breaks when the library
changes it (named beside it). Upgrades of lightning, timm or torch start by running those tests. One more lives
where it must, as an attribute torch reads: ``MealV2._ddp_params_and_buffers_to_ignore`` (lightning_modules/
meal_v2.py), the parameters and buffers DistributedDataParallel leaves alone (the frozen teachers; torch's own
setter is underscored too), pinned by tests/test_distributed.py.
"""

from __future__ import annotations

from typing import Optional

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from timm.models._hub import save_config_for_hf


def write_timm_config(model, path: str, data_config: dict, class_names: Optional[list[str]]) -> None:
    """timm's own ``config.json`` for a model (architecture, classes, ``pretrained_cfg`` with the data config), as
    ``timm.create_model(..., pretrained_cfg_overlay=...)`` and the Hugging Face hub read it. Public timm only offers
    ``save_for_hf``, which also writes the weights. Pinned by tests/test_export_and_errors.py and tests/test_predict.py
    (exports are read back through timm)."""
    labels = {"label_names": list(class_names)} if class_names else None
    save_config_for_hf(model, path, model_config=labels, data_config=data_config)


def save_checkpoint_now(callback: ModelCheckpoint, trainer: pl.Trainer) -> None:
    """Save ``callback``'s checkpoint at this step through ModelCheckpoint's own steps (its file name, top-k
    bookkeeping and once-per-step guard); Lightning has no public "save now". Pinned by tests/test_resume.py (the
    final step with step checkpoints, and SIGTERM)."""
    if not callback._should_skip_saving_checkpoint(trainer):
        callback._save_topk_checkpoint(trainer, callback._monitor_candidates(trainer))


def last_saved_step(callback: ModelCheckpoint) -> int:
    """The global step of ``callback``'s newest checkpoint. Pinned by tests/test_resume.py (the SIGTERM line)."""
    return callback._last_global_step_saved


class CheckpointPathHook:
    """LightningCLI mixin: ``check_ckpt_path()`` runs where LightningCLI reads ``--ckpt_path``, before anything is
    built. LightningCLI has no public hook there (``_parse_ckpt_path``, which since 2.5.5 also replaces the model's
    config with the checkpoint's hyperparameters; the project keeps the user's config instead). Pinned by
    tests/test_run_safety.py and tests/test_resume.py."""

    def _parse_ckpt_path(self) -> None:
        self.check_ckpt_path()

    def check_ckpt_path(self) -> None:
        raise NotImplementedError
